"""Whole-model metrics and drift statistics, against values known in closed form."""

import math

import numpy as np
import pytest

from ffnbench.bench.cells import lm_metrics
from ffnbench.bench.traffic.drift_stats import drift_stats, moments
from ffnbench.bench.traffic.scenarios import NAMED, Scenario


def test_uniform_predictions_cost_eight_bits_and_agreeing_ones_no_kl():
    targets = np.random.default_rng(0).integers(0, 256, (2, 5))
    assert lm_metrics.bits_per_byte(np.zeros((2, 5, 256)), targets) == pytest.approx(8.0)
    logits = np.random.default_rng(1).standard_normal((2, 5, 256))
    assert lm_metrics.kl_to_fp32(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert lm_metrics.kl_to_fp32(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)  # a shift is no change
    assert lm_metrics.kl_to_fp32(logits, np.zeros_like(logits)) > 0.1
    assert lm_metrics.position_figures(logits, logits)["same_top1"].all()


def test_a_sure_right_guess_costs_nothing_and_kl_matches_its_formula():
    targets = np.array([[3]])
    sure = np.full((1, 1, 256), -1e4)
    sure[0, 0, 3] = 0.0
    assert lm_metrics.bits_per_byte(sure, targets) == pytest.approx(0.0, abs=1e-9)
    p, q = np.zeros((1, 1, 256)), np.zeros((1, 1, 256))
    p[..., 0] = math.log(3.0)  # p puts 3/(3+255) on byte 0; q is uniform
    p0 = 3 / 258
    expected = p0 * math.log(p0 * 256) + (1 - p0) * math.log((1 - p0) / 255 * 256)
    assert lm_metrics.kl_to_fp32(p, q) == pytest.approx(expected, rel=1e-9)


def test_non_finite_logits_leave_only_the_rate():
    logits = np.zeros((1, 4, 256))
    logits[0, 0, 0] = np.nan
    per_position = lm_metrics.position_figures(np.zeros_like(logits), logits)
    bits = lm_metrics.window_bits(logits, np.zeros((1, 4), np.int64))
    per_window = lm_metrics.window_metrics(per_position, logits, bits, np.zeros(1))
    values = lm_metrics.prediction_metrics(per_position, logits, per_window)
    assert per_window is None
    assert values["nonfinite_rate"] == pytest.approx(1 / logits.size) and values["kl_to_fp32"] is None


def test_per_window_figures_are_each_windows_own_and_average_to_the_cells():
    rng = np.random.default_rng(0)
    ref, got = rng.normal(size=(3, 5, 256)), rng.normal(size=(3, 5, 256))
    targets = rng.integers(256, size=(3, 5))
    undrifted = np.array([8.0, 7.0, 6.0])
    per_position = lm_metrics.position_figures(ref, got)
    per_window = lm_metrics.window_metrics(per_position, got, lm_metrics.window_bits(got, targets), undrifted)
    for w in range(3):
        assert per_window["kl_to_fp32"][w] == pytest.approx(lm_metrics.kl_to_fp32(ref[w:w + 1], got[w:w + 1]))
        assert per_window["bits_per_byte"][w] == pytest.approx(lm_metrics.bits_per_byte(got[w:w + 1], targets[w:w + 1]))
    assert per_window["delta_bpb"] == pytest.approx(per_window["bits_per_byte"] - undrifted)
    values = lm_metrics.prediction_metrics(per_position, got, per_window)
    assert values["kl_to_fp32"] == pytest.approx(lm_metrics.kl_to_fp32(ref, got))
    assert values["bits_per_byte"] == pytest.approx(lm_metrics.bits_per_byte(got, targets))


def test_llama_cpp_figures_against_a_hand_worked_case():
    """Four positions where fp32 puts p0 = e^4 / (e^4 + 255) on byte 0; the candidate agrees on three
    and is uniform on the fourth. KL sits on that one position; the 99th and 99.9th percentiles
    interpolate towards it (numpy's linear rule); argmax of a uniform row is byte 0, so the top byte
    stays (same_top1 1) until another byte tops a position; delta_p is 1/256 − p0 there, 0 elsewhere."""
    ref = np.zeros((1, 4, 256))
    ref[..., 0] = 4.0
    got = ref.copy()
    got[0, 3] = 0.0
    p0 = math.exp(4) / (math.exp(4) + 255)
    kl = p0 * math.log(p0 * 256) + (1 - p0) * math.log((1 - p0) / 255 * 256)
    values = lm_metrics.llama_cpp_metrics(lm_metrics.position_figures(ref, got))
    assert values["kld_mean"] == pytest.approx(kl / 4) and values["kld_max"] == pytest.approx(kl)
    assert values["kld_p99"] == pytest.approx(0.97 * kl) and values["kld_p999"] == pytest.approx(0.997 * kl)
    assert values["same_top1"] == 1.0
    assert values["delta_p_mean"] == pytest.approx((1 / 256 - p0) / 4)
    assert values["delta_p_rms"] == pytest.approx(abs(1 / 256 - p0) / 2)
    got[0, 2, 7] = 9.0  # now byte 7 tops position 2
    assert lm_metrics.llama_cpp_metrics(lm_metrics.position_figures(ref, got))["same_top1"] == 0.75


def test_a_cell_reports_the_llama_cpp_figures_and_per_window_ones_that_average_to_them():
    rng = np.random.default_rng(2)
    ref, got = rng.normal(size=(4, 6, 256)), rng.normal(size=(4, 6, 256))
    per_position = lm_metrics.position_figures(ref, got)
    bits = lm_metrics.window_bits(got, rng.integers(256, size=(4, 6)))
    per_window = lm_metrics.window_metrics(per_position, got, bits, np.zeros(4))
    values = lm_metrics.prediction_metrics(per_position, got, per_window)
    assert values["kld_mean"] == pytest.approx(values["kl_to_fp32"])
    assert values["same_top1"] == values["top1_agreement"] == pytest.approx(np.mean(per_window["same_top1"]))
    assert values["delta_p_mean"] == pytest.approx(np.mean(per_window["delta_p_mean"]))
    assert values["kld_mean"] < values["kld_p99"] < values["kld_p999"] <= values["kld_max"]


def test_order0_is_the_cross_entropy_of_add_one_smoothed_byte_frequencies():
    train = np.array([0, 0, 0, 1], np.uint8)  # counts 4, 2 and 1 for every other byte: 260 in all
    expected = -(np.log2(4 / 260) + np.log2(2 / 260) + np.log2(1 / 260)) / 3
    assert lm_metrics.order0_bits_per_byte(train, np.array([[0, 1, 7]])) == pytest.approx(expected)
    assert lm_metrics.order0_bits_per_byte(np.arange(256), np.arange(256)) == pytest.approx(8.0)


def test_spikes_are_the_worst_token_over_a_typical_one():
    x = np.ones((1, 10, 8))
    x[0, 3, 5] = -12.0  # one token carries a spike 12x the others' largest value
    ratio, share = lm_metrics.spikes(x)
    assert ratio == pytest.approx(12.0) and share == pytest.approx(0.1)
    assert lm_metrics.spikes(np.ones((4, 8))) == (1.0, 0.0)


def test_drift_stats_recover_what_a_scenario_sets():
    clean = drift_stats(NAMED["clean"].generate(200, 8, 64))
    assert 0.3 < clean["positive_mean_fraction"] < 0.7 and clean["abs_mean_shift_std"] < 0.1
    assert clean["rms_spread"] < 0.05 and clean["token_mean_energy"] < 0.05 and clean["domain_shift_std"] is None
    shifted = drift_stats(NAMED["shift-4"].generate(200, 8, 64))
    # 90 % of features shifted by 4 std on average, each by its own amount in 2-6 std: scale-free, each
    # feature's |mean| over its std is about 4 (shifted) or 0 (the rest), so about 3.6 on average.
    assert shifted["positive_mean_fraction"] > 0.8 and shifted["abs_mean_shift_std"] == pytest.approx(3.6, abs=0.6)
    # A token carries its features' shared offset: mean² / mean-square = 3.6² / (1 + E[o²]) ≈ 0.75.
    assert 0.6 < shifted["token_mean_energy"] < 0.9
    spread = drift_stats(Scenario("m", magnitude_sigma=1.5).generate(400, 4, 32))
    assert spread["rms_spread"] == pytest.approx(1.5, abs=0.15)
    assert spread["abs_mean_shift_std"] < 0.15  # scale is removed per request before any mean is taken
    assert drift_stats(np.ones((1, 4, 8)))["rms_spread"] is None  # one request has no spread


def test_signs_that_cancel_still_count_as_shift():
    """Half the features shifted up, half down: the signed mean reads about 0, the |mean| does not."""
    h = np.random.default_rng(0).standard_normal((50, 16, 32))
    h[..., :16] += 2.0
    h[..., 16:] -= 2.0
    stats = drift_stats(h)
    assert abs(stats["mean_shift_std_signed"]) < 0.1 and stats["abs_mean_shift_std"] == pytest.approx(2.0, abs=0.15)
    assert stats["token_mean_energy"] < 0.1  # the shared offset across features is 0


def test_massive_channels_are_found_and_their_stability_measured():
    h = np.random.default_rng(1).standard_normal((20, 16, 64))
    stats = drift_stats(h)
    assert stats["massive_ratio"] < 10 and stats["massive_channels_stable"] < 0.1
    h[..., 7] = 3000.0  # one channel carries a persistent value about 4,500 times the median |x|
    stats = drift_stats(h)
    assert stats["massive_channels_stable"] == 1.0 and stats["massive_ratio"] > 1000


def test_domain_shift_is_measured_against_the_reference_moments():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((40, 16, 32))
    same, moved = rng.standard_normal((40, 16, 32)), rng.standard_normal((40, 16, 32))
    moved[..., :8] += 1.0  # a quarter of the features move by one (scale-free) reference std
    assert drift_stats(same, moments(reference))["domain_shift_std"] < 0.1
    assert drift_stats(moved, moments(reference))["domain_shift_std"] == pytest.approx(0.25, abs=0.08)


def test_figures_are_the_same_whatever_the_chunk_of_windows_they_are_computed_in():
    """Nine windows cross two chunk boundaries: each window's figures are its own, as if alone."""
    rng = np.random.default_rng(3)
    ref, got = rng.normal(size=(9, 3, 50)), rng.normal(size=(9, 3, 50))
    targets = rng.integers(50, size=(9, 3))
    whole = lm_metrics.position_figures(ref, got)
    bits = lm_metrics.window_bits(got, targets)
    for w in range(9):
        alone = lm_metrics._position_figures(ref[w:w + 1], got[w:w + 1])
        assert all(np.allclose(whole[k][w], alone[k][0]) for k in alone)
        logp = got[w] - np.log(np.exp(got[w]).sum(axis=-1, keepdims=True))
        assert bits[w] == pytest.approx(-logp[np.arange(3), targets[w]].mean() / math.log(2))


def test_bits_per_byte_of_a_tokenizer_divides_a_windows_bits_by_the_bytes_its_targets_cover():
    """Two windows of two tokens, uniform over 4: each token costs 2 bits; 2 and 8 bytes covered."""
    logits, targets = np.zeros((2, 2, 4)), np.zeros((2, 2), np.int64)
    assert lm_metrics.window_bits(logits, targets, np.array([2, 8])) == pytest.approx([2.0, 0.5])
    train = np.array([0, 0, 1])  # counts with add-one: 3, 2, 1, 1 of 7
    assert lm_metrics.order0_bits_per_byte(train, np.array([[0, 1]]), vocab=4, target_bytes=np.array([4])) == \
        pytest.approx((math.log2(7 / 3) + math.log2(7 / 2)) / 4)


def test_an_fp16_norm_overflows_where_a_square_passes_65504_centred_for_layernorm():
    x = np.zeros((1, 4, 8))
    x[0, 0, 0] = 300.0  # 300² > 65504 on its own
    x[0, 1] = 1000.0  # a large offset shared by every feature: LayerNorm removes it before squaring
    x[0, 2, :4] = 200.0  # below the limit either way
    assert lm_metrics.half_norm_overflow(x, centred=False) == pytest.approx(2 / 4)
    assert lm_metrics.half_norm_overflow(x, centred=True) == pytest.approx(1 / 4)


def test_relative_error_is_the_error_norm_over_the_reference_norm_and_none_for_zeros():
    ref = np.array([3.0, 4.0])
    assert lm_metrics.relative_error(ref, ref + np.array([0.3, 0.4])) == pytest.approx(0.1)
    assert lm_metrics.relative_error(np.zeros(2), ref) is None
