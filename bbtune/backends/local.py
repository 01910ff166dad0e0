"""Local `transformers` models (causal or masked LMs) on cpu or cuda, soft and hard prompts.

Three scoring paths give the same log-probs (tests hold them to float tolerance):
- *full*: every (candidate, example) row is one whole sequence. Masked LMs and gradients use it.
- *suffix + KV reuse* (`<input> <prompt> <cue>`): the input's keys/values do not depend on the candidate,
  so they are computed once per example (kept in a byte-bounded LRU store) and each row runs only the
  prompt and cue tokens. The stacked, padded keys/values of the current examples are kept between calls,
  since a tuner scores the same examples every generation.
- *prefix sharing* (`<prompt> <input> <cue>`): each candidate's prompt is encoded once per call and its
  keys/values are shared by all examples, instead of once per (candidate, example).
The population x examples rows are flattened into forward batches sized from a memory budget (even, and
holding whole candidates where they fit); only the label position's logits are computed, and shared
keys/values are written once into a buffer the forward appends to, so a batch costs what a bare forward of
the same shape costs (benchmarks/eval_speed.py measures it). Repeated hard prompts are scored once.
A label word of several tokens is scored exactly on every path (teacher forcing, `bbtune.backends.labeltrie`):
its first token is read as a single-token word's is, each further one by running the same path with the cue
extended by the word's earlier tokens; words sharing a prefix share that forward.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from bbtune.constants import DEFAULT_KV_CACHE_MB, DEFAULT_MEMORY_BUDGET_MB, EMBEDDED_MODEL
from bbtune.errors import CapabilityError, ConfigError, TaskError
from bbtune.backends.models import load_model
from bbtune.core.topk import AnswerTopK
from bbtune.core.prompts import HardPrompt, Prompt, SoftPrompt, distinct_prompts, prompt_kind
from bbtune.tasks import Example, Placement, TaskFormat
from bbtune.core.vocab import Vocabulary, token_embeddings
from bbtune.backends.base import Backend, Capabilities, CallStats, check_generate_args, check_scores
from bbtune.backends.generation import generate_texts
from bbtune.backends.batching import BatchPlanner
from bbtune.backends.continuations import score_continuations
from bbtune.backends.encoding import Encoded, InputEncoder, prompt_part, single_id
from bbtune.backends.forward import Forward, keeps_logits, text_config
from bbtune.backends.labeltrie import LabelTrie, Step
from bbtune.backends.kvcache import KVStore
from bbtune.backends.padding import common_start, left_mask, left_pad, pad_left_kv, position_ids


TOPK_FLOATS = 2**25  # most log-probs one full-vocabulary pass of `score_topk` holds (128 MiB of float32)


class LocalBackend(Backend):
    """Scores prompts with a local model. `model` is a name/path for `load_model` or a loaded model.

    >>> from bbtune.tasks import Example, TaskFormat, Template
    >>> backend = LocalBackend("tiny")
    >>> fmt = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
    >>> backend.score([HardPrompt((), "")], [Example("a film", "pos")], fmt).shape
    (1, 1, 2)
    """

    def __init__(
        self,
        model: str | Any = EMBEDDED_MODEL,
        tokenizer: Any = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
        kv_cache_mb: float = DEFAULT_KV_CACHE_MB,
        kv_reuse: bool = True,
        max_input_tokens: int | None = None,
    ):
        if isinstance(model, str):
            self.name = f"local:{model}"
            model, tokenizer = load_model(model, dtype=dtype, device=device)
        else:
            if tokenizer is None:
                raise ConfigError("LocalBackend(model=<loaded model>) also needs tokenizer=")
            self.name = f"local:{type(model).__name__}"
            model = model.to(device).eval()
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.is_masked = "MaskedLM" in type(model).__name__
        self.kv_reuse = kv_reuse and not self.is_masked
        self.kv_store = KVStore(int(kv_cache_mb * 2**20))
        self.capabilities = Capabilities(soft=True, hard=True, gradients=True, generate=not self.is_masked)
        self.stats = CallStats()
        self._cfg = text_config(model)
        self._vocab: Vocabulary | None = None
        self.encoder = InputEncoder(tokenizer, self.is_masked, self.context_length, max_input_tokens)
        self.planner = BatchPlanner(self._cfg, model.get_input_embeddings().weight.element_size(),
                                    int(memory_budget_mb * 2**20), full_logits=self.is_masked or not keeps_logits(model))
        self.fwd = Forward(model, self.device, self.stats, self.kv_store, self.planner)  # the paths' forward passes
        self.text_stats = TextExactStats()  # how hard prompts were scored as their text (repairs, row-by-row)
        self._token_texts: dict[int, str] = {}
        # a top-k draws from the ids the tokenizer can name (a model's padding rows are not text)
        self.capabilities = replace(self.capabilities, topk=min(len(tokenizer), int(
            model.get_output_embeddings().weight.shape[0])))

    # ------------------------------------------------------------------ public

    def local_model(self) -> "LocalBackend":
        return self

    def vocabulary(self) -> Vocabulary:
        if self._vocab is None:
            self._vocab = Vocabulary.from_model(self.model, self.tokenizer)
        return self._vocab

    @property
    def context_length(self) -> int:
        return int(getattr(self._cfg, "max_position_embeddings", 2048))

    def score(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        """Label log-probs (P, B, L) for every prompt on every example (a word of several tokens: their sum)."""
        if not examples:
            raise TaskError("score() got no examples; give at least one")
        out = self._label_scores(prompts, examples, fmt)
        self.stats.add(len(prompts), len(examples))
        return check_scores(out, len(prompts), len(examples), len(fmt.labels), self.name)

    def score_topk(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                   k: int) -> tuple[np.ndarray, list[AnswerTopK]]:
        """`score`'s label log-probs and each prompt's top-`k` at the answer position (`Backend.score_topk`).

        The whole distribution is read through the same paths as label words (every token id a one-token
        "label"), in chunks of examples that keep (P, chunk, vocabulary) within `TOPK_FLOATS`; single-token
        label words are read from it, longer ones scored as `score` scores them."""
        if not examples:
            raise TaskError("score_topk() got no examples; give at least one")
        if k < 1:
            raise ConfigError(f"k must be >= 1 token, got {k}")
        k = min(k, self.capabilities.topk)
        single = self.encoder.label_seqs(fmt)
        ids = [s[0] for s in single] if all(len(s) == 1 for s in single) else None
        labels, rows = [], [[] for _ in prompts]  # type: ignore[var-annotated]
        for part, full in self._distributions(prompts, examples, fmt):
            labels.append(full[..., ids].numpy() if ids is not None else self._label_scores(prompts, part, fmt))
            values, top = torch.topk(full, k, dim=-1)
            for p in range(len(prompts)):
                rows[p] += [list(zip(map(self.token_text, r), v)) for r, v in zip(top[p].tolist(), values[p].tolist())]
        self.stats.add(len(prompts), len(examples))
        out = check_scores(np.concatenate(labels, axis=1), len(prompts), len(examples), len(fmt.labels), self.name)
        return out, [AnswerTopK.from_pairs(r, k) for r in rows]

    def score_lifted(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                     tokens: Sequence[str], tops: Sequence[AnswerTopK]) -> np.ndarray:
        """`Backend.score_lifted` off the whole distribution, for the texts that are one token (`single_id`), as
        an API lifts them with logit_bias; any other text is NaN. `tops` is not needed here."""
        out = np.full((len(prompts), len(examples), len(tokens)), np.nan)
        known = [(j, i) for j, t in enumerate(tokens) if (i := single_id(self.tokenizer, t)) is not None]
        if not known:
            return out
        columns, ids = [j for j, _ in known], torch.tensor([i for _, i in known])
        start = 0
        for part, full in self._distributions(prompts, examples, fmt):
            out[:, start: start + len(part), columns] = full[..., ids].numpy()
            start += len(part)
        self.stats.add(len(prompts), len(examples))
        return out

    def _distributions(self, prompts: Sequence[Prompt], examples: Sequence[Example],
                       fmt: TaskFormat) -> Iterator[tuple[Sequence[Example], torch.Tensor]]:
        """Each chunk of examples with (P, chunk, V) log-probs of the whole vocabulary at the answer position, in
        chunks that keep it within `TOPK_FLOATS`."""
        size = self.capabilities.topk
        chunk = max(1, TOPK_FLOATS // (len(prompts) * size))
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            with self.encoder.reading_whole_vocabulary(size):
                full = torch.from_numpy(self._label_scores(prompts, part, fmt))
            yield part, full  # outside the block: the caller may score label words of several tokens

    def token_text(self, token_id: int) -> str:
        """What one token decodes to on its own: how an API names it in a top-k list."""
        if token_id not in self._token_texts:
            self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return self._token_texts[token_id]

    def continuation_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                              continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """(P, B, C) exact log-probs of each example's strings after its input (see `Backend`); examples sharing
        their strings are scored together through the same paths as label words."""
        out = score_continuations(self._label_scores, prompts, examples, fmt, continuations)
        self.stats.add(len(prompts), len(examples))
        return check_scores(out, len(prompts), len(examples), out.shape[2], self.name)

    def _label_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        prompt_kind(list(prompts))
        examples = self.encoder.fit_inputs(examples, fmt)
        unique, where = distinct_prompts(prompts)  # discretized populations often repeat a hard prompt
        with torch.inference_mode():
            if isinstance(unique[0], HardPrompt) and not self.is_masked:
                logp = self._text_exact_logprobs(unique, examples, fmt)[where]  # type: ignore[arg-type]
            else:
                logp = self.label_logprobs(self.prompt_embeds(unique), examples, fmt)[where]
        return logp.float().cpu().numpy()

    def prompt_embeds(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """(P, n, hidden) input embeddings of a batch of prompts (hard prompts are looked up)."""
        lengths = {p.n_tokens for p in prompts}
        if len(lengths) != 1:
            raise ValueError(f"all prompts in one call must have the same length, got {sorted(lengths)}")
        table = self.model.get_input_embeddings()
        if isinstance(prompts[0], SoftPrompt):
            hidden = table.weight.shape[1]
            if prompts[0].embeds.shape[1] != hidden:
                raise ConfigError(f"soft prompt width {prompts[0].embeds.shape[1]} != model hidden size {hidden}")
            stacked = torch.stack([p.embeds for p in prompts if isinstance(p, SoftPrompt)])
        else:
            ids = torch.tensor([list(p.token_ids) for p in prompts if isinstance(p, HardPrompt)], dtype=torch.long,
                               device=self.device)
            stacked = table(ids.view(len(prompts), -1))
        return stacked.to(device=self.device, dtype=table.weight.dtype)

    def label_logprobs(self, prompt_embeds: torch.Tensor, examples: Sequence[Example], fmt: TaskFormat) -> torch.Tensor:
        """Differentiable (P, B, L) label log-probs; gradient baselines call this outside inference_mode."""
        enc = self.encoder.encode(self.encoder.fit_inputs(examples, fmt), fmt, prompt_embeds.shape[1])
        reuse = self.kv_reuse and not torch.is_grad_enabled()
        if reuse and fmt.placement is Placement.SUFFIX:
            logp = self._suffix_path(prompt_embeds, enc)
        elif reuse and prompt_embeds.shape[1] + len(enc.lead) > 0:
            logp = self._prefix_path(prompt_embeds, enc)
        else:
            logp = self._full_path(prompt_embeds, enc, fmt.placement)
        return logp.view(prompt_embeds.shape[0], len(examples), len(enc.label_seqs))

    def train_slices(self, n_prompt_tokens: int, examples: Sequence[Example], fmt: TaskFormat) -> list[slice]:
        """Slices of `examples` a gradient step accumulates over, sized by the memory budget: the whole batch's
        graph at once held 12 GB for prompt tuning on 64 news articles (SmolLM2) and was killed for memory."""
        enc = self.encoder.encode(self.encoder.fit_inputs(examples, fmt), fmt, n_prompt_tokens)
        tail = max(len(self._tail_ids(enc, step)) for step in enc.trie.steps)
        longest = len(enc.lead) + n_prompt_tokens + max(map(len, enc.heads)) + tail
        return self.planner.train_chunks(len(examples), longest, forwards=len(enc.trie.steps))

    def input_embeds(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[torch.Tensor]:
        """Each (prompt, example) row's whole input as float32 embeddings (lead, prompt/head by placement, cue),
        row p * B + b: what a ``prompt_embeds`` server must see to score like this backend."""
        with torch.inference_mode():
            table = self.prompt_embeds(prompts).float().cpu()
            enc = self.encoder.encode(self.encoder.fit_inputs(examples, fmt), fmt, table.shape[1])
            lead, cue = self.embed_text_ids(enc.lead), self.embed_text_ids(enc.cue)
            heads = [self.embed_text_ids(h) for h in enc.heads]
        prefix = fmt.placement is Placement.PREFIX
        return [torch.cat([lead, *((p, h) if prefix else (h, p)), cue]) for p in table for h in heads]

    def embed_text_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids), hidden) float32 CPU input embeddings of token ids (`vocab.token_embeddings`)."""
        return token_embeddings(self.model, ids)

    def generate(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                 max_tokens: int = 16, n: int = 1, temperature: float = 0.0,
                 stop: Sequence[str] = ("\n",)) -> list[list[list[str]]]:
        """P x B x n answers after each row's input (`bbtune.backends.generation`): a hard prompt as its text
        inside the whole string (what an API sees), a soft prompt as embeddings.

        >>> from bbtune.tasks import Example, TaskFormat, Template
        >>> fmt = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
        >>> len(LocalBackend("tiny").generate([HardPrompt((), "")], [Example("a film", "pos")], fmt, max_tokens=2)[0][0])
        1
        """
        if not examples:
            raise TaskError("generate() got no examples; give at least one")
        check_generate_args(max_tokens, n, temperature, stop)
        if self.is_masked:
            raise CapabilityError(f"{self.name} is a masked LM, which fills a blank but does not generate text; "
                                  "use a causal model")
        kind = prompt_kind(list(prompts))
        examples = self.encoder.fit_inputs(examples, fmt)
        with torch.inference_mode():
            if kind == "hard":
                rows = [self.fwd.embed_ids(ids) for p in prompts for ids in self.encoder.text_ids(p, examples, fmt)]  # type: ignore[arg-type]
            else:
                dtype = self.model.get_input_embeddings().weight.dtype
                rows = [r.to(device=self.device, dtype=dtype) for r in self.input_embeds(prompts, examples, fmt)]
        answers = generate_texts(self.model, self.tokenizer, rows, lambda count, longest: self.planner.chunks(count, 0, longest),
                                 max_tokens=max_tokens, n=n, temperature=temperature, stop=stop)
        B = len(examples)
        return [answers[p * B : (p + 1) * B] for p in range(len(prompts))]

    # ------------------------------------------------------------------ hard prompts scored as their text

    def _text_exact_logprobs(self, prompts: Sequence[HardPrompt], examples: Sequence[Example], fmt: TaskFormat) -> torch.Tensor:
        """(P, B, L) log-probs of hard prompts scored as their text, so local and API scores of a prompt agree.

        Token ids need not survive decode -> encode, and a prompt's first or last token can merge with the
        text around it. Where a prompt's text tokenizes to the same ids inside every example (the usual case:
        its own ids, or repaired ones), those ids go through the shared-KV paths; a prompt whose tokens depend
        on the example is scored row by row from the whole string's ids.
        """
        enc = self.encoder.encode(examples, fmt, 0)
        out = torch.empty(len(prompts), len(examples), len(enc.label_seqs), device=self.device)
        rows = [self.encoder.text_ids(p, examples, fmt) for p in prompts]
        shared = [prompt_part(r, enc, fmt.placement) for r in rows]
        groups: dict[int, list[int]] = {}  # one forward path per prompt length
        for i, ids in enumerate(shared):
            if ids is not None:
                groups.setdefault(len(ids), []).append(i)
        for idx in groups.values():
            embeds = self.prompt_embeds([HardPrompt(shared[i], prompts[i].text) for i in idx])  # type: ignore[arg-type]
            out[idx] = self.label_logprobs(embeds, examples, fmt)
        apart = [i for i, ids in enumerate(shared) if ids is None]
        if apart:
            flat = [row for i in apart for row in rows[i]]
            before = enc.before_prompt(fmt.placement) * len(apart)
            out[apart] = self._rows_path(flat, before, enc.trie).view(len(apart), len(examples), -1)
        self.text_stats.add(len(prompts), sum(s is not None and s != p.token_ids for s, p in zip(shared, prompts)), len(apart))
        return out

    def _rows_path(self, rows: list[list[int]], before: list[list[int]], trie: LabelTrie) -> torch.Tensor:
        """(len(rows), labels) log-probs of the label words after each whole token sequence (causal LMs).

        A row whose prompt merged with its input still shares most of its ids with the text before the prompt
        (`before[r]`, e.g. the example's input): the keys/values of that common start come from the store
        (computed once per example, then reused every generation) and only the rest of the row is run.
        """
        for row in rows:
            if len(row) > self.context_length:
                raise TaskError(f"an input of {len(row)} tokens overflows the model's context of "
                                f"{self.context_length}; set max_input_tokens (e.g. {self.context_length // 2}) to "
                                "truncate inputs, or shorten the inputs or the prompt")
        split = [max(1, min(common_start(row, b), len(row) - 1)) for row, b in zip(rows, before)]
        contexts, tails = [row[:n] for row, n in zip(rows, split)], [row[n:] for row, n in zip(rows, split)]
        order = sorted(range(len(rows)), key=lambda r: len(contexts[r]))
        lengths, longest_tail = [len(contexts[r]) for r in order], max(map(len, tails))
        kv = self.fwd.context_kv([contexts[r] for r in order])

        def step_logprobs(step: Step) -> torch.Tensor:
            out = torch.empty(len(rows), len(step.next_ids), device=self.device)
            tail_lengths = [len(tails[r]) + len(step.prefix) for r in order]
            for block, _ in self.planner.blocks(lengths, 1, lambda n: (n, longest_tail + len(step.prefix))):
                for part in self.fwd.window_safe(tail_lengths, block, lengths[block.stop - 1]):
                    idx, longest = order[part], lengths[part.stop - 1]
                    past = [(k[:, None], v[:, None]) for k, v in
                            (pad_left_kv([e[layer] for e in kv[part]], longest) for layer in range(len(kv[0])))]
                    embeds, tail_mask = left_pad([self.fwd.embed_ids(tails[r] + list(step.prefix)) for r in idx])
                    mask = torch.cat([left_mask(lengths[part], self.device), tail_mask], dim=1)
                    positions = torch.tensor(lengths[part], device=self.device)[:, None] + position_ids(tail_mask)
                    cache = self.fwd.shared_cache(past, (len(idx), 1), embeds.shape[1])
                    out[idx] = self.fwd.last(embeds, mask, positions, cache)[:, list(step.next_ids)]
            return out

        return trie.combine([step_logprobs(step) for step in trie.steps])

    # ------------------------------------------------------------------ forward helpers

    # ------------------------------------------------------------------ the three paths

    def _suffix_path(self, prompt_embeds: torch.Tensor, enc: Encoded) -> torch.Tensor:
        P, B = prompt_embeds.shape[0], len(enc.heads)
        contexts = [enc.lead + h for h in enc.heads]
        order = sorted(range(B), key=lambda b: len(contexts[b]))
        lengths = [len(contexts[b]) for b in order]
        stack = self.fwd.padded_contexts([contexts[b] for b in order])
        if prompt_embeds.shape[1] + len(enc.cue) == 0:
            raise TaskError("nothing to score after the input: give the template a cue or use a prompt of >=1 token")

        def step_logprobs(step: Step) -> torch.Tensor:
            cue_ids = enc.cue + list(step.prefix)  # a word's earlier tokens extend the cue (teacher forcing)
            cue = self.fwd.embed_ids(cue_ids) if cue_ids else prompt_embeds.new_zeros(0, prompt_embeds.shape[2])
            tail = torch.cat([prompt_embeds, cue.expand(P, -1, -1)], dim=1)  # (P, prompt + cue, hidden)
            steps = torch.arange(tail.shape[1], device=self.device)

            def forward(ex: slice, cand: slice) -> torch.Tensor:
                n_c, longest = cand.stop - cand.start, lengths[ex.stop - 1]
                past = [(k[ex, None, :, -longest:], v[ex, None, :, -longest:]) for k, v in stack]
                ctx_mask = left_mask(lengths[ex], self.device).repeat_interleave(n_c, 0)
                mask = torch.cat([ctx_mask, ctx_mask.new_ones(len(ctx_mask), tail.shape[1])], dim=1)
                positions = (torch.tensor(lengths[ex], device=self.device)[:, None] + steps).repeat_interleave(n_c, 0)
                cache = self.fwd.shared_cache(past, (ex.stop - ex.start, n_c), tail.shape[1])
                return self.fwd.last(tail[cand].repeat(ex.stop - ex.start, 1, 1), mask, positions, cache)

            return self.fwd.blockwise(lengths, order, P, list(step.next_ids), lambda n: (n, tail.shape[1]), forward)

        return enc.trie.combine([step_logprobs(step) for step in enc.trie.steps])

    def _prefix_path(self, prompt_embeds: torch.Tensor, enc: Encoded) -> torch.Tensor:
        P, B = prompt_embeds.shape[0], len(enc.heads)
        lead = self.fwd.embed_ids(enc.lead).expand(P, -1, -1) if enc.lead else prompt_embeds[:, :0]
        ctx = torch.cat([lead, prompt_embeds], dim=1)
        ctx_len = ctx.shape[1]
        ones = torch.ones(P, ctx_len, dtype=torch.long, device=self.device)
        # each candidate's prompt is encoded once, then shared by all B examples
        parts = [self.fwd.prefill(ctx[s], ones[s]) for s in self.planner.chunks(P, 0, ctx_len)]
        prompt_kv = [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts])) for i in range(len(parts[0]))]
        order = sorted(range(B), key=lambda b: len(enc.heads[b]))

        def step_logprobs(step: Step) -> torch.Tensor:
            tails = [self.fwd.embed_ids(enc.heads[b] + enc.cue + list(step.prefix)) for b in order]

            lengths = [len(t) for t in tails]

            def forward_block(ex: slice, cand: slice) -> torch.Tensor:
                n_c = cand.stop - cand.start
                embeds, tail_mask = left_pad(tails[ex])
                past = [(k[None, cand], v[None, cand]) for k, v in prompt_kv]
                mask = torch.cat([ones[:1].expand(len(tail_mask), -1), tail_mask], dim=1).repeat_interleave(n_c, 0)
                positions = (ctx_len + position_ids(tail_mask)).repeat_interleave(n_c, 0)
                cache = self.fwd.shared_cache(past, (ex.stop - ex.start, n_c), embeds.shape[1])
                return self.fwd.last(embeds.repeat_interleave(n_c, 0), mask, positions, cache)

            def forward(ex: slice, cand: slice) -> torch.Tensor:  # rows stay example-major across the runs
                runs = self.fwd.window_safe(lengths, ex, ctx_len)
                return forward_block(ex, cand) if len(runs) == 1 else torch.cat([forward_block(r, cand) for r in runs])

            return self.fwd.blockwise(lengths, order, P, list(step.next_ids), lambda n: (ctx_len, n), forward)

        return enc.trie.combine([step_logprobs(step) for step in enc.trie.steps])

    def _full_path(self, prompt_embeds: torch.Tensor, enc: Encoded, placement: Placement) -> torch.Tensor:
        P, B = prompt_embeds.shape[0], len(enc.heads)
        emb = self.fwd.embed_ids
        lead = emb(enc.lead) if enc.lead else prompt_embeds[0, :0]
        heads = [emb(h) for h in enc.heads]

        def step_logprobs(step: Step) -> torch.Tensor:
            tail_ids = self._tail_ids(enc, step)
            tail = emb(tail_ids) if tail_ids else lead[:0]
            longest = len(enc.lead) + prompt_embeds.shape[1] + max(map(len, enc.heads)) + len(tail_ids)
            results = []
            for part in self.planner.chunks(P * B, 0, longest):
                seqs = []
                for r in range(part.start, part.stop):
                    p, b = divmod(r, B)
                    middle = [prompt_embeds[p], heads[b]] if placement is Placement.PREFIX else [heads[b], prompt_embeds[p]]
                    seqs.append(torch.cat([lead, *middle, tail]))
                if self.is_masked:
                    results.append(self.fwd.masked_scores(seqs, 1)[:, list(step.next_ids)])  # <mask> </s> ends each row
                else:
                    embeds, mask = left_pad(seqs)
                    results.append(self.fwd.last(embeds, mask, position_ids(mask))[:, list(step.next_ids)])
            return torch.cat(results)

        return enc.trie.combine([step_logprobs(step) for step in enc.trie.steps])

    def _tail_ids(self, enc: Encoded, step: Step) -> list[int]:
        """What follows the input on the full path: the cue, the step's label prefix, and a masked LM's <mask> </s>."""
        return enc.cue + list(step.prefix) + (
            [self.tokenizer.mask_token_id, self.tokenizer.sep_token_id or self.tokenizer.eos_token_id]
            if self.is_masked else [])


@dataclass
class TextExactStats:
    """How hard prompts were scored as text: `repaired` scored with ids other than their own (their text
    re-tokenizes differently in context), `row_by_row` whose ids depend on the example."""

    prompts: int = 0
    repaired: int = 0
    row_by_row: int = 0

    def add(self, prompts: int, repaired: int, row_by_row: int) -> None:
        self.prompts, self.repaired, self.row_by_row = (self.prompts + prompts, self.repaired + repaired,
                                                        self.row_by_row + row_by_row)
