"""CausalLM: a matched pair that differs only in its FFN sublayers, causal, every design buildable."""

import pytest
import torch

from ffnbench.errors import UsageError
from ffnbench.models.config import DESIGNS
from ffnbench.models.lm import CausalLM, LMConfig


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
