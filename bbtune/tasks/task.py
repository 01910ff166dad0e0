"""A task ready to tune (format + splits), the built-in presets, and `load_task`, which builds one from a
data folder, a file or ``hf:NAME`` with a seed."""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from bbtune.core.options import documented
from bbtune.errors import TaskError, VerbalizerError
from bbtune.tasks.data import (
    FieldMap,
    answer_split,
    few_shot_split,
    parse_label_names,
    read_rows,
    subsample,
)
from bbtune.tasks.format import Example, Placement, TaskFormat, TaskKind, Template, no_verbalizer_message
from bbtune.tasks.demonstrations import shown_in_template
from bbtune.tasks.hf import dataset_splits, is_hf_data


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
            for i, ex in enumerate(getattr(self, split)):
                if not self.format.is_generation:
                    self.format.label_index(ex.label)
                elif not ex.label.strip():
                    raise TaskError(f"task {self.name!r}: {split} example {i + 1} ({ex.text[:60]!r}) has no answer; a "
                                    "generation task needs a reference answer (its label) for every example")

    def with_placement(self, placement: Placement | str) -> "Task":
        return replace(self, format=replace(self.format, placement=Placement(placement)))

    def with_template(self, template: Template) -> "Task":
        return replace(self, format=replace(self.format, template=template))

    def with_demonstrations(self, per_class: int, seed: int) -> "Task":
        """This task with `per_class` training examples of each label shown before every input, in its template,
        and taken out of train (`bbtune.tasks.demonstrations`); 0: unchanged."""
        if per_class < 1:
            return self
        template, train = shown_in_template(self.train, self.format, per_class, seed)
        return replace(self.with_template(template), train=train)


# ---------------------------------------------------------------- loading and sampling



@dataclass(frozen=True)
class Preset:
    """A usual few-shot task: its template, verbalizer and the fields of its files."""

    template: str
    verbalizer: Mapping[str, str]
    text_b_field: str | None = None
    files: Mapping[str, str] = field(default_factory=lambda: {"train": "train.jsonl", "test": "test.jsonl"})
    kind: TaskKind = TaskKind.CLASSIFY


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
    # TREC's six coarse question types, named by their own label words (one token each in SmolLM2 and Gemma 3);
    # not yet tuned on any split: the plain wording of the task.
    "question": Preset(
        "Question: {text}\nAnswer type:{label}",
        {label: f" {label}" for label in ("description", "entity", "abbreviation", "human", "location", "number")},
    ),
    # SST-5's five grades in LM-BFF's words (one token each in SmolLM2 and Gemma 3). The label names themselves
    # ("very negative" is two tokens, scored exactly as their sum): --verbalizer names.
    "sentiment-5": Preset(
        "Review: {text}\nSentiment:{label}",
        {"very negative": " terrible", "negative": " bad", "neutral": " okay", "positive": " good",
         "very positive": " great"},
    ),
}
LABEL_NAMES = "names"  # --verbalizer names: every label's own name, with a leading space, is its word


def label_name_words(labels: Sequence[str]) -> dict[str, str]:
    """Each label's name as its word, after a space as the template's cue ends before it (``"very negative"`` ->
    ``" very negative"``); a name of several tokens is scored as their sum.

    >>> label_name_words(["very negative", "neutral"])
    {'very negative': ' very negative', 'neutral': ' neutral'}
    """
    return {label: " " + label.strip() for label in labels}


# A generation task: the label is the answer itself, in free text (no verbalizer); see bbtune/data/answers.
PRESETS["answer"] = Preset("Question: {text}\nAnswer:{label}", {}, kind=TaskKind.GENERATE)
PRESETS["sst2"] = PRESETS["sentiment"]
PRESETS["agnews"] = PRESETS["topic"]
PRESETS["trec"] = PRESETS["question"]
PRESETS["sst5"] = PRESETS["sentiment-5"]


DEFAULT_DATA_SEED = 13  # the few-shot split's seed wherever none is given (load_task, TaskConfig, the CLI)


