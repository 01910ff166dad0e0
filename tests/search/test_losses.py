import numpy as np
import pytest

from bbtune.search.losses import accuracy, label_log_softmax, per_prompt_loss


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


# ---------------------------------------------------------------------- missing labels (NaN)

NAN = np.nan


def test_a_missing_label_ranks_below_every_listed_one():
    logp = np.array([[[-9.0, NAN], [NAN, -9.0], [NAN, NAN]]])  # gold listed / gold missing / nothing listed
    labels = np.array([0, 0, 0])
    assert accuracy(logp, labels).tolist() == [pytest.approx(1 / 3)]
    assert per_prompt_loss(logp, labels, "neg_acc").tolist() == [pytest.approx(-1 / 3)]


@pytest.mark.parametrize("kind", ["ce", "hinge"])
def test_a_missing_gold_label_costs_the_fixed_loss_not_a_bound(kind):
    from bbtune.search.losses import MISSING_LABEL_LOSS

    gold_missing = np.array([[[NAN, -1.0]]])
    assert per_prompt_loss(gold_missing, np.array([0]), kind)[0] == MISSING_LABEL_LOSS
    assert per_prompt_loss(np.array([[[NAN, NAN]]]), np.array([0]), kind)[0] == MISSING_LABEL_LOSS
    # pushing the gold label out of the list is never better than keeping it in, even badly ranked
    listed_badly = np.array([[[-8.0, -1.0]]])
    assert per_prompt_loss(listed_badly, np.array([0]), kind)[0] < MISSING_LABEL_LOSS


def test_listed_gold_with_a_missing_rival_is_scored_over_the_listed_labels():
    logp = np.array([[[-2.0, NAN, np.log(0.1)]]])
    expected = -np.log(np.exp(-2.0) / (np.exp(-2.0) + 0.1))
    assert per_prompt_loss(logp, np.array([0]), "ce")[0] == pytest.approx(expected)
    assert per_prompt_loss(logp, np.array([0]), "hinge", margin=1.0)[0] == pytest.approx(1.0 - (-2.0 - np.log(0.1)))
