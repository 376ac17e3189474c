"""torch -> ONNX: native opset 23 and decomposed opset 18, parity, taps, manifest, atomic writes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ffnbench.errors import UsageError
from ffnbench.export import export_onnx, load_onnx, onnx_export, sha256_file
from ffnbench.models import build_model, preset

NATIVE_OPS = {"A": {"LayerNormalization", "Gelu"}, "B": {"RMSNormalization"},
              "ln-swiglu": {"LayerNormalization"}, "rms-gelu": {"RMSNormalization", "Gelu"}}


# Decomposed exports of A and B spell out every norm and activation the ablations combine.
EXPORTS = [(design, False) for design in NATIVE_OPS] + [("A", True), ("B", True)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every design exported natively, A and B decomposed too, once for the module."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for design, decomposed in EXPORTS:
        block = build_model(preset("tiny", design))
        out[design, decomposed] = (block, export_onnx(block, root / f"{design}-{decomposed}", decomposed=decomposed))
    return out


@pytest.mark.parametrize("design", list(NATIVE_OPS))
def test_native_export_uses_the_fused_norm_ops(exports, design):
    _, exported = exports[design, False]
    model = onnx.load(str(exported.path))
    ops = {n.op_type for n in model.graph.node}
    assert NATIVE_OPS[design] <= ops
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {23}


@pytest.mark.parametrize("design", ["A", "B"])
def test_decomposed_export_is_opset_18_primitive_ops(exports, design):
    _, exported = exports[design, True]
    model = onnx.load(str(exported.path))
    assert not {"LayerNormalization", "RMSNormalization", "Gelu"} & {n.op_type for n in model.graph.node}
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}


@pytest.mark.parametrize(("design", "decomposed"), EXPORTS)
def test_ort_matches_torch_on_new_shapes(exports, design, decomposed):
    block, exported = exports[design, decomposed]
    assert exported.manifest["parity"]["max_abs_err"] <= 1e-4
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    h = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(11)) + 2.0
    (y,) = session.run(None, {"hidden": h.numpy()})
    np.testing.assert_allclose(y, block(h).detach().numpy(), atol=1e-4, rtol=0)


def test_manifest_describes_the_artifact(exports):
    block, exported = exports["B", False]
    manifest = json.loads((exported.path.parent / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(exported.path)
    assert manifest["bytes"] == exported.path.stat().st_size
    assert manifest["config"]["design"] == "B" and manifest["config"]["hidden"] == block.cfg.hidden
    assert manifest["opset"] == 23
    assert manifest["ops"]["MatMul"] == 3
    assert {"torch", "onnx", "onnxruntime"} <= {k for k, v in manifest["versions"].items() if v}


def test_taps_become_graph_outputs_with_torch_values(tmp_path, hidden):
    block = build_model(preset("tiny", "A"))
    exported = export_onnx(block, tmp_path / "taps", taps=True)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["output", "norm_out", "act_in", "act_out"]
    got = dict(zip(names, session.run(None, {"hidden": hidden.numpy()}), strict=True))
    taps: dict = {}
    block.forward_with_taps(hidden, taps)
    for name in names[1:]:
        np.testing.assert_allclose(got[name], taps[name].detach().numpy(), atol=1e-4)


def test_out_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UsageError, match="is an existing file"):
        export_onnx(build_model(preset("tiny", "A")), tmp_path / "taken")


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PARITY_TOL", -1.0)
    with pytest.raises(RuntimeError, match="export parity"):
        export_onnx(build_model(preset("tiny", "B")), tmp_path / "out")
    assert list(tmp_path.iterdir()) == [] or not any((tmp_path / "out").iterdir())


def test_load_onnx_accepts_an_export(exports):
    """The model it returns is the export's: its ops as the manifest counted them, its file's hash."""
    _, exported = exports["A", False]
    model = load_onnx(exported.path)
    assert dict(Counter(n.op_type for n in model.graph.node)) == exported.manifest["ops"]
    assert model.SerializeToString() == onnx.load(str(exported.path)).SerializeToString()
    assert sha256_file(exported.path) == exported.manifest["sha256"]


@pytest.mark.parametrize("content", [b"this is not onnx", None])
def test_load_onnx_rejects_foreign_and_truncated_files(tmp_path, exports, content):
    _, exported = exports["A", False]
    data = exported.path.read_bytes()
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content if content is not None else data[: len(data) // 2])
    with pytest.raises(UsageError, match="is not a valid ONNX model"):
        load_onnx(bad)


def test_load_onnx_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no file at"):
        load_onnx(tmp_path / "nope.onnx")


@pytest.mark.parametrize("key", list(EXPORTS), ids=lambda k: f"{k[0]}-{'decomposed' if k[1] else 'native'}")
def test_an_export_records_no_path_of_this_machine(exports, key):
    """The exporter's stack traces name the files that built each node (this checkout's, this
    Python's): dropped, so the same model exported from any checkout is the same artifact; the
    module path inside the model (`namespace`) stays, since FFN MatMuls are found by it."""
    _, exported = exports[key]
    model = onnx.load(str(exported.path))
    props = [(p.key, p.value) for node in model.graph.node for p in node.metadata_props]
    roots = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).parents[1]))
    assert not [k for k, v in props if any(root in v for root in roots)]
    assert any(k == "namespace" for k, _ in props)