def load_task(data: str | Path = "demo", preset: str = "sentiment", *, k: int = 16, seed: int = DEFAULT_DATA_SEED,
              **options: Any) -> Task:
    """A few-shot task from a data folder or file (train/test .jsonl/.csv/.tsv), ``hf:NAME[:CONFIG]``, or a
    built-in set (``"demo"``: short reviews; ``"demo-answers"``: short questions, with ``preset="answer"``).

    `k` examples per class for train and as many for dev, drawn with `seed`; `options` are the other
    `TaskConfig` fields (template, verbalizer, placement, test_limit, text_field, label_names, ...). A verbalizer
    may be a mapping label -> word.

        >>> task = load_task("demo", k=4, test_limit=10)
        >>> len(task.train), len(task.dev), len(task.test)
        (8, 8, 10)
    """
    if isinstance(options.get("verbalizer"), Mapping):
        options["verbalizer"] = json.dumps(dict(options["verbalizer"]))
    return TaskConfig(data=str(data), preset=preset, k=k, data_seed=seed, **options).load()


def build_task(
    data_dir: str | Path,
    preset: str = "sentiment",
    *,
    k: int,
    seed: int,
    template: str | None = None,
    verbalizer: Mapping[str, str] | str | None = None,
    placement: Placement | str = Placement.SUFFIX,
    test_limit: int | None = None,
    name: str | None = None,
    fields: FieldMap | None = None,
) -> Task:
    """`load_task`'s work on resolved values: a few-shot task from a directory holding `train.jsonl` (and
    `test.jsonl`; or .csv/.tsv), or from a Hugging Face dataset ``hf:NAME[:CONFIG]`` (see `bbtune.tasks.hf`).

    train and dev are k per class drawn with `seed` from the training file, disjoint (a generation preset, whose
    labels are free-text answers: k examples each); test is the test file
    (subsampled to `test_limit` if given). `verbalizer` overrides the preset's words; ``"names"`` uses the
    preset's label names themselves (`label_name_words`). `fields` says which fields hold text, text_b and label (default:
    ``text``, the preset's text_b field, ``label``).
    """
    if preset not in PRESETS:
        raise TaskError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    if spec.kind is TaskKind.GENERATE and verbalizer:
        raise VerbalizerError(no_verbalizer_message(verbalizer))
    if verbalizer == LABEL_NAMES:
        verbalizer = label_name_words(list(spec.verbalizer))
    elif isinstance(verbalizer, str):
        raise TaskError(f"verbalizer {verbalizer!r} is neither a mapping label -> word nor {LABEL_NAMES!r}")
    fmt = TaskFormat(Template(template or spec.template), verbalizer or spec.verbalizer, Placement(placement),
                     spec.kind)
    fields = fields or FieldMap(text_b=spec.text_b_field)
    train_pool, test_pool = _source_splits(str(data_dir), fields, fmt)
    train, dev = (answer_split(train_pool, k, seed) if fmt.is_generation
                  else few_shot_split(train_pool, fmt.labels, k, seed))
    test = subsample(test_pool, test_limit, seed)
    return Task(name or Path(str(data_dir).split(":")[-1]).name, fmt, train, dev, test)


def _source_splits(data: str, fields: FieldMap, fmt: TaskFormat) -> tuple[list[Example], list[Example]]:
    """(training pool, test examples) of a data folder or an ``hf:`` dataset; every label has a verbalizer word."""

    if is_hf_data(data):
        train, test = dataset_splits(data, fields)
        return check_labels(train, fmt, f"{data} (train)"), check_labels(test, fmt, f"{data} (test)")
    folder = Path(data)

    def read(name: str) -> list[Example]:
        source = f"data file {folder / name}"
        return check_labels(fields.examples(read_rows(folder / name, fields.encoding), source), fmt, source)

    train = read(_find(folder, ("train.jsonl", "train.csv", "train.tsv")))  # type: ignore[arg-type]
    test_file = _find(folder, ("test.jsonl", "test.csv", "test.tsv"), required=False)
    return train, read(test_file) if test_file else []


def check_labels(examples: list[Example], fmt: TaskFormat, source: str) -> list[Example]:
    """`examples`, or a `VerbalizerError` naming the file and row of the first label with no verbalizer word (a
    generation task's labels are free-text answers: `Task` checks that each has one)."""
    if fmt.is_generation:
        return examples
    for i, ex in enumerate(examples):
        if ex.label not in fmt.labels:
            raise VerbalizerError(f"{source}: row {i + 1} has label {ex.label!r}, which has no verbalizer word; known "
                                  f"labels: {list(fmt.labels)}. Fix the data, rename label values with label_names, "
                                  "or add the label to TaskConfig.verbalizer")
    return examples


