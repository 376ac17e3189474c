"""The run directory store: appended lines, corrupt lines by number, resume, unusable directories."""

import json
import os

import pytest

from ffnbench.bench import records
from ffnbench.bench.store import RunStore, read_results
from ffnbench.errors import UsageError


def cell(key, status="ok"):
    return {"key": key, "kind": "accuracy", "status": status}


def test_cells_append_and_read_back(tmp_path):
    store = RunStore(tmp_path / "run", {"a": 1}, resume=False, machine={})
    store.append(cell("x"))
    store.append(cell("y", "error"))
    assert [c["key"] for c in store.results()] == ["x", "y"]
    assert store.finished() == {"x"}  # errors are retried on resume
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"] == {"a": 1}


def test_an_existing_run_needs_resume_with_the_same_config(tmp_path):
    RunStore(tmp_path / "run", {"a": 1}, resume=False, machine={}).append(cell("x"))
    with pytest.raises(UsageError, match="pass --resume"):
        RunStore(tmp_path / "run", {"a": 1}, resume=False, machine={})
    with pytest.raises(UsageError, match="used another configuration"):
        RunStore(tmp_path / "run", {"a": 2}, resume=True, machine={})
    assert RunStore(tmp_path / "run", {"a": 1}, resume=True, machine={}).finished() == {"x"}


def test_a_run_an_older_revision_started_resumes_its_flat_config_read_nested(tmp_path):
    """A manifest before the study tables records them flat; the same settings, now nested, resume it."""
    RunStore(tmp_path / "run", {"a": 1, "latency": True, "lm_draws": 2}, resume=False, machine={}).append(cell("x"))
    nested = {"a": 1, "latency": {"enabled": True}, "downstream": {"draws": 2}}
    assert RunStore(tmp_path / "run", nested, resume=True, machine={}).finished() == {"x"}
    with pytest.raises(UsageError, match="used another configuration"):
        RunStore(tmp_path / "run", {**nested, "downstream": {"draws": 3}}, resume=True, machine={})


def test_resume_drops_a_torn_last_line(tmp_path):
    store = RunStore(tmp_path / "run", {}, resume=False, machine={})
    store.append(cell("x"))
    with open(store.results_path, "a") as f:
        f.write('{"key": "y", "sta')  # killed mid-write
    resumed = RunStore(tmp_path / "run", {}, resume=True, machine={})
    assert [c["key"] for c in resumed.results()] == ["x"]


def test_a_corrupt_line_is_named_by_number(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(cell("a")) + "\nnot json\n" + json.dumps(cell("b")) + "\n")
    with pytest.raises(UsageError, match="line 2 is corrupt"):
        read_results(path)


def test_retried_cell_replaces_its_error(tmp_path):
    store = RunStore(tmp_path / "run", {}, resume=False, machine={})
    store.append(cell("x", "error"))
    store.append(cell("x", "ok"))
    assert store.results() == [{**cell("x", "ok"), "format": records.FORMAT}]


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is an existing file"):
        RunStore(tmp_path / "f", {}, resume=False, machine={})


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so no directory is unwritable")
def test_unwritable_out(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="cannot write to"):
        RunStore(locked / "run", {}, resume=False, machine={})


def test_out_below_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write to .*choose a writable directory"):
        RunStore(tmp_path / "file" / "run", {}, resume=False, machine={})


def test_resume_on_another_stack_is_refused(tmp_path, monkeypatch):
    from ffnbench.bench import store

    RunStore(tmp_path / "run", {}, resume=False, machine={}).append(cell("x"))
    monkeypatch.setattr(store, "stack_versions", lambda: {"torch": "9.9"})
    with pytest.raises(UsageError, match="made on another stack"):
        RunStore(tmp_path / "run", {}, resume=True, machine={})
