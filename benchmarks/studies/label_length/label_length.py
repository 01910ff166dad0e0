"""Should a label word of several tokens be length-normalized?

With the label names as words (``--verbalizer names``) a multi-token word's exact score is the sum of its tokens'
log-probs, which favours short words. Compared on the manual prompt (the template alone), accuracy on a test
subset for
  sum          the exact log-prob of the word (bbtune's score)
  mean         the sum divided by the word's token count
  sum + calib  sum plus a per-label bias fitted on the seed's few-shot train set (what bbtune's loss uses)
  mean + calib the same on mean
The test subset is scored once; train (k per class) is drawn per seed, for the bias.

    python benchmarks/studies/label_length/label_length.py --model smollm2 --data ../shared/data/sst5 --preset sentiment-5 --seeds 13 42 100
Prints a Markdown table and the words' token counts.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import HardPrompt
from bbtune.search.calibration import fit_label_bias
from bbtune.tasks import load_task, verbalizer_token_sequences


def accuracy(scores: np.ndarray, gold: np.ndarray) -> float:
    return float((scores.argmax(1) == gold).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="../shared/data/sst5")
    parser.add_argument("--preset", default="sentiment-5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--test-limit", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backend, empty = LocalBackend(args.model), HardPrompt((), "")
    task = load_task(args.data, args.preset, verbalizer="names", k=args.k, seed=args.seeds[0], test_limit=args.test_limit)
    fmt = task.format
    lengths = np.array([len(s) for s in verbalizer_token_sequences(backend.tokenizer, fmt)], dtype=float)
    test = backend.score([empty], task.test, fmt)[0]
    gold = fmt.label_ids(task.test)
    rows: dict[str, list[float]] = {name: [] for name in ("sum", "mean", "sum + calib", "mean + calib")}
    for seed in args.seeds:
        train = load_task(args.data, args.preset, verbalizer="names", k=args.k, seed=seed, test_limit=1).train
        scored = backend.score([empty], train, fmt)[0]
        for name, norm in (("sum", 1.0), ("mean", lengths)):
            rows[name].append(accuracy(test / norm, gold))
            bias = fit_label_bias(scored / norm, fmt.label_ids(train))
            rows[f"{name} + calib"].append(accuracy(test / norm + bias, gold))
    words = ", ".join(f"{w!r}: {int(n)}" for w, n in zip(fmt.verbalizer.values(), lengths))
    print(f"{args.model} on {args.data}, {len(task.test)} test examples, seeds {args.seeds}; tokens per word: {words}\n")
    print("| scoring | test acc (mean over seeds) | min | max |\n|---|---|---|---|")
    for name, accs in rows.items():
        print(f"| {name} | {100 * statistics.mean(accs):.1f} | {100 * min(accs):.1f} | {100 * max(accs):.1f} |")


if __name__ == "__main__":
    main()
