import numpy as np
import pytest
import torch

from bbtune.errors import ConfigError
from bbtune.backends.models import build_tiny_tokenizer
from bbtune.search.subspace import Subspace, SubspaceConfig
from bbtune.core.vocab import Vocabulary


@pytest.fixture(scope="module")
def vocab():
    tok = build_tiny_tokenizer()
    return Vocabulary(tok, torch.randn(len(tok), 64, generator=torch.Generator().manual_seed(0)) * 0.2)


def test_normal_projection_follows_bbt_std_rule(vocab):
    cfg = SubspaceConfig(prompt_tokens=4, intrinsic_dim=50, alpha=1.0)
    sub = Subspace.build(vocab, cfg, seed=0, sigma0=1.0)
    expected = float(vocab.embeddings.std()) / np.sqrt(50)
    assert sub.A.shape == (4 * 64, 50)
    assert float(sub.A.std()) == pytest.approx(expected, rel=0.05)
    assert abs(float(sub.A.mean())) < expected * 0.05


def test_a_step_of_sigma_moves_coordinates_by_alpha_times_embedding_std(vocab):
    sub = Subspace.build(vocab, SubspaceConfig(prompt_tokens=4, intrinsic_dim=50, alpha=2.0), seed=0, sigma0=0.5)
    z = np.random.default_rng(0).standard_normal((200, 50)) * 0.5
    moved = (sub.embeds(z) - sub.p0).std()
    assert float(moved) == pytest.approx(2.0 * float(vocab.embeddings.std()), rel=0.1)


def test_sigma0_rescales_z_only_the_embedding_step_stays_alpha_times_std(vocab):
    """One sigma for the std rule and CMA-ES (BBT): halving sigma0 doubles A, so a step of sigma0 in z
    moves the prompt by the same amount in embedding space."""
    cfg = SubspaceConfig(prompt_tokens=4, intrinsic_dim=50)
    z = np.random.default_rng(0).standard_normal((200, 50))
    moved = [float((Subspace.build(vocab, cfg, seed=0, sigma0=s).embeds(z * s) - Subspace.build(vocab, cfg, seed=0).p0).std())
             for s in (1.0, 0.25)]
    assert moved[0] == pytest.approx(moved[1], rel=1e-4)


def test_uniform_projection_has_the_same_std(vocab):
    n = Subspace.build(vocab, SubspaceConfig(prompt_tokens=4, intrinsic_dim=50), seed=0)
    u = Subspace.build(vocab, SubspaceConfig(prompt_tokens=4, intrinsic_dim=50, projection="uniform"), seed=0)
    assert float(u.A.std()) == pytest.approx(float(n.A.std()), rel=0.05)
    assert float(u.A.abs().max()) <= float(n.A.std()) * np.sqrt(3) * 1.0001


def test_same_seed_same_subspace_other_seed_other(vocab):
    cfg = SubspaceConfig(prompt_tokens=3, intrinsic_dim=10)
    a, b, c = (Subspace.build(vocab, cfg, seed=s) for s in (1, 1, 2))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_z_zero_gives_p0_and_p0_choices(vocab):
    sub = Subspace.build(vocab, SubspaceConfig(prompt_tokens=3, intrinsic_dim=10, p0="zeros"), seed=0)
    assert torch.equal(sub.soft_prompt(np.zeros(10)).embeds, torch.zeros(3, 64))
    ids = vocab.tokenizer.encode(" great film", add_special_tokens=False)
    text = Subspace.build(vocab, SubspaceConfig(prompt_tokens=len(ids), intrinsic_dim=10, p0="text", p0_text=" great film"),
                          seed=0)
    assert torch.equal(text.p0, vocab.embeddings[ids])
    words = Subspace.build(vocab, SubspaceConfig(prompt_tokens=3, intrinsic_dim=10), seed=0)
    rows = [int(torch.nonzero((vocab.embeddings == r).all(1))[0]) for r in words.p0]
    assert all(vocab.allowed_mask("words")[i] for i in rows)


def test_p0_text_of_wrong_length_names_the_fix(vocab):
    n = len(vocab.tokenizer.encode(" great film", add_special_tokens=False))
    with pytest.raises(ConfigError, match=f"set prompt_tokens={n}"):
        Subspace.build(vocab, SubspaceConfig(prompt_tokens=n + 1, intrinsic_dim=10, p0="text", p0_text=" great film"), seed=0)


@pytest.mark.parametrize("flag, value", [("prompt-tokens", -1), ("intrinsic-dim", 0), ("alpha", -0.5)])
def test_bad_subspace_config_names_the_field_and_the_cli_the_flag(flag, value):
    from bbtune.app.flags import flag_words

    field = flag.replace("-", "_")
    with pytest.raises(ConfigError, match=field) as err:
        SubspaceConfig(**{field: value})
    assert "--" not in str(err.value) and f"--{flag}" in flag_words(str(err.value))
