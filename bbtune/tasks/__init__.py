"""Tasks and data: examples, templates and verbalizers (`format`), reading and few-shot splits (`data`),
Hugging Face datasets on disk (`hf`), and the task a run tunes with its presets (`task`).

The lowest layer of bbtune: it imports nothing of bbtune but `errors` and `constants`.
"""
from bbtune.tasks.data import (FieldMap, answer_split, few_shot_split, load_examples, parse_label_names, read_inputs,
                               read_rows, subsample)
from bbtune.tasks.format import (Example, Placement, Rendered, TaskFormat, TaskKind, Template, multi_token_message,
                                 verbalizer_token_ids, verbalizer_token_sequences)
from bbtune.tasks.task import (PRESETS, Preset, Task, TaskConfig, answers_data_dir, check_labels, demo_data_dir,
                               build_task, label_name_words, load_task, overlaps)

__all__ = ["Example", "FieldMap", "PRESETS", "Placement", "Preset", "Rendered", "Task", "TaskConfig", "TaskFormat",
           "TaskKind", "Template", "answer_split", "answers_data_dir", "check_labels", "demo_data_dir", "few_shot_split",
           "build_task", "label_name_words", "load_examples", "load_task", "multi_token_message", "overlaps", "parse_label_names",
           "read_inputs", "read_rows", "subsample", "verbalizer_token_ids", "verbalizer_token_sequences"]
