"""The subject base's caching rule: an export is found by content, in the run's artifacts/ folder or
(where the subject keeps one) the user's cache, and used only while its file matches its manifest."""

import json
from pathlib import Path

import pytest
import torch

from ffnbench import files
from ffnbench.bench.cells.subject import BaseSubject, intact
from ffnbench.export import ExportedModel


class Counted(BaseSubject):
    """A subject whose "export" writes its content's bytes, and counts how often it is made."""

    user_cache = True

    def __init__(self, artifacts: Path, content: str):
        model = torch.nn.Linear(1, 1)
        model.source = {"content": content}
        super().__init__(None, "X", model, artifacts)
        self.made = 0

    def export_identity(self, model):
        def make(out: Path) -> ExportedModel:
            self.made += 1
            with files.staged_dir(out) as stage:
                (stage / "model.onnx").write_text(model.source["content"])
                files.write_json(stage / "manifest.json",
                                 {"file": "model.onnx", "sha256": files.sha256_file(stage / "model.onnx")})
            return ExportedModel(out / "model.onnx", json.loads((out / "manifest.json").read_text()))

        return f"export-X-{files.digest(model.source)}", make


class RunFolderOnly(Counted):
    user_cache = False


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return files.cache_dir()


def test_a_second_subject_of_the_same_content_finds_the_export(tmp_path, cache):
    first = Counted(tmp_path / "run1" / "artifacts", "weights")
    made = first.export
    same_run = Counted(tmp_path / "run1" / "artifacts", "weights")
    other_run = Counted(tmp_path / "run2" / "artifacts", "weights")  # found in the user cache, copied in
    for subject in (same_run, other_run):
        assert subject.export.path.read_text() == "weights" and subject.made == 0
        assert subject.export.path.parent.name == made.path.parent.name
    assert first.made == 1 and (tmp_path / "run2" / "artifacts" / made.path.parent.name).is_dir()
    assert (cache / made.path.parent.name / "model.onnx").read_text() == "weights"


def test_a_changed_model_is_exported_again_under_another_name(tmp_path):
    first = Counted(tmp_path / "run" / "artifacts", "weights")
    changed = Counted(tmp_path / "run" / "artifacts", "other weights")
    assert changed.export.path.parent != first.export.path.parent
    assert changed.made == 1 and changed.export.path.read_text() == "other weights"


def test_a_corrupted_export_is_not_used(tmp_path, cache):
    artifacts = tmp_path / "run" / "artifacts"
    name = Counted(artifacts, "weights").export.path.parent.name
    (artifacts / name / "model.onnx").write_text("weightz")  # the run's copy: the cache's replaces it
    again = Counted(artifacts, "weights")
    assert again.export.path.read_text() == "weights" and again.made == 0
    for copy in (artifacts / name, cache / name):  # both: made again
        (copy / "model.onnx").write_text("weightz")
    third = Counted(artifacts, "weights")
    assert third.export.path.read_text() == "weights" and third.made == 1
    assert intact(cache / name)  # the cache holds the new, intact copy


def test_without_the_user_cache_only_the_run_folder_is_searched(tmp_path, cache):
    first = RunFolderOnly(tmp_path / "run1" / "artifacts", "weights")
    name = first.export.path.parent.name
    same_run = RunFolderOnly(tmp_path / "run1" / "artifacts", "weights")
    assert same_run.export.path.parent.name == name and same_run.made == 0 and not (cache / name).exists()
    other_run = RunFolderOnly(tmp_path / "run2" / "artifacts", "weights")
    assert other_run.export.path.read_text() == "weights" and other_run.made == 1
    (tmp_path / "run2" / "artifacts" / name / "manifest.json").unlink()  # incomplete: made again
    incomplete = RunFolderOnly(tmp_path / "run2" / "artifacts", "weights")
    assert incomplete.export.path.read_text() == "weights" and incomplete.made == 1
