"""One embedding space, on a real model: the template's cue given as token ids, as a soft prompt from the embedding
weight rows (what bbtune built before the fix), and as a soft prompt from the embedding module's output (what
`vocab.token_embeddings` gives now); plus generation 0 of a short BBT soft run from the cue against the manual
prompt's train loss. On Gemma the module scales rows by sqrt(hidden), so only the rows row may differ.

    python benchmarks/studies/embedding_space/embedding_space.py --model /path/gemma-3-270m-q4_k_m.gguf --out benchmarks/studies/embedding_space/embedding_space_gemma.json
    python benchmarks/studies/embedding_space/embedding_space.py --model smollm2 --out benchmarks/studies/embedding_space/embedding_space_smollm2.json
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
import json

import numpy as np

from bbtune import HardPrompt, LocalBackend, SoftPrompt, load_task, tune
from bbtune.core.table import markdown_table
from bbtune.search.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: the shared task_args
from task_args import add_task_args  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, "sst2", "sentiment", test_limit=100)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    seed = args.seeds[0]
    task = load_task(args.data, preset=args.preset, k=args.k, seed=seed, test_limit=args.test_limit)
    backend = LocalBackend(args.model)
    template, cue = task.format.template.without_cue()
    bare = task.with_template(template)
    ids = tuple(backend.tokenizer.encode(cue, add_special_tokens=False))
    rows = backend.model.get_input_embeddings().weight.detach().float()[list(ids)]
    prompts = {"hard prompt (token ids)": HardPrompt(ids, cue),
               "soft prompt from the weight rows (before the fix)": SoftPrompt(rows),
               "soft prompt from the embedding module (token_embeddings)": SoftPrompt(backend.embed_text_ids(ids))}
    table = []
    for name, prompt in prompts.items():
        ev = evaluate(backend, prompt, bare.test, bare.format)
        table.append({"the cue given as": name, "accuracy": round(ev.accuracy, 3), "loss": round(ev.loss, 3)})
    run = tune(task, backend, budget_calls=10, popsize=10, p0="cue", seed=seed, progress=False)
    start = {"generation 0 train loss": run.metrics.initial_train_loss,
             "manual prompt train loss (calibrated)": run.metrics.manual_train_loss}
    print(markdown_table(table, list(table[0])))
    print(json.dumps(start))
    print("scale (module / rows):", float(np.linalg.norm(prompts[list(prompts)[2]].embeds) / np.linalg.norm(rows)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "seed": seed, "test_n": len(task.test), "rows": table, **start}, f, indent=2)


if __name__ == "__main__":
    main()
