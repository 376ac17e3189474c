"""Shards and merge: --shard 1/2 + 2/2 + merge equals the unsharded cell set; mismatches are refused."""

import json
import shutil

import pytest

from ffnbench.bench import RunConfig, records, run
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.merge import merge
from ffnbench.bench.runner import plan, shard
from ffnbench.errors import UsageError

OFF = LatencyConfig(enabled=False)


def config(**kw) -> RunConfig:
    base = dict(models=["tiny"], n_requests=2, seq_len=8, calibration_requests=2,
                latency=LatencyConfig(warmup=0, min_iterations=2, min_seconds=0.001, prefill=(2, 4), memory=False,
                                      diagnose=False),
                recipes=["fp32", "ort-int8-dynamic", "ort-int8-qdq-minmax"], scenarios=["clean", "production"],
                calibration=["clean", "production"])
    return RunConfig(**{**base, **kw})


def test_shards_partition_the_plan_by_artifact():
    cells = plan(config())
    parts = [shard(cells, k, 3) for k in (1, 2, 3)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cells)
    for part in parts:
        others = {c.artifact for p in parts if p is not part for c in p}
        assert not {c.artifact for c in part} & others
    assert [c.key for c in shard(cells, 2, 3)] == [c.key for c in shard(plan(config()), 2, 3)]


def test_two_shards_merged_equal_the_whole_run(tmp_path, seed_exports):
    whole = run(config(), tmp_path / "whole", progress=False)
    run(config(), seed_exports(tmp_path / "s1"), progress=False, shard_spec=(1, 2))
    # A shard at another depth records another files_dir (its config's folder, relative to it): the same run.
    run(config(), seed_exports(tmp_path / "deeper" / "s2"), progress=False, shard_spec=(2, 2))
    merged = merge([tmp_path / "s1", tmp_path / "deeper" / "s2"], tmp_path / "merged")
    assert sorted(c["key"] for c in merged) == sorted(c["key"] for c in whole)
    accuracy = {c["key"]: c["metrics"] for c in whole if c["kind"] == "accuracy"}
    assert {c["key"]: c["metrics"] for c in merged if c["kind"] == "accuracy"} == accuracy
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["config"]["shard"] is None and len(manifest["merged_from"]) == 2


@pytest.fixture(scope="module")
def pristine_runs(tmp_path_factory, seed_exports):
    root = tmp_path_factory.mktemp("two-runs")
    run(config(latency=OFF, recipes=["fp32"], scenarios=["clean"]), seed_exports(root / "a"), progress=False)
    run(config(latency=OFF, recipes=["fp32"], scenarios=["production"]), seed_exports(root / "b"), progress=False)
    return root


@pytest.fixture
def two_runs(pristine_runs, tmp_path):
    """Two runs differing in scenarios, a fresh copy per test: tests damage them."""
    for name in ("a", "b"):
        shutil.copytree(pristine_runs / name, tmp_path / name)
    return tmp_path


def test_runs_of_different_configs_are_refused_unless_told(two_runs):
    with pytest.raises(UsageError, match="differ in config \\(scenarios\\).*--allow-mismatch"):
        merge([two_runs / "a", two_runs / "b"], two_runs / "m")
    assert not (two_runs / "m").exists()
    cells = merge([two_runs / "a", two_runs / "b"], two_runs / "m", allow_mismatch=True)
    assert len(cells) == 4


def test_a_shard_an_older_revision_recorded_flat_merges_with_a_nested_one(two_runs):
    """The config of a shard before the study tables is flat; the same settings nested merge with it,
    and a study setting that differs is named by its table and key."""
    manifests = {name: two_runs / name / "manifest.json" for name in ("a", "b")}
    a, b = (json.loads(path.read_text()) for path in manifests.values())
    b["config"]["scenarios"] = a["config"]["scenarios"]  # one configuration, two parts of its matrix
    manifests["b"].write_text(json.dumps(b))
    flat = {key: value for key, value in a["config"].items() if key not in ("latency", "downstream", "dose", "whole")}
    flat |= {old: a["config"][table][key] for old, (table, key) in records.FLAT.items()}  # as before the tables
    manifests["a"].write_text(json.dumps({**a, "config": flat}))
    assert len(merge([two_runs / "a", two_runs / "b"], two_runs / "m")) == 4  # both designs, a scenario each
    b["config"]["downstream"]["windows"] += 1
    manifests["b"].write_text(json.dumps(b))
    with pytest.raises(UsageError, match=r"differ in config \(downstream\.windows\)"):
        merge([two_runs / "a", two_runs / "b"], two_runs / "m2")


def test_a_cell_in_two_runs_is_refused(two_runs):
    with pytest.raises(UsageError, match="is in both"):
        merge([two_runs / "a", two_runs / "a"], two_runs / "m")


def test_a_corrupt_line_is_reported_with_its_number_and_nothing_is_written(two_runs):
    results = two_runs / "b" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    with pytest.raises(UsageError, match="results.jsonl: line 2 is corrupt"):
        merge([two_runs / "a", two_runs / "b"], two_runs / "m", allow_mismatch=True)
    assert not (two_runs / "m").exists()
    assert results.read_text().splitlines()[0] == lines[0]  # the input is untouched


def test_a_missing_results_file(two_runs):
    (two_runs / "b" / "results.jsonl").unlink()
    with pytest.raises(UsageError, match="has no results.jsonl"):
        merge([two_runs / "a", two_runs / "b"], two_runs / "m")


def test_an_empty_shard_is_a_run_with_no_cells(tmp_path, seed_exports):
    cfg = config(designs=["A"], recipes=["fp32"], scenarios=["clean"], latency=OFF)
    assert run(cfg, tmp_path / "s2", progress=False, shard_spec=(2, 2)) == []
    run(cfg, seed_exports(tmp_path / "s1"), progress=False, shard_spec=(1, 2))
    assert len(merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")) == 1
