"""A run's progress: tqdm's bar on a terminal; in a log without one (CI), a line per phase and a
progress line at most every LOG_EVERY_S seconds, each with the cells done of total and the time."""

import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 30.0


class Progress:
    """show=None: the bar on a terminal, log lines elsewhere; True: the bar; False: nothing."""

    def __init__(self, total: int, show: bool | None = None, stream=None, every: float = LOG_EVERY_S,
                 clock=time.monotonic):
        self.stream = stream or sys.stderr
        terminal = self.stream.isatty()
        self.bar = (tqdm(total=total, unit="cell", file=self.stream, dynamic_ncols=True)
                    if show or (show is None and terminal) else None)
        self.log = show is None and not terminal
        self.total, self.done, self.every, self.clock = total, 0, every, clock
        self.started = self.last = clock()
        self.now = ""  # the phase, or in a log the cell being measured

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.log:
            self._line("finished" if self.done == self.total else "stopped")

    def phase(self, text: str) -> None:
        """A step of the run (exporting, timing a group): a log line of its own."""
        self.now = text
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.log:
            self._line(text)

    def cell(self, key: str) -> None:
        """The cell being measured: shown on the bar; in a log, named by the next progress line."""
        self.now = key
        if self.bar is not None:
            self.bar.set_description(key)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.log and self.clock() - self.last >= self.every:
            self._line(self.now)

    def _line(self, text: str) -> None:
        elapsed = int(self.clock() - self.started)
        print(f"[{elapsed // 60}:{elapsed % 60:02d}] {self.done}/{self.total} cells · {text}", file=self.stream,
              flush=True)
        self.last = self.clock()
