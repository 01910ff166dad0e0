"""`--dry-run`: what a run would spend at most, before it sends a single request.

The real `Tuner` (or `compare`) runs against a `ShapeBackend`, which scores nothing (seeded noise) but records
every call it is asked for: which prompts on which examples. The run's shape (generations, dev evaluations in
chunks of 64, the manual and start points, final test scores, a soft run's nearest tokens) thus comes from
the tuner itself and follows it as it changes. `price` then costs each recorded call the way the remote
backend sends it, asking the backend's own mode object (`ScoreStrategy.price`, `bbtune.backends.modes`): every
rendered text tokenized by the real tokenizer, plus the meter's margins per text; one request per `batch_size`
texts (chat: one per text; echo: one text per label word; a label word of several tokens in the top-k modes: one
text per step of the words' trie); one completion token per text; cost from the ``--remote-price-*`` flags. A
top-k call (`Backend.score_topk`) in the top-k modes with logit_bias possibly on is priced twice: its unbiased
requests and, at most, `score`'s biased ones again; echo asks its top-k in `score`'s own requests. Tokens read
below the list (`Backend.score_lifted`) are one call, priced as one request per input and k - 1 of them. Text mode
(``--remote-mode text``): each text asks ``answer_samples`` answers of up to ``answer_tokens`` tokens, priced as
if the server refused ``n`` (one request, and its prompt tokens, per answer): the most it can cost.

Why it is an upper bound: candidates the tuner would skip as repeats are priced as if sent, cached replies as
if paid, and the probe as `PROBE_REQUESTS` requests as large as the largest request of the run. Not included:
retries (a 429 or 5xx is not billed, but a dropped request may be).

    >>> # print(dry_run_tune(task, RemoteConfig(local_model="smollm2", price_prompt_per_mtok=0.5), TuneConfig()))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from bbtune.backends.base import Backend, CallStats, Capabilities
from bbtune.backends.modes import ScoreStrategy, strategy_for
from bbtune.backends.modes.base import BatchPrice
from bbtune.backends.modes.lists import lift_rounds
from bbtune.core.topk import AnswerTopK
from bbtune.core.prompts import HardPrompt, Prompt, SoftPrompt
from bbtune.tasks import Example, TaskFormat, verbalizer_token_sequences

PROBE_REQUESTS = 10  # the probe's requests at most: /models, first, repeat, lists, top-k step-downs, a sample


@dataclass
class _Call:
    prompts: tuple[Prompt, ...]
    examples: tuple[Example, ...]
    fmt: TaskFormat
    topk: bool = False  # asked through `score_topk`
    lift_rounds: int = 0  # asked through `score_lifted`: rounds of biased requests, each input on its own at most


class _ShapeStats(CallStats):
    """CallStats that also sees the tuner book the repeats it skipped, so the shape prices them as sent."""

    def __init__(self, owner: "ShapeBackend"):
        super().__init__()
        self.owner = owner

    def add(self, n_prompts: int, n_examples: int) -> None:
        super().add(n_prompts, n_examples)
        if not self.owner.scoring and n_prompts and self.owner.calls:
            last = self.owner.calls[-1]
            self.owner.calls.append(_Call(last.prompts[:1] * n_prompts, last.examples[:n_examples], last.fmt))


class ShapeBackend(Backend):
    """A Backend that records what it is asked to score and answers seeded noise; nothing leaves the machine.

    `reference` gives the vocabulary and tokenizer (the real model's: a LocalBackend); `capabilities` are those
    of the backend the real run would use."""

    def __init__(self, reference: Backend, capabilities: Capabilities, name: str, seed: int = 0):
        # it answers scores, never text: `generate` is the protocol's refusal
        self.reference, self.capabilities, self.name = reference, replace(capabilities, generate=False), f"dry-run:{name}"
        self.calls: list[_Call] = []
        self.scoring = False
        self.stats = _ShapeStats(self)
        self._rng = np.random.default_rng(seed)

    def vocabulary(self) -> Any:
        return self.reference.vocabulary()

    def score(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        self.calls.append(_Call(tuple(prompts), tuple(examples), fmt))
        self.scoring = True
        try:
            self.stats.add(len(prompts), len(examples))
        finally:
            self.scoring = False
        return -np.abs(self._rng.normal(1.0, 0.5, (len(prompts), len(examples), len(fmt.labels))))

    def score_topk(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                   k: int) -> tuple[np.ndarray, list[AnswerTopK]]:
        """`score`'s noise and top-k lists of real token texts with noise log-probs; the call is recorded as a
        top-k call, which `price` costs as the real backend sends it."""
        if not self.capabilities.topk:
            return super().score_topk(prompts, examples, fmt, k)  # the protocol's refusal
        scores = self.score(prompts, examples, fmt)
        self.calls[-1] = replace(self.calls[-1], topk=True)
        depth = min(k, self.capabilities.topk)
        tok = self.reference.vocabulary().tokenizer
        ids = [self._rng.choice(len(tok), size=min(depth, len(tok)), replace=False) for _ in range(scores[..., 0].size)]
        rows = [[(tok.decode([int(i)]), -abs(v)) for i, v in zip(row, self._rng.normal(3.0, 2.0, len(row)))]
                for row in ids]
        B = len(examples)
        return scores, [AnswerTopK.from_pairs(rows[p * B: (p + 1) * B], depth) for p in range(len(prompts))]

    def score_lifted(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                     tokens: Sequence[str], tops: Sequence[AnswerTopK]) -> np.ndarray:
        """Noise, and the call recorded with its rounds of biased requests (one per k - 1 tokens)."""
        rounds = lift_rounds(len(tokens), tops[0].k)  # the lists score_topk gave, one per prompt
        self.calls.append(_Call(tuple(prompts), tuple(examples), fmt, lift_rounds=rounds))
        return -np.abs(self._rng.normal(6.0, 2.0, (len(prompts), len(examples), len(tokens))))


@dataclass
class Estimate:
    """What a run would spend at most. `requests`/`cost` are None for a local backend (nothing is sent)."""

    calls: int = 0
    examples_scored: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int | None = None
    cost: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        from bbtune.core.table import markdown_table

        rows: list[dict[str, Any]] = [{"": "model calls (prompt x batch)", "at most": self.calls},
                {"": "examples scored", "at most": self.examples_scored},
                {"": "HTTP requests", "at most": "- (local)" if self.requests is None else self.requests},
                {"": "prompt tokens", "at most": self.prompt_tokens},
                {"": "completion tokens", "at most": self.completion_tokens},
                {"": "cost", "at most": "- (local)" if self.cost is None else f"${self.cost:.4f}"}]
        return "\n".join([markdown_table(rows, ["", "at most"]), *self.notes])


@dataclass(frozen=True)
class Pricing:
    """How texts become requests and money: the remote backend's mode object (None = local, nothing is sent), its
    prices, and whether a probe runs first."""

    strategy: ScoreStrategy | None = None
    prompt_per_mtok: float = 0.0
    completion_per_mtok: float = 0.0
    probe: bool = False

    @classmethod
    def remote(cls, config: Any) -> "Pricing":
        return cls(strategy_for(config), config.price_prompt_per_mtok, config.price_completion_per_mtok, config.probe)


def price(calls: Sequence[_Call], tokenizer: Any, pricing: Pricing) -> Estimate:
    """The most the recorded `calls` cost when sent as `pricing` says (see the module docstring)."""
    est = Estimate(calls=sum(len(c.prompts) for c in calls),
                   examples_scored=sum(len(c.prompts) * len(c.examples) for c in calls))
    rows = [_row_tokens(call, tokenizer) for call in calls]
    strategy = pricing.strategy
    if strategy is None:
        est.prompt_tokens = sum(map(sum, rows))
        return est
    paid = [_lift_price(strategy, r, tokenizer, c) if c.lift_rounds else
            strategy.price(r, tokenizer, verbalizer_token_sequences(tokenizer, c.fmt), topk=c.topk)
            for c, r in zip(calls, rows)]
    if pricing.probe:
        paid.append(strategy.price_probe(PROBE_REQUESTS, max((p.largest for p in paid), default=0)))
        est.notes.append(f"includes the probe as {PROBE_REQUESTS} requests of the run's largest size")
    est.requests = sum(p.requests for p in paid)
    est.prompt_tokens = sum(p.prompt_tokens for p in paid)
    est.completion_tokens = sum(p.completion_tokens for p in paid)
    est.cost = (est.prompt_tokens * pricing.prompt_per_mtok + est.completion_tokens * pricing.completion_per_mtok) / 1e6
    est.notes.append("not included: retries of failed requests; cached replies are counted as paid")
    return est


def _lift_price(strategy: ScoreStrategy, rows: Sequence[int], tokenizer: Any, call: _Call) -> BatchPrice:
    """Each round of a lift at most: every input in a request of its own (the biased requests group only the
    inputs that share an anchor token)."""
    words = verbalizer_token_sequences(tokenizer, call.fmt)
    one = [strategy.price([n], tokenizer, words) for n in rows]
    rounds = call.lift_rounds
    return BatchPrice(rounds * sum(p.requests for p in one), rounds * sum(p.prompt_tokens for p in one),
                      rounds * sum(p.completion_tokens for p in one), max((p.largest for p in one), default=0))


def _row_tokens(call: _Call, tokenizer: Any) -> list[int]:
    """Tokens of every (prompt, example) input as the server reads it; a soft prompt counts its vectors."""
    out = []
    for prompt in call.prompts:
        text = prompt.text if isinstance(prompt, HardPrompt) else ""
        extra = prompt.n_tokens if isinstance(prompt, SoftPrompt) else 0
        texts = [call.fmt.text(ex, text) for ex in call.examples]
        out += [len(ids) + extra for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    return out


# ---------------------------------------------------------------------- the CLI's entry points


def shape_backend(kind: str, local: Any, remote: Any,
                  references: dict[Any, Backend] | None = None) -> tuple[ShapeBackend, Pricing]:
    """A ShapeBackend standing for the backend the CLI would build (`local`: LocalConfig, `remote`: RemoteConfig),
    with the pricing of that backend; only the local reference model is loaded. `references` keeps the loaded
    models by config, so a sweep's jobs on one model load it once (a ShapeBackend itself is per run: it records
    that run's calls)."""
    from bbtune.backends.local import LocalBackend

    def loaded(key: Any, load: Any) -> Backend:
        if references is None:
            return load()
        if key not in references:
            references[key] = load()
        return references[key]

    if kind == "remote":
        if not remote.local_model:
            from bbtune.errors import ConfigError

            raise ConfigError("--dry-run counts tokens with the model's own tokenizer: set --remote-local-model "
                              "to the same model locally (a HF folder, a .gguf, 'smollm2' or 'tiny')")
        reference = loaded(("remote", remote.local_model), lambda: LocalBackend(remote.local_model))
        pricing = Pricing.remote(remote)
        assert pricing.strategy is not None
        return ShapeBackend(reference, pricing.strategy.capabilities(), f"remote:{remote.model}"), pricing
    reference = loaded(("local", local), local.build)
    return ShapeBackend(reference, reference.capabilities, reference.name), Pricing()


def dry_run_tune(task: Any, tune_config: Any, kind: str, local: Any, remote: Any) -> Estimate:
    """What `bbtune tune` with these configs would spend at most (no run folder is written)."""
    from bbtune.runs.tuner import run_tuner

    backend, pricing = shape_backend(kind, local, remote)
    run_tuner(task, backend, tune_config, None, progress=False)
    return price(backend.calls, backend.vocabulary().tokenizer, pricing)


GRADIENT_METHODS = ("prompt_tuning", "pez")  # local gradient steps: no requests, counted from their settings


def dry_run_compare(config: Any, task: Any, local: Any, tune_config: Any) -> dict[str, Estimate]:
    """What `bbtune compare` would spend at most: the methods on the local model and, with a transfer server
    (`config.transfer_url`), the requests the transfer scores send. Keys: 'methods', and 'transfer' if any."""
    from dataclasses import replace

    from bbtune.app.compare import compare
    from bbtune.backends.remote import RemoteConfig

    backend, pricing = shape_backend("local", local, None)
    backend.capabilities = replace(backend.capabilities, gradients=False)
    target, target_pricing = None, Pricing()
    if config.transfer_url:
        remote = RemoteConfig(base_url=config.transfer_url, model=config.transfer_served_model)
        target = ShapeBackend(backend.reference, Capabilities(soft=False), f"remote:{remote.model}")
        target_pricing = Pricing.remote(remote)
    elif config.transfer_model:
        target, target_pricing = shape_backend("local", replace(local, model=config.transfer_model), None)
    methods = [m for m in config.methods if m not in GRADIENT_METHODS]
    if methods:
        compare(lambda seed: replace(task, data_seed=seed).load(), backend, methods, config.seeds,
                config.settings(tune_config), None, transfer_to=target, transfer_limit=config.transfer_limit or None,
                progress=False)
    out = {"methods": price(backend.calls, backend.vocabulary().tokenizer, pricing)}
    for method in set(config.methods) & set(GRADIENT_METHODS):
        steps = config.grad_steps * len(config.seeds)
        out["methods"].calls += steps
        out["methods"].notes.append(f"{method}: {config.grad_steps} local gradient steps per seed (counted as calls; "
                                    "their dev/test scoring is not)")
    if target is not None:
        out["transfer"] = price(target.calls, backend.vocabulary().tokenizer, target_pricing)
        if config.transfer_url:
            out["transfer"].notes.append("transfer texts counted with the tuned model's tokenizer")
    return out


def dry_run_method(task: Any, kind: str, local: Any, remote: Any, method: str, seed: int, settings: Any,
                   grad_steps: int, references: dict[Any, Backend] | None = None) -> Estimate:
    """What one method on one seed (a sweep's job) would spend at most, on the backend the job would build
    (`references`: see `shape_backend`)."""
    from dataclasses import replace

    from bbtune.app.compare import compare

    if method in GRADIENT_METHODS:
        return Estimate(calls=grad_steps, notes=[f"{method}: {grad_steps} local gradient steps (counted as calls)"])
    backend, pricing = shape_backend(kind, local, remote, references)
    compare(lambda s: replace(task, data_seed=s).load(), backend, (method,), (seed,), settings, None, progress=False)
    return price(backend.calls, backend.vocabulary().tokenizer, pricing)
