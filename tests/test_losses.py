import numpy as np
import pytest

from bbtune.losses import accuracy, label_log_softmax, per_prompt_loss


def test_ce_is_renormalised_over_label_words():
    logp = np.log(np.array([[[0.02, 0.06]]]))  # label words carry little mass: only their ratio counts
    assert per_prompt_loss(logp, np.array([1]), "ce")[0] == pytest.approx(-np.log(0.75))


def test_losses_rank_a_better_prompt_lower():
    good = np.log([[0.9, 0.1], [0.2, 0.8]])
    bad = np.log([[0.4, 0.6], [0.7, 0.3]])
    logp, labels = np.stack([good, bad]), np.array([0, 1])
    for kind in ("ce", "hinge", "neg_acc"):
        loss = per_prompt_loss(logp, labels, kind)
        assert loss[0] < loss[1], kind
    assert accuracy(logp, labels).tolist() == [1.0, 0.0]


def test_hinge_is_zero_beyond_the_margin():
    logp = np.array([[[0.0, -5.0, -6.0]]])
    assert per_prompt_loss(logp, np.array([0]), "hinge", margin=1.0)[0] == 0.0
    assert per_prompt_loss(logp, np.array([1]), "hinge", margin=1.0)[0] == pytest.approx(6.0)


def test_label_log_softmax_sums_to_one():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)) - 10
    assert np.allclose(np.exp(label_log_softmax(x)).sum(-1), 1.0)
