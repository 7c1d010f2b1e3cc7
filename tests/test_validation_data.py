"""Validation data in every accepted form -> one frame and one digest; the errors; the shipped real-text sets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
import pytest

from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.tasks import get_task
from mlflow_tfexport.validation.data import (
    DEFAULT_MAX_ROWS,
    DIGEST_LENGTH,
    INPUT_EXAMPLE,
    InputExampleError,
    ValidationData,
    digest_columns,
    load_validation_data,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "examples" / "data"
TEXTS = ["I loved this film.", "The soup was cold, the café was noisy 😡", "Not bad at all: 4/5, naïve but fun"]
QUESTIONS = ["What colour is the sky?", "Who runs the bakery?"]
CONTEXTS = ["On a clear day the sky is blue.", "The bakery is run by Tomás, who opened it in 2009."]
TC = get_task("text-classification")
QA = get_task("question-answering")


def _load(data: Any, task: Any = TC, **kwargs: Any) -> ValidationData:
    loaded = load_validation_data(data, task, **kwargs)
    assert loaded is not None
    return loaded


def _error(data: Any, task: Any = TC, **kwargs: Any) -> str:
    with pytest.raises(ExportError) as info:
        load_validation_data(data, task, **kwargs)
    return str(info.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _text_forms(tmp_path: Path) -> Dict[str, Callable[[], Any]]:
    """Every accepted form of TEXTS for a single-text task (with an ignored ``label`` column where one fits)."""
    frame = pd.DataFrame({"text": TEXTS, "label": ["POSITIVE", "NEGATIVE", "POSITIVE"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    _write(tmp_path / "t.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in frame.to_dict("records")) + "\n")
    _write(tmp_path / "t.txt", "\n" + "\n\n".join(TEXTS) + "\n\n")
    return {
        "list": lambda: list(TEXTS),
        "tuple": lambda: tuple(TEXTS),
        "DataFrame": lambda: frame,
        "DataFrame, one other column": lambda: pd.DataFrame({"review": TEXTS}),
        "DataFrame, shuffled index": lambda: frame.set_axis([7, 3, 5]),
        "Series": lambda: pd.Series(TEXTS, name="whatever"),
        "array": lambda: np.array(TEXTS),
        "dict": lambda: {"text": TEXTS},
        "records": lambda: frame.to_dict("records"),
        "csv": lambda: str(tmp_path / "t.csv"),
        "csv Path": lambda: tmp_path / "t.csv",
        "parquet": lambda: tmp_path / "t.parquet",
        "jsonl": lambda: tmp_path / "t.jsonl",
        "txt": lambda: tmp_path / "t.txt",
        "mlflow.data pandas": lambda: mlflow.data.from_pandas(frame, name="reviews"),
        "mlflow.data numpy": lambda: mlflow.data.from_numpy(np.array(TEXTS), name="reviews"),
    }


def test_every_form_gives_one_frame_and_digest(tmp_path: Path) -> None:
    expected = pd.DataFrame({"text": pd.Series(TEXTS, dtype=object)})
    digests = set()
    for form, make in _text_forms(tmp_path).items():
        loaded = _load(make())
        pd.testing.assert_frame_equal(loaded.frame, expected, obj=form)
        assert loaded.rows == loaded.total_rows == 3, form
        assert loaded.columns == ("text",) and not loaded.truncated, form
        assert all(type(v) is str for v in loaded.frame["text"]), form
        digests.add(loaded.digest)
    assert len(digests) == 1
    (digest,) = digests
    assert len(digest) == DIGEST_LENGTH and int(digest, 16) >= 0
    assert digest == digest_columns({"text": TEXTS})


def test_origin_and_name_say_where_the_rows_came_from(tmp_path: Path) -> None:
    forms = _text_forms(tmp_path)
    seen = {form: (_load(forms[form]()).origin, _load(forms[form]()).name) for form in forms}
    assert seen["list"] == ("list", "validation-data")
    assert seen["DataFrame"] == ("DataFrame", "validation-data")
    assert seen["csv"] == ("file t.csv", "t")
    assert seen["txt"] == ("file t.txt", "t")
    assert seen["mlflow.data pandas"] == ("mlflow.data dataset reviews", "reviews")
    assert _load(TEXTS, name="my-set").name == "my-set"
    assert _load(forms["csv"]()).source == str((tmp_path / "t.csv").resolve())
    assert _load(forms["DataFrame"]()).ignored_columns == ("label",)
    assert _load(forms["list"]()).describe().startswith("3 rows from list (digest ")


def test_digest_is_stable_and_follows_content() -> None:
    # Recorded on registry versions (tfexport.data_digest): changing it makes old and new tags disagree.
    assert _load(["a", "b"]).digest == "54bdc52cffdf6a52"
    base = _load(TEXTS).digest
    assert _load(list(reversed(TEXTS))).digest != base
    assert _load(TEXTS[:2]).digest != base
    assert _load([t + " " for t in TEXTS]).digest != base
    assert _load(pd.DataFrame({"text": TEXTS, "text_pair": TEXTS})).digest != base  # a pair is content too


def test_question_answering_forms_agree(tmp_path: Path) -> None:
    frame = pd.DataFrame({"context": CONTEXTS, "id": ["1", "2"], "question": QUESTIONS})
    frame.to_csv(tmp_path / "qa.csv", index=False)
    frame.to_parquet(tmp_path / "qa.parquet")
    _write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in frame.to_dict("records")))
    forms: List[Any] = [
        frame,
        frame.to_dict("records"),
        {"question": QUESTIONS, "context": CONTEXTS},
        tmp_path / "qa.csv",
        tmp_path / "qa.parquet",
        tmp_path / "qa.jsonl",
        mlflow.data.from_pandas(frame, name="qa"),
        mlflow.data.from_numpy({"question": np.array(QUESTIONS), "context": np.array(CONTEXTS)}),
    ]
    expected = pd.DataFrame({"question": QUESTIONS, "context": CONTEXTS}, dtype=object)
    loaded = [_load(f, QA) for f in forms]
    for item in loaded:
        pd.testing.assert_frame_equal(item.frame, expected)  # the task's column order, extra columns dropped
    assert len({item.digest for item in loaded}) == 1
    assert isinstance(loaded[0].to_request(), pd.DataFrame)


def test_optional_column_is_kept_and_task_may_be_a_name() -> None:
    loaded = _load(pd.DataFrame({"text_pair": ["b"], "text": ["a"], "label": ["x"]}), "sentiment-analysis")
    assert loaded.columns == ("text", "text_pair")
    assert loaded.ignored_columns == ("label",)
    assert _load(["a"], "fill-mask").to_request() == ["a"]


def test_image_task_passes_its_image_column_through(tmp_path: Path) -> None:
    paths = [str(tmp_path / "cat.png"), "data:image/png;base64,iVBORw0KGgo="]
    loaded = _load(pd.DataFrame({"image": paths, "label": ["cat", "dog"]}), "image-classification")
    assert loaded.columns == ("image",) and loaded.column("image") == paths
    assert _load(paths, "image-classification").digest == loaded.digest


def test_none_without_input_example_is_none() -> None:
    assert load_validation_data(None, TC) is None
    assert load_validation_data(None, QA, source_input_example=None) is None


@pytest.mark.parametrize(
    "example",
    [
        list(TEXTS),
        pd.DataFrame({"text": TEXTS}),
        pd.DataFrame({0: TEXTS}),  # how MLflow reloads a logged list of strings
        {"text": TEXTS},
        {"inputs": list(TEXTS)},
        np.array(TEXTS),
    ],
    ids=["list", "frame", "frame-0", "dict", "inputs", "array"],
)
def test_input_example_is_the_fallback(example: Any) -> None:
    loaded = _load(None, TC, source_input_example=example)
    assert loaded.origin == INPUT_EXAMPLE and loaded.name == INPUT_EXAMPLE
    assert loaded.digest == _load(TEXTS).digest


def test_input_example_forms_of_one_row() -> None:
    assert _load(None, TC, source_input_example="one review").column("text") == ["one review"]
    qa = _load(None, QA, source_input_example={"question": QUESTIONS[0], "context": np.array(CONTEXTS[0])})
    assert qa.rows == 1 and qa.column("context") == [CONTEXTS[0]]
    # Data given explicitly wins over the input example.
    assert _load(["x"], TC, source_input_example=TEXTS).origin == "list"


def test_unusable_input_example_says_so() -> None:
    with pytest.raises(InputExampleError, match="input example.*question.*context.*validation_data="):
        load_validation_data(None, QA, source_input_example=["just a text"])
    with pytest.raises(InputExampleError, match="received int 3"):
        load_validation_data(None, TC, source_input_example=[3])


def test_max_rows_keeps_the_first_rows_and_says_so() -> None:
    texts = [f"review number {i}" for i in range(10)]
    loaded = _load(texts, max_rows=4)
    assert loaded.column("text") == texts[:4]
    assert loaded.rows == 4 and loaded.total_rows == 10 and loaded.truncated
    assert loaded.origin == "list, first 4 of 10 rows"
    assert loaded.digest == _load(texts[:4]).digest
    assert _load(texts * 300, max_rows=None).rows == 3000
    assert _load(texts * 300).rows == DEFAULT_MAX_ROWS
    # Only the rows used are checked: a bad cell past the limit does not matter.
    assert _load(["ok", "fine", 5], max_rows=2).rows == 2
    for bad in (0, -1, 2.5, True):
        assert "max_rows" in _error(texts, max_rows=bad)


def test_list_for_question_answering_is_refused() -> None:
    message = _error(QUESTIONS, QA)
    assert "received 2 value(s) without column names" in message
    assert "'question' and 'context'" in message and "DataFrame" in message


def test_missing_columns_name_found_needed_and_fix(tmp_path: Path) -> None:
    message = _error(pd.DataFrame({"q": QUESTIONS, "c": CONTEXTS}), QA)
    assert "has column(s) 'q', 'c'" in message
    assert "needs columns 'question' and 'context'" in message and "missing: 'question', 'context'" in message
    assert "df.rename(columns={'q': 'question', 'c': 'context'})" in message
    message = _error(pd.DataFrame({"review": ["a"], "stars": ["5"]}))
    assert "'review', 'stars'" in message and "column 'text' (optionally 'text_pair')" in message
    _write(tmp_path / "qa.csv", "question,label\nWhy?,x\n")
    message = _error(tmp_path / "qa.csv", QA)
    assert "file qa.csv" in message and "missing: 'context'" in message


@pytest.mark.parametrize(
    ("data", "origin"),
    [([], "list"), (pd.DataFrame({"text": []}), "DataFrame"), (pd.DataFrame(), "DataFrame"), ({"text": []}, "dict")],
)
def test_empty_data_is_refused(data: Any, origin: str) -> None:
    message = _error(data)
    assert f"({origin})" in message and ("no rows" in message or "no columns" in message)


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.csv", "text,label\n"), ("e.csv", ""), ("e.txt", "\n  \n\n"), ("e.jsonl", "\n"), ("e.txt", "")],
)
def test_empty_files_are_refused(tmp_path: Path, name: str, content: str) -> None:
    message = _error(_write(tmp_path / name, content))
    assert f"file {name}" in message and ("no rows" in message or "no columns" in message)


@pytest.mark.parametrize(
    ("cells", "received"),
    [
        ([1, "b"], "received int 1"),
        (["a", None], "received a missing value (None)"),
        (["a", float("nan")], "received a missing value (nan)"),
        (["a", b"bytes"], "received bytes b'bytes'"),
        (["a", "   "], "expected a non-empty text, received '   '"),
    ],
)
def test_bad_cells_name_column_row_and_fix(cells: List[Any], received: str) -> None:
    message = _error(pd.DataFrame({"text": pd.Series(cells, dtype=object)}))
    row = cells.index(cells[0] if received.startswith("received int") else cells[1])
    assert f"column 'text', row {row}" in message and received in message
    assert "df" in message  # how to fix it


def test_bad_cells_in_files_and_pair_columns(tmp_path: Path) -> None:
    _write(tmp_path / "n.jsonl", '{"text": "fine"}\n{"text": 42}\n')
    message = _error(tmp_path / "n.jsonl")
    assert "file n.jsonl" in message and "row 1" in message and "int 42" in message
    _write(tmp_path / "m.jsonl", '{"question": "Why?", "context": "Because."}\n{"question": "How?"}\n')
    assert "column 'context', row 1" in _error(tmp_path / "m.jsonl", QA)
    assert "column 'text_pair', row 0" in _error(pd.DataFrame({"text": ["a"], "text_pair": [3]}))
    # An empty optional pair is text; an empty required cell is not.
    assert _load(pd.DataFrame({"text": ["a"], "text_pair": [""]})).column("text_pair") == [""]
    _write(tmp_path / "q.csv", 'question,context\n"Why?",\n')
    assert "column 'context', row 0" in _error(tmp_path / "q.csv", QA)


def test_unknown_suffix_missing_file_and_directory(tmp_path: Path) -> None:
    message = _error(_write(tmp_path / "data.xlsx", "x"))
    assert "unknown suffix '.xlsx'" in message and ".csv, .parquet, .jsonl, .txt" in message
    assert "unknown suffix '(none)'" in _error(_write(tmp_path / "noext", "x"))
    message = _error(str(tmp_path / "absent.csv"))
    assert "no file" in message and "absent.csv" in message
    message = _error("a great film")  # a str is a path: say how to pass texts
    assert "no file 'a great film'" in message and "pass them as a list" in message
    assert "is a directory" in _error(tmp_path)


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    (tmp_path / "bin.csv").write_bytes(b"text\n\xff\xfe caf\xe9\n")
    message = _error(tmp_path / "bin.csv")
    assert "cannot be read as CSV" in message and "UTF-8" in message
    _write(tmp_path / "quote.csv", 'text\n"never closed\n')
    assert "cannot be read as CSV" in _error(tmp_path / "quote.csv")
    _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    message = _error(tmp_path / "bad.jsonl")
    assert "cannot be read as JSON lines" in message and "line 2" in message and "one JSON object per line" in message
    _write(tmp_path / "list.jsonl", '["not", "an", "object"]\n')
    assert "line 1 is a JSON list" in _error(tmp_path / "list.jsonl")
    _write(tmp_path / "bad.parquet", "not parquet")
    assert "cannot be read as Parquet" in _error(tmp_path / "bad.parquet")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    assert "cannot be read as text" in _error(tmp_path / "bin.txt")


def test_other_refusals(tmp_path: Path) -> None:
    message = _error(42)
    assert "received int" in message and "a list of strings" in message
    assert "different lengths" in _error({"question": QUESTIONS, "context": CONTEXTS[:1]}, QA)
    assert "appear more than once" in _error(pd.DataFrame([["a", "b"]], columns=["text", "text"]))
    assert "shape (2, 2)" in _error(np.array([["a", "b"], ["c", "d"]]))
    message = _error(_write(tmp_path / "q.txt", "Why?\n"), QA)
    assert "one text per line" in message and "'question' and 'context'" in message


def test_to_mlflow_dataset_is_logged_with_the_run(tmp_path: Path, tracking_uri: str) -> None:
    path = DATA_DIR / "masked.csv"
    loaded = _load(path, "fill-mask")
    dataset = loaded.to_mlflow_dataset()
    assert dataset.name == "masked" and dataset.digest == loaded.digest
    assert json.loads(dataset.source.to_json())["uri"] == str(path.resolve())
    pd.testing.assert_frame_equal(dataset.df, loaded.frame)
    with mlflow.start_run() as run:
        mlflow.log_input(dataset, context="validation")
        mlflow.log_input(_load(TEXTS).to_mlflow_dataset(), context="validation")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert {(i.dataset.name, i.dataset.digest) for i in inputs} == {
        ("masked", loaded.digest),
        ("validation-data", _load(TEXTS).digest),
    }


# The shipped real-text sets (examples/data), used by the README's --validation-data example.


def test_reviews_set_is_varied_and_balanced() -> None:
    loaded = _load(DATA_DIR / "reviews.csv", "text-classification")
    raw = pd.read_csv(DATA_DIR / "reviews.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns) == ["text", "label"]
    assert loaded.rows == len(raw) >= 250 and loaded.origin == "file reviews.csv"
    assert loaded.ignored_columns == ("label",)
    counts = raw["label"].value_counts().to_dict()
    assert set(counts) == {"POSITIVE", "NEGATIVE"} and counts["POSITIVE"] == counts["NEGATIVE"]
    normalised = raw["text"].str.lower().str.split().str.join(" ")
    assert normalised.is_unique
    words = raw["text"].str.split().str.len()
    assert words.min() >= 4
    assert (words > 80).sum() >= 6  # some exceed 128 tokens
    assert (words.between(30, 60)).sum() >= 10
    assert raw["text"].map(lambda t: not t.isascii()).sum() >= 10  # café, naïve, €, emoji
    assert raw["text"].str.contains(r"\d").sum() >= 20
    assert raw["label"].head(40).value_counts().min() >= 10  # shuffled: any prefix is mixed


def test_pairs_set_loads_for_question_answering() -> None:
    loaded = _load(DATA_DIR / "pairs.csv", "question-answering")
    assert loaded.columns == ("question", "context") and loaded.rows >= 35
    assert all(q.endswith("?") for q in loaded.column("question"))
    assert len(set(loaded.column("question"))) == loaded.rows
    assert max(len(c.split()) for c in loaded.column("context")) > 80  # one context needs truncation


def test_masked_set_loads_for_fill_mask() -> None:
    loaded = _load(DATA_DIR / "masked.csv", "fill-mask")
    assert loaded.columns == ("text",) and loaded.rows >= 35
    assert all(t.count("[MASK]") == 1 for t in loaded.column("text"))
    assert len(set(loaded.column("text"))) == loaded.rows


def test_shipped_files_are_plain_utf8() -> None:
    for name in ("reviews.csv", "pairs.csv", "masked.csv"):
        data = (DATA_DIR / name).read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf") and b"\r\n" not in data, name
        data.decode("utf-8")
    assert os.path.getsize(DATA_DIR / "reviews.csv") < 100_000
