import json

import pytest

from bbtune.errors import TaskError, VerbalizerError
from bbtune.backends.models import build_tiny_tokenizer
from bbtune.tasks import (Example, Placement, Task, TaskConfig, TaskFormat, Template, demo_data_dir, few_shot_split,
                          load_examples, load_task, verbalizer_token_ids)


def test_template_splits_input_from_cue():
    r = Template("Review: {text} It was{label}").render(Example("fine", "pos"))
    assert (r.head, r.cue) == ("Review: fine", " It was")


def test_input_first_template_keeps_the_space_in_the_cue():
    r = Template("{text} It was{label}").render(Example("fine", "pos"))
    assert (r.head, r.cue) == ("fine", " It was")


def test_pair_template_keeps_both_inputs_in_head():
    r = Template("{text} ? {text_b} Answer:{label}").render(Example("a", "yes", "b"))
    assert (r.head, r.cue) == ("a ? b", " Answer:")


@pytest.mark.parametrize("pattern, needle", [("{label} {text}", "must end"), ("It was{label}", "no {text}"),
                                             ("{text} {foo}{label}", "unknown slot")])
def test_bad_templates_say_what_is_wrong(pattern, needle):
    with pytest.raises(TaskError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        Template(pattern)


def test_unknown_label_is_named():
    fmt = TaskFormat(Template(), {"negative": " bad", "positive": " good"})
    with pytest.raises(VerbalizerError, match="'neutral'.*known labels"):
        fmt.label_index("neutral")


def test_multi_token_word_suggests_single_token_variant():
    tok = build_tiny_tokenizer()
    fmt = TaskFormat(Template(), {"negative": "terrible", "positive": " great"})
    assert len(tok.encode("terrible", add_special_tokens=False)) > 1
    with pytest.raises(VerbalizerError, match=r"'terrible'.*tokens.*use ' terrible' \(1 token\)"):
        verbalizer_token_ids(tok, fmt)


def test_single_token_words_give_ids():
    tok = build_tiny_tokenizer()
    ids = verbalizer_token_ids(tok, TaskFormat(Template(), {"negative": " terrible", "positive": " great"}))
    assert ids == [tok.encode(" terrible", add_special_tokens=False)[0], tok.encode(" great", add_special_tokens=False)[0]]


def test_few_shot_split_is_seeded_disjoint_and_balanced():
    pool = [Example(f"t{i}", "a" if i % 2 else "b") for i in range(40)]
    train, dev = few_shot_split(pool, ["a", "b"], k=4, seed=1)
    assert len(train) == len(dev) == 8
    assert not set(train) & set(dev)
    assert sorted(e.label for e in train) == ["a"] * 4 + ["b"] * 4
    assert (train, dev) == tuple(few_shot_split(pool, ["a", "b"], k=4, seed=1))
    assert train != few_shot_split(pool, ["a", "b"], k=4, seed=2)[0]


def test_too_few_examples_for_k_is_an_error():
    pool = [Example("x", "a")] * 3 + [Example("y", "b")] * 10
    with pytest.raises(TaskError, match="'a' has 3 examples"):
        few_shot_split(pool, ["a", "b"], k=2, seed=0)


def test_empty_file_and_empty_split_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(TaskError, match="no examples"):
        load_examples(tmp_path / "train.jsonl")
    fmt = TaskFormat(Template(), {"a": " x"})
    with pytest.raises(TaskError, match="empty dev split"):
        Task("t", fmt, (Example("x", "a"),), ())


def test_csv_and_jsonl_load_the_same(tmp_path):
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text("text,label\ngood,1\nbad,0\n")
    names = {"1": "positive", "0": "negative"}
    assert load_examples(tmp_path / "d.jsonl", label_names=names) == load_examples(tmp_path / "d.csv", label_names=names)


def test_bad_json_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(TaskError, match="line 2"):
        load_examples(tmp_path / "d.jsonl")


def test_label_outside_verbalizer_in_data_fails_at_load(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "meh", "label": "neutral"}) + "\n")
    with pytest.raises(VerbalizerError, match="'neutral'"):
        load_task(tmp_path, "sentiment", k=1)


