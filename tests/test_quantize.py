"""int8 modes of the ONNX export: dynamic per channel (the default int8), per tensor, static calibrated on rows;
the options that refine them; quantising the graph of an existing fp32 ONNX version."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import mlflow
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import numpy_helper

import mlflow_tfexport
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export import api
from mlflow_tfexport.export.formats import get_backend
from mlflow_tfexport.export.onnx import calibration
from mlflow_tfexport.export.options import DEFAULT_OP_TYPES, make_options
from mlflow_tfexport.export.reuse import resolve_export_source
from mlflow_tfexport.export.source import local_source
from mlflow_tfexport.serving.conf import read_flavor_conf
from mlflow_tfexport.tasks import get_task
from mlflow_tfexport.validation.data import load_validation_data

TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city.",
         "Paris is the capital of France.", "The actors were really very good and the end was the best scene."]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> str:
    model, tok = tiny_model("text-classification", "bert")
    path = str(tmp_path_factory.mktemp("src") / "model")
    mlflow_tfexport.save_model(model, path, tokenizer=tok)
    return path


def stage(source_dir: str, staging: str, data: Any = None, **kwargs: Any) -> api.StagedExport:
    """Export ``source_dir`` to ONNX into ``staging`` with ``kwargs`` and validate it (no registry)."""
    backend = get_backend("onnx")
    options = make_options("onnx", **kwargs)
    source = local_source(source_dir)
    spec = get_task(source.flavor_conf[FlavorKey.TASK])
    options = backend.check(options, source.flavor_conf, spec)
    loaded = api.load_source_model

    def with_calibration(src: Any) -> Any:
        model = loaded(src)
        model.calibration_data = data
        return model

    mp = pytest.MonkeyPatch()
    mp.setattr(api, "load_source_model", with_calibration)
    try:
        return api.stage_export(source, backend, options, spec.atol, staging, data=data)
    finally:
        mp.undo()


def _scales(path: str) -> List[np.ndarray]:
    """The weight scales of a quantised graph (initializers named ``*_scale``)."""
    model = onnx.load(path)
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")]


def _probs(staged: api.StagedExport, staging: str, texts: List[str]) -> np.ndarray:
    from mlflow_tfexport.serving.runtimes import load_runner
    from mlflow_tfexport.serving.text import make_encoder

    encoder = make_encoder(staging, staged.conf, get_task(staged.conf[FlavorKey.TASK]))
    feeds = encoder.encode(texts).feeds
    logits = load_runner(staging, staged.conf, {}).run(feeds)["logits"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    out: np.ndarray = e / e.sum(-1, keepdims=True)
    return out


@pytest.mark.parametrize(
    "mode, per_channel",
    [("int8", True), ("int8-per-tensor", False), ("int8-static", True), ("int8-blockwise", False),
     ("int8-mixed", True)],
)
@pytest.mark.integration
def test_each_mode_records_its_options_and_predicts_close_to_fp32(
    source_dir: str, tmp_path: Any, mode: str, per_channel: bool
) -> None:
    fp32_dir = str(tmp_path / "fp32")
    os.makedirs(fp32_dir)
    fp32 = stage(source_dir, fp32_dir)
    staging = str(tmp_path / "int8")
    os.makedirs(staging)
    staged = stage(source_dir, staging, quantize=mode)
    assert staged.report.passed, staged.report.to_text()
    tags = staged.artifact.tags
    assert tags[Tag.QUANTIZED] == mode
    assert tags[Tag.QUANTIZE_PER_CHANNEL] == ("true" if per_channel else "false")
    assert tags[Tag.QUANTIZE_OP_TYPES] == ",".join(DEFAULT_OP_TYPES[mode])
    assert tags[Tag.QUANTIZE_REDUCE_RANGE] == "false"
    assert (Tag.QUANTIZE_CALIBRATION in tags) == (mode == "int8-static")
    block = staged.conf[FlavorKey.QUANTIZATION]
    assert staged.conf[FlavorKey.QUANTIZED] == mode
    assert block["mode"] == mode and block["per_channel"] is per_channel and block["reduce_range"] is False
    assert block["op_types"] == list(DEFAULT_OP_TYPES[mode])
    assert block["quantized_nodes"]["MatMul"] > 0
    assert block.get("block_size") == (128 if mode in ("int8-blockwise", "int8-mixed") else None)
    # What the registry sees (tags) and what the saved MLmodel holds agree with the report's synthetic check.
    assert staged.report.tags[Tag.QUANTIZED] == mode
    np.testing.assert_allclose(_probs(staged, staging, TEXTS), _probs(fp32, fp32_dir, TEXTS), atol=0.05)


@pytest.mark.integration
def test_per_channel_weights_have_a_scale_per_output_channel(source_dir: str, tmp_path: Any) -> None:
    scales: Dict[str, List[np.ndarray]] = {}
    for mode in ("int8", "int8-per-tensor"):
        staging = str(tmp_path / mode)
        os.makedirs(staging)
        stage(source_dir, staging, quantize=mode)
        scales[mode] = _scales(os.path.join(staging, "model.onnx"))
    assert scales["int8-per-tensor"] and all(s.size == 1 for s in scales["int8-per-tensor"])
    per_channel = [s for s in scales["int8"] if s.size > 1]
    assert per_channel, "no weight of the int8 graph has per-channel scales"
    hidden = 32  # tests/tiny.py: hidden_size
    assert any(s.shape == (hidden,) for s in per_channel)


@pytest.mark.integration
def test_op_types_and_reduce_range_are_applied_and_recorded(source_dir: str, tmp_path: Any) -> None:
    staging = str(tmp_path / "mm")
    os.makedirs(staging)
    staged = stage(source_dir, staging, quantize="int8", quantize_op_types="MatMul", quantize_reduce_range=True)
    assert staged.artifact.tags[Tag.QUANTIZE_OP_TYPES] == "MatMul"
    assert staged.artifact.tags[Tag.QUANTIZE_REDUCE_RANGE] == "true"
    counts = staged.conf[FlavorKey.QUANTIZATION]["quantized_nodes"]
    assert counts["MatMul"] > 0 and set(counts) == {"MatMul"}
    ops = {n.op_type for n in onnx.load(os.path.join(staging, "model.onnx")).graph.node}
    assert "MatMulInteger" in ops
    # The embedding tables stay float: Gather was not asked for.
    graph = onnx.load(os.path.join(staging, "model.onnx")).graph
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in graph.initializer if "embeddings" in i.name)


@pytest.mark.integration
def test_an_op_type_the_graph_lacks_is_refused(source_dir: str, tmp_path: Any) -> None:
    with pytest.raises(ExportError, match=r"quantised no node.*Attention.*optimize=True"):
        stage(source_dir, str(tmp_path), quantize="int8", quantize_op_types=["Attention"], optimize=False)


@pytest.mark.integration
def test_static_int8_calibrates_on_the_given_rows(
    source_dir: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: List[Dict[str, np.ndarray]] = []
    reader = calibration.FeedsReader

    class Recording(reader):  # type: ignore[misc, valid-type]
        def get_next(self) -> Any:
            feeds = super().get_next()
            if feeds is not None:
                fed.append(feeds)
            return feeds

    monkeypatch.setattr(calibration, "FeedsReader", Recording)
    rows = ["the film was great", "the plot was dull and the actors were bad", "paris is a city"]
    data = load_validation_data(rows, "text-classification")
    staging = str(tmp_path / "given")
    os.makedirs(staging)
    staged = stage(source_dir, staging, data=data, quantize="int8-static")
    assert staged.artifact.tags[Tag.QUANTIZE_CALIBRATION].startswith("MinMax on 3 rows of validation data: 3 rows")
    assert staged.conf[FlavorKey.QUANTIZATION]["calibration"].startswith("MinMax on 3 rows")
    encoder = calibration.encoder_for(api.load_source_model(local_source(source_dir)))
    expected = encoder.encode(rows).feeds["input_ids"]
    assert sum(f["input_ids"].shape[0] for f in fed) == 3
    np.testing.assert_array_equal(fed[0]["input_ids"], expected)

    # Without validation data: the built-in texts (and other activation scales).
    fed.clear()
    builtin = str(tmp_path / "builtin")
    os.makedirs(builtin)
    other = stage(source_dir, builtin, quantize="int8-static")
    assert calibration.BUILTIN in other.artifact.tags[Tag.QUANTIZE_CALIBRATION]
    assert sum(f["input_ids"].shape[0] for f in fed) == len(calibration.CALIBRATION_TEXTS)
    activation = [s for s in _scales(os.path.join(staging, "model.onnx")) if s.size == 1]
    activation_builtin = [s for s in _scales(os.path.join(builtin, "model.onnx")) if s.size == 1]
    assert len(activation) == len(activation_builtin) > 0
    assert any(not np.allclose(a, b) for a, b in zip(activation, activation_builtin, strict=True))


def test_calibration_rows_prefer_the_data_then_builtin_texts_after_the_input_example() -> None:
    spec = get_task("text-classification")
    given = load_validation_data(["one text", "two texts"], spec)
    assert calibration.calibration_rows(given, spec).texts == ("one text", "two texts")
    example = load_validation_data(None, spec, source_input_example=["an example"])
    rows = calibration.calibration_rows(example, spec)
    assert rows.texts[0] == "an example" and rows.rows == 1 + len(calibration.CALIBRATION_TEXTS)
    assert "input example" in rows.origin
    qa = get_task("question-answering")
    pairs = calibration.calibration_rows(None, qa)
    assert pairs.pairs is not None and len(pairs.pairs) == pairs.rows
    many = load_validation_data([f"text {i}" for i in range(calibration.MAX_CALIBRATION_ROWS + 5)], spec)
    assert calibration.calibration_rows(many, spec).rows == calibration.MAX_CALIBRATION_ROWS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantize_per_channel": True}, "quantize_per_channel applies to quantised exports only"),
        ({"quantize_op_types": "MatMul"}, "quantize_op_types applies to quantised exports only"),
        ({"quantize_reduce_range": True}, "quantize_reduce_range applies to quantised exports only"),
        ({"quantize": "int8-per-tensor", "quantize_per_channel": True}, "contradicts it"),
        ({"quantize": "int8", "quantize_per_channel": False}, "quantize='int8-per-tensor' instead"),
        ({"quantize": "int8", "quantize_per_channel": "yes"}, "quantize_per_channel must be True or False"),
        ({"quantize": "int8", "quantize_op_types": "MatMul,Softmax"}, "'Softmax' is not an operator type"),
        ({"quantize": "int8", "quantize_op_types": ["Gemm"]}, r"'Gemm' is quantised by quantize='int8-static' only"),
        ({"quantize": "int8-static", "quantize_op_types": "Attention"},
         r"'Attention' is quantised by quantize='int8' or 'int8-per-tensor' only"),
        ({"quantize": "int8-blockwise", "quantize_op_types": "Gather"}, r"quantize='int8-blockwise' quantises MatMul"),
        ({"quantize": "int8-blockwise", "quantize_per_channel": True}, r"finer than per channel"),
        ({"quantize": "int8-blockwise", "quantize_reduce_range": True}, r"quantize_reduce_range=True does not apply"),
        ({"quantize": "int8", "quantize_op_types": [3]}, "must be operator type names"),
        ({"quantize": "int4"}, r"quantize='int4' is not supported; use one of 'int8'"),
    ],
)
def test_bad_quantize_options_are_refused(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ExportError, match=match):
        make_options("onnx", **kwargs)


def test_quantize_options_belong_to_onnx() -> None:
    with pytest.raises(ExportError, match=r"quantize_per_channel=True does not apply to format='torchscript'"):
        make_options("torchscript", trace_shape="1x8", quantize_per_channel=True)


def test_quantize_settings_are_part_of_the_export_key() -> None:
    backend = get_backend("onnx")
    spec = get_task("text-classification")
    conf: Dict[str, Any] = {}
    keys = [backend.check(make_options("onnx", **kw), conf, spec).key_fields() for kw in (
        {"quantize": "int8"}, {"quantize": "int8-per-tensor"}, {"quantize": "int8", "quantize_op_types": "MatMul"},
        {"quantize": "int8", "quantize_reduce_range": True})]
    assert len({repr(k) for k in keys}) == 4
    assert keys[0]["quantize_per_channel"] is True and keys[1]["quantize_per_channel"] is False
    # An fp32 export's key is what it was before these options existed.
    assert not any(k.startswith("quantize_") for k in backend.check(make_options("onnx"), conf, spec).key_fields())


@pytest.mark.integration
def test_int8_takes_the_measured_recipe_of_the_task(source_dir: str, tmp_path: Any) -> None:
    """quantize="int8" without optimize fuses the graph first where the task's measured recipe says so
    (classifier, embedder); optimize=False keeps it unfused; fp32 and the other modes stay unfused."""
    backend = get_backend("onnx")
    conf: Dict[str, Any] = {}

    def optimize(task: str, **kw: Any) -> Any:
        return backend.check(make_options("onnx", **kw), conf, get_task(task)).optimize

    assert optimize("text-classification", quantize="int8") is True
    assert optimize("feature-extraction", quantize="int8") is True
    assert optimize("token-classification", quantize="int8") is False
    assert optimize("text-classification", quantize="int8", optimize=False) is False
    assert optimize("text-classification") is False
    assert optimize("text-classification", quantize="int8-blockwise") is False
    spec = get_task("text-classification")
    recipe = backend.check(make_options("onnx", quantize="int8"), conf, spec).key_fields()
    assert recipe == backend.check(make_options("onnx", quantize="int8", optimize=True), conf, spec).key_fields()
    staging = str(tmp_path / "int8")
    os.makedirs(staging)
    staged = stage(source_dir, staging, quantize="int8")
    assert staged.report.passed, staged.report.to_text()
    assert staged.conf.get(FlavorKey.OPTIMIZED), staged.conf


def test_int8_of_the_embedder_is_the_mixed_recipe_unless_refined() -> None:
    """feature-extraction's quantize="int8" on a fused graph becomes int8-mixed (blockwise MatMuls, dynamic
    attention: min cosine 0.992 where dynamic int8 keeps 0.979); a refinement or optimize=False keeps "int8"."""
    backend = get_backend("onnx")

    def mode(task: str, **kw: Any) -> Any:
        return backend.check(make_options("onnx", **kw), {}, get_task(task)).quantize

    assert mode("feature-extraction", quantize="int8") == "int8-mixed"
    assert mode("feature-extraction", quantize="int8", optimize=True) == "int8-mixed"
    assert mode("feature-extraction", quantize="int8", optimize=False) == "int8"
    assert mode("feature-extraction", quantize="int8", quantize_op_types="MatMul") == "int8"
    assert mode("feature-extraction", quantize="int8", quantize_reduce_range=True) == "int8"
    assert mode("text-classification", quantize="int8") == "int8"
    assert mode("feature-extraction", quantize="int8-blockwise") == "int8-blockwise"
    with pytest.raises(ExportError, match="int8-mixed"):
        make_options("onnx", quantize="int8-mixed", quantize_reduce_range=True)


@pytest.mark.integration
def test_the_embedder_int8_quantises_matmuls_blockwise_and_attention_dynamic(
    tmp_path: Any, tiny_model: Any
) -> None:
    model, tok = tiny_model("feature-extraction", "bert")
    src = str(tmp_path / "src")
    mlflow_tfexport.save_model(model, src, tokenizer=tok)
    staging = str(tmp_path / "int8")
    os.makedirs(staging)
    staged = stage(src, staging, quantize="int8")
    assert staged.report.passed, staged.report.to_text()
    block = staged.conf[FlavorKey.QUANTIZATION]
    assert staged.conf[FlavorKey.QUANTIZED] == "int8-mixed" and staged.artifact.tags[Tag.QUANTIZED] == "int8-mixed"
    assert staged.conf.get(FlavorKey.OPTIMIZED)
    assert block["quantized_nodes"]["MatMul"] > 0 and block["quantized_nodes"]["Attention"] > 0, block
    ops = {n.op_type for n in onnx.load(os.path.join(staging, "model.onnx")).graph.node}
    assert {"MatMulNBits", "QAttention"} <= ops and "MatMul" not in ops, ops
    assert not [f for f in os.listdir(staging) if ".blockwise" in f or f.endswith(".int8")]


# --------------------------------------------------------------------------- from an existing ONNX version


@pytest.fixture
def registered(tracking_uri: str, tiny_model: Any) -> Tuple[str, str]:
    """``sentiment`` version 1 (source) and version 2 (its fp32 ONNX export, fused)."""
    model, tok = tiny_model("text-classification", "bert")
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="sentiment")
    result = mlflow_tfexport.export("models:/sentiment/1", format="onnx", optimize=True)
    return "models:/sentiment/1", result.model_uri


@pytest.mark.integration
def test_quantising_an_onnx_version_reuses_its_graph(registered: Tuple[str, str], tmp_path: Any) -> None:
    source_uri, onnx_uri = registered
    options = make_options("onnx", quantize="int8")
    source, options = resolve_export_source(MlflowClient(), onnx_uri, options, str(tmp_path / "source"))
    assert source.canonical_uri == source_uri
    assert options.quantize_from == onnx_uri and options.optimize and options.opset == 17
    backend = get_backend("onnx")
    spec = get_task(source.flavor_conf[FlavorKey.TASK])
    options = backend.check(options, source.flavor_conf, spec)
    assert options.key_fields()["quantize_from"] == onnx_uri
    staging = str(tmp_path / "staging")
    os.makedirs(staging)
    staged = api.stage_export(source, backend, options, spec.atol, staging)
    assert staged.report.passed, staged.report.to_text()
    tags = staged.artifact.tags
    assert tags[Tag.QUANTIZED_FROM] == onnx_uri and tags[Tag.QUANTIZED] == "int8"
    # The fused graph of version 2 was quantised as it was: its fusion is recorded, not redone.
    base = read_flavor_conf(mlflow.artifacts.download_artifacts(onnx_uri))
    assert tags[Tag.OPTIMIZED] == base[FlavorKey.OPTIMIZED]
    assert staged.conf[FlavorKey.QUANTIZED_FROM] == onnx_uri
    assert staged.conf[FlavorKey.QUANTIZATION]["quantized_nodes"]["Attention"] > 0
    ops = {n.op_type for n in onnx.load(os.path.join(staging, "model.onnx")).graph.node}
    assert "QAttention" in ops


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"format": "onnx"}, r"already an exported variant \(format 'onnx'\)\. Pass quantize="),
        ({"format": "onnx", "quantize": "int8", "opset": 18}, r"opset=18 differs from the opset"),
        ({"format": "torchscript", "trace_shape": "1x8"}, r"a torchscript export comes from the source"),
    ],
)
@pytest.mark.integration
def test_what_cannot_apply_to_an_onnx_graph_is_refused(
    registered: Tuple[str, str], tmp_path: Any, kwargs: Dict[str, Any], match: str
) -> None:
    _, onnx_uri = registered
    with pytest.raises(ExportError, match=match):
        resolve_export_source(MlflowClient(), onnx_uri, make_options(**kwargs), str(tmp_path / "s"))


@pytest.mark.integration
def test_a_source_uri_is_resolved_as_before(registered: Tuple[str, str], tmp_path: Any) -> None:
    source_uri, _ = registered
    options = make_options("onnx", quantize="int8")
    source, same = resolve_export_source(MlflowClient(), source_uri, options, str(tmp_path / "s"))
    assert source.canonical_uri == source_uri and same is options


@pytest.mark.integration
def test_export_quantises_an_onnx_version(registered: Tuple[str, str]) -> None:
    _, onnx_uri = registered
    result = mlflow_tfexport.export(onnx_uri, format="onnx", quantize="int8", quantize_op_types="MatMul,Attention")
    tags = result.model_version.tags
    assert tags[Tag.QUANTIZED_FROM] == onnx_uri and tags[Tag.SOURCE] == "models:/sentiment/1"
    assert tags[Tag.QUANTIZE_OP_TYPES] == "MatMul,Attention" and tags[Tag.VALIDATION] == "passed"
    again = mlflow_tfexport.export(onnx_uri, format="onnx", quantize="int8", quantize_op_types="MatMul,Attention")
    assert not again.created and again.model_uri == result.model_uri
    with pytest.raises(ExportError, match="already quantised"):
        mlflow_tfexport.export(result.model_uri, format="onnx", quantize="int8")


@pytest.mark.integration
@pytest.mark.parametrize("optimize", [False, True])
def test_static_int8_quantises_activations_and_leaves_no_files_behind(
    source_dir: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, optimize: bool
) -> None:
    monkeypatch.chdir(tmp_path)  # onnxruntime's shape inference writes into the working directory on failure
    staging = str(tmp_path / "staging")
    os.makedirs(staging)
    staged = stage(source_dir, staging, quantize="int8-static", optimize=optimize)
    assert staged.conf[FlavorKey.QUANTIZATION]["quantized_nodes"]["MatMul"] > 0
    ops = [n.op_type for n in onnx.load(os.path.join(staging, "model.onnx")).graph.node]
    assert "QuantizeLinear" in ops  # activations too, not only the weights (that would be weight-only int8)
    assert sorted(os.listdir(tmp_path)) == ["staging"]
    assert not [f for f in os.listdir(staging) if f.endswith((".int8", ".shapes.onnx", ".data"))]


def test_a_failed_symbolic_inference_leaves_no_dump(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import TensorProto, helper

    from mlflow_tfexport.export.onnx import optimize

    monkeypatch.chdir(tmp_path)
    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph)
    onnx.save_model(model, "sym_shape_infer_temp.onnx", save_as_external_data=True, location="1234-abcd.data",
                    size_threshold=0)
    optimize._remove_symbolic_dump(existed=True)  # somebody's own file of that name: kept
    assert sorted(os.listdir(tmp_path)) == ["1234-abcd.data", "sym_shape_infer_temp.onnx"]
    optimize._remove_symbolic_dump(existed=False)
    assert os.listdir(tmp_path) == []


def test_a_quantised_report_reads_as_its_agreement_gate_not_as_an_atol_pass() -> None:
    """A difference 960x the fp32 atol is information for int8, never "passed (atol 0.0001)"."""
    from mlflow_tfexport.validation.report import AgreementCheck, OutputCheck, ValidationReport, describe

    report = ValidationReport(atol=1e-4)
    report.checks.append(OutputCheck("logits", (2, 3), (2, 3), 9.6e-2, 1e-4, (2, 16), True, "int8 label agreement"))
    report.extra.update({"quantized": "int8", "label_agreement": {"logits": 0.995}, "min_agreement": 0.99})
    report.agreement = AgreementCheck(metric="label_agreement", value=0.988, threshold=0.98, passed=True, rows=332,
                                      origin="file reviews.csv", digest="abc", mode="int8")
    assert report.gate() == ("passed: label_agreement 0.988 >= 0.98 on 332 rows; "
                             "agreement 0.995 >= 0.99 on random tokens")
    text = describe(report, fmt="onnx", source_uri="models:/s/1", task="text-classification", architecture="Bert",
                    opset=17)
    assert "atol 0.0001" not in text and "(atol" not in text, text
    assert "max abs diff 9.60e-02 against the fp32 source (information" in text
    fp32 = ValidationReport(atol=1e-4)
    fp32.checks.append(OutputCheck("logits", (2, 3), (2, 3), 2.1e-6, 1e-4, (2, 16), True))
    assert fp32.gate() == "passed: max abs diff 2.10e-06 <= atol 0.0001"


@pytest.mark.integration
def test_a_quantised_export_shows_no_third_party_advice_or_bars(source_dir: str, tmp_path: Any,
                                                                capfd: pytest.CaptureFixture[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime's "Please consider to run pre-processing" and transformers' "Loading weights" bar stay out of
    the export's output; the stage lines report the stages."""
    import logging

    caplog.set_level(logging.WARNING)
    capfd.readouterr()
    seen: List[Tuple[str, str]] = []
    backend = get_backend("onnx")
    source = local_source(source_dir)
    spec = get_task(source.flavor_conf[FlavorKey.TASK])
    options = backend.check(make_options("onnx", quantize="int8"), source.flavor_conf, spec)
    api.stage_export(source, backend, options, spec.atol, str(tmp_path), say=lambda *a: seen.append(a))
    out, err = capfd.readouterr()
    assert "pre-processing before quantization" not in caplog.text + out + err
    assert "Loading weights" not in out + err
    assert [s for s, _ in seen] == ["export", "validate"]
