"""Recipe names and parameters: the table of docs/design.md, overrides from strings, errors with the fix."""

import pytest

from ffnbench.errors import UsageError
from ffnbench.quant import RECIPES, recipe_config

DESIGN_MD_NAMES = {
    "fp32", "ort-int8-dynamic", "ort-int8-dynamic-fullrange", "ort-int8-qdq-minmax",
    "ort-int8-qdq-percentile", "ort-int8-qdq-entropy", "ort-int4-rtn", "ort-int4-hqq", "ort-nf4",
    "ort-fp4", "bnb-int8", "bnb-int8-outlier", "bnb-nf4", "bnb-fp4", "bnb-nf4-dq", "torch-fp16", "torch-bf16",
}


def test_every_design_md_recipe_exists():
    assert set(RECIPES) == DESIGN_MD_NAMES


def test_fullrange_differs_from_dynamic_only_in_reduce_range():
    assert recipe_config("ort-int8-dynamic").reduce_range is None  # decided by the probe
    assert recipe_config("ort-int8-dynamic-fullrange").reduce_range is False


def test_string_overrides_are_converted_to_the_field_type():
    cfg = recipe_config("ort-int4-rtn", accuracy_level="0", block_size="64", symmetric="false")
    assert (cfg.accuracy_level, cfg.block_size, cfg.symmetric) == (0, 64, False)
    assert recipe_config("ort-int8-dynamic", reduce_range="auto").reduce_range is None
    assert recipe_config("bnb-int8", threshold="6").threshold == 6.0


@pytest.mark.parametrize(("name", "params", "needle"), [
    ("int3", {}, "recipe: unknown 'int3'; choose one of fp32, "),
    ("ort-int4-rtn", {"bits": "3"}, "unknown parameter 'bits'; it takes: algorithm, block_size"),
    ("ort-int4-rtn", {"accuracy_level": "7"}, "accuracy_level must be one of (0, 1, 2, 3, 4)"),
    ("ort-int4-hqq", {"zero_points": "int4"}, "zero_points must be one of ('float', 'uint8')"),
    ("ort-int4-rtn", {"block_size": "big"}, "block_size='big' is not a"),
    ("bnb-nf4", {"quant_type": "int4"}, "quant_type must be one of ('nf4', 'fp4')"),
])
def test_bad_recipe_input_names_the_fix(name, params, needle):
    with pytest.raises(UsageError) as e:
        recipe_config(name, **params)
    assert needle in str(e.value)
