"""Tasks: labelled data, a template with slots for the input and the label word, and a verbalizer.

A template is a string such as ``"{text} It was{label}"``: ``{text}`` (and ``{text_b}`` for pairs) take the
input, ``{label}`` marks where the label word goes and must come last, because a causal LM scores the
next token after the template. The verbalizer maps each label to one word, which must be a single token
of the model's tokenizer (usually with its leading space: ``" great"``).

Where the tuned prompt goes is a task option (`Placement`): before the input (BBT's prefix) or after it,
just before the label cue. After the input lets a backend reuse the input's keys/values for every candidate.

Example:
    >>> fmt = TaskFormat(Template("{text} It was{label}"), {"negative": " bad", "positive": " good"})
    >>> fmt.render(Example("a fine film", "positive"))
    Rendered(head='a fine film', cue=' It was')
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from .errors import TaskError, VerbalizerError

_SLOT = re.compile(r"\{(text|text_b|label)\}")


class Placement(str, Enum):
    """Where the tuned prompt sits in the model input."""

    PREFIX = "prefix"  # <prompt> <input> <cue> [label]   (BBT)
    SUFFIX = "suffix"  # <input> <prompt> <cue> [label]   (lets the input's KV cache be reused)


@dataclass(frozen=True)
class Example:
    """One labelled input; `text_b` is the second sentence of a pair task."""

    text: str
    label: str
    text_b: str | None = None


@dataclass(frozen=True)
class Rendered:
    """An example split around the prompt slot: `head` holds the input, `cue` leads to the label word."""

    head: str
    cue: str


@dataclass(frozen=True)
class Template:
    """A pattern with `{text}`, optional `{text_b}`, and `{label}` last."""

    pattern: str = "{text} It was{label}"

    def __post_init__(self) -> None:
        slots = _SLOT.findall(self.pattern)
        if "text" not in slots:
            raise TaskError(f"template {self.pattern!r} has no {{text}} slot; add one where the input goes")
        if slots.count("label") != 1 or not self.pattern.endswith("{label}"):
            raise TaskError(
                f"template {self.pattern!r} must end with exactly one {{label}} slot "
                "(a causal LM scores the label word as the next token), e.g. '{text} It was{label}'"
            )
        if re.sub(_SLOT, "", self.pattern).count("{") or re.sub(_SLOT, "", self.pattern).count("}"):
            raise TaskError(f"template {self.pattern!r} has an unknown slot; use only {{text}}, {{text_b}}, {{label}}")

    @property
    def is_pair(self) -> bool:
        return "{text_b}" in self.pattern

    def render(self, example: Example) -> Rendered:
        body, last_slot = self._body_and_cue_start()
        if self.is_pair and example.text_b is None:
            raise TaskError(f"template {self.pattern!r} needs text_b but the example has none: {example.text[:60]!r}")
        fill = {"text": example.text, "text_b": example.text_b or ""}
        head = _SLOT.sub(lambda m: fill[m.group(1)], body[:last_slot])
        return Rendered(head=head, cue=body[last_slot:])

    def without_cue(self) -> tuple["Template", str]:
        """This template with its cue (the words between the last input slot and the label) removed, and the cue:
        a tuned prompt can take the cue's place and start from its words."""
        body, last_slot = self._body_and_cue_start()
        return Template(body[:last_slot] + "{label}"), body[last_slot:]

    def _body_and_cue_start(self) -> tuple[str, int]:
        body = self.pattern[: -len("{label}")]
        return body, max(body.rfind(slot) + len(slot) for slot in ("{text}", "{text_b}") if slot in body)


@dataclass(frozen=True)
class TaskFormat:
    """What a backend needs to score examples: template, verbalizer (label -> word) and prompt placement."""

    template: Template
    verbalizer: Mapping[str, str]
    placement: Placement = Placement.SUFFIX

    def __post_init__(self) -> None:
        if not self.verbalizer:
            raise VerbalizerError("the verbalizer is empty; map every label to one word, e.g. {'positive': ' great'}")
        object.__setattr__(self, "verbalizer", dict(self.verbalizer))
        object.__setattr__(self, "placement", Placement(self.placement))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.verbalizer)

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise VerbalizerError(
                f"label {label!r} has no verbalizer word; known labels: {list(self.labels)}. "
                f"Add it to the verbalizer or fix the data"
            ) from None

    def label_ids(self, examples: Sequence[Example]) -> np.ndarray:
        return np.array([self.label_index(e.label) for e in examples], dtype=np.int64)

    def render(self, example: Example) -> Rendered:
        return self.template.render(example)

    def text(self, example: Example, prompt_text: str) -> str:
        """The whole input string with a hard prompt's text in its slot: what a text API receives, and what a
        local backend must tokenize whole to score a hard prompt as that API does.

        >>> TaskFormat(Template("{text} It was{label}"), {"p": " great"}).text(Example("A film.", "p"), " Honest")
        'A film. Honest It was'
        """
        r = self.render(example)
        return prompt_text + r.head + r.cue if self.placement is Placement.PREFIX else r.head + prompt_text + r.cue


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


