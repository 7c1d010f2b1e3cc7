"""Export options, model URIs and bench sizes: checked in one place, bounded, refused before any work with a
message that names the value, the bound and the fix."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List

import mlflow
import pytest
from mlflow import MlflowClient

import mlflow_tfexport
from mlflow_tfexport import bench
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.export import api as exporting
from mlflow_tfexport.export import source as source_module
from mlflow_tfexport.export.options import (
    MAX_TRACE_BATCH,
    MAX_TRACE_ELEMENTS,
    ExportOptions,
    make_options,
    parse_trace_shapes,
)
from mlflow_tfexport.formats import FORMATS, export_formats

#: A value for each option that is not its default (what a user sets by mistake for another format).
SET: Dict[str, Any] = {
    "opset": 17, "trace_shape": "1x8", "atol": 1e-3, "exporter": "legacy", "optimize": True, "quantize": "int8",
    "min_agreement": 0.9, "neuron_target": "inf1", "compiler_args": ["--fast-math", "none"], "device": "cpu",
    "quantize_per_channel": True, "quantize_op_types": "MatMul", "quantize_reduce_range": True,
}
FIELD = {"trace_shape": "trace_shapes"}


@pytest.fixture(scope="module")
def source(module_registry: str) -> Iterator[str]:
    from tiny import tiny

    model, tok = tiny("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name="opts")
    yield "models:/opts/1"


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any loading of the source model fails the test: a refused export must not get there."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the source model was loaded although the export was refused")

    monkeypatch.setattr(exporting, "load_source_model", fail)


def _versions() -> List[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions("name = 'opts'"))


# --- one place refuses what does not apply to the format ------------------------------------------------


def test_the_format_table_says_which_options_apply() -> None:
    """Every option outside a format's record is refused for it, naming the formats it applies to."""
    names = {f.name for f in dataclasses.fields(ExportOptions)} - {"format"}
    assert {FIELD.get(k, k) for k in SET} == names
    for fmt in export_formats():
        spec = FORMATS[fmt]
        base = {"trace_shape": "1x8"} if spec.static_shapes else {}
        for option, value in SET.items():
            field = FIELD.get(option, option)
            if field in spec.options:
                continue
            with pytest.raises(ExportError) as info:
                make_options(fmt, **{**base, option: value})
            message = str(info.value)
            owners = [f"format={o!r}" for o, s in FORMATS.items() if field in s.options]
            assert f"{option}=" in message and f"does not apply to format={fmt!r}" in message
            assert all(owner in message for owner in owners) and f"Drop {option}=" in message


def test_compiler_args_with_onnx_are_refused(source: str, no_work: None) -> None:
    before = _versions()
    with pytest.raises(ExportError, match=r"compiler_args=\['--fast-math'\] does not apply to format='onnx'.*"
                                          r"applies to format='neuron' only"):
        mlflow_tfexport.export(source, format="onnx", compiler_args=["--fast-math"])
    assert _versions() == before


# --- values ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_opset_as_a_string_of_digits_is_that_number(source: str) -> None:
    result = mlflow_tfexport.export(source, format="onnx", opset="17")
    assert result.model_version.tags[Tag.OPSET] == "17"
    again = mlflow_tfexport.export(source, format="onnx", opset=17)  # the same export
    assert not again.created and again.model_version.version == result.model_version.version


@pytest.mark.parametrize("opset", ["seventeen", "17.0", 17.5, True, [17]])
def test_an_opset_that_is_not_an_integer_is_named(source: str, no_work: None, opset: Any) -> None:
    with pytest.raises(ExportError, match=r"opset must be an integer such as 17, received .*opset=17"):
        mlflow_tfexport.export(source, format="onnx", opset=opset)


