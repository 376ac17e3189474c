"""`ffnbench compare OLD_RUN NEW_RUN --remeasure`: both runs' artifacts re-timed in one process.

Latency recorded in two runs differs by whatever else the machine did during each; re-timing the
old and the new artifact round-robin in one process cancels that, which is how latency should be
gated on shared CI runners.

Only ONNX Runtime cells are re-measured: the old side is the old run's own model.onnx, run by the
same ONNX Runtime (the gate refuses a stack change unless told). A bitsandbytes or torch artifact is
a module rebuilt by this process's code, so both sides would run the new code and a regression in
it could never show: those cells are reported "not re-measured" and judged as recorded.
"""

from pathlib import Path

import numpy as np

from ffnbench import files
from ffnbench.bench import latency_cells, stats
from ffnbench.bench.config import RunConfig
from ffnbench.bench.runnables import OrtRunnable, ort_has_cuda
from ffnbench.bench.store import load_run
from ffnbench.errors import UsageError
from ffnbench.models import preset
from ffnbench.quant import load_artifact


def _runnable(run_dir: Path, cell: dict, threads: int, config: RunConfig):
    artifact_dir = cell.get("artifact", {}).get("dir")
    if not artifact_dir or not (run_dir / artifact_dir / "manifest.json").is_file():
        raise UsageError(f"compare: {run_dir} has no artifact for {cell['key']}; re-run it with this ffnbench")
    artifact = load_artifact(run_dir / artifact_dir, device=config.device)
    assert artifact.runtime == "ort", "only ONNX Runtime cells are re-measured"
    return OrtRunnable(latency_cells.latency_model(artifact.path), threads=threads, spinning=config.ort_spinning,
                       device=config.device if ort_has_cuda() else "cpu")


def remeasure(old_run: Path, new_run: Path) -> dict[str, dict]:
    """new/old p50 ratio with a paired 95 % interval, per latency cell present in both runs."""
    old_run, new_run = Path(old_run), Path(new_run)
    (old_manifest, old_cells), (new_manifest, new_cells) = load_run(old_run, "compare"), load_run(new_run, "compare")
    config = RunConfig.from_dict(new_manifest["config"])
    # Each side runs as its run did: a thread-count change is a change to measure, not to erase.
    threads = {"old": RunConfig.from_dict(old_manifest["config"]).threads, "new": config.threads}
    old = {c["key"]: c for c in old_cells if c.get("kind") == "latency" and c["status"] == "ok"}
    shared = [c for c in new_cells if c.get("kind") == "latency" and c["status"] == "ok" and c["key"] in old]
    if not shared:
        raise UsageError(f"compare: {old_run} and {new_run} share no measured latency cell")
    out = {c["key"]: {"not_remeasured": f"a {c['runtime']['runtime']} artifact runs this process's code on both "
                                        "sides"} for c in shared if c["runtime"]["runtime"] != "ort"}
    common = [c for c in shared if c["key"] not in out]
    for shape in dict.fromkeys(c["shape"]["name"] for c in common):
        cells = [c for c in common if c["shape"]["name"] == shape]
        entries = {}
        for cell in cells:
            d_model = preset(cell["model"]).d_model
            x = config.scenario(cell["inputs"]).generate(cell["shape"]["batch"], cell["shape"]["seq"], d_model,
                                                         seed=config.seed)
            block_cfg = preset(cell["model"], cell["design"])
            for side, run_dir, record in (("old", old_run, old[cell["key"]]), ("new", new_run, cell)):
                entries[f"{side}:{cell['key']}"] = {
                    "runnable": _runnable(run_dir, record, threads[side], config), "x": x, "block_cfg": block_cfg,
                    "model_bytes": record["metrics"]["model_bytes"]}
            entries[f"new:{cell['key']}"]["ratios"] = {"vs_old": f"old:{cell['key']}"}
        shape_dims = (cells[0]["shape"]["batch"], cells[0]["shape"]["seq"])
        timed = latency_cells.time_group(entries, shape_dims, config.latency_config(), None, config.threads)
        for cell in cells:
            new_stats, old_stats = timed[f"new:{cell['key']}"], timed[f"old:{cell['key']}"]
            p = stats.wilcoxon_greater(np.asarray(new_stats["samples_ms"]), np.asarray(old_stats["samples_ms"]))
            out[cell["key"]] = {**new_stats["vs_old"], "p_slower": p, "old_p50_ms": old_stats["p50_ms"],
                                "new_p50_ms": new_stats["p50_ms"], "iterations": new_stats["iterations"],
                                "stopped_by": new_stats["stopped_by"]}
    return out


def write(ratios: dict[str, dict], new_run: Path) -> Path:
    lines = ["# ffnbench compare: re-measured side by side", "",
             "| cell | old p50 ms | new p50 ms | new/old | 95 % CI | p (slower) | rounds |", "|---" * 7 + "|"]
    lines += [f"| {k} | {r['old_p50_ms']:.4f} | {r['new_p50_ms']:.4f} | {r['ratio']:.3f} | "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['p_slower']:.2g} | {r['iterations']} |"
              for k, r in ratios.items() if "not_remeasured" not in r]
    lines += [f"| {k} | not re-measured: {r['not_remeasured']} | | | | | |"
              for k, r in ratios.items() if "not_remeasured" in r]
    path = Path(new_run) / "compare.md"
    files.write_text(path, "\n".join(lines) + "\n")
    files.write_json(Path(new_run) / "compare.json", ratios)
    return path