def overlaps(task: Task) -> dict[str, int]:
    """How many dev and test examples repeat a training example's input (same text): duplicated rows in the data
    make dev and test numbers measure memory of train, not generalization."""
    seen = {(ex.text, ex.text_b) for ex in task.train}
    counts = {name: sum((ex.text, ex.text_b) in seen for ex in getattr(task, name)) for name in ("dev", "test")}
    return {name: n for name, n in counts.items() if n}


def _find(data_dir: Path, names: Sequence[str], required: bool = True) -> str | None:
    for n in names:
        if (data_dir / n).exists():
            return n
    if required:
        raise TaskError(f"{data_dir} has none of {list(names)}")
    return None


@documented
@dataclass(frozen=True)
class TaskConfig:
    """How to build a few-shot task from files or a Hugging Face dataset (the CLI's task flags)."""

    data: str = field(default="", metadata={
        "help": "folder with train/test .jsonl, .csv or .tsv; hf:NAME[:CONFIG] (Hugging Face datasets); 'demo' = built-in "
                "sentiment set, 'demo-answers' = built-in generation set (with preset=answer)"})
    preset: str = field(default="sentiment", metadata={"help": f"template + verbalizer preset: {sorted(PRESETS)}"})
    k: int = field(default=16, metadata={
        "help": "examples per class in train and in dev (a generation task: examples in train and in dev)"})
    data_seed: int = field(default=DEFAULT_DATA_SEED, metadata={"help": "seed of the few-shot sample"})
    template: str = field(default="", metadata={"help": "template overriding the preset's, e.g. '{text} It was{label}'"})
    verbalizer: str = field(default="", metadata={
        "help": "JSON label->word overriding the preset's, or 'names': each label's name is its word (' very negative'; "
                "words of several tokens are scored as their sum)"})
    placement: Placement = field(default=Placement.SUFFIX, metadata={"help": "prompt before (prefix) or after (suffix) the input"})
    test_limit: int = field(default=0, metadata={"help": "score at most this many test examples (0 = all)"})
    demonstrations: int = field(default=0, metadata={
        "help": "training examples per class shown before every input, in the template (in-context learning); "
                "taken out of train, drawn with data_seed"})
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
            raise TaskError(f"encoding={self.encoding!r} is not an encoding Python knows (e.g. utf-8, cp1252, "
                            "latin-1)") from None
        parse_label_names(self.label_names)  # a bad spec fails here, before any data is read
        if self.k < 1:
            raise TaskError(f"k must be >= 1, got {self.k}")
        if self.test_limit < 0:
            raise TaskError(f"test_limit must be >= 0 (0 = every test example), got {self.test_limit}")
        if self.demonstrations < 0:
            raise TaskError(f"demonstrations must be >= 0 (0 = none shown), got {self.demonstrations}")
        if self.data_seed < 0:  # numpy's generators take non-negative seeds only
            raise TaskError(f"data_seed must be >= 0, got {self.data_seed}")
        if self.verbalizer and self.verbalizer != LABEL_NAMES:
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
        data = BUILT_IN_DATA[self.data]() if self.data in BUILT_IN_DATA else self.data
        task = build_task(
            data, self.preset, k=self.k, seed=self.data_seed, template=self.template or None,
            verbalizer=self._verbalizer(), placement=self.placement,
            test_limit=self.test_limit or None, name=BUILT_IN_NAMES.get(self.data), fields=self.fields(),
        )
        return task.with_demonstrations(self.demonstrations, self.data_seed)

    def _verbalizer(self) -> Mapping[str, str] | str | None:
        if not self.verbalizer or self.verbalizer == LABEL_NAMES:
            return self.verbalizer or None
        return json.loads(self.verbalizer)  # type: ignore[no-any-return]


def demo_data_dir() -> Path:
    """The small sentiment set shipped with bbtune (48 training-pool and 32 test sentences, written for it)."""
    return Path(__file__).resolve().parents[1] / "data" / "demo"


def answers_data_dir() -> Path:
    """The small generation benchmark shipped with bbtune (short questions with one- or two-word answers, written
    for it by bbtune/data/generate_answers.py); use it with ``--preset answer``."""
    return Path(__file__).resolve().parents[1] / "data" / "answers"


BUILT_IN_DATA = {"": demo_data_dir, "demo": demo_data_dir, "demo-answers": answers_data_dir}  # --data names
BUILT_IN_NAMES = {"": "demo-sentiment", "demo": "demo-sentiment", "demo-answers": "demo-answers"}
