"""Readouts: each fits and predicts, reads only what a backend returned, survives JSON, and is chosen out of fold."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import HardPrompt
from bbtune.core.topk import AnswerTopK
from bbtune.errors import ConfigError
from bbtune.search.evaluate import answers_on
from bbtune.search.readouts import Answers, ReadoutKind, choose_readout, load_readout, make_readout
from bbtune.search.readouts.features import TokenColumns
from bbtune.tasks import Example, TaskFormat, Template


def separable(n_per_class: int = 12, seed: int = 0, noise_tokens: bool = False) -> tuple[Answers, np.ndarray]:
    """Three classes whose top-k lists carry a class token ("c0", "c1", "c2") near the top, label scores that
    prefer label 0 whatever the class, and (optionally) one token unique to each example."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    rows, labels = [], []
    for i, c in enumerate(y):
        pairs = [(f"c{c}", -1.0 - rng.random()), ("the", -0.5), (" a", -2.0 - rng.random()), ("x", -3.5)]
        if noise_tokens:
            pairs.append((f"only{i}", -1.5))
        rows.append(pairs)
        labels.append([-0.2, -1.5, -2.0] + rng.normal(0, 0.05, 3))
    return Answers(np.array(labels), AnswerTopK.from_pairs(rows, k=6)), y


@pytest.mark.parametrize("kind", list(ReadoutKind))
def test_every_readout_fits_predicts_and_round_trips_through_json(kind):
    answers, y = separable()
    readout = make_readout(kind).fit(answers, y)
    scores = readout.log_scores(answers)
    assert scores.shape == (len(y), 3)
    assert np.allclose(np.exp(scores).sum(axis=1), 1.0)
    again = load_readout(json.loads(json.dumps(readout.describe())))
    assert np.allclose(again.log_scores(answers), scores)


@pytest.mark.parametrize("kind", [ReadoutKind.VERBALIZER, ReadoutKind.LOGISTIC, ReadoutKind.RESIDUAL,
                                  ReadoutKind.KNN])
def test_top_k_readouts_separate_what_the_label_words_do_not(kind):
    answers, y = separable()
    raw = make_readout("raw").fit(answers, y)
    assert np.mean(raw.predict(answers) == y) == pytest.approx(1 / 3)  # the label words always say label 0
    held, y_held = separable(seed=1)
    assert np.mean(make_readout(kind).fit(answers, y).predict(held) == y_held) == 1.0


def test_the_residual_readout_is_calibration_where_its_penalty_is_strong_and_learns_the_lists_where_weak():
    """Its weights start from calibration, not from uniform scores: at a tiny C it ranks as the bias readout does
    (where a plain logistic regression at that C has nothing left), at a large C it reads the class tokens."""
    from bbtune.search.readouts.estimators import CalibratedResidual

    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 10)
    labels = np.eye(3)[y] * 1.5 + rng.normal(0, 1.0, (30, 3))  # the label words carry a noisy signal
    answers = Answers(labels, separable(n_per_class=10)[0].topk)
    bias = make_readout("bias").fit(answers, y)
    tight = CalibratedResidual(grid=(1e-6,)).fit(answers, y)
    assert np.allclose(tight.log_scores(answers), bias.log_scores(answers), atol=0.05)  # bias has its own prior
    assert np.array_equal(tight.predict(answers), bias.predict(answers))
    assert np.mean(bias.predict(answers) == y) < 1.0
    assert np.mean(CalibratedResidual(grid=(10.0,)).fit(answers, y).predict(answers) == y) == 1.0


def test_the_residual_readout_keeps_calibration_where_the_lists_carry_nothing():
    """The same list for every input: no C does better held out, the tie goes to the smallest and the readout
    predicts as calibration does."""
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1], 16)
    labels = np.stack([np.where(y == 0, 0.8, -0.8) + rng.normal(0, 1.0, 32), np.zeros(32)], axis=1)
    answers = Answers(labels, AnswerTopK.from_pairs([[("the", -0.5), (" a", -1.5), ("x", -3.0)]] * 32, k=3))
    residual = make_readout("residual").fit(answers, y)
    assert residual.C == min(residual.grid)
    assert np.array_equal(residual.predict(answers), make_readout("bias").fit(answers, y).predict(answers))


def test_learned_verbalizer_picks_each_class_token():
    answers, y = separable()
    readout = make_readout("verbalizer").fit(answers, y)
    assert readout.state()["words"] == ["c0", "c1", "c2"]