def verbalizer_token_ids(tokenizer: _Tokenizer, fmt: TaskFormat) -> list[int]:
    """One token id per label, or a `VerbalizerError` that says which word to use instead."""
    ids: list[int] = []
    for label, word in fmt.verbalizer.items():
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise VerbalizerError(multi_token_message(tokenizer, label, word, pieces))
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise VerbalizerError(f"two labels share one verbalizer token: {fmt.verbalizer}; choose distinct words")
    return ids


def multi_token_message(tokenizer: _Tokenizer, label: str, word: str, pieces: list[int]) -> str:
    shown = tokenizer.convert_ids_to_tokens(pieces)
    msg = f"verbalizer word {word!r} for label {label!r} is {len(pieces)} tokens for this tokenizer ({shown})"
    for alt in (" " + word.strip(), word.strip(), " " + word.strip().lower(), " " + word.strip().capitalize()):
        if alt != word and len(tokenizer.encode(alt, add_special_tokens=False)) == 1:
            return msg + f"; use {alt!r} (1 token)"
    return msg + "; choose a word that is a single token (most common words with a leading space are)"


@dataclass(frozen=True)
class Task:
    """A task ready to tune: its format and its train/dev/test splits."""

    name: str
    format: TaskFormat
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "dev"):
            if not getattr(self, split):
                raise TaskError(f"task {self.name!r} has an empty {split} split; give it data (k per class)")
        for split in ("train", "dev", "test"):
            for ex in getattr(self, split):
                self.format.label_index(ex.label)

    def with_placement(self, placement: Placement | str) -> "Task":
        return replace(self, format=replace(self.format, placement=Placement(placement)))

    def with_template(self, template: Template) -> "Task":
        return replace(self, format=replace(self.format, template=template))


# ---------------------------------------------------------------- loading and sampling


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

    def examples(self, rows: Sequence[Mapping[str, Any]], source: str) -> list[Example]:
        """Rows (dicts) as examples; a row lacking a field is a `TaskError` naming the flag to set."""
        if not rows:
            raise TaskError(f"{source} has no examples")
        out = []
        for i, row in enumerate(rows):
            missing = [f for f in (self.text, self.label, self.text_b) if f and f not in row]
            if missing:
                raise TaskError(f"{source}: row {i + 1} lacks field(s) {missing}; it has {sorted(row)} "
                                "(choose them with --text-field, --text-b-field, --label-field)")
            label = str(row[self.label]) if self.label else ""
            label = (self.label_names or {}).get(label, label)
            out.append(Example(str(row[self.text]), label, str(row[self.text_b]) if self.text_b else None))
        return out


def parse_label_names(spec: str) -> dict[str, str] | None:
    """`--label-names`: a JSON object (raw value -> label) or a comma list naming values 0, 1, 2, ... in order."""
    if not spec.strip():
        return None
    if spec.lstrip().startswith("{"):
        try:
            parsed = json.loads(spec)
        except json.JSONDecodeError as err:
            raise TaskError(f"--label-names is not valid JSON ({err.msg}); e.g. '{{\"0\": \"negative\"}}'") from err
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
    return FieldMap(text_field, text_b_field, label_field, label_names).examples(_read_rows(path), f"data file {path}")


def read_inputs(path: str | Path, fields: FieldMap) -> list[Example]:
    """Inputs to classify: with their labels where every row has the label field, else with empty labels."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"input file {path} does not exist")
    rows = _read_rows(path, fields.encoding)
    labelled = bool(fields.label) and bool(rows) and all(fields.label in row for row in rows)
    return replace(fields, label=fields.label if labelled else "").examples(rows, f"input file {path}")


def _read_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or TSV file; a UTF-8 byte-order mark (Excel's CSV export) is read transparently."""
    text = _decode(path, encoding)
    if path.suffix in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ","))
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 inside a JSON string is no line end
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TaskError(f"{path}: line {n} is not valid JSON ({err.msg})") from err
    return rows


