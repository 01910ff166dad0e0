"""Field mapping flags, TSV, `hf:` datasets and ORG/NAME models, all from disk: nothing downloads."""
from __future__ import annotations

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.errors import ConfigError, TaskError
from bbtune.backends.models import build_tiny_model, load_model
from bbtune.core.prompts import HardPrompt
from bbtune.tasks import TaskConfig

from tests.conftest import NEG, POS


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """A private datasets/Hub cache, offline, so the tests can neither download nor see a real cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def test_tsv_with_field_and_label_mapping(tmp_path):
    rows = [(t, 1) for t in POS] + [(t, 0) for t in NEG]
    (tmp_path / "train.tsv").write_text("sentence\ty\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    task = TaskConfig(data=str(tmp_path), k=2, text_field="sentence", label_field="y",
                      label_names="negative,positive").load()
    assert {ex.label for ex in task.train} == {"negative", "positive"}
    assert all(ex.text in POS + NEG for ex in task.train + task.dev)
    with pytest.raises(TaskError, match=r"lacks field\(s\) \['text'\].*text_field"):
        TaskConfig(data=str(tmp_path), k=2, label_field="y").load()


def test_label_names_json_and_bad_spec():
    assert TaskConfig(label_names='{"0": "neg"}').fields().label_names == {"0": "neg"}
    with pytest.raises(TaskError, match="label_names is not valid JSON"):
        TaskConfig(label_names="{0: neg")


def _saved_dataset(path):
    datasets = pytest.importorskip("datasets", reason="hf: data needs the optional datasets package (bbtune[hf])")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    split = lambda texts, labels: datasets.Dataset.from_dict({"sentence": texts, "label": labels},  # noqa: E731
                                                             features=features)
    datasets.DatasetDict(
        train=split(POS + NEG, [1] * len(POS) + [0] * len(NEG)),
        validation=split(["a great story", "an awful story"], [1, 0]),
        test=datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [-1, -1]}),  # GLUE style: no labels
    ).save_to_disk(str(path))


def test_hf_dataset_from_disk_takes_class_names_and_a_labelled_test_split(tmp_path):
    _saved_dataset(tmp_path / "sst2")
    task = TaskConfig(data=f"hf:{tmp_path / 'sst2'}", k=2, text_field="sentence").load()
    assert {ex.label for ex in task.train} == {"negative", "positive"}
    assert [(ex.text, ex.label) for ex in task.test] == [("a great story", "positive"), ("an awful story", "negative")]
    assert task.name == "sst2"


def test_hf_dataset_not_cached_fails_clearly():
    pytest.importorskip("datasets", reason="hf: data needs the optional datasets package (bbtune[hf])")
    with pytest.raises(TaskError, match="not in the local datasets cache.*never downloads"):
        TaskConfig(data="hf:nosuch-org/nosuch-set:default").load()


def _hub_model(root, repo: str) -> None:
    """A tiny model in the Hub cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    model, tok = build_tiny_model()
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder / "snapshots" / commit)
    tok.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_hub_name_loads_from_the_local_cache(tmp_path, tiny_backend, tiny_task):
    _hub_model(tmp_path / "hub", "someorg/tiny-llama")
    backend = LocalBackend("someorg/tiny-llama")
    manual = HardPrompt((), "")
    expected = tiny_backend.score([manual], tiny_task.test, tiny_task.format)
    np.testing.assert_allclose(backend.score([manual], tiny_task.test, tiny_task.format), expected, atol=1e-5)


def test_hub_name_not_cached_fails_clearly():
    with pytest.raises(ConfigError, match="'someorg/absent' is not in the local Hugging Face cache.*never downloads"):
        load_model("someorg/absent")


def test_cli_flags_reach_the_task(tmp_path):
    from bbtune.app.cli import build_parser, from_args

    args = build_parser().parse_args(["tune", "--data", "hf:glue:sst2", "--text-field", "sentence",
                                      "--label-names", "negative,positive"])
    cfg = from_args(TaskConfig, args)
    assert (cfg.data, cfg.text_field, cfg.fields().label_names) == ("hf:glue:sst2", "sentence",
                                                                     {"0": "negative", "1": "positive"})
