"""A RunConfig's checks: each mistake refused in one line naming the field and the fix, a sound config passed."""

import pytest

from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.config import RunConfig
from ffnbench.bench.config_check import PER_MODEL_KEYS, check
from ffnbench.errors import UsageError


def config(**kw) -> RunConfig:
    return RunConfig(**{"models": ["tiny"], "recipes": ["fp32", "ort-int8-dynamic"],
                        "latency": LatencyConfig(enabled=False), **kw})


def test_a_sound_config_passes_and_check_returns_the_config():
    sound = config()
    assert check(sound) is None and sound.check() is sound


@pytest.mark.parametrize(("kw", "message"), [
    ({"recipes": ["fp32+shift"]}, "mitigates fp32, which quantizes nothing"),
    ({"recipes": ["torch-fp16+keep"]}, "drop \\+keep"),
    ({"recipes": ["int3"]}, "recipes: unknown 'int3'"),
    ({"scenarios": []}, "scenarios: empty"),
    ({"n_requests": 0}, "n_requests: must be positive"),
    ({"per_model": {"small": {"designs": ["A"]}}}, "per_model: 'small' is not one of the run's models"),
    ({"per_model": {"tiny": {"threads": 4}}}, "per_model.tiny: unknown key 'threads'"),
    ({"designs": ["A"], "per_model": {"tiny": {"designs": ["B"]}}}, "per_model.tiny: its designs \\(B\\) are none"),
    ({"per_model": {"tiny": {"n_requests": -1}}}, "per_model.tiny: n_requests: must be positive"),
])
def test_each_mistake_is_one_line_naming_its_field(kw, message):
    with pytest.raises(UsageError, match=message):
        check(config(**kw))


def test_a_per_model_table_takes_the_timing_keys_of_the_latency_study():
    assert {"prefill", "max_seconds", "memory"} <= set(PER_MODEL_KEYS)
    check(config(per_model={"tiny": {"prefill": [1, 8], "memory": False}}))
