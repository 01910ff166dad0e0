"""The public API as a notebook uses it: load a task, tune, classify, read the decision, reload the run folder,
and the same through the scikit-learn estimator.

    python examples/notebook.py                # SmolLM2-135M, the built-in review set (about a minute on a laptop)
    python examples/notebook.py --model tiny   # the random tiny model: seconds, numbers meaningless
"""
from __future__ import annotations

import argparse
import tempfile

from sklearn.model_selection import cross_val_score

import bbtune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), tiny, a HF folder or a .gguf file")
    parser.add_argument("--budget", type=int, default=60, help="model calls for the search")
    args = parser.parse_args(argv)

    task = bbtune.load_task("demo", k=8, seed=42, template="{text} It was{label}",
                            verbalizer='{"negative": " terrible", "positive": " great"}', test_limit=48)
    with tempfile.TemporaryDirectory() as folder:
        run = bbtune.tune(task, model=args.model, mode="soft", budget_calls=args.budget, run_dir=folder, progress=False)
        m = run.metrics
        print(f"returned the {m.selected} prompt: test {m.test_acc:.3f} against the manual prompt's "
              f"{m.manual_test_acc:.3f} ({m.manual_calibrated_test_acc or float('nan'):.3f} calibrated)")
        for p in run.predict(["The room was clean and the staff were kind.", "It broke after a day."]):
            print(f"  {p.label:<9} {p.probs}")
        again = bbtune.load_run(folder)  # what `bbtune predict` reads
        assert again.predict(["It broke after a day."])[0] == run.predict(["It broke after a day."])[0]

    texts = [ex.text for ex in task.train + task.dev]
    labels = [ex.label for ex in task.train + task.dev]
    clf = bbtune.PromptClassifier(model=args.model, template="{text} It was{label}",
                                  verbalizer={"negative": " terrible", "positive": " great"},
                                  budget_calls=max(args.budget // 2, 10), popsize=10)
    print("PromptClassifier, 2-fold accuracy:", cross_val_score(clf, texts, labels, cv=2).round(3).tolist())


if __name__ == "__main__":
    main()
