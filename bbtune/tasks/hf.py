"""Hugging Face datasets, read from what is already on disk: bbtune never downloads.

``--data hf:NAME[:CONFIG]`` loads a dataset with the optional `datasets` package (``pip install bbtune[hf]``):
NAME is a folder written by ``DatasetDict.save_to_disk`` or a Hub name found in the local datasets cache
(``$HF_DATASETS_CACHE``). It runs with the Hub's offline switches on (`offline`, which Hub models use too), so
a set that is not cached fails with a message that says how to get it, instead of a download.

    >>> # splits = dataset_splits("hf:glue:sst2", FieldMap(text="sentence"))
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bbtune.errors import ConfigError, TaskError
from bbtune.tasks.data import FieldMap
from bbtune.tasks.format import Example

HF_PREFIX = "hf:"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TEST_SPLITS = ("test", "validation", "dev")  # the first one with labels is the test split (GLUE's test has none)


def is_hf_data(data: str) -> bool:
    return data.startswith(HF_PREFIX)


def offline() -> None:
    """Switch the Hub libraries to their caches (also when they were imported before, which reads the switch)."""
    for name in OFFLINE_ENV:
        os.environ[name] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _load(spec: str) -> Any:
    """The DatasetDict for ``hf:NAME[:CONFIG]``, from a save_to_disk folder or the local datasets cache."""
    name, _, config = spec[len(HF_PREFIX):].partition(":")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data={spec} needs the datasets package: pip install 'bbtune[hf]' (or datasets)") from None
    offline()
    datasets.config.HF_HUB_OFFLINE = True
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    try:
        return datasets.load_dataset(name, config or None)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise TaskError(
            f"dataset {name!r}{f' ({config})' if config else ''} is not in the local datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}) and bbtune never downloads; on a machine with internet run "
            f"`python -c \"import datasets; datasets.load_dataset('{name}'{f', {config!r}' if config else ''})\"` "
            f"(same HF_DATASETS_CACHE), or save it with save_to_disk and pass data=hf:FOLDER ({err})") from err


def dataset_splits(spec: str, fields: FieldMap) -> tuple[list[Example], list[Example]]:
    """(training pool, test examples) of ``hf:NAME[:CONFIG]``; integer class labels take their ClassLabel
    names unless `fields.label_names` renames them. Test is the first labelled split of `TEST_SPLITS`."""
    data = _load(spec)
    if "train" not in data:
        raise TaskError(f"{spec} has no 'train' split (it has {sorted(data)}); bbtune draws train and dev from it")
    fields = _with_class_names(data["train"], fields)
    train = fields.examples(list(data["train"]), f"{spec} train")
    for split in TEST_SPLITS:
        if split in data and len(data[split]):
            test = fields.examples(list(data[split]), f"{spec} {split}")
            if any(ex.label not in ("-1", "") for ex in test):
                return train, test
    return train, []


def _with_class_names(split: Any, fields: FieldMap) -> FieldMap:
    if fields.label_names or not fields.label:
        return fields
    feature = split.features.get(fields.label)
    names = getattr(feature, "names", None)
    if not names:
        return fields
    from dataclasses import replace

    return replace(fields, label_names={str(i): n for i, n in enumerate(names)})
