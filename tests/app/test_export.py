"""PEFT export: the files load with PEFT itself and give the same prompt and the same scores."""
from __future__ import annotations

import json

import pytest
import torch

from bbtune.backends.local import LocalBackend
from bbtune.errors import ConfigError
from bbtune.app.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BBTUNE_INFO, export_peft, export_run
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.runs.folder import RunFolder
from bbtune.tasks import Example, Placement, TaskFormat, Template

peft = pytest.importorskip("peft")

FMT = TaskFormat(Template("{text} It was{label}"), {"negative": " terrible", "positive": " great"}, Placement.PREFIX)


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("tiny")


@pytest.fixture
def prompt(backend: LocalBackend) -> SoftPrompt:
    hidden = backend.model.config.hidden_size
    return SoftPrompt(torch.randn(4, hidden, generator=torch.Generator().manual_seed(0)) * 0.02)


def _load(backend: LocalBackend, folder):
    from bbtune.backends.models import build_tiny_model

    base, _ = build_tiny_model()  # a fresh copy: PEFT wraps the model it is given
    return peft.PeftModel.from_pretrained(base, folder).eval()


def test_peft_loads_the_same_prompt_embeddings(backend, prompt, tmp_path):
    folder = export_peft(prompt, tmp_path / "adapter", model_config=backend.model.config, fmt=FMT)
    assert {p.name for p in folder.iterdir()} >= {ADAPTER_CONFIG, ADAPTER_WEIGHTS, BBTUNE_INFO}
    model = _load(backend, folder)
    loaded = model.get_prompt_embedding_to_save("default")
    assert loaded.shape == prompt.embeds.shape
    torch.testing.assert_close(loaded.float(), prompt.embeds)
    assert json.loads((folder / BBTUNE_INFO).read_text())["placement"] == "prefix"


def test_peft_scores_match_bbtune_prefix_placement(backend, prompt, tmp_path):
    """PEFT prepends the virtual tokens: with a tokenizer that adds no BOS this is bbtune's prefix placement."""
    model = _load(backend, export_peft(prompt, tmp_path / "adapter"))
    example = Example("the film was great", "positive")
    rendered = FMT.render(example)
    encode = lambda text: backend.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    ids = encode(rendered.head) + encode(rendered.cue)  # the backend tokenizes input and cue apart
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
    label_ids = [backend.tokenizer.encode(w, add_special_tokens=False)[0] for w in FMT.verbalizer.values()]
    peft_scores = torch.log_softmax(logits[0, -1].float(), -1)[label_ids]
    ours = backend.score([prompt], [example], FMT)[0, 0]
    torch.testing.assert_close(peft_scores, torch.as_tensor(ours), atol=1e-4, rtol=1e-4)


def test_suffix_placement_warns(prompt, tmp_path):
    suffix = TaskFormat(FMT.template, FMT.verbalizer, Placement.SUFFIX)
    with pytest.warns(UserWarning, match="PEFT prepends"):
        export_peft(prompt, tmp_path / "a", fmt=suffix)


def test_hard_prompts_and_bad_task_types_are_refused(prompt, tmp_path):
    with pytest.raises(ConfigError, match="only soft prompts"):
        export_peft(HardPrompt((1, 2), "ab"), tmp_path / "a")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="task_type"):
        export_peft(prompt, tmp_path / "b", task_type="MASKED_LM")


def test_export_run_reads_a_tuner_run_folder(backend, prompt, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.save_tensors("best_prompt.safetensors", {"z": torch.zeros(3), "soft_prompt": prompt.embeds})
    run.write_json("config.json", {"task": {"template": FMT.template.pattern, "verbalizer": dict(FMT.verbalizer),
                                            "placement": "prefix"}})
    folder = export_run(run.path, tmp_path / "adapter", model_config=backend.model.config)
    torch.testing.assert_close(_load(backend, folder).get_prompt_embedding_to_save("default").float(), prompt.embeds)