@pytest.mark.parametrize(
    ("trace_shape", "match"),
    [
        ("100000x8", rf"batch 100000, above the maximum of {MAX_TRACE_BATCH}.*e\.g\. '{MAX_TRACE_BATCH}x8'"),
        ("257x1", rf"batch 257, above the maximum of {MAX_TRACE_BATCH}"),
        ("256x2048", rf"256x2048 holds 524288 tokens .* maximum of {MAX_TRACE_ELEMENTS}.*e\.g\. '128x2048'"),
        (["1x8", "20000x64"], "batch 20000"),
    ],
)
def test_trace_shapes_are_bounded_before_any_work(source: str, no_work: None, trace_shape: Any, match: str) -> None:
    before = _versions()
    with pytest.raises(ExportError, match=match):
        mlflow_tfexport.export(source, format="torchscript", trace_shape=trace_shape)
    assert _versions() == before


def test_largest_trace_shapes_within_the_bounds_parse() -> None:
    assert parse_trace_shapes(f"{MAX_TRACE_BATCH}x1024,1x262144") == ((MAX_TRACE_BATCH, 1024), (1, 262144))


# --- model URIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("/etc", r"'/etc' is a local directory without an MLmodel file"),
        ("file:///etc", r"without an MLmodel file"),
        ("/no/such/dir", r"'/no/such/dir' is not a directory"),
        ("http://example.invalid/model", r"http:// URL, which MLflow reads as the REST endpoint"),
        ("https://127.0.0.1:9/models/x", r"https:// URL"),
    ],
)
def test_a_uri_that_is_not_a_model_is_refused_before_download(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, uri: str, match: str
) -> None:
    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{uri} was downloaded")

    monkeypatch.setattr(source_module, "download_artifacts", no_download)
    with pytest.raises(ExportError, match=match) as info:
        mlflow_tfexport.export(uri, registered_model_name="x")
    assert "models:/sentiment/1" in str(info.value)  # the message shows what a model URI looks like


def test_a_local_directory_that_is_not_a_model(tracking_uri: str, tmp_path: Any) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ExportError, match="without an MLmodel file: not a saved MLflow model"):
        mlflow_tfexport.export(str(folder), registered_model_name="x")
    with pytest.raises(ExportError, match="without an MLmodel file"):
        exporting.export_to_directory(str(folder), str(tmp_path / "out"))


# --- bench ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded although the benchmark was refused")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", fail)


def test_bench_seq_len_is_bounded_by_the_model(source: str, no_load: None, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    assert cli_main(["bench", source, "--seq-len", "100000", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "seq_len 100000 is longer than models:/opts/1 accepts: at most 64 tokens" in err
    assert "--seq-len 64" in err


@pytest.mark.parametrize("sizes", [{"batch_size": 10**6}, {"iterations": 10**9}, {"warmup": -1}, {"seq_len": 1},
                                   {"batch_size": 2.5}])
def test_bench_sizes_are_bounded(source: str, no_load: None, sizes: Dict[str, Any]) -> None:
    with pytest.raises(TfexportError, match=r"batch_size 1\.\.1024.*iterations 1\.\.100000"):
        bench.bench(source, **sizes)


def test_texts_of_length_encodes_a_logarithmic_number_of_times() -> None:
    calls = []

    class Counting:
        def encode(self, text: str) -> Any:
            calls.append(text)
            return type("Encoding", (), {"ids": text.split() + ["[CLS]", "[SEP]"]})()

    texts, tokens = bench.texts_of_length(Counting(), 4096, 3)
    assert tokens == 4096 and len(texts) == 3 and len(set(texts)) == 3
    assert len(calls) < 3 * 40  # a word-by-word search would encode ~12,000 times


def test_export_documents_its_options_and_their_bounds() -> None:
    doc = mlflow_tfexport.export.__doc__ or ""
    for needle in ("Args:", "Returns:", "Raises:", "Example:", f"batch <= {MAX_TRACE_BATCH}", str(MAX_TRACE_ELEMENTS)):
        assert needle in doc
    for option in SET:
        assert f"    {option}: " in doc
