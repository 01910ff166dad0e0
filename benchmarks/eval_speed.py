"""How fast LocalBackend scores one CMA-ES generation, against the limit of the hardware.

One generation = `popsize` soft prompts of `prompt-tokens` tokens, each scored on the k-shot training set
(SST-2 16-shot: 32 examples). Measured on the same machine, in one run, interleaved so that other load
hits every line alike:

- raw:        bare model forwards of exactly the suffix path's batches (same rows, new tokens and cached KV
              length, logits_to_keep=1), with the KV already in a cache: the limit for that work.
- suffix:     `<input> <prompt> <cue>` with the inputs' keys/values reused (warm store); `cold` is the first
              generation, which also encodes the inputs.
- prefix:     `<prompt> <input> <cue>` with each candidate's prompt encoded once and shared by its examples.
- naive:      `<prompt> <input> <cue>`, every (candidate, example) row run whole (kv_reuse=False).

    python benchmarks/eval_speed.py --model smollm2 --prompt-tokens 10 --popsize 10 --k 16 --seed 13
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bbtune.backends.kvcache import new_cache
from bbtune.backends.batching import ForwardBatch
from bbtune.backends.local import LocalBackend
from bbtune.constants import DEFAULT_MEMORY_BUDGET_MB
from bbtune.core.prompts import SoftPrompt
from bbtune.tasks import Task, load_task

DATA = Path(os.environ.get("BBTUNE_SST2") or Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model name or path for LocalBackend")
    p.add_argument("--data", default=str(DATA), help="folder with SST-2 train.jsonl")
    p.add_argument("--prompt-tokens", type=int, default=10)
    p.add_argument("--popsize", type=int, default=10)
    p.add_argument("--k", type=int, default=16, help="training examples per class")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--repeats", type=int, default=3, help="timed generations per path (after one warm-up)")
    p.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip-naive", action="store_true", help="skip the slow naive and prefix paths")
    p.add_argument("--out", default="benchmarks/results/eval_speed.json")
    return p.parse_args(argv)


def population(table: torch.Tensor, n: int, tokens: int, gen: torch.Generator) -> list[SoftPrompt]:
    """Fresh soft prompts, as CMA-ES gives each generation: rows of the embedding `table` plus noise."""
    ids = torch.randint(0, table.shape[0], (n, tokens), generator=gen)
    return [SoftPrompt(e) for e in table[ids] + 0.01 * torch.randn(n, tokens, table.shape[1], generator=gen)]


class Timing:
    """Wall and CPU seconds of a block (CUDA synchronised); CPU time is steadier when other jobs share the cores."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu, self.tokens = device, 0.0, 0.0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def __enter__(self) -> "Timing":
        self._sync()
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.wall = time.perf_counter() - self._start[0]
        self.cpu = time.process_time() - self._start[1]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.backend = LocalBackend(args.model, device=args.device, dtype=args.dtype,
                                    memory_budget_mb=args.memory_budget_mb)
        self.task: Task = load_task(args.data, "sentiment", k=args.k, seed=args.seed)
        self.examples = list(self.task.train)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.table = self.backend.vocabulary().embeddings

    def generation(self, placement: str, kv_reuse: bool) -> Callable[[], Timing]:
        """A callable that scores one fresh population and returns its timing."""
        fmt = self.task.with_placement(placement).format

        def run() -> Timing:
            prompts = population(self.table, self.args.popsize, self.args.prompt_tokens, self.gen)
            self.backend.kv_reuse = kv_reuse
            tokens = self.backend.stats.tokens_processed
            with Timing(self.backend.device) as t:
                self.backend.score(prompts, self.examples, fmt)
            t.tokens = self.backend.stats.tokens_processed - tokens
            return t

        return run

    def raw(self, batches: list[ForwardBatch]) -> Callable[[], Timing]:
        """Bare forwards of the same batch shapes, KV pre-filled outside the clock: the limit."""
        model, device = self.backend.model, self.backend.device
        cfg = self.backend._cfg
        dtype = model.get_input_embeddings().weight.dtype
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        cache_kw = self.backend.fwd.cache_kw

        def inputs(b: ForwardBatch) -> dict[str, Any]:
            kv = [(torch.randn(b.rows, kv_heads, b.cached, head_dim, device=device, dtype=dtype),) * 2
                  for _ in range(cfg.num_hidden_layers)]
            return {"inputs_embeds": torch.randn(b.rows, b.new, cfg.hidden_size, device=device, dtype=dtype) * 0.02,
                    "attention_mask": torch.ones(b.rows, b.cached + b.new, dtype=torch.long, device=device),
                    "position_ids": (b.cached + torch.arange(b.new, device=device))[None].expand(b.rows, -1),
                    cache_kw: new_cache(model.config, kv), "use_cache": True, "logits_to_keep": 1}

        def run() -> Timing:
            total = Timing(device)
            for b in batches:
                kwargs = inputs(b)
                with Timing(device) as t, torch.inference_mode():
                    torch.log_softmax(model(**kwargs).logits[:, -1].float(), dim=-1)
                total.wall, total.cpu, total.tokens = total.wall + t.wall, total.cpu + t.cpu, total.tokens + b.rows * b.new
            return total

        return run

    def run(self) -> dict[str, Any]:
        a, backend = self.args, self.backend
        suffix = self.generation("suffix", True)
        cold = suffix()  # encodes the 32 inputs, then scores
        backend.planner.log.clear()
        suffix()  # warm-up; its batches are the shapes raw replays
        shapes = [b for b in backend.planner.log if b.cached > 0]
        lines: dict[str, Callable[[], Timing]] = {"raw": self.raw(shapes), "suffix": suffix}
        if not a.skip_naive:
            lines["prefix"] = self.generation("prefix", True)
            lines["naive"] = self.generation("prefix", False)
            lines["prefix"]()  # warm-up
        times: dict[str, list[Timing]] = {k: [] for k in lines}
        for _ in range(a.repeats):  # interleaved: outside load hits each line alike
            for name, fn in lines.items():
                times[name].append(fn())
        return self.report(times, cold, shapes)

    def report(self, times: dict[str, list[Timing]], cold: Timing, shapes: list[ForwardBatch]) -> dict[str, Any]:
        a = self.args
        rows = a.popsize * len(self.examples)
        new_tokens = sum(b.rows * b.new for b in shapes)
        med = {k: statistics.median(t.wall for t in v) for k, v in times.items()}
        cpu = {k: statistics.median(t.cpu for t in v) for k, v in times.items()}
        out: dict[str, Any] = {
            "setting": {k: getattr(a, k) for k in ("model", "prompt_tokens", "popsize", "k", "seed", "repeats",
                                                   "memory_budget_mb", "device", "dtype")},
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
            "rows_per_generation": rows,
            "suffix_batches": [b._asdict() for b in shapes],
            "wall_s": {k: [t.wall for t in v] for k, v in times.items()},
            "cpu_s": {k: [t.cpu for t in v] for k, v in times.items()},
            "tokens_per_generation": {k: v[0].tokens for k, v in times.items()},
            "median_wall_s": med,
            "median_cpu_s": cpu,
            "raw_tokens_per_s": new_tokens / med["raw"],
            "suffix_tokens_per_s": new_tokens / med["suffix"],
            "suffix_ratio_to_raw": med["raw"] / med["suffix"],
            "suffix_ratio_to_raw_cpu": cpu["raw"] / cpu["suffix"],
            "cold_generation_s": cold.wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if "naive" in med:
            for key in ("suffix", "prefix"):
                out[f"speedup_{key}_vs_naive"] = med["naive"] / med[key]
                out[f"speedup_{key}_vs_naive_cpu"] = cpu["naive"] / cpu[key]
        return out


def print_table(r: dict[str, Any]) -> None:
    s, med, cpu, tok = r["setting"], r["median_wall_s"], r["median_cpu_s"], r["tokens_per_generation"]
    print(f"{s['model']} {s['device']} {s['dtype']}, {r['machine']['torch_threads']} threads; population "
          f"{s['popsize']} x {r['rows_per_generation'] // s['popsize']} examples, {s['prompt_tokens']} prompt tokens, "
          f"memory budget {s['memory_budget_mb']:g} MB; median of {s['repeats']} generations")
    print(f"{'path':<28}{'wall s/gen':>11}{'cpu s/gen':>11}{'tokens':>8}{'vs naive':>10}{'vs raw':>8}")
    names = {"raw": "raw forward (the limit)", "suffix": "suffix + KV reuse (warm)", "prefix": "prefix sharing",
             "naive": "naive prefix (full rows)"}
    for key, label in names.items():
        if key in med:
            vs = f"{med['naive'] / med[key]:.2f}x" if "naive" in med else ""
            raw = f"{med['raw'] / med[key]:.3f}" if key in ("raw", "suffix") else ""
            print(f"{label:<28}{med[key]:>11.2f}{cpu[key]:>11.2f}{tok[key]:>8}{vs:>10}{raw:>8}")
    print(f"{'suffix, first generation':<28}{r['cold_generation_s']:>11.2f}")
    print(f"raw {r['raw_tokens_per_s']:.0f} tok/s, suffix {r['suffix_tokens_per_s']:.0f} tok/s (wall); suffix/raw "
          f"{r['suffix_ratio_to_raw']:.3f} wall, {r['suffix_ratio_to_raw_cpu']:.3f} cpu; peak RSS {r['peak_rss_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = Bench(args).run()
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
