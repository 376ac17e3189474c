"""CausalLM: a matched pair that differs only in its FFN sublayers, causal, every design buildable."""

import pytest
import torch

from ffnbench.errors import UsageError
from ffnbench.models.config import DESIGNS
from ffnbench.models.lm import CausalLM, Drift, LMConfig


def ffn_free(model: CausalLM) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".ffn." not in k}


def test_the_pair_matches_in_parameters_and_in_everything_but_the_ffn():
    a, b = CausalLM(LMConfig(design="A")), CausalLM(LMConfig(design="B"))
    count = {m: sum(p.numel() for p in m.parameters()) for m in (a, b)}
    assert abs(count[a] - count[b]) / count[a] < 0.02, count
    shared_a, shared_b = ffn_free(a), ffn_free(b)
    assert shared_a.keys() == shared_b.keys()
    assert all(torch.equal(shared_a[k], shared_b[k]) for k in shared_a)  # same seeded draws
    assert type(a.blocks[0].ffn.norm).__name__ != type(b.blocks[0].ffn.norm).__name__


@pytest.mark.parametrize("design", list(DESIGNS))
def test_every_design_builds_and_is_causal(design):
    model = CausalLM(LMConfig(design=design, d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16)).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (2, 16, 256)
    assert torch.equal(before[:, :10], after[:, :10]) and not torch.equal(before[:, 10:], after[:, 10:])


def test_heads_must_divide_the_width():
    with pytest.raises(UsageError, match="n_heads: 5 does not divide d_model 192"):
        LMConfig(n_heads=5)


def _taps(model, tokens, drift=None, inject="ffn-input"):
    taps: dict = {}
    with torch.no_grad():
        logits = model(tokens, drift, inject, taps)
    return logits, taps


def test_an_identity_drift_changes_nothing_and_a_drift_at_the_ffn_input_leaves_the_residual_untouched():
    cfg = LMConfig(design="B", d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16)
    model = CausalLM(cfg).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    clean, clean_taps = _taps(model, tokens)
    same, _ = _taps(model, tokens, Drift.identity(2, 32, 2))
    assert torch.equal(clean, same)
    gen = torch.Generator().manual_seed(2)
    drift = Drift(1 + torch.rand(2, 32, generator=gen), torch.randn(2, 32, generator=gen), torch.tensor([0.5, 3.0]))
    drifted, taps = _taps(model, tokens, drift)
    assert not torch.allclose(drifted, clean)
    # Layer 0: the stream the FFN adds to is the clean one; only what the FFN norm sees drifts.
    assert torch.equal(taps["resid.0"], clean_taps["resid.0"])
    assert torch.allclose(taps["ffn_in.0"], drift.apply(0, clean_taps["resid.0"]))
    _, residual = _taps(model, tokens, drift, inject="residual")
    assert torch.equal(residual["resid.0"], residual["ffn_in.0"])  # here the stream itself drifts
    assert torch.allclose(residual["resid.0"], drift.apply(0, clean_taps["resid.0"]))


def test_an_unknown_injection_point_is_refused():
    with pytest.raises(UsageError, match="inject: unknown 'middle'"):
        CausalLM(LMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=16))(
            torch.zeros(1, 4, dtype=torch.long), None, "middle")