def test_a_readout_that_wins_on_train_but_loses_out_of_fold_is_not_chosen():
    """Label scores carry a weak real signal; the top-k lists carry only one token unique to each example, which
    a logistic regression memorises (perfect on train) and which says nothing about a new example."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 20)
    labels = np.stack([np.where(y == 0, 0.4, -0.4) + rng.normal(0, 0.5, 40), np.zeros(40)], axis=1)
    rows = [[(f"only{i}", -0.1), ("the", -2.0 - rng.random())] for i in range(40)]
    answers = Answers(labels, AnswerTopK.from_pairs(rows, k=2))
    on_train = {k: np.mean(make_readout(k).fit(answers, y).predict(answers) == y) for k in ("bias", "logistic")}
    assert on_train["logistic"] == 1.0 > on_train["bias"]
    _, choice = choose_readout(answers, y, kinds=["raw", "bias", "logistic"], seed=0)
    assert choice.kind != "logistic"
    assert choice.score_of("logistic").accuracy < choice.score_of(choice.kind).accuracy


def test_a_richer_readout_is_chosen_where_it_is_better_out_of_fold():
    answers, y = separable(n_per_class=12)
    readout, choice = choose_readout(answers, y, seed=0)
    assert choice.kind in ("verbalizer", "logistic", "residual", "knn")
    assert choice.score_of(choice.kind).accuracy > choice.score_of("bias").accuracy
    assert readout.kind.value == choice.kind and len(choice.scores) == len(ReadoutKind) and choice.folds == 4


def test_the_residual_readout_is_part_of_the_floor_and_needs_no_paired_test():
    """It is calibration plus a departure sized held out, so it competes with raw and bias on out-of-fold accuracy
    alone (the reason names it as the floor), while a plain logistic regression must still beat it beyond noise."""
    from bbtune.search.readouts.choice import FLOOR

    assert ReadoutKind.RESIDUAL in FLOOR and ReadoutKind.LOGISTIC not in FLOOR
    answers, y = separable(n_per_class=12)
    _, choice = choose_readout(answers, y, kinds=["raw", "bias", "residual"], seed=0)
    assert choice.kind == "residual" and choice.reason.startswith("residual (")
    assert choice.score_of("residual").accuracy > choice.score_of("bias").accuracy


def test_ties_go_to_the_simpler_readout():
    y = np.repeat([0, 1], 8)
    answers = Answers(np.stack([np.where(y == 0, 0.0, -3.0), np.where(y == 0, -3.0, 0.0)], axis=1))
    _, choice = choose_readout(answers, y, kinds=["raw", "bias", "affine"])
    assert choice.kind == "raw"


def test_without_top_k_only_label_readouts_are_candidates_and_a_top_k_readout_refuses():
    answers, y = separable()
    labels_only = Answers(answers.labels)
    _, choice = choose_readout(labels_only, y)
    assert [s.kind for s in choice.scores] == ["raw", "bias", "affine"]
    with pytest.raises(ConfigError, match="top-k"):
        make_readout("logistic").fit(labels_only, y)


def test_a_readout_never_reads_a_token_the_backend_did_not_return():
    """A backend that returns a top-5 gives features from those 5 tokens only."""
    backend = LocalBackend("tiny")
    fmt = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
    examples = [Example(f"film number {i} was {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg")
                for i in range(12)]
    answers = answers_on(backend, HardPrompt((), ""), examples, fmt, k=5)
    assert answers.topk is not None and all(len(row) <= 5 for row in answers.topk.tokens)
    returned = {t for row in answers.topk.tokens for t in row}
    y = fmt.label_ids(examples)
    logistic = make_readout("logistic").fit(answers, y)
    assert set(logistic.state()["tokens"]) <= returned
    assert set(make_readout("verbalizer").fit(answers, y).state()["words"]) <= returned
    assert set(TokenColumns.fit(answers.topk).tokens) == returned


def test_lifted_tokens_are_features_with_their_read_values_and_unread_ones_sit_at_the_floor():
    """A lifted token is a column even where no list names it; its read value stands where the list lacks it, a
    NaN (not read) stands at the row's floor, and the lifted values survive JSON (NaN as null) and row selection."""
    top = AnswerTopK.from_pairs([[("a", -0.5), ("b", -1.0)], [("b", -0.2), ("c", -3.0)]], k=2)
    lifted = top.with_lifted(["z", "a"], [[-7.0, float("nan")], [float("nan"), -5.0]])
    cols = TokenColumns.fit(lifted)
    assert cols.tokens == ("a", "b", "c", "z")
    np.testing.assert_allclose(cols.dense(lifted), [[-0.5, -1.0, -2.0, -7.0], [-5.0, -0.2, -3.0, -4.0]])
    again = AnswerTopK.from_json(json.loads(json.dumps(lifted.as_json())))
    assert again.lifted == ("z", "a") and np.isnan(again.lifted_logprobs[0][1]) and again.lifted_logprobs[1][1] == -5.0
    assert lifted.select([1]).lifted_logprobs == ((lifted.lifted_logprobs[1]),)
    with pytest.raises(ValueError, match="lifts 2 tokens"):
        top.with_lifted(["z", "a"], [[-7.0]])


def test_local_top_k_matches_the_full_distribution_and_the_label_scores():
    backend = LocalBackend("tiny")
    fmt = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
    examples = [Example("a film", "pos"), Example("a bad movie really", "neg")]
    prompts = [HardPrompt((), ""), HardPrompt((5, 6), backend.tokenizer.decode([5, 6]))]
    labels, tops = backend.score_topk(prompts, examples, fmt, k=7)
    assert np.allclose(labels, backend.score(prompts, examples, fmt))
    with backend.encoder.reading_whole_vocabulary(backend.capabilities.topk):
        full = backend._label_scores(prompts, examples, fmt)
    for p, top in enumerate(tops):
        for b in range(len(examples)):
            best = np.sort(full[p, b])[::-1][:7]
            assert np.allclose(top.logprobs[b], best[: len(top.logprobs[b])], atol=1e-6)
            assert top.tokens[b][0] == backend.token_text(int(full[p, b].argmax()))


def test_answers_floor_ranks_missing_labels_below_every_listed_value():
    answers = Answers(np.array([[np.nan, -1.0]]), AnswerTopK.from_pairs([[("a", -0.5), ("b", -2.0)]], k=2))
    assert answers.filled_labels().tolist() == [[-3.0, -1.0]]
