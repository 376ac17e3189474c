"""What every measured cell's record shares: its outcome (ok, skipped with the reason, or the error
that broke it, the matrix going on), its time, its artifact, and metrics JSON can hold."""

import contextlib
import math
import time
from collections.abc import Iterator

from ffnbench.quant import Skipped


@contextlib.contextmanager
def recording(record: dict) -> Iterator[None]:
    """Measure inside: a Skipped becomes a skipped cell, any other error a failed one; the time is kept."""
    started = time.perf_counter()
    try:
        yield
    except Skipped as e:
        record |= {"status": "skipped", "reason": str(e)}
    except Exception as e:  # one broken cell must not lose the rest of the matrix; it is recorded
        record |= {"status": "error", "error": f"{type(e).__name__}: {e}"}
    record["seconds"] = round(time.perf_counter() - started, 3)


def artifact_summary(manifest: dict) -> dict:
    return {"sha256": manifest["sha256"], "bytes": manifest["bytes"], "dir": manifest["dir"],
            "params": manifest.get("params", {})}


def finite(values):
    """JSON has no NaN or infinity: a non-finite value (an fp16 overflow, say) is recorded as absent.
    A dict of metrics or a list of per-layer values."""
    def clean(v):
        return v if v is None or math.isfinite(v) else None

    return {k: clean(v) for k, v in values.items()} if isinstance(values, dict) else [clean(v) for v in values]