def _decode(path: Path, encoding: str) -> str:
    """The file's text; a byte that is not `encoding` is a TaskError naming the file, the line and --encoding."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}: line {line} is not valid {encoding} (byte {data[err.start]:#04x}); give the file's "
                        "encoding with --encoding (e.g. --encoding cp1252 or latin-1), or save it as UTF-8") from None


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
    for s in splits:
        rng.shuffle(s)  # type: ignore[arg-type]
    return [tuple(s) for s in splits]


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> tuple[Example, ...]:
    """A seeded subset of at most `limit` examples (None keeps all), order preserved."""
    if limit is None or limit >= len(examples):
        return tuple(examples)
    idx = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return tuple(examples[i] for i in idx)


# ---------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A usual few-shot task: its template, verbalizer and the fields of its files."""

    template: str
    verbalizer: Mapping[str, str]
    text_b_field: str | None = None
    files: Mapping[str, str] = field(default_factory=lambda: {"train": "train.jsonl", "test": "test.jsonl"})


CHATML_USER = "<|im_start|>user\n"
CHATML_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"

PRESETS: dict[str, Preset] = {
    # Chosen on SmolLM2-135M few-shot train+dev (never test): zero-shot 75% vs 50% for BBT's
    # "{text} It was{label}" with " terrible"/" great", which that model answers with " great" for everything.
    "sentiment": Preset("Review: {text}\nSentiment:{label}", {"negative": " negative", "positive": " positive"}),
    "sentiment-bbt": Preset("{text} It was{label}", {"negative": " terrible", "positive": " great"}),
    # For chat models in ChatML (SmolLM2-Instruct, Qwen): the instruction as a user turn, the answer as the
    # assistant's. Chosen on 400 held-out training-pool sentences (not test) among 8 wordings: 84.5% zero-shot,
    # 84.3% calibrated, vs 81.5% for "sentiment" on the same sentences. Naming the labels in the instruction
    # ("... as positive or negative") fell to 66.5%. Only for ChatML models: elsewhere its tags are plain text.
    "sentiment-chat": Preset(
        CHATML_USER + "Classify the sentiment of this movie review.\n{text}" + CHATML_ASSISTANT + "Sentiment:{label}",
        {"negative": " negative", "positive": " positive"},
    ),
    # 69% zero-shot on AG News few-shot train+dev vs 55% for "{text} This news is about{label}".
    "topic": Preset(
        "News: {text}\nCategory:{label}",
        {"world": " politics", "sports": " sports", "business": " business", "science": " technology"},
    ),
    "nli": Preset(
        "{text}\nQuestion: {text_b} Yes, No or Maybe?\nAnswer:{label}",
        {"entailment": " Yes", "neutral": " Maybe", "contradiction": " No"},
        text_b_field="text_b",
    ),
    "paraphrase": Preset(
        "{text}\n{text_b}\nDo both sentences mean the same thing? Answer:{label}",
        {"not_equivalent": " No", "equivalent": " Yes"},
        text_b_field="text_b",
    ),
}
PRESETS["sst2"] = PRESETS["sentiment"]
PRESETS["agnews"] = PRESETS["topic"]


def load_task(
    data_dir: str | Path,
    preset: str = "sentiment",
    *,
    k: int = 16,
    seed: int = 42,
    template: str | None = None,
    verbalizer: Mapping[str, str] | None = None,
    placement: Placement | str = Placement.SUFFIX,
    test_limit: int | None = None,
    name: str | None = None,
    fields: FieldMap | None = None,
) -> Task:
    """Build a few-shot task from a directory holding `train.jsonl` (and `test.jsonl`; or .csv/.tsv), or from a
    Hugging Face dataset ``hf:NAME[:CONFIG]`` (see `bbtune.hub`).

    train and dev are k per class drawn with `seed` from the training file, disjoint; test is the test file
    (subsampled to `test_limit` if given). `fields` says which fields hold text, text_b and label (default:
    ``text``, the preset's text_b field, ``label``).
    """
    if preset not in PRESETS:
        raise TaskError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    fmt = TaskFormat(Template(template or spec.template), verbalizer or spec.verbalizer, Placement(placement))
    fields = fields or FieldMap(text_b=spec.text_b_field)
    train_pool, test_pool = _source_splits(str(data_dir), fields)
    for ex in train_pool:
        fmt.label_index(ex.label)
    train, dev = few_shot_split(train_pool, fmt.labels, k, seed)
    test = subsample(test_pool, test_limit, seed)
    return Task(name or Path(str(data_dir).split(":")[-1]).name, fmt, train, dev, test)


