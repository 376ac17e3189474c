"""The committed trained pair loads only as its manifest describes it: hash, design and shape."""

import json
import shutil

import pytest

from ffnbench.errors import UsageError
from ffnbench.models.pair import TRAINED, load_lm, trained_dir


@pytest.fixture
def copy_of_b(tmp_path):
    shutil.copytree(trained_dir("B"), tmp_path / "B")
    return tmp_path / "B"


def test_the_committed_pair_loads_as_its_designs():
    for design in ("A", "B"):
        model, manifest = load_lm(trained_dir(design), design)
        assert model.cfg.design == design and manifest["sha256"]


def test_a_changed_checkpoint_is_refused_naming_the_hash_it_wants(copy_of_b):
    want = json.loads((copy_of_b / "manifest.json").read_text())["sha256"]
    with open(copy_of_b / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(UsageError, match=f"its manifest wants {want}; restore the file"):
        load_lm(copy_of_b)


def test_a_missing_checkpoint_or_manifest_or_the_other_design_is_refused(copy_of_b, tmp_path):
    with pytest.raises(UsageError, match="holds design B, not A"):
        load_lm(copy_of_b, "A")
    (copy_of_b / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="no model.safetensors"):
        load_lm(copy_of_b)
    with pytest.raises(UsageError, match="no manifest.json"):
        load_lm(tmp_path / "nowhere")


def test_a_checkpoint_of_another_shape_is_refused(copy_of_b):
    manifest = json.loads((copy_of_b / "manifest.json").read_text())
    manifest["config"]["d_ff"] = 512
    (copy_of_b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="its weights do not fit its config"):
        load_lm(copy_of_b)


def test_the_committed_checkpoints_fit_the_repository_budget():
    """Every committed checkpoint together within 64 MB (the clone stays lean), each stored in float16
    and naming the fp32 file it was rounded from or the checkpoint it was fine-tuned from."""
    weights = list(TRAINED.glob("*/*/*/model.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= 64 * 2**20
    for w in weights:
        manifest = json.loads((w.parent / "manifest.json").read_text())
        assert manifest["train"]["store_dtype"] == "float16", w
        assert (manifest.get("stored_from") or manifest.get("init_from"))["sha256"], w
