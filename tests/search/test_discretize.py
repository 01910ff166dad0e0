import pytest
import torch

from bbtune.search.discretize import Discretizer, nearest_ids
from bbtune.backends.models import build_tiny_tokenizer
from bbtune.core.vocab import Vocabulary


def test_nearest_on_a_known_matrix_cosine_vs_dot():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    allowed = torch.ones(3, dtype=torch.bool)
    query = torch.tensor([[0.9, 0.2], [0.1, 1.0]])
    assert nearest_ids(query, table, allowed, "cosine").tolist() == [0, 1]
    assert nearest_ids(query, table, allowed, "dot").tolist() == [2, 2]  # dot favours the long vector


def test_disallowed_tokens_are_never_chosen():
    table = torch.eye(3)
    allowed = torch.tensor([False, True, True])
    assert nearest_ids(torch.tensor([[1.0, 0.0, 0.0]]), table, allowed).tolist() != [0]


@pytest.fixture(scope="module")
def vocab():
    tok = build_tiny_tokenizer()
    return Vocabulary(tok, torch.randn(len(tok), 16, generator=torch.Generator().manual_seed(0)))


def test_projecting_a_token_embedding_returns_that_token(vocab):
    d = Discretizer(vocab, "cosine", "words")
    ids = torch.nonzero(d.allowed).flatten()[:5]
    hard = d.project(vocab.embeddings[ids])
    assert list(hard.token_ids) == ids.tolist()
    assert hard.text == vocab.tokenizer.decode(ids.tolist())


def test_special_and_blocked_tokens_are_excluded(vocab):
    tok = vocab.tokenizer
    great = tok.encode(" great", add_special_tokens=False)[0]
    d = Discretizer(vocab, block=["great"])
    assert not d.allowed[tok.eos_token_id] and not d.allowed[tok.mask_token_id]
    assert not d.allowed[great]
    assert d.project(vocab.embeddings[[great]]).token_ids[0] != great


def test_words_filter_is_alphabetic(vocab):
    mask = vocab.allowed_mask("words")
    texts = [vocab.decoded[i] for i in torch.nonzero(mask).flatten().tolist()]
    assert texts and all(t.strip().isalpha() for t in texts)
    assert vocab.allowed_mask("printable").sum() >= mask.sum()


def test_round_trip_detects_a_mismatch(vocab):
    d = Discretizer(vocab, vocab_filter="all")
    tok = vocab.tokenizer
    good = d.to_prompt(tok.encode(" great film", add_special_tokens=False))
    assert d.round_trip(good).ok
    # two pieces that re-tokenize as one merged token
    pieces = [tok.convert_tokens_to_ids(t) for t in ("Ġgre", "at")]
    if tok.encode(" great", add_special_tokens=False) != pieces and None not in pieces and tok.unk_token_id not in pieces:
        bad = d.to_prompt(pieces)
        trip = d.round_trip(bad)
        assert not trip.ok and trip.reencoded == tuple(tok.encode(" great", add_special_tokens=False))
    else:
        pytest.skip("tokenizer has no split pieces for ' great'")


def test_also_allow_lets_a_start_prompt_project_onto_itself(vocab):
    words = Discretizer(vocab, "cosine", "words")
    outside = int(torch.nonzero(~words.allowed).flatten()[-1])  # a token the words filter refuses
    assert int(words.ids(vocab.embeddings[outside][None])[0]) != outside
    with_it = Discretizer(vocab, "cosine", "words", also_allow=[outside])
    assert int(with_it.ids(vocab.embeddings[outside][None])[0]) == outside
    assert with_it.allowed.sum() == words.allowed.sum() + 1
