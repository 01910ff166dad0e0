"""Verbalizer search: one wide score call, honest skips, calibrated ranking, typed errors."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bbtune.backends.base import Backend, CallStats, Capabilities
from bbtune.errors import VerbalizerError
from bbtune.tasks import PRESETS, Example, Placement, TaskFormat, Template
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.search.verbalizers import PRESET_CANDIDATES, CandidateScores, candidate_scores, rank_verbalizers

FMT = TaskFormat(Template("{text} It was{label}"), {"negative": " bad", "positive": " good"}, Placement.PREFIX)
EXAMPLES = tuple(Example(f"review {i}", "positive" if i % 2 else "negative") for i in range(20))
GOLD = FMT.label_ids(EXAMPLES)


class FakeTokenizer:
    """One id per word; '_' splits a word into pieces; `aliases` spell an existing token differently."""

    def __init__(self, aliases: dict[str, str] | None = None):
        self.ids: dict[str, int] = {}
        self.aliases = aliases or {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        text = self.aliases.get(text, text)
        return [self.ids.setdefault(piece, len(self.ids)) for piece in text.split("_")]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        names = {i: w for w, i in self.ids.items()}
        return [names[i] for i in ids]


class FakeBackend(Backend):
    """Scores word w on example i as `table[w][i]`; counts its score calls and remembers the formats."""

    name = "fake"
    capabilities = Capabilities(soft=False)

    def __init__(self, table: dict[str, np.ndarray], tokenizer: FakeTokenizer | None = None):
        self.table, self.tokenizer = table, tokenizer or FakeTokenizer()
        self.stats, self.formats = CallStats(), []

    def score(self, prompts, examples, fmt):
        self.formats.append(fmt)
        self.stats.add(len(prompts), len(examples))
        idx = [EXAMPLES.index(e) for e in examples]
        return np.stack([[[self.table[w][i] for w in fmt.verbalizer.values()] for i in idx] for _ in prompts])

    def vocabulary(self):
        return SimpleNamespace(tokenizer=self.tokenizer)


def table(seed: int = 0) -> dict[str, np.ndarray]:
    """' awful'/' great' separate the classes perfectly but ' great' is rare (raw accuracy 50%, calibrated 100%);
    the other words are noise with a weak signal, and ' meh' is said often whatever the input."""
    rng = np.random.default_rng(seed)
    pos = GOLD == 1
    noise = lambda: rng.normal(0, 1.0, len(GOLD))  # noqa: E731
    return {
        " awful": np.where(pos, -5.0, -1.0) + 0.1 * noise(), " great": np.where(pos, -8.0, -12.0) + 0.1 * noise(),
        " bad": -3.0 + 0.4 * ~pos + noise(), " meh": -0.5 + noise(),
        " good": -3.0 + 0.4 * pos + noise(), " fine": -3.0 + noise(),
    }


CANDIDATES = {"negative": [" bad", " awful", " meh"], "positive": [" good", " great", " fine"]}


def test_the_clearly_best_pair_ranks_first_and_only_after_calibration():
    backend = FakeBackend(table())
    scores = candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, CANDIDATES)
    ranked = rank_verbalizers(scores, GOLD, per_label=None)
    assert len(ranked) == 9
    best = ranked[0]
    assert best.verbalizer == {"negative": " awful", "positive": " great"} and best.accuracy == 1.0
    assert best.loss < min(r.loss for r in ranked[1:])
    keys = [(-r.accuracy, r.loss) for r in ranked]
    assert keys == sorted(keys)
    raw = scores.columns(best.verbalizer)
    assert (raw.argmax(1) == GOLD).mean() == 0.5  # the win is the calibration's, not a raw preference


def test_the_shortlist_keeps_the_most_discriminative_words():
    scores = candidate_scores(FakeBackend(table()), MANUAL_PROMPT, EXAMPLES, FMT, CANDIDATES)
    only = rank_verbalizers(scores, GOLD, per_label=1)
    assert [r.verbalizer for r in only] == [{"negative": " awful", "positive": " great"}]
    assert len(rank_verbalizers(scores, GOLD, per_label=2)) == 4
    with pytest.raises(ValueError, match="per_label"):
        rank_verbalizers(scores, GOLD, per_label=0)
    with pytest.raises(ValueError, match="labels has shape"):
        rank_verbalizers(scores, GOLD[:5])


def test_the_wide_format_costs_one_score_call_and_keeps_template_and_placement():
    backend = FakeBackend(table())
    scores = candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, CANDIDATES)
    assert backend.stats.calls == 1 and len(backend.formats) == 1
    wide = backend.formats[0]
    assert wide.template == FMT.template and wide.placement is Placement.PREFIX
    assert sorted(wide.verbalizer.values()) == sorted(w for ws in CANDIDATES.values() for w in ws)
    assert scores.logp.shape == (len(EXAMPLES), 6) and scores.labels == FMT.labels
    assert scores.kept == {"negative": (" bad", " awful", " meh"), "positive": (" good", " great", " fine")}
    np.testing.assert_allclose(scores.columns({"positive": " fine", "negative": " meh"}),
                               np.stack([table()[" meh"], table()[" fine"]], axis=1))


def test_multi_token_nan_heavy_and_duplicate_words_are_skipped_with_reasons():
    t = table()
    t[" rare"] = np.where(np.arange(20) % 2 == 0, np.nan, -2.0)  # missing in half the examples
    t[" once"] = np.where(np.arange(20) == 3, np.nan, -2.0)  # missing in 1 of 20 = 5%: still competes
    backend = FakeBackend(t, FakeTokenizer(aliases={" Good": " good"}))
    cands = {"negative": [" bad", " awful", " rare", " mega_awful", " bad", " both"],
             "positive": [" good", " Good", " once", " both"]}
    t[" both"] = t[" bad"]
    scores = candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, cands)
    assert set(scores.skipped) == {" rare", " mega_awful", " Good", " both"}
    assert scores.skipped[" rare"] == "missing from top-k in 50% of examples"
    assert "2 tokens" in scores.skipped[" mega_awful"] and "'negative'" in scores.skipped[" mega_awful"]
    assert "same token as ' good'" in scores.skipped[" Good"]
    assert "one label only" in scores.skipped[" both"]
    assert scores.words == (" bad", " awful", " good", " once")  # " bad" listed twice is one candidate
    assert np.isnan(scores.columns({"negative": " bad", "positive": " once"})).sum() == 1
    assert rank_verbalizers(scores, GOLD)[0].verbalizer["negative"] == " awful"


def test_errors_name_the_label_and_the_reasons():
    backend = FakeBackend(table())
    with pytest.raises(VerbalizerError, match=r"\['neutral'\] are not labels of the task"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, {**CANDIDATES, "neutral": [" meh"]})
    with pytest.raises(VerbalizerError, match=r"\['positive'\] have no candidate words"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, {"negative": [" bad"]})
    with pytest.raises(VerbalizerError, match=r"\['positive'\] have no candidate words"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, {"negative": [" bad"], "positive": []})
    with pytest.raises(VerbalizerError, match=r"label 'positive' has no usable candidate.*' so_good'.*2 tokens"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, {"negative": [" bad"], "positive": [" so_good"]})
    assert backend.stats.calls == 0  # every error above comes before a (possibly paid) call
    backend.table[" gone"] = np.full(20, np.nan)
    with pytest.raises(VerbalizerError, match=r"label 'positive'.*' gone'.*missing from top-k in 100%"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, {"negative": [" bad"], "positive": [" gone"]})
    with pytest.raises(ValueError, match="max_missing"):
        candidate_scores(backend, MANUAL_PROMPT, EXAMPLES, FMT, CANDIDATES, max_missing=5)


def test_ensemble_is_the_logsumexp_of_each_labels_words_and_ignores_missing_ones():
    logp = np.log(np.array([[0.1, 0.2, 0.3, np.nan], [0.4, np.nan, np.nan, np.nan]]))
    scores = CandidateScores(("neg", "pos"), (" a", " b", " c", " d"), ("neg", "pos", "neg", "pos"), logp)
    out = scores.ensemble()
    np.testing.assert_allclose(out[0], np.log([0.4, 0.2]))
    assert out[1, 0] == pytest.approx(np.log(0.4)) and np.isnan(out[1, 1])


def test_local_backend_scores_each_word_as_the_narrow_format_does(tiny_backend, tiny_task):
    calls = tiny_backend.stats.calls
    cands = {"negative": [" terrible", " bad", " awful"], "positive": [" great", " good", " fun"]}
    scores = candidate_scores(tiny_backend, MANUAL_PROMPT, tiny_task.train, tiny_task.format, cands)
    assert tiny_backend.stats.calls == calls + 1
    assert set(scores.skipped) == {" awful", " fun"} and "tokens for this tokenizer" in scores.skipped[" awful"]
    narrow = tiny_backend.score([MANUAL_PROMPT], tiny_task.train, tiny_task.format)[0]
    np.testing.assert_allclose(scores.columns(tiny_task.format.verbalizer), narrow, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESET_CANDIDATES))
def test_preset_candidates_cover_the_presets_labels_and_words(preset):
    cands, own = PRESET_CANDIDATES[preset], PRESETS[preset].verbalizer
    assert set(cands) == set(own)
    words = [w for ws in cands.values() for w in ws]
    assert len(words) == len(set(words)) and all(w.startswith(" ") for w in words)
    for label, word in own.items():
        assert word in cands[label]
        assert len(cands[label]) >= (12 if preset.startswith(("sentiment", "sst2")) else 8)
