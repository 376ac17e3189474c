"""Loading a real FFN layer from .safetensors by Llama, GPT-2 and BERT names; errors name the tensor."""

import pytest
import torch
from safetensors.torch import save_file

from ffnbench.errors import UsageError
from ffnbench.models import build_model, load_safetensors, preset

D, H = 64, 128


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def llama_layer(prefix="model.layers.3."):
    return {
        f"{prefix}post_attention_layernorm.weight": _rand(D, seed=1),
        f"{prefix}mlp.gate_proj.weight": _rand(H, D, seed=2),
        f"{prefix}mlp.up_proj.weight": _rand(H, D, seed=3),
        f"{prefix}mlp.down_proj.weight": _rand(D, H, seed=4),
        "model.embed_tokens.weight": _rand(10, D, seed=5),  # other tensors in the file are ignored
    }


def gpt2_layer(prefix="h.0."):
    return {
        f"{prefix}ln_2.weight": _rand(D, seed=1),
        f"{prefix}ln_2.bias": _rand(D, seed=2),
        f"{prefix}mlp.c_fc.weight": _rand(D, H, seed=3),  # Conv1D: (in, out)
        f"{prefix}mlp.c_fc.bias": _rand(H, seed=4),
        f"{prefix}mlp.c_proj.weight": _rand(H, D, seed=5),
        f"{prefix}mlp.c_proj.bias": _rand(D, seed=6),
    }


def test_llama_layer_loads_as_design_b(tmp_path, hidden):
    tensors = llama_layer()
    save_file(tensors, tmp_path / "w.safetensors")
    m = load_safetensors(tmp_path / "w.safetensors", "B", "model.layers.3.", eps=1e-6)
    assert m.cfg.hidden == H and m.cfg.d_model == D and not m.cfg.bias
    p = "model.layers.3."
    gain = tensors[p + "post_attention_layernorm.weight"]
    x = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6) * gain
    gate, up = x @ tensors[p + "mlp.gate_proj.weight"].T, x @ tensors[p + "mlp.up_proj.weight"].T
    expected = hidden + (torch.nn.functional.silu(gate) * up) @ tensors[p + "mlp.down_proj.weight"].T
    torch.testing.assert_close(m(hidden), expected, rtol=1e-4, atol=1e-4)


def test_gpt2_layer_loads_as_design_a_with_conv1d_transposed(tmp_path, hidden):
    tensors = gpt2_layer()
    save_file(tensors, tmp_path / "w.safetensors")
    m = load_safetensors(tmp_path / "w.safetensors", "A", "h.0.")
    assert m.cfg.bias and m.cfg.d_ff == H
    x = torch.nn.functional.layer_norm(hidden, (D,), tensors["h.0.ln_2.weight"], tensors["h.0.ln_2.bias"])
    a = x @ tensors["h.0.mlp.c_fc.weight"] + tensors["h.0.mlp.c_fc.bias"]
    expected = hidden + torch.nn.functional.gelu(a) @ tensors["h.0.mlp.c_proj.weight"] + tensors["h.0.mlp.c_proj.bias"]
    torch.testing.assert_close(m(hidden), expected, rtol=1e-4, atol=1e-4)


def test_bert_layer_loads_as_design_a(tmp_path):
    p = "encoder.layer.0."
    tensors = {
        f"{p}attention.output.LayerNorm.weight": _rand(D, seed=1),
        f"{p}attention.output.LayerNorm.bias": _rand(D, seed=2),
        f"{p}intermediate.dense.weight": _rand(H, D, seed=3),
        f"{p}intermediate.dense.bias": _rand(H, seed=4),
        f"{p}output.dense.weight": _rand(D, H, seed=5),
        f"{p}output.dense.bias": _rand(D, seed=6),
    }
    save_file(tensors, tmp_path / "w.safetensors")
    m = load_safetensors(tmp_path / "w.safetensors", "A", p)
    assert torch.equal(m.mlp.fc1.weight, tensors[f"{p}intermediate.dense.weight"])


def test_missing_tensor_is_named(tmp_path):
    tensors = llama_layer()
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="'model.layers.3.mlp.up_proj.weight' is missing"):
        load_safetensors(tmp_path / "w.safetensors", "B", "model.layers.3.")


def test_misshaped_tensor_is_named_with_the_expected_shape(tmp_path):
    tensors = llama_layer()
    tensors["model.layers.3.mlp.down_proj.weight"] = _rand(D, H + 1, seed=9)
    save_file(tensors, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match=r"'model.layers.3.mlp.down_proj.weight' has shape \(64, 129\), "
                                         r"expected \(64, 128\)"):
        load_safetensors(tmp_path / "w.safetensors", "B", "model.layers.3.")


def test_wrong_prefix_says_to_check_it(tmp_path):
    save_file(llama_layer(), tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="check --prefix"):
        load_safetensors(tmp_path / "w.safetensors", "B", "model.layers.4.")


def test_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UsageError, match="not a readable .safetensors file"):
        load_safetensors(tmp_path / "w.safetensors", "B")


def test_roundtrip_of_our_own_seeded_weights(tmp_path, hidden):
    """Saving design B's parameters under Llama names and loading them reproduces the block."""
    ours = build_model(preset("tiny", "B", bias=False, swiglu_hidden=H))
    names = {"norm.weight": "post_attention_layernorm.weight", "mlp.gate.weight": "mlp.gate_proj.weight",
             "mlp.up.weight": "mlp.up_proj.weight", "mlp.down.weight": "mlp.down_proj.weight"}
    save_file({names[k]: v.detach().contiguous() for k, v in ours.named_parameters()}, tmp_path / "w.safetensors")
    loaded = load_safetensors(tmp_path / "w.safetensors", "B")
    torch.testing.assert_close(loaded(hidden), ours(hidden))
