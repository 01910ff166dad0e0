"""Fuzzing data files: random bytes as JSONL, CSV or TSV files are read into examples or refused with a
`BBTuneError` that says why (random command lines: tests/app/test_cli_fuzz.py).

Small examples; the `ci` profile (tests/conftest.py) replays the same ones every run, `make fuzz` explores."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bbtune.errors import BBTuneError
from bbtune.tasks import FieldMap, load_examples, read_inputs

FUZZ = settings(suppress_health_check=list(HealthCheck))  # examples, seed and database: the profile's
SUFFIXES = (".jsonl", ".csv", ".tsv")
ENCODINGS = ("utf-8", "latin-1", "cp1252", "utf-16", "ascii", "no-such-encoding")

# ---------------------------------------------------------------- data files

_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=6)
_row = st.dictionaries(st.sampled_from(["text", "label", "text_b", "x", ""]), _json, max_size=4)
_label = st.sampled_from(["positive", "negative", "0", "1"])
_cell = st.text(alphabet=st.sampled_from('ab ,\t"\n\r\x00é\u2028'), max_size=6)


@st.composite
def _file_bytes(draw: Callable[..., Any]) -> bytes:
    """Raw bytes, JSON Lines of random rows (some well-formed), or delimited text with quotes and stray delimiters."""
    kind = draw(st.sampled_from(["bytes", "jsonl", "delimited", "good"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "good":  # well-formed rows (of the file's own format), one byte of them maybe changed
        rows = draw(st.lists(st.fixed_dictionaries({"text": st.text(max_size=8), "label": _label}), min_size=1,
                             max_size=4))
        sep = draw(st.sampled_from(["json", ",", "\t"]))
        text = ("\n".join(map(json.dumps, rows)) if sep == "json" else
                "\n".join([f"text{sep}label"] + [f'"{r["text"]}"{sep}{r["label"]}' for r in rows]))
        data = bytearray(text.encode())
        if draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "jsonl":
        lines = draw(st.lists(_row.map(json.dumps) | st.text(max_size=20) | _json.map(json.dumps), max_size=5))
        text = "\n".join(lines)
    else:
        sep = draw(st.sampled_from([",", "\t"]))
        header = draw(st.lists(st.sampled_from(["text", "label", "text_b", "", "x"]), min_size=0, max_size=4))
        rows = draw(st.lists(st.lists(_cell, max_size=5), max_size=4))
        text = "\n".join(sep.join(r) for r in [header, *rows])
    prefix = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"]))  # a UTF-8 or UTF-16 byte-order mark
    return prefix + text.encode(draw(st.sampled_from(["utf-8", "latin-1", "utf-16"])), errors="replace")


@FUZZ
@given(data=_file_bytes(), suffix=st.sampled_from(SUFFIXES), encoding=st.sampled_from(ENCODINGS),
       labelled=st.booleans())
def test_a_data_file_of_random_bytes_gives_examples_or_a_bbtune_error(data: bytes, suffix: str, encoding: str,
                                                                      labelled: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train{suffix}"
        path.write_bytes(data)
        try:
            if labelled:
                examples = load_examples(path)
            else:
                examples = read_inputs(path, FieldMap(label="label", encoding=encoding))
        except BBTuneError as err:
            event(type(err).__name__)
            assert str(err).strip(), "an error without a message"
            return
    event("examples")
    assert examples and all(isinstance(ex.text, str) and isinstance(ex.label, str) for ex in examples)
