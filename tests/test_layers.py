"""The FFN modules: formulas, taps, seeded initialisation, ablations, primitive norms."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DESIGNS

from ffnbench.models import WithTaps, build_model


def test_design_a_is_layernorm_linear_gelu_linear(tiny, hidden):
    m = build_model(tiny("A", residual=False))
    n = m.norm
    mu, var = hidden.mean(-1, keepdim=True), hidden.var(-1, unbiased=False, keepdim=True)
    x = (hidden - mu) / torch.sqrt(var + n.eps) * n.weight + n.bias
    a = x @ m.mlp.fc1.weight.T + m.mlp.fc1.bias
    g = 0.5 * a * (1 + torch.erf(a / 2**0.5))
    expected = g @ m.mlp.fc2.weight.T + m.mlp.fc2.bias
    torch.testing.assert_close(m(hidden), expected, rtol=1e-5, atol=1e-5)


def test_design_b_is_rmsnorm_swiglu_linear(tiny, hidden):
    m = build_model(tiny("B"))
    x = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    gate = x @ m.mlp.gate.weight.T + m.mlp.gate.bias
    up = x @ m.mlp.up.weight.T + m.mlp.up.bias
    swiglu = gate * torch.sigmoid(gate) * up
    expected = hidden + swiglu @ m.mlp.down.weight.T + m.mlp.down.bias
    torch.testing.assert_close(m(hidden), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("design", DESIGNS)
def test_taps_do_not_change_the_output(tiny, hidden, design):
    m = build_model(tiny(design))
    taps: dict = {}
    with torch.no_grad():
        y_taps = m.forward_with_taps(hidden, taps)
        y = m(hidden)
    assert torch.equal(y, y_taps)
    assert set(taps) == set(m.tap_names)
    act = F.gelu(taps["act_in"]) if m.cfg.activation == "gelu" else F.silu(taps["act_in"])
    torch.testing.assert_close(taps["act_out"], act)


def test_with_taps_returns_output_then_taps_in_order(tiny, hidden):
    m = build_model(tiny("B"))
    out = WithTaps(m)(hidden)
    assert len(out) == 1 + len(m.tap_names)
    assert torch.equal(out[0], m(hidden))


def test_init_is_a_function_of_the_seed(tiny):
    a, b, c = (build_model(tiny("B", seed=s)) for s in (5, 5, 6))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_init_is_realistic_not_trivial(tiny):
    m = build_model(tiny("A"))
    assert not torch.allclose(m.norm.weight, torch.ones_like(m.norm.weight))
    assert m.norm.bias.abs().min() > 0
    assert m.mlp.fc1.bias.abs().min() > 0
    # 1/sqrt(fan_in) keeps unit-variance inputs at unit variance through a Linear.
    assert m.mlp.fc1.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)


def test_ablations_change_one_part_only(tiny):
    b, ln_swiglu = build_model(tiny("B")), build_model(tiny("ln-swiglu"))
    a, rms_gelu = build_model(tiny("A")), build_model(tiny("rms-gelu"))
    assert type(ln_swiglu.norm) is type(a.norm) and type(ln_swiglu.mlp) is type(b.mlp)
    assert type(rms_gelu.norm) is type(b.norm) and type(rms_gelu.mlp) is type(a.mlp)
    assert torch.equal(b.mlp.gate.weight, ln_swiglu.mlp.gate.weight)
    assert torch.equal(a.mlp.fc1.weight, rms_gelu.mlp.fc1.weight)
    assert torch.equal(a.norm.weight, b.norm.weight)


@pytest.mark.parametrize("design", DESIGNS)
def test_primitive_norm_matches_the_fused_one(tiny, hidden, design):
    m = build_model(tiny(design))
    fused = m(hidden)
    torch.testing.assert_close(m.set_primitive_norm(True)(hidden), fused, rtol=1e-5, atol=1e-5)


def test_gelu_tanh_is_an_option_that_changes_the_output(tiny, hidden):
    erf, tanh = build_model(tiny("A")), build_model(tiny("A", gelu="tanh"))
    diff = (erf(hidden) - tanh(hidden)).abs().max().item()
    assert 0 < diff < 1e-2


def test_residual_adds_the_input(tiny, hidden):
    with_res, without = build_model(tiny("B")), build_model(tiny("B", residual=False))
    torch.testing.assert_close(with_res(hidden), hidden + without(hidden))


@pytest.mark.parametrize("design", DESIGNS)
def test_norm_invariances_under_uniform_per_token_shift_and_scale(tiny, hidden, design):
    """LayerNorm designs ignore a per-token shift and scale; RMSNorm designs only the scale."""
    m = build_model(tiny(design, residual=False))
    gen = torch.Generator().manual_seed(3)
    # (B, T, 1): per token; scales >= 1 keep ε (1e-5) negligible next to the variance.
    scale = torch.rand(2, 8, 1, generator=gen) * 9 + 1
    shift = torch.randn(2, 8, 1, generator=gen) * 4 + 4
    with torch.no_grad():
        y = m(hidden)
        scaled, shifted = m(hidden * scale), m(hidden + shift)
    torch.testing.assert_close(scaled, y, rtol=1e-4, atol=1e-4)
    if m.cfg.norm == "layernorm":
        torch.testing.assert_close(shifted, y, rtol=1e-4, atol=1e-4)
    else:
        assert (shifted - y).abs().max() > 0.1
