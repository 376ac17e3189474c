"""A run's progress without a terminal: a line per phase, a progress line at most every 30 s."""

import io

from ffnbench.bench import run
from ffnbench.bench.progress import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_log_gets_a_line_per_phase_and_progress_lines_at_most_every_30_s():
    log, clock = io.StringIO(), Clock()
    with Progress(100, None, stream=log, clock=clock) as progress:
        progress.phase("small: exporting 2 designs in parallel")
        for i in range(100):
            clock.t += 1.0  # a cell a second
            progress.cell(f"A/small/fp32/clean-{i}")
            progress.update()
        progress.phase("small: timing 4 cells at decode, interleaved")
    lines = log.getvalue().splitlines()
    assert lines[0] == "[0:00] 0/100 cells · small: exporting 2 designs in parallel"
    assert lines[1] == "[0:30] 30/100 cells · A/small/fp32/clean-29"  # 30 s after the phase line
    assert lines[2:4] == ["[1:00] 60/100 cells · A/small/fp32/clean-59", "[1:30] 90/100 cells · A/small/fp32/clean-89"]
    assert lines[4:] == ["[1:40] 100/100 cells · small: timing 4 cells at decode, interleaved",
                         "[1:40] 100/100 cells · finished"]


def test_no_progress_prints_nothing_and_a_terminal_gets_the_bar():
    quiet = io.StringIO()
    with Progress(3, False, stream=quiet) as progress:
        progress.phase("x")
        progress.update()
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with Progress(3, None, stream=terminal) as progress:
        progress.phase("timing")
        progress.update()
    assert progress.bar is not None and "timing" in terminal.getvalue() and "1/3" in terminal.getvalue()


def test_a_run_without_a_terminal_logs_its_phases(tmp_path, capsys, seed_exports):
    from ffnbench.bench import RunConfig
    from ffnbench.bench.cells.latency import LatencyConfig

    config = RunConfig(models=["tiny"], designs=["A"], recipes=["fp32", "ort-int8-dynamic"], scenarios=["clean"],
                       n_requests=2, seq_len=8,
                       latency=LatencyConfig(warmup=0, min_iterations=2, min_seconds=0.001, prefill=(1, 4),
                                             memory=False, diagnose=False))
    run(config, seed_exports(tmp_path / "run"), progress=None)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[0:00] 0/6 cells · tiny: 2 accuracy cells"
    assert any("tiny: timing 2 cells at decode, interleaved" in line for line in lines)
    assert lines[-1].endswith("6/6 cells · finished")
