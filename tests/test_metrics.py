"""Each metric against a value computed by hand on small arrays."""

import numpy as np
import pytest

from ffnbench.bench.cells import metrics as m

REF = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # (1 request, 2 tokens, 2 features)
Y = np.array([[[1.0, 2.0], [3.0, 5.0]]])  # one element off by 1


def test_sqnr_db():
    # signal 1+4+9+16 = 30, noise 1 -> 10·log10(30)
    assert m.sqnr_db(REF, Y) == pytest.approx(10 * np.log10(30))


def test_sqnr_is_capped_when_identical():
    assert m.sqnr_db(REF, REF) == m.MAX_DB


def test_centered_sqnr_db():
    # token means: ref (2, 3), y (2, 3.5). centered ref ±(1, 1) -> signal 4;
    # centered y: (-1, -1.5), (1, 1.5) -> errors (0, 0.5), (0, 0.5) -> noise 0.5
    assert m.centered_sqnr_db(REF, Y) == pytest.approx(10 * np.log10(4 / 0.5))


def test_centered_sqnr_ignores_a_shared_offset_per_feature():
    assert m.centered_sqnr_db(REF, REF + np.array([5.0, -2.0])) == m.MAX_DB


def test_cosine_is_the_mean_over_tokens():
    second = (3 * 3 + 4 * 5) / (5 * np.sqrt(34))
    assert m.cosine(REF, Y) == pytest.approx((1 + second) / 2)


def test_rel_l2_and_max_abs_err():
    assert m.rel_l2(REF, Y) == pytest.approx(1 / np.sqrt(30))
    assert m.max_abs_err(REF, Y) == pytest.approx(1.0)


def test_nonfinite_rate_and_output_metrics_with_nan():
    y = Y.copy()
    y[0, 0, 0] = np.nan
    assert m.nonfinite_rate(y) == pytest.approx(0.25)
    out = m.output_metrics(REF, y, np.eye(2))
    assert out["nonfinite_rate"] == pytest.approx(0.25) and out["sqnr_db"] is None


def test_top1_agreement():
    head = np.eye(2)  # argmax over the two features
    # ref argmax: token0 -> 1, token1 -> 1; a candidate flipping token0 agrees on half
    y = np.array([[[3.0, 2.0], [3.0, 4.0]]])
    assert m.top1_agreement(REF, y, head) == 0.5
    assert m.top1_agreement(REF, REF, head) == 1.0


def test_readout_head_is_fixed_by_its_seed():
    assert np.array_equal(m.readout_head(8, seed=3), m.readout_head(8, seed=3))
    assert not np.array_equal(m.readout_head(8, seed=3), m.readout_head(8, seed=4))
    assert m.readout_head(8).shape == (8, m.READOUT_VOCAB)


def test_fp32_drift_db():
    base = np.array([[[1.0, 1.0]]])
    assert m.fp32_drift_db(base, base * 1.1) == pytest.approx(10 * np.log10(2 / (2 * 0.01)))


def test_norm_positive_fraction_and_sign_flips():
    assert m.norm_positive_fraction(np.array([-1.0, 0.0, 2.0, 3.0])) == 0.5
    assert m.preact_sign_flip_rate(np.array([-0.1, 0.2, 0.0, -3.0]), np.array([0.1, 0.2, -0.01, -2.0])) == 0.5


def test_small_negative_and_positive_bands():
    ref_in = np.array([-0.2, -0.05, 0.0, 0.05, 0.3])
    ref_out = np.zeros(5)
    got = np.array([9.0, 1.0, 9.0, 3.0, 9.0])
    # [-0.1, 0): only -0.05 -> error 1; (0, 0.1]: only 0.05 -> error 3; 0 itself in neither band
    assert m.act_err_small_neg(ref_in, ref_out, got, delta=0.1) == pytest.approx(1.0)
    assert m.act_err_small_pos(ref_in, ref_out, got, delta=0.1) == pytest.approx(3.0)
    assert m.act_err_small_neg(np.array([1.0]), np.zeros(1), np.zeros(1), delta=0.1) is None


def test_centered_sqnr_is_absent_for_a_single_token():
    """One token has no token-varying part: 0/0 is undefined, never the 200 dB of a perfect match."""
    one_token = REF[:, :1]
    assert m.centered_sqnr_db(one_token, one_token * 0.5) is None
    assert m.output_metrics(one_token, one_token * 0.5, np.eye(2))["centered_sqnr_db"] is None
    assert m.output_metrics(one_token, one_token * 0.5, np.eye(2))["sqnr_db"] == pytest.approx(10 * np.log10(4))


def test_sqnr_of_nothing_against_nothing_is_absent():
    zeros = np.zeros_like(REF)
    assert m.sqnr_db(zeros, zeros) is None
    assert m.sqnr_db(zeros, Y) == -m.MAX_DB


def test_cosine_of_a_zero_output_is_zero_unless_both_are_zero():
    zeros = np.zeros_like(REF)
    assert m.cosine(REF, zeros) == 0.0
    assert m.cosine(zeros, REF) == 0.0
    assert m.cosine(zeros, zeros) == 1.0
