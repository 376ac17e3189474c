"""`ffnbench compare OLD_RUN NEW_RUN --remeasure`: both runs' artifacts re-timed in one process.

Latency recorded in two runs differs by whatever else the machine did during each; re-timing the
old and the new artifact round-robin in one process cancels that, which is how latency should be
gated on shared CI runners.
"""

from pathlib import Path

from ffnbench import files
from ffnbench.bench import latency_cells
from ffnbench.bench.config import RunConfig
from ffnbench.bench.runnables import OrtRunnable, TorchRunnable, ort_has_cuda
from ffnbench.bench.store import load_run
from ffnbench.errors import UsageError
from ffnbench.models import preset
from ffnbench.quant import load_artifact


def _runnable(run_dir: Path, cell: dict, threads: int, config: RunConfig):
    artifact_dir = cell.get("artifact", {}).get("dir")
    if not artifact_dir or not (run_dir / artifact_dir / "manifest.json").is_file():
        raise UsageError(f"compare: {run_dir} has no artifact for {cell['key']}; re-run it with this ffnbench")
    artifact = load_artifact(run_dir / artifact_dir, device=config.device)
    if artifact.runtime == "ort":
        return OrtRunnable(latency_cells.latency_model(artifact.path), threads=threads, spinning=config.ort_spinning,
                           device=config.device if ort_has_cuda() else "cpu")
    return TorchRunnable(artifact.module, runtime=artifact.runtime, threads=threads, device=config.device)


def remeasure(old_run: Path, new_run: Path) -> dict[str, dict]:
    """new/old p50 ratio with a paired 95 % interval, per latency cell present in both runs."""
    old_run, new_run = Path(old_run), Path(new_run)
    (old_manifest, old_cells), (new_manifest, new_cells) = load_run(old_run, "compare"), load_run(new_run, "compare")
    config = RunConfig.from_dict(new_manifest["config"])
    # Each side runs as its run did: a thread-count change is a change to measure, not to erase.
    threads = {"old": RunConfig.from_dict(old_manifest["config"]).threads, "new": config.threads}
    old = {c["key"]: c for c in old_cells if c.get("kind") == "latency" and c["status"] == "ok"}
    common = [c for c in new_cells if c.get("kind") == "latency" and c["status"] == "ok" and c["key"] in old]
    if not common:
        raise UsageError(f"compare: {old_run} and {new_run} share no measured latency cell")
    out = {}
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
            out[cell["key"]] = {**new_stats["vs_old"], "old_p50_ms": old_stats["p50_ms"],
                                "new_p50_ms": new_stats["p50_ms"], "iterations": new_stats["iterations"]}
    return out


def write(ratios: dict[str, dict], new_run: Path) -> Path:
    lines = ["# ffnbench compare: re-measured side by side", "",
             "| cell | old p50 ms | new p50 ms | new/old | 95 % CI |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['old_p50_ms']:.4f} | {r['new_p50_ms']:.4f} | {r['ratio']:.3f} | "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] |" for k, r in ratios.items()]
    path = Path(new_run) / "compare.md"
    files.write_text(path, "\n".join(lines) + "\n")
    files.write_json(Path(new_run) / "compare.json", ratios)
    return path
