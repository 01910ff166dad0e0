"""Reading labelled examples (JSON Lines, CSV, TSV) and drawing few-shot splits from them, seeded."""
from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bbtune.errors import TaskError
from bbtune.tasks.format import Example


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a data row hold the input(s) and the label, and how label values are renamed.

    An empty `label` reads unlabelled rows (inputs to classify); `label_names` maps raw values to labels,
    e.g. ``{"0": "negative", "1": "positive"}`` for data whose labels are class indices.
    """

    text: str = "text"
    text_b: str | None = None
    label: str = "label"
    label_names: Mapping[str, str] | None = None
    encoding: str = "utf-8"  # of the files read (utf-8 also reads a byte-order mark)

    def __post_init__(self) -> None:
        if not self.text:
            raise TaskError("text_field is empty; name the field that holds each example's text (default: 'text')")

    def examples(self, rows: Sequence[Mapping[str, Any]], source: str) -> list[Example]:
        """Rows (dicts) as examples; a row lacking a field is a `TaskError` naming the flag to set."""
        if not rows:
            raise TaskError(f"{source} has no examples")
        out = []
        for i, row in enumerate(rows):
            missing = [f for f in (self.text, self.label, self.text_b) if f and f not in row]
            if missing:
                raise TaskError(f"{source}: row {i + 1} lacks field(s) {missing}; it has {sorted(row)} "
                                "(choose them with text_field, text_b_field, label_field)")
            label = _label_value(row[self.label], self.label, f"{source}: row {i + 1}") if self.label else ""
            label = (self.label_names or {}).get(label, label)
            text_b = _text_value(row[self.text_b], self.text_b, f"{source}: row {i + 1}") if self.text_b else None
            out.append(Example(_text_value(row[self.text], self.text, f"{source}: row {i + 1}"), label, text_b))
        return out


def _text_value(value: Any, name: str, where: str) -> str:
    """A text field's value; null, a number, a list or an object is a `TaskError` (never the string 'None')."""
    if isinstance(value, str):
        return value
    what = "null" if value is None else f"a {type(value).__name__} ({str(value)[:40]})"
    raise TaskError(f"{where}: field {name!r} is {what}, not a text; give every row a text there (or choose the "
                    "field with text_field / text_b_field)")


def _label_value(value: Any, name: str, where: str) -> str:
    """A label as a string: a word or a number (a class index); null, a list or an object is an error."""
    if isinstance(value, (str, int, float)):
        return str(value)
    what = "null" if value is None else f"a {type(value).__name__} ({str(value)[:40]})"
    raise TaskError(f"{where}: field {name!r} is {what}, not a label; give every row a label (a word or a class "
                    "number; rename numbers with label_names)")


def parse_label_names(spec: str) -> dict[str, str] | None:
    """`--label-names`: a JSON object (raw value -> label) or a comma list naming values 0, 1, 2, ... in order."""
    if not spec.strip():
        return None
    if spec.lstrip().startswith("{"):
        try:
            parsed = json.loads(spec)
        except json.JSONDecodeError as err:
            raise TaskError(f"label_names is not valid JSON ({err.msg}); e.g. '{{\"0\": \"negative\"}}'") from err
        return {str(k): str(v) for k, v in parsed.items()}
    return {str(i): name.strip() for i, name in enumerate(spec.split(","))}


def load_examples(
    path: str | Path,
    *,
    text_field: str = "text",
    text_b_field: str | None = None,
    label_field: str = "label",
    label_names: Mapping[str, str] | None = None,
) -> list[Example]:
    """Read a JSONL, CSV or TSV file into examples; label values are turned into strings (and renamed)."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"data file {path} does not exist")
    return FieldMap(text_field, text_b_field, label_field, label_names).examples(read_rows(path), f"data file {path}")


def read_inputs(path: str | Path, fields: FieldMap) -> list[Example]:
    """Inputs to classify: with their labels where every row has the label field, else with empty labels."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"input file {path} does not exist")
    rows = read_rows(path, fields.encoding)
    labelled = bool(fields.label) and bool(rows) and all(fields.label in row for row in rows)
    return replace(fields, label=fields.label if labelled else "").examples(rows, f"input file {path}")


