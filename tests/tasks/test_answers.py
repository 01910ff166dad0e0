"""How a text answer becomes a label, and answers become scores (`bbtune.tasks.answers`): every rule can fail."""
from __future__ import annotations

import numpy as np
import pytest

from bbtune.errors import ConfigError
from bbtune.search.losses import MISSING_LABEL_LOSS, accuracy, per_prompt_loss
from bbtune.tasks.answers import AnswerRules, answer_scores, parse_synonyms

VERBALIZER = {"neg": " terrible", "pos": " great"}


def rules(synonyms: dict | None = None, **switches: bool) -> AnswerRules:
    return AnswerRules.build(VERBALIZER, synonyms, **switches)


@pytest.mark.parametrize("answer, switch, synonyms", [
    ("GREAT", "fold_case", None),
    ("it was so-so", "strip_punctuation", {"neg": ("so so",)}),
    ("very\n   good", "collapse_whitespace", {"pos": ("very good",)}),
])
def test_each_normalization_rule_is_what_makes_the_answer_parse(answer: str, switch: str, synonyms: dict | None) -> None:
    assert rules(synonyms).label(answer) is not None
    assert rules(synonyms, **{switch: False}).label(answer) is None


@pytest.mark.parametrize("answer, label", [
    ("Terrible, not great.", "neg"),
    ("Great! Not terrible at all", "pos"),
    ("  great", "pos"),
    ("It was terrible", "neg"),
])
def test_the_first_label_mentioned_wins(answer: str, label: str) -> None:
    assert rules().label(answer) == label


def test_words_match_whole_words_only() -> None:
    assert rules().label("the greatest film") is None
    assert rules().label("great-ish") == "pos"  # punctuation is a word boundary


def test_at_one_place_the_longer_word_wins() -> None:
    both = rules({"pos": ("very good",), "neg": ("very",)})
    assert both.label("very good indeed") == "pos"
    assert both.label("very poor") == "neg"


def test_synonyms_name_their_label_and_the_verbalizer_word_still_does() -> None:
    r = rules(parse_synonyms(["pos=good|fine", "neg=bad"]))
    assert [r.label(a) for a in ("fine", "good", "bad", "great", "terrible", "meh")] == \
        ["pos", "pos", "neg", "pos", "neg", None]


@pytest.mark.parametrize("build, message", [
    (lambda: rules({"pos": ("bad",), "neg": ("bad",)}), "names two labels"),
    (lambda: rules({"other": ("x",)}), "unknown label"),
    (lambda: AnswerRules.build({"neg": " ", "pos": " great"}), "no word an answer could contain"),
    (lambda: parse_synonyms(["pos"]), "LABEL=word"),
    (lambda: parse_synonyms(["pos="]), "LABEL=word"),
])
def test_rules_that_cannot_work_are_refused_by_name(build, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_scores_are_log_smoothed_shares_of_the_answers() -> None:
    answers = [[["great", "great", "terrible", "???"]]]  # 2 pos, 1 neg, 1 unparsed of n = 4
    found = answer_scores(answers, ["neg", "pos"], rules(), smoothing=0.5)
    np.testing.assert_allclose(np.exp(found.scores[0, 0]), [(1 + 0.5) / (4 + 1), (2 + 0.5) / (4 + 1)])
    assert (found.answers, found.unparsed) == (4, 1)


def test_an_input_whose_answers_all_name_nothing_is_missing_not_a_uniform_vote() -> None:
    found = answer_scores([[["no idea"], ["great"]]], ["neg", "pos"], rules())
    assert np.isnan(found.scores[0, 0]).all() and not np.isnan(found.scores[0, 1]).any()
    labels = np.array([1, 1])
    assert per_prompt_loss(found.scores[:, :1], labels[:1])[0] == MISSING_LABEL_LOSS
    assert accuracy(found.scores, labels)[0] == 0.5  # the unparsed one is wrong, never a lucky tie


def test_one_greedy_answer_gives_an_error_rate_like_loss_and_more_answers_a_smoother_one() -> None:
    labels = np.array([1, 0, 1, 0])
    right, wrong = ["great", "terrible", "great", "terrible"], ["terrible", "great", "terrible", "great"]
    one = [[[a] for a in right[:3] + wrong[3:]], [[a] for a in right[:2] + wrong[2:]]]  # 3/4 and 2/4 right
    loss = per_prompt_loss(answer_scores(one, ["neg", "pos"], rules()).scores, labels)
    a = 0.5  # one answer: a right example costs -log((1 + a) / (1 + 2a)), a wrong one -log(a / (1 + 2a))
    ce_right, ce_wrong = -np.log((1 + a) / (1 + 2 * a)), -np.log(a / (1 + 2 * a))
    np.testing.assert_allclose(loss, [(3 * ce_right + ce_wrong) / 4, (2 * ce_right + 2 * ce_wrong) / 4])
    many = [[["great"] * 3 + ["terrible"], ["terrible"] * 4, ["great"] * 4, ["terrible"] * 4]]
    fewer = [[["great"] * 2 + ["terrible"] * 2, ["terrible"] * 4, ["great"] * 4, ["terrible"] * 4]]
    smooth = [per_prompt_loss(answer_scores(x, ["neg", "pos"], rules()).scores, labels)[0] for x in (many, fewer)]
    assert smooth[0] < smooth[1]  # one answer of four moving changes the loss: no error-rate plateau


def test_smoothing_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="smoothing must be > 0"):
        answer_scores([[["great"]]], ["neg", "pos"], rules(), smoothing=0.0)
