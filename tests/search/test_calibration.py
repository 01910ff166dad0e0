import numpy as np
import pytest

from bbtune.search.calibration import apply_bias, fit_label_bias, fit_label_biases


def biased_scores(n=400, shift=(0.0, -3.0, 1.0), seed=0):
    """Three-label scores whose informative part is exact, plus a constant preference per label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    clean = rng.normal(size=(n, 3))
    clean[np.arange(n), labels] += 2.0
    return clean + np.array(shift), labels


def test_the_fit_removes_a_constant_label_preference():
    scores, labels = biased_scores()
    bias = fit_label_bias(scores, labels, l2=0.0)
    assert bias.sum() == pytest.approx(0.0, abs=1e-9)
    # the fitted bias undoes the shift up to a constant: (0, 3, -1) - mean
    assert bias - bias[0] == pytest.approx([0.0, 3.0, -1.0], abs=0.35)
    before = (scores.argmax(1) == labels).mean()
    after = (apply_bias(scores, bias).argmax(1) == labels).mean()
    assert after > before + 0.15


def test_missing_scores_are_left_out_and_gaps_of_tens_of_nats_are_handled():
    scores, labels = biased_scores(shift=(0.0, -40.0, 0.0))
    with_nan = scores.copy()
    with_nan[:10, 1] = np.nan
    bias = fit_label_bias(with_nan, labels, l2=0.0)
    assert np.all(np.isfinite(bias)) and bias[1] - bias[0] == pytest.approx(40.0, abs=1.0)
    assert fit_label_bias(np.full((3, 2), np.nan), np.array([0, 1, 0])).tolist() == [0.0, 0.0]


def test_one_bias_per_candidate_and_apply_broadcasts():
    a, labels = biased_scores(shift=(0.0, -2.0, 0.0))
    b, _ = biased_scores(shift=(0.0, 2.0, 0.0))
    b = b[: len(a)]
    biases = fit_label_biases(np.stack([a, b]), labels, l2=0.0)
    assert biases[0, 1] > biases[0, 0] and biases[1, 1] < biases[1, 0]
    out = apply_bias(np.stack([a, b]), biases)
    assert np.allclose(out[1], b + biases[1])
    assert apply_bias(a, None) is a