def read_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or TSV file; a UTF-8 byte-order mark (Excel's CSV export) is read transparently."""
    text = _decode(path, encoding)
    if path.suffix in (".csv", ".tsv"):
        return _delimited_rows(path, text, "\t" if path.suffix == ".tsv" else ",")
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 inside a JSON string is no line end
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"{path}: line {n} is not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise TaskError(f"{path}: line {n} is a JSON {_json_kind(row)}, not an object; JSON Lines holds one "
                                'object per line, e.g. {"text": "a fine film", "label": "positive"}'
                                + (" (write the array's items one per line)" if isinstance(row, list) else ""))
            rows.append(row)
    return rows


_EXTRA = "\0extra"  # csv's key for the cells of a row beyond its header


def _delimited_rows(path: Path, text: str, delimiter: str) -> list[dict[str, Any]]:
    """CSV or TSV rows by header; a row with more cells than the header (an unquoted delimiter in a text) or a
    broken quote is a `TaskError` naming the row."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=_EXTRA)
    rows = []
    try:
        for row in reader:
            if _EXTRA in row:
                raise TaskError(f"{path}: row {reader.line_num} has {len(reader.fieldnames or []) + len(row[_EXTRA])} "
                                f"cells but the header has {len(reader.fieldnames or [])}; quote texts that hold "
                                f"{'a tab' if delimiter == chr(9) else 'a comma'} (\"like, this\")")
            rows.append(row)
    except csv.Error as err:
        raise TaskError(f"{path}: line {reader.line_num} cannot be read as {path.suffix[1:].upper()} ({err})") from None
    return rows


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _decode(path: Path, encoding: str) -> str:
    """The file's text; a byte that is not `encoding` is a TaskError naming the file, the line and the field."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except LookupError:  # no such codec, or one that is not a text encoding (base64)
        raise TaskError(f"encoding={encoding!r} is not a text encoding Python knows; e.g. utf-8, cp1252, latin-1 "
                        f"(reading {path})") from None
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}: line {line} is not valid {encoding} (byte {data[err.start]:#04x}); give the file's "
                        "encoding with TaskConfig.encoding (e.g. encoding=cp1252 or latin-1), or save it as UTF-8") from None


def few_shot_split(
    examples: Sequence[Example], labels: Iterable[str], k: int, seed: int, n_splits: int = 2
) -> list[tuple[Example, ...]]:
    """Sample `n_splits` disjoint sets of k examples per class (BBT/LM-BFF: train, then dev)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    splits: list[list[Example]] = [[] for _ in range(n_splits)]
    for label in labels:
        pool = by_label.get(label, [])
        if len(pool) < k * n_splits:
            raise TaskError(
                f"label {label!r} has {len(pool)} examples but {n_splits} splits of k={k} need {k * n_splits}; "
                "lower k or add data"
            )
        picked = rng.choice(len(pool), size=k * n_splits, replace=False)
        for s in range(n_splits):
            splits[s].extend(pool[i] for i in picked[s * k : (s + 1) * k])
    for split in splits:
        rng.shuffle(split)  # type: ignore[arg-type]
    return [tuple(s) for s in splits]


def answer_split(examples: Sequence[Example], k: int, seed: int, n_splits: int = 2) -> list[tuple[Example, ...]]:
    """`n_splits` disjoint sets of k examples (train, then dev) for a generation task, whose answers are free text
    and so have no classes to draw k of each from."""
    if len(examples) < k * n_splits:
        raise TaskError(f"the training file has {len(examples)} examples but {n_splits} splits of k={k} need "
                        f"{k * n_splits}; lower k or add data")
    picked = np.random.default_rng(seed).choice(len(examples), size=k * n_splits, replace=False)
    return [tuple(examples[i] for i in picked[s * k : (s + 1) * k]) for s in range(n_splits)]


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> tuple[Example, ...]:
    """A seeded subset of at most `limit` examples (None keeps all), order preserved."""
    if limit is not None and limit < 0:
        raise TaskError(f"test_limit must be >= 0, got {limit}")
    if limit is None or limit >= len(examples):
        return tuple(examples)
    idx = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return tuple(examples[i] for i in idx)


# ---------------------------------------------------------------- presets


