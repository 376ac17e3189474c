"""Scenarios: seeded generation, the drift each parameter adds, replays split for calibration, validation."""

import numpy as np
import pytest

from ffnbench.bench.traffic.scenarios import NAMED, Replay, Scenario, scenario
from ffnbench.errors import UsageError

# docs/design.md's named scenarios, `massive` among them (issue 24: the drift real models have).
DESIGN_MD_NAMES = {"clean", "shift-0.5", "shift-1", "shift-2", "shift-4", "shift-8", "magnitude-1", "magnitude-2",
                   "outliers", "production", "massive"}


def test_named_scenarios_are_those_of_design_md():
    assert set(NAMED) == DESIGN_MD_NAMES


def test_massive_puts_a_persistent_offset_on_a_few_fixed_channels():
    """Three channels, 10^3 to 10^4 times the median |x|, the same channels and signs in every
    request and seed; the statistics that measure the mechanism find them."""
    from ffnbench.bench.traffic.drift_stats import drift_stats

    a, b = NAMED["massive"].generate(6, 32, 128, seed=1), NAMED["massive"].generate(6, 32, 128, seed=2)
    means = a.mean(axis=(0, 1))
    channels = np.flatnonzero(np.abs(means) > 100)
    assert len(channels) == 3 and np.array_equal(np.sign(means[channels]), np.sign(b.mean(axis=(0, 1))[channels]))
    typical = np.median(np.abs(a))
    assert all(1e3 <= abs(means[c]) / typical <= 1.2e4 for c in channels)
    stats = drift_stats(a)
    assert stats["massive_ratio"] > 1e3 and stats["massive_channels_stable"] == 1.0
    assert Scenario("m").massive_offset(16).tolist() == [0.0] * 16
    with pytest.raises(UsageError, match="massive_channels and massive_from_layer must be >= 0"):
        Scenario("m", massive_channels=-1)


@pytest.mark.parametrize("name", sorted(DESIGN_MD_NAMES))
def test_identical_seeds_give_identical_bits(name):
    a, b = (scenario(name).generate(3, 5, 32, seed=4) for _ in range(2))
    assert a.dtype == np.float32 and a.shape == (3, 5, 32)
    assert a.tobytes() == b.tobytes()
    assert scenario(name).generate(3, 5, 32, seed=5).tobytes() != a.tobytes()


def test_mean_shift_biases_most_features_positive():
    h = Scenario("s", mean_shift=4.0, shift_fraction=0.9).generate(8, 64, 256)
    feature_means = h.mean(axis=(0, 1))
    assert np.mean(feature_means > 1.0) == pytest.approx(0.9, abs=0.06)
    assert feature_means[feature_means > 1.0].mean() == pytest.approx(4.0, rel=0.1)


def test_magnitude_varies_across_requests_not_within():
    h = Scenario("m", magnitude_sigma=2.0).generate(32, 16, 64)
    request_rms = np.sqrt((h**2).mean(axis=(1, 2)))
    assert request_rms.max() / request_rms.min() > 50
    token_rms = np.sqrt((h[0] ** 2).mean(axis=-1))
    assert token_rms.max() / token_rms.min() < 3


def test_turning_one_knob_keeps_the_other_draws():
    base = Scenario("a").generate(2, 4, 16, seed=1)
    shifted = Scenario("b", mean_shift=2.0, shift_fraction=1.0).generate(2, 4, 16, seed=1)
    offset = shifted - base
    assert np.allclose(offset, offset[0, 0], atol=1e-5)  # a per-feature constant, the base unchanged


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"mean_shift": -1.0}, "mean_shift must be finite and >= 0"),
    ({"shift_fraction": 1.5}, "shift_fraction must lie in [0, 1]"),
    ({"magnitude_sigma": float("nan")}, "magnitude_sigma must be finite"),
    ({"outlier_scale": 0.0}, "outlier_scale > 0"),
])
def test_bad_parameters(kwargs, needle):
    with pytest.raises(UsageError) as e:
        Scenario("bad", **kwargs)
    assert needle in str(e.value)


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(UsageError, match="scenario: unknown 'drift'; choose one of clean, "):
        scenario("drift")


def test_a_replay_calibrates_on_a_part_it_never_evaluates(tmp_path):
    states = np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float32)
    np.save(tmp_path / "h.npy", states)
    replay = Replay("cap", tmp_path / "h.npy")
    calibration, evaluation = replay.calibration_data(99, 99, 16, seed=5), replay.generate(99, 99, 16, seed=5)
    assert calibration.shape == (2, 4, 16) and evaluation.shape == (6, 4, 16)  # a quarter of the requests
    assert np.array_equal(np.concatenate([calibration, evaluation]), states)  # disjoint and complete


def test_one_captured_request_is_split_along_its_tokens(tmp_path):
    np.save(tmp_path / "h.npy", np.arange(8 * 16, dtype=np.float32).reshape(8, 16))  # (n, d): one request
    replay = Replay("cap", tmp_path / "h.npy", calibration_share=0.5)
    assert replay.calibration_data(1, 1, 16).shape == replay.generate(1, 1, 16).shape == (1, 4, 16)
    assert not set(replay.calibration_data(1, 1, 16).ravel()) & set(replay.generate(1, 1, 16).ravel())


def test_a_single_token_capture_cannot_be_split(tmp_path):
    np.save(tmp_path / "h.npy", np.zeros((1, 16), np.float32))
    with pytest.raises(UsageError, match="holds one token; a capture needs at least 2"):
        Replay("cap", tmp_path / "h.npy").generate(1, 1, 16)


def test_synthetic_calibration_data_are_other_requests_of_the_same_domain():
    """The next seed's states and magnitudes, the evaluated seed's shifted features and offsets."""
    s = scenario("production")
    calibration, evaluated = s.calibration_data(64, 64, 32, seed=3), s.generate(64, 64, 32, seed=3)
    assert not np.array_equal(calibration, evaluated)
    gain, offset, _ = s.affine(64, 32, seed=3)
    _, _, scale = s.affine(64, 32, seed=4)
    base = scenario("clean").generate(64, 64, 32, seed=4)
    assert np.allclose(calibration, (base * gain + offset) * scale[:, None, None], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(s.affine(64, 32, seed=3)[1], s.affine(64, 32, seed=4)[1])  # a draw each seed
    assert np.array_equal(scenario("clean").calibration_data(2, 4, 8, seed=3), scenario("clean").generate(2, 4, 8, 4))


def test_a_replay_without_a_calibration_share_evaluates_all_of_it(tmp_path):
    states = np.ones((4, 2, 16), np.float32)
    np.save(tmp_path / "h.npy", states)
    replay = Replay("cap", tmp_path / "h.npy", calibration_share=0)
    assert np.array_equal(replay.generate(1, 1, 16), states)
    with pytest.raises(UsageError, match="calibration_share = 0 keeps the whole capture"):
        replay.calibration_data(1, 1, 16)