def _source_splits(data: str, fields: FieldMap) -> tuple[list[Example], list[Example]]:
    """(training pool, test examples) of a data folder or an ``hf:`` dataset."""
    from .hub import dataset_splits, is_hf_data  # hub imports this module

    if is_hf_data(data):
        return dataset_splits(data, fields)
    folder = Path(data)
    read = lambda f: fields.examples(_read_rows(folder / f, fields.encoding), f"data file {folder / f}")  # noqa: E731
    train = read(_find(folder, ("train.jsonl", "train.csv", "train.tsv")))
    test_file = _find(folder, ("test.jsonl", "test.csv", "test.tsv"), required=False)
    return train, read(test_file) if test_file else []


def _find(data_dir: Path, names: Sequence[str], required: bool = True) -> str | None:
    for n in names:
        if (data_dir / n).exists():
            return n
    if required:
        raise TaskError(f"{data_dir} has none of {list(names)}")
    return None


@dataclass(frozen=True)
class TaskConfig:
    """How to build a few-shot task from files or a Hugging Face dataset (the CLI's task flags)."""

    data: str = field(default="", metadata={
        "help": "folder with train/test .jsonl, .csv or .tsv; hf:NAME[:CONFIG] (Hugging Face datasets); 'demo' = built-in"})
    preset: str = field(default="sentiment", metadata={"help": f"template + verbalizer preset: {sorted(PRESETS)}"})
    k: int = field(default=16, metadata={"help": "examples per class in train and in dev"})
    data_seed: int = field(default=13, metadata={"help": "seed of the few-shot sample"})
    template: str = field(default="", metadata={"help": "template overriding the preset's, e.g. '{text} It was{label}'"})
    verbalizer: str = field(default="", metadata={"help": "JSON label->word overriding the preset's"})
    placement: Placement = field(default=Placement.SUFFIX, metadata={"help": "prompt before (prefix) or after (suffix) the input"})
    test_limit: int = field(default=0, metadata={"help": "score at most this many test examples (0 = all)"})
    text_field: str = field(default="text", metadata={"help": "field holding the input text"})
    text_b_field: str = field(default="", metadata={"help": "field holding a pair's second text ('' = the preset's)"})
    label_field: str = field(default="label", metadata={"help": "field holding the label"})
    label_names: str = field(default="", metadata={
        "help": "rename label values: 'negative,positive' names 0, 1, ...; or JSON {\"0\": \"negative\"}"})
    encoding: str = field(default="utf-8", metadata={
        "help": "text encoding of the data files, e.g. cp1252 or latin-1 (utf-8 also reads a byte-order mark)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", Placement(self.placement))
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise TaskError(f"--encoding {self.encoding!r} is not an encoding Python knows (e.g. utf-8, cp1252, "
                            "latin-1)") from None
        parse_label_names(self.label_names)  # a bad spec fails here, before any data is read
        if self.k < 1:
            raise TaskError(f"k must be >= 1, got {self.k}")
        if self.verbalizer:
            try:
                parsed = json.loads(self.verbalizer)
            except json.JSONDecodeError as err:
                raise TaskError(f"verbalizer must be JSON like '{{\"positive\": \" great\"}}': {err.msg}") from err
            if not isinstance(parsed, dict):
                raise TaskError("verbalizer must be a JSON object mapping label -> word")

    def fields(self) -> FieldMap:
        """The field mapping of the flags; a pair preset's text_b field unless --text-b-field names another."""
        preset_b = PRESETS[self.preset].text_b_field if self.preset in PRESETS else None
        return FieldMap(self.text_field, self.text_b_field or preset_b, self.label_field,
                        parse_label_names(self.label_names), self.encoding)

    def load(self) -> Task:
        data = demo_data_dir() if self.data in ("", "demo") else self.data
        return load_task(
            data, self.preset, k=self.k, seed=self.data_seed, template=self.template or None,
            verbalizer=json.loads(self.verbalizer) if self.verbalizer else None, placement=self.placement,
            test_limit=self.test_limit or None, name=None if self.data not in ("", "demo") else "demo-sentiment",
            fields=self.fields(),
        )


def demo_data_dir() -> Path:
    """The small sentiment set shipped with bbtune (48 training-pool and 32 test sentences, written for it)."""
    return Path(__file__).parent / "data" / "demo"
