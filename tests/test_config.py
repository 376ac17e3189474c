"""FFNConfig: validation with the fix in the message, derived widths, parameter matching, presets."""

import pytest

from ffnbench.errors import UsageError
from ffnbench.models import PRESETS, FFNConfig, matched_swiglu_width, preset


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("design", "C", "design: unknown 'C'"),
    ("d_model", 0, "d_model: must be a positive integer"),
    ("d_ff", -4, "d_ff: must be a positive integer"),
    ("swiglu_hidden", 0, "swiglu_hidden: must be a positive integer"),
    ("eps", 0.0, "eps: must be positive"),
    ("gelu", "fast", "gelu: unknown 'fast'"),
])
def test_bad_fields_name_the_field(field, value, needle):
    with pytest.raises(UsageError, match=needle):
        FFNConfig(**{field: value})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UsageError, match="preset: unknown 'huge'.*tiny, small, default, llama-7b"):
        preset("huge")


@pytest.mark.parametrize("d_ff", [256, 1024, 4096, 16384])
def test_matched_width_is_two_thirds_rounded_to_64(d_ff):
    h = matched_swiglu_width(d_ff)
    assert h % 64 == 0
    assert abs(h - 2 * d_ff / 3) <= 32


# Rounding to 64 moves the width by up to 32, i.e. by 48/d_ff relative: 4.7 % at small's d_ff.
@pytest.mark.parametrize(("name", "rel"), [("small", 0.05), ("default", 0.01), ("llama-7b", 0.01)])
def test_designs_carry_the_same_parameters(name, rel):
    counts = preset(name, "B").param_counts()
    assert counts["swiglu_mlp"] == pytest.approx(counts["gelu_mlp"], rel=rel)


def test_hidden_width_follows_the_activation():
    assert preset("default", "A").hidden == 4096
    assert preset("default", "B").hidden == matched_swiglu_width(4096)
    assert preset("llama-7b", "B").hidden == 11008
    assert preset("default", "rms-gelu").hidden == 4096


def test_config_round_trips_through_its_dict():
    cfg = preset("small", "ln-swiglu", seed=3, residual=False)
    data = cfg.to_dict()
    assert data["norm"] == "layernorm" and data["activation"] == "swiglu"
    assert FFNConfig.from_dict(data) == cfg


def test_presets_are_sizes_only():
    for sizes in PRESETS.values():
        assert "design" not in sizes