def test_demo_task_loads_with_placement():
    task = TaskConfig(data="demo", k=8, placement="prefix").load()
    assert len(task.train) == len(task.dev) == 16 and len(task.test) == 240
    assert task.format.placement is Placement.PREFIX
    assert (demo_data_dir() / "train.jsonl").exists()


def test_demo_task_works_with_the_default_k_and_is_built_as_documented():
    """`bbtune tune --data demo` with its defaults: k = 16 per class fits the 48-per-class pool, and the files are
    exactly what bbtune/data/generate_demo.py writes (so the set can be rebuilt and reviewed)."""
    import importlib.util

    task = TaskConfig(data="demo").load()
    assert len(task.train) == len(task.dev) == 32 and len(task.test) >= 200
    spec = importlib.util.spec_from_file_location("generate_demo", demo_data_dir().parent / "generate_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    pool, test = module.build()
    written = [json.loads(line) for line in (demo_data_dir() / "test.jsonl").read_text().splitlines()]
    assert written == test and len(pool) == 96
    assert not {r["text"] for r in pool} & {r["text"] for r in test}


def test_task_config_rejects_bad_verbalizer_json():
    with pytest.raises(TaskError, match="JSON"):
        TaskConfig(verbalizer="{not json")


def _sentiment_folder(tmp_path, train: bytes, test: bytes | None = None):
    (tmp_path / "train.csv").write_bytes(train)
    if test is not None:
        (tmp_path / "test.csv").write_bytes(test)
    return tmp_path


CSV_ROWS = "".join(f"{word} film {i},{label}\n" for i in range(4) for word, label in (("great", 1), ("awful", 0)))


def test_a_byte_order_mark_is_read_transparently(tmp_path):
    folder = _sentiment_folder(tmp_path, ("\ufefftext,label\n" + CSV_ROWS).encode("utf-8"))
    task = TaskConfig(data=str(folder), k=2, label_names="negative,positive").load()
    assert task.train[0].text.endswith(tuple(str(i) for i in range(4)))


def test_a_non_utf8_file_names_the_file_the_line_and_the_flag(tmp_path):
    body = ("text,label\n" + CSV_ROWS.replace("film 3", "caf\u00e9 3")).encode("cp1252")
    folder = _sentiment_folder(tmp_path, body)
    with pytest.raises(TaskError, match=r"train\.csv: line 8 is not valid utf-8.*TaskConfig\.encoding"):
        TaskConfig(data=str(folder), k=2, label_names="negative,positive").load()
    task = TaskConfig(data=str(folder), k=2, label_names="negative,positive", encoding="cp1252").load()
    texts = {ex.text for ex in task.train + task.dev}  # k=2 takes all 4 rows of each label
    cafe = "caf\u00e9"
    assert texts == {f"{w} {cafe if i == 3 else 'film'} {i}" for i in range(4) for w in ("great", "awful")}


def test_an_unknown_encoding_is_refused_by_field():
    with pytest.raises(TaskError, match="encoding='utf-9'"):
        TaskConfig(encoding="utf-9")


def test_chat_preset_puts_the_instruction_in_a_user_turn_and_the_label_in_the_assistant_turn():
    from bbtune.tasks import PRESETS
    fmt = TaskFormat(Template(PRESETS["sentiment-chat"].template), PRESETS["sentiment-chat"].verbalizer)
    text = fmt.text(Example("A dull film.", "negative"), "")
    assert text == ("<|im_start|>user\nClassify the sentiment of this movie review.\nA dull film.<|im_end|>\n"
                    "<|im_start|>assistant\nSentiment:")
    _, cue = fmt.template.without_cue()
    assert cue == "<|im_end|>\n<|im_start|>assistant\nSentiment:"  # a cue-start search begins from the turn change


@pytest.mark.real_model
@pytest.mark.parametrize("preset", ["question", "sentiment-5"])
def test_trec_and_sst5_presets_score_on_the_embedded_model(preset, smollm2_backend):
    """Their label words are one token each for SmolLM2 (checked: Gemma 3 too), so single-token scoring takes them."""
    from bbtune.tasks import PRESETS, verbalizer_token_ids

    fmt = TaskFormat(Template(PRESETS[preset].template), PRESETS[preset].verbalizer)
    ids = verbalizer_token_ids(smollm2_backend.tokenizer, fmt)
    assert len(set(ids)) == len(fmt.labels)
