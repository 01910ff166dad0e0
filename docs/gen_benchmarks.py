"""Benchmark pages and the README's results table, generated from ``benchmarks/results/*.json`` and the finished
studies' ``benchmarks/studies/*/*.json`` (never typed).

As a script:

    python docs/gen_benchmarks.py --readme       # rewrite the README's generated tables (results, servers)
    python docs/gen_benchmarks.py --out DIR      # write the benchmark pages to DIR (to read them without mkdocs)

As a MkDocs hook (``hooks:`` in mkdocs.yml): ``on_config`` builds the navigation from the pages present (every
page under ``docs/guide/`` is listed, known ones first), ``on_files`` adds the generated benchmark pages, so
``mkdocs build`` always shows the result files as they are. A result file that no page claims lands on
"Other results"; a new row or method in ``matrix.json`` appears in both tables on the next build.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STUDIES = ROOT / "benchmarks" / "studies"  # finished one-off studies: a folder each, its script beside its results
README = ROOT / "README.md"
BASELINE = "manual_calibrated"
# The order methods are listed in; a method matrix.json holds that is not here follows, in name order.
METHOD_ORDER = ("manual_readout_top20_lift95", "manual_or_in_context_readout_top20_lift95",
                "manual_or_in_context_readout_top20_lift95_acc", "in_context_readout_top20_lift95", "manual_readout_top20",
                "manual_readout_top20_labels", "manual_readout_top1000", "in_context_readout_top1000", "manual", "manual_calibrated", "in_context_calibrated", "in_context_train", "bbt_soft",
                "bbt_soft_paired", "bbt_soft_or_demos", "bbt_hard", "prompt_tuning", "pez")
METHOD_WORDS = {
    "manual_readout_top20": "the template + a readout of the top-20 log-probs a chat API returns, chosen out of fold; "
                            "no search",
    "manual_readout_top20_labels": "the same, label words below the top-20 read by a second request (logit_bias)",
    "manual_readout_top20_lift95": "the template + a readout of the top-20, the label words and the 95 tokens listed "
                                   "most often on train read below it too (logit_bias, 19 a request); no search",
    "manual_readout_top1000": "the same from a top-1,000 (llama.cpp's depth)",
    "in_context_readout_top20_lift95": "the template showing 2 training examples per class before the input (taken "
                                       "out of train) + the same lifted top-20 readout; no search",
    "manual_or_in_context_readout_top20_lift95": "the template, or the template with those demonstrations where its "
                                                 "readout is more accurate out of fold on train + dev beyond noise "
                                                 "(paired test, p <= 0.1); no search",
    "manual_or_in_context_readout_top20_lift95_acc": "the same where the demonstrations' readout is more accurate "
                                                     "out of fold at all",
    "in_context_readout_top1000": "the template showing the demonstrations + a readout of a top-1,000",
    "manual_readout_top20_top_logprobs_api": "the labels-lifted top-20 readout read through an OpenAI-shaped API "
                                             "(the mock: completions, at most 20 log-probs)",
    "manual_readout_top20_lift95_top_logprobs_api": "the template's lifted top-20 readout read through the same API "
                                                    "(95 tokens below the list by logit_bias)",
    "manual_readout_top20_chat_api": "the same through the API's chat endpoint (one message per request, its chat "
                                     "template around the prompt)",
    "bbt_soft_labels_top20": "BBT soft searched on the calibrated label words, then a readout of the top-20",
    "bbt_soft_fixed_top20": "BBT soft searched through a top-20 logistic readout fitted once on the template",
    "bbt_soft_fold_top20": "BBT soft searched through each candidate's own top-20 readout, out of fold",
    "bbt_hard_labels_top20": "BBT hard (text) searched on the calibrated label words, then a readout of the top-20",
    "bbt_hard_labels_top20_lift95": "that text prompt, its readout reading 95 tokens below the top-20 too",
    "bbt_hard_fixed_top20": "BBT hard (text) searched through a top-20 logistic readout fitted once on the template",
    "bbt_hard_fold_top20": "BBT hard (text) searched through each candidate's own top-20 readout, out of fold",
    "bbt_hard_fixed_top20_lift95": "the fixed-readout search's text prompt, its readout reading 95 tokens below the "
                                   "top-20 too",
    "bbt_hard_fold_top20_lift95": "the out-of-fold search's text prompt, its readout reading 95 tokens below the "
                                  "top-20 too",
    "best_prompt_readout_top20": "the best of the template and the search's text prompts, each with its readout",
    "boosted_top20": "a boosted vote (SAMME) of the template and the search's text prompts, each with a readout",
    "manual": "the template alone",
    "manual_calibrated": "the template, one bias per label fitted on train",
    "in_context_calibrated": "2 demonstrations per class, contextual calibration",
    "in_context_train": "2 demonstrations per class, bias fitted on train",
    "bbt_soft": "BBT soft prompt: what `bbtune tune` returns at the defaults",
    "bbt_soft_paired": "the same search behind the stricter `paired` guard",
    "bbt_soft_or_demos": "BBT soft, or the demonstrations where they win on dev",
    "bbt_hard": "BBT hard prompt (text, searched by projection in the loop)",
    "prompt_tuning": "gradient prompt tuning, same forward passes (needs the weights)",
    "pez": "gradient hard-prompt search (needs the weights)",
}
TASK_NAMES = {"sst2": "SST-2", "trec": "TREC", "sst5": "SST-5", "agnews": "AG News"}
# Per-call counts a matrix row may carry; the column shows where the rows have them.
CALLS_KEYS = ("calls", "calls_per_run")
PER_INPUT_KEYS = ("calls_per_input", "calls_per_test_input")
SAME_RUN = 1e-3  # the train-loss gap within which a run through a server is the same run as the local one

# Result files by page (a file is claimed by the first page whose prefix it starts with); the rest: "other".
PAGES = {
    "matrix": ("The generalization matrix", ("matrix",)),
    "readouts": ("Readouts of the returned log-probs", ("readouts", "search_readout", "boosting")),
    "selection": ("Which prompt a run returns", ("selection", "cv_lever")),
    "levers": ("Search settings", ("sst2_", "agnews_", "demo_", "placement", "verbalizers", "fluency",
                                   "embedding_space")),
    "gradient": ("Compared with gradient methods", ("compare_",)),
    "servers": ("Servers, text mode and faults", ("servers", "text_mode", "faults", "remote_throughput")),
    "generation": ("Generation tasks", ("generation",)),
    "speed": ("Speed and sweeps", ("eval_speed", "sweep_scaling")),
}
IMAGES = {"matrix": ("matrix.png",), "gradient": ("compare_sst2.png",)}
PREFERRED_GUIDE = ("tuning-locally", "remote", "readouts", "any-label", "generation", "durable-runs", "sweeps", "gradient",
                   "defaults")


# ------------------------------------------------------------------ the results table (README and matrix page)

def ordered_methods(rows: Iterable[dict[str, Any]]) -> list[str]:
    present = {r["method"] for r in rows}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _first(row: dict[str, Any], keys: Sequence[str]) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def results_table(matrix: dict[str, Any], every_cell: bool = False) -> str:
    """One row per method: mean test accuracy per task (over models and seeds), the mean gain over the calibrated
    manual prompt on the same cells, and the calls it spends where the rows record them. `every_cell`: only the
    methods run on every cell (the README's table; studies on a few cells stay on the benchmark pages)."""
    rows = matrix["rows"]
    if every_cell:
        cells = {(r["task"], r["model"], r["seed"]) for r in rows}
        covered = {m: {(r["task"], r["model"], r["seed"]) for r in rows if r["method"] == m}
                   for m in {r["method"] for r in rows}}
        rows = [r for r in rows if covered[r["method"]] == cells]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    base = {(r["task"], r["model"], r["seed"]): r["test_acc"] for r in rows if r["method"] == BASELINE}
    with_calls = any(_first(r, CALLS_KEYS + PER_INPUT_KEYS) is not None for r in rows)
    header = ["method", "what it is", *(TASK_NAMES.get(t, t) for t in tasks), "gain vs calibrated", "cells"]
    header += ["calls per run / per test input"] if with_calls else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in ordered_methods(rows):
        mine = [r for r in rows if r["method"] == method]
        accs = [_mean([r["test_acc"] for r in mine if r["task"] == t]) for t in tasks]
        gains = [r["test_acc"] - base[key] for r in mine if (key := (r["task"], r["model"], r["seed"])) in base]
        line = [f"`{method}`", METHOD_WORDS.get(method, ""), *("-" if a is None else f"{a:.1f}" for a in accs),
                "-" if method == BASELINE or not gains else f"{statistics.fmean(gains):+.1f}",
                str(len({(r["task"], r["model"], r["seed"]) for r in mine}))]
        if with_calls:
            line.append(_calls_cell(mine))
        lines.append("| " + " | ".join(line) + " |")
    models = sorted({r["model"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    return "\n".join(lines) + (f"\n\nTest accuracy in %, the mean over {', '.join(models)} and seeds "
                               f"{', '.join(map(str, seeds))}; gain in points over the calibrated manual prompt on "
                               "the same task, model and seed; cells: the task x model x seed cells a method was run "
                               "on (a method on fewer cells is a study of those). Generated from "
                               "`benchmarks/results/matrix.json`.")


def _calls_cell(rows: Sequence[dict[str, Any]]) -> str:
    per_run = [v for r in rows if (v := _first(r, CALLS_KEYS)) is not None]
    per_input = [v for r in rows if (v := _first(r, PER_INPUT_KEYS)) is not None]
    if not per_run and not per_input:
        return "-"
    return f"{_mean_text(per_run)} / {_mean_text(per_input)}"


def _mean_text(values: Sequence[float]) -> str:
    return f"{round(statistics.fmean(values), 2):g}" if values else "-"


def cell_table(matrix: dict[str, Any]) -> str:
    """Task x model rows; per method the mean test accuracy over seeds and (in brackets) the mean gain."""
    rows = matrix["rows"]
    methods = ordered_methods(rows)
    base = {(r["task"], r["model"], r["seed"]): r["test_acc"] for r in rows if r["method"] == BASELINE}
    out = [["task", "model", *methods]]
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        line = [TASK_NAMES.get(task, task), model]
        for method in methods:
            mine = [r for r in rows if (r["task"], r["model"], r["method"]) == (task, model, method)]
            gains = [r["test_acc"] - base[k] for r in mine if (k := (task, model, r["seed"])) in base]
            acc = _mean([r["test_acc"] for r in mine])
            line.append("-" if acc is None else f"{acc:.1f}" + (
                f" ({statistics.fmean(gains):+.1f})" if gains and method != BASELINE else ""))
        out.append(line)
    return markdown(out)


def servers_table(servers: dict[str, Any]) -> str:
    """The servers bbtune was tried on (``servers.json``): per server and score mode what the probe found and how
    far the server's label scores are from the local model's."""
    head = ["server", "score mode", "what the probe found", "label-margin gap to local scores (nats)",
            "same argmax as local"]
    lines = [head]
    for row in servers["rows"]:
        if "probe_error" in row:  # "...: the server's X; use --remote-mode Y" -> "refused: the server's X"
            found = "refused: " + row["probe_error"].split(": ")[-1].split(";")[0]
        else:
            found = row["probe"]
        gap = row.get("margin gap max")
        agree = row.get("argmax agree")
        lines.append([row["server"], f"`{row['mode']}`", found,
                      "-" if gap is None else f"{gap:.1e}", "-" if agree is None else f"{agree:.0%}"])
    setup = servers["setup"]
    return markdown(lines) + (f"\n\nSmolLM2-135M-Instruct, hard prompts on SST-2 ({setup['k']} examples per class, "
                              f"{setup['budget_calls']} calls, {setup['test_limit']} test sentences); the gap is the "
                              "largest difference of log p(positive) - log p(negative) between server and local "
                              "model over the same texts; chat is not compared (the server wraps the text in its "
                              "chat template). Generated from `benchmarks/results/servers.json`.")


def same_run_table(runs: dict[str, Any]) -> str:
    """BBT soft through vLLM against the same run on the local model (``vllm_bbt.json``), and where they part."""
    runs_rows = [["task", "calls", "best train loss, vLLM / local", "largest train-loss gap",
                  "test acc, vLLM / local", "requests", "labels missing"]]
    for task, run in runs.items():
        there, here = run["vllm"], run["local"]
        runs_rows.append([TASK_NAMES.get(task, task), there["calls"],
                          f"{there['best_train_loss']:.4f} / {here['best_train_loss']:.4f}",
                          f"{run['max gap']['train_loss']:.1e}",
                          f"{100 * there['test_acc']:.1f} / {100 * here['test_acc']:.1f}", there["requests"],
                          f"{there['missing_rate']:.1%}"])
    parted = [f"{TASK_NAMES.get(task, task)} from generation {gen}, with {run['vllm']['missing_rate']:.1%} of its "
              "label scores missing from the server's top-k" for task, run in runs.items()
              if (gen := _first_gap(run["generations"], SAME_RUN)) is not None]
    where = ("; the runs part where labels fall outside the top-k: " + "; ".join(parted) +
             " (vLLM's default raw log-probs; `make vllm-server` starts it with `--logprobs-mode processed_logprobs`"
             ", which keeps every label in the list)") if parted else ""
    return ("BBT soft end to end through vLLM's `prompt_embeds` against the same run (task, seed, budget) on the "
            "local model:\n\n" + markdown(runs_rows) + "\n\nGenerated from `benchmarks/results/vllm_bbt.json`. "
            f"Train losses agree to {SAME_RUN:g} at every logged generation until a label is missing{where}.")


def _first_gap(generations: Sequence[dict[str, Any]], tolerance: float) -> int | None:
    """The first logged generation whose train losses differ by more than `tolerance`, if any."""
    return next((g["generation"] for g in generations if g.get("train_loss gap", 0.0) > tolerance), None)


def readme_blocks() -> dict[str, str]:
    """Each generated README block's text, from the result files as they are."""
    return {"results table": results_table(load(RESULTS / "matrix.json"), every_cell=True),
            "servers table": servers_table(load(RESULTS / "servers.json")) + "\n\n"
            + same_run_table(load(RESULTS / "vllm_bbt.json"))}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: generated by docs/gen_benchmarks.py --readme -->", f"<!-- end of {name} -->"


def update_readme(path: Path = README) -> bool:
    """Rewrite the README's generated blocks from the result files; True when one changed."""
    text = original = path.read_text()
    for name, block in readme_blocks().items():
        start_mark, end_mark = _markers(name)
        start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
        text = text[:start] + "\n" + block + "\n" + text[end:]
    if text == original:
        return False
    path.write_text(text)
    return True


def readme_block(name: str = "results table", path: Path = README) -> str:
    """The README's block `name` as it stands."""
    text = path.read_text()
    start_mark, end_mark = _markers(name)
    return text[text.index(start_mark) + len(start_mark):text.index(end_mark)].strip()


# ------------------------------------------------------------------ any result file as tables

def load(path: Path) -> Any:
    return json.loads(path.read_text())


def markdown(rows: Sequence[Sequence[Any]]) -> str:
    head, *body = rows
    return "\n".join(["| " + " | ".join(map(_cell, head)) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(map(_cell, row)) + " |" for row in body)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
        text = text if len(text) <= 80 else text[:77] + "..."
    else:
        text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(v, dict) for v in value))


def records_table(records: Sequence[dict[str, Any]]) -> str:
    """A list of flat records as one table: the columns every record's scalar fields name, in first-seen order."""
    columns = list(dict.fromkeys(k for r in records for k, v in r.items() if _scalar(v)))
    return markdown([columns, *([r.get(c) for c in columns] for r in records)])


def file_section(path: Path) -> str:
    """One result file: its note and settings, then every list of records as a table (per-run detail counted)."""
    data = load(path)
    parts = [f"### `{path.name}`"]
    if isinstance(data, list):
        records = [r for r in data if isinstance(r, dict)]
        if records and all(_scalar(v) or isinstance(v, dict) for r in records for v in r.values()):
            parts.append(records_table([_flatten(r) for r in records]))
        return "\n\n".join(parts)
    if isinstance(data.get("note"), str):
        parts.append(data["note"])
    settings = {k: v for k, v in data.items() if _scalar(v) and k != "note"}
    for key in ("args", "setup", "setting", "settings", "goal", "machine", "task"):
        if isinstance(data.get(key), dict):
            settings.update({f"{key}.{k}": v for k, v in data[key].items() if _scalar(v)})
    if settings:
        parts.append(markdown([["setting", "value"], *settings.items()]))
    for key, value in data.items():
        if key == "runs" and isinstance(value, list):
            parts.append(f"Per-run detail: {len(value)} runs (in the file).")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"**{key}**\n\n" + records_table([_flatten(v) for v in value]))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            parts.append(f"**{key}**\n\n" + records_table([{"": k, **_flatten(v)} for k, v in value.items()]))
    return "\n\n".join(parts)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts of one record as dotted columns (one level of lists of dicts stays a short JSON cell)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and len(value) <= 8:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ------------------------------------------------------------------ pages

def page_of(name: str) -> str:
    return next((page for page, (_, prefixes) in PAGES.items() if name.startswith(prefixes)), "other")


def result_files(results: Path = RESULTS, studies: Path = STUDIES) -> list[Path]:
    """Every result file, by name: the live benchmarks' and the finished studies'."""
    return sorted([*results.glob("*.json"), *studies.glob("*/*.json")], key=lambda path: path.name)


def benchmark_pages(results: Path = RESULTS, studies: Path = STUDIES) -> dict[str, str]:
    """``benchmarks/<page>.md`` -> Markdown, for every page that has result files, plus the index."""
    files: dict[str, list[Path]] = {}
    for path in result_files(results, studies):
        files.setdefault(page_of(path.name), []).append(path)
    pages: dict[str, str] = {}
    titles = {**{k: t for k, (t, _) in PAGES.items()}, "other": "Other results"}
    for page in [*PAGES, "other"]:
        if page not in files:
            continue
        body = [f"# {titles[page]}", "Generated from `benchmarks/results/` and `benchmarks/studies/` by "
                "`docs/gen_benchmarks.py` on every docs build: the numbers are the files', as measured (machine and "
                "settings in each file)."]
        if page == "matrix":
            matrix = load(results / "matrix.json")
            body += ["## Per method", results_table(matrix), "## Per task and model",
                     "Mean test accuracy over seeds (mean gain over the calibrated manual prompt).", cell_table(matrix)]
            if matrix.get("goals"):
                body += ["## Goals as recorded", markdown([["goal", "met", "measured"],
                                                           *([g, "yes" if v[0] else "no", v[1]]
                                                             for g, v in matrix["goals"].items())])]
        body += [f"![{image}]({image})" for image in IMAGES.get(page, ()) if (results / image).exists()]
        body += ["## Result files", *(file_section(p) for p in files[page])]
        pages[f"benchmarks/{page}.md"] = "\n\n".join(body) + "\n"
    listing = [[f"[{titles[p]}]({p}.md)", ", ".join(f"`{f.name}`" for f in files[p])] for p in [*PAGES, "other"]
               if p in files]
    pages["benchmarks/index.md"] = "\n\n".join([
        "# Benchmarks", "Every table in this section is generated from the JSON files in `benchmarks/results/` "
        "(the scripts in `benchmarks/` write them) and `benchmarks/studies/` (finished studies, each folder its "
        "script and its results). The headline table, over four tasks, two models and three seeds:",
        results_table(load(results / "matrix.json")), markdown([["page", "result files"], *listing])]) + "\n"
    return pages


def images(results: Path = RESULTS) -> dict[str, Path]:
    return {f"benchmarks/{name}": results / name for names in IMAGES.values() for name in names
            if (results / name).exists()}


# ------------------------------------------------------------------ MkDocs hook

def on_config(config: Any) -> Any:
    """The navigation, from the pages present: every Markdown page is listed (the guide's known pages in reading
    order, then any other page of each folder by name), so a new page needs no edit here or in mkdocs.yml."""
    docs = Path(config["docs_dir"])
    found = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    guide = [f"guide/{g}.md" for g in PREFERRED_GUIDE if f"guide/{g}.md" in found]
    pages = benchmark_pages()
    bench = [uri for uri in ["benchmarks/index.md", *(f"benchmarks/{p}.md" for p in [*PAGES, "other"])] if uri in pages]
    sections: dict[str, list[str]] = {"Guide": guide, "Benchmarks": bench}
    for uri in found:
        if uri == "index.md" or uri in guide:
            continue
        folder = uri.split("/")[0] if "/" in uri else ""
        title = {"guide": "Guide", "reference": "API reference", "": "More"}.get(folder, folder.replace("-", " ").title())
        sections.setdefault(title, []).append(uri)
    config["nav"] = [{"Home": "index.md"}, *({title: uris} for title, uris in sections.items() if uris)]
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, content in benchmark_pages().items():
        files.append(File.generated(config, uri, content=content))
    for uri, path in images().items():
        files.append(File.generated(config, uri, content=path.read_bytes()))
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's generated tables from the result files")
    parser.add_argument("--out", type=Path, help="write the benchmark pages under this folder")
    args = parser.parse_args(argv)
    if args.readme:
        print("README.md tables", "updated" if update_readme() else "already up to date")
    if args.out:
        for uri, content in benchmark_pages().items():
            (args.out / uri).parent.mkdir(parents=True, exist_ok=True)
            (args.out / uri).write_text(content)
        print(f"benchmark pages written under {args.out}")


if __name__ == "__main__":
    main()
