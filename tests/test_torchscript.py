"""TorchScript variants: trace, buckets, validation, registration and serving, on a real SQLite registry.

One source model and one two-bucket export per module (exports take seconds);
every bad-input test checks that the registry is left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import Any, Dict

import mlflow
import numpy as np
import pytest
import yaml
from helpers import read, versions
from mlflow import MlflowClient
from tiny import CORPUS, tiny

import mlflow_tfexport
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import BadInputError, ExportError
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.serving.runtimes.eager import EagerRunner
from mlflow_tfexport.serving.runtimes.static import CPU_RUN_COST_ROWS, StaticRunner, pick_bucket
from mlflow_tfexport.tasks import BATCH, SEQUENCE, TASKS, OutputSpec, dummy_inputs

NAME = "ts-sentiment"
FEATURES = "ts-features"
TRACE = ["1x8", "1x32"]  # tiny BERT: max_length 64
LONG_TEXT = " ".join(["the film was really very good and the actors were great"] * 12)


@pytest.fixture(scope="module")
def registry(module_registry: str) -> Dict[str, Any]:
    """A SQLite registry with a text-classification source (v1) and its TorchScript export (v2),
    plus a feature-extraction source with a 2-row-bucket export."""
    model, tok = tiny("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name=NAME)
    result = mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape=TRACE)
    fmodel, ftok = tiny("feature-extraction")
    with mlflow.start_run():
        mlflow_tfexport.log_model(fmodel, tokenizer=ftok, registered_model_name=FEATURES)
    features = mlflow_tfexport.export(f"models:/{FEATURES}/1", format="torchscript", trace_shape=["2x8", "2x16"])
    return {"uri": module_registry, "root": os.getcwd(), "result": result, "model": model, "features": features,
            "feature_model": fmodel}


@pytest.mark.integration
def test_export_registers_tagged_version(registry: Dict[str, Any]) -> None:
    result = registry["result"]
    assert result.created and str(result.model_version.version) == "2"
    tags = MlflowClient().get_model_version(NAME, "2").tags
    assert tags[Tag.FORMAT] == "torchscript"
    assert tags[Tag.TRACE_SHAPE] == "1x8,1x32"
    assert tags[Tag.VALIDATION] == "passed"
    assert tags[Tag.SOURCE] == f"models:/{NAME}/1"
    assert float(tags[Tag.MAX_ABS_DIFF]) <= float(tags[Tag.ATOL])
    # validated at each traced shape and at shapes that need chunking and padding
    validated = tags[Tag.VALIDATED_SHAPE].split(",")
    assert {"1x8", "1x32", "3x21"} <= set(validated)
    assert "1x8" in result.model_version.description and "✓" in result.model_version.description


@pytest.mark.integration
def test_variant_files_and_flavor_block(registry: Dict[str, Any], tmp_path: Any) -> None:
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2", dst_path=str(tmp_path))
    conf = mlflow_tfexport.serving.conf.read_flavor_conf(local)
    assert conf[FlavorKey.FORMAT] == "torchscript"
    assert conf[FlavorKey.TRACE_SHAPES] == [[1, 8], [1, 32]]
    assert conf[FlavorKey.MAX_LENGTH] == 32  # the largest bucket, not the model's 64
    assert sorted(os.listdir(os.path.join(local, conf[FlavorKey.MODEL_FILE]))) == ["1x32.pt", "1x8.pt"]
    requirements = read(os.path.join(local, "requirements.txt"))
    assert "torch==" in requirements and "transformers" not in requirements
    report = json.loads(read(os.path.join(local, "validation.json")))
    assert report["passed"] is True


@pytest.mark.integration
def test_round_trip_predictions_equal_eager_source(registry: Dict[str, Any]) -> None:
    source = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    variant = mlflow.pyfunc.load_model(f"models:/{NAME}/2")
    texts = list(CORPUS[:7]) + ["ok", ""]
    expected, got = source.predict(texts), variant.predict(texts)
    assert list(got["label"]) == list(expected["label"])
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
    native = mlflow_tfexport.load_model(f"models:/{NAME}/2")
    assert set(native.model) == {"1x8", "1x32"}


@pytest.mark.integration
def test_longer_than_largest_bucket_is_truncated_or_rejected(registry: Dict[str, Any]) -> None:
    variant = mlflow.pyfunc.load_model(f"models:/{NAME}/2")
    assert len(variant.predict([LONG_TEXT])) == 1  # truncated to 32 tokens
    with pytest.raises(BadInputError, match="maximum of 32 tokens"):
        variant.predict([LONG_TEXT], params={"truncation": False})


@pytest.mark.integration
@pytest.mark.parametrize("name", [NAME, FEATURES])
def test_bucketing_matches_eager_for_every_batch_and_length(registry: Dict[str, Any], tmp_path: Any,
                                                            name: str) -> None:
    """Batch 1..2x the trace batch, 1 token to the largest bucket, through the real runner."""
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/2", dst_path=str(tmp_path))
    conf = mlflow_tfexport.serving.conf.read_flavor_conf(local)
    runner = load_runner(local, conf, {})
    assert isinstance(runner, StaticRunner)
    model = registry["model"] if name == NAME else registry["feature_model"]
    eager = EagerRunner(model, conf[FlavorKey.INPUT_NAMES], runner.output_names)
    trace_batch = max(b for b, _ in runner.buckets)
    largest = runner.max_length
    for batch in range(1, 2 * trace_batch + 2):
        for length in (1, 2, 7, 8, 9, largest - 1, largest):
            feeds = dummy_inputs(tuple(conf[FlavorKey.INPUT_NAMES]), batch, length, vocab_size=100,
                                 pad_token_id=0, seed=batch * 100 + length)
            want, got = eager.run(feeds), runner.run(feeds)
            for out in runner.output_names:
                assert got[out].shape == want[out].shape, (batch, length, out)
                np.testing.assert_allclose(got[out], want[out], atol=1e-4, err_msg=f"{batch}x{length}")
    assert all(n > 0 for n in runner.calls.values())  # every bucket was used
    too_long = dummy_inputs(tuple(conf[FlavorKey.INPUT_NAMES]), 1, largest + 1, vocab_size=100, pad_token_id=0)
    with pytest.raises(BadInputError, match="longer than the largest traced shape"):
        runner.run(too_long)
    empty = runner.run({k: v[:0] for k, v in too_long.items()})
    assert all(v.shape[0] == 0 for v in empty.values())


def test_pick_bucket() -> None:
    buckets = [(1, 32), (4, 32), (1, 128)]
    assert pick_bucket(buckets, 1, 20) == (1, 32)
    assert pick_bucket(buckets, 3, 20) == (4, 32)
    assert pick_bucket(buckets, 9, 32) == (4, 32)  # chunks of 4
    assert pick_bucket(buckets, 2, 33) == (1, 128)
    assert pick_bucket(buckets, 2, 20) == (4, 32)  # accelerators (the default): fewest chunks
    with pytest.raises(BadInputError):
        pick_bucket(buckets, 1, 129)
    # On CPU a run costs about one row: padded rows count, so a few rows run as small chunks
    cpu = [(1, 32), (8, 32)]
    picked = {rows: pick_bucket(cpu, rows, 20, CPU_RUN_COST_ROWS) for rows in (1, 2, 3, 4, 5, 6, 8, 9, 17)}
    assert picked == {1: (1, 32), 2: (1, 32), 3: (1, 32), 4: (1, 32), 5: (8, 32), 6: (8, 32), 8: (8, 32),
                      9: (8, 32), 17: (8, 32)}


def test_static_runner_strips_padding_by_output_axes() -> None:
    """Outputs echo the padded inputs, so stripping is checked exactly and without a model."""
    seen = []

    def run_bucket(shape: Any, arrays: Any) -> Any:
        ids, mask = arrays
        assert ids.shape == shape and ids.dtype == np.int64
        seen.append(shape)
        return [ids.astype(np.float32)[:, :, None].repeat(2, axis=2), ids[:, :1].astype(np.float32)]

    outputs = (OutputSpec("per_token", {0: BATCH, 1: SEQUENCE}), OutputSpec("per_row", {0: BATCH}))
    runner = StaticRunner([(2, 4), (2, 8)], run_bucket, input_names=["input_ids", "attention_mask"],
                          outputs=outputs, pad_token_id=7)
    ids = np.arange(1, 16, dtype=np.int64).reshape(5, 3)
    got = runner.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert seen == [(2, 4)] * 3
    np.testing.assert_array_equal(got["per_token"][:, :, 0], ids)
    np.testing.assert_array_equal(got["per_row"][:, 0], ids[:, 0])


@pytest.mark.integration
def test_serving_runtime_does_not_import_transformers(registry: Dict[str, Any], tmp_path: Any) -> None:
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2", dst_path=str(tmp_path))
    code = textwrap.dedent(
        f"""
        import sys, mlflow.pyfunc
        model = mlflow.pyfunc.load_model({local!r})
        print(model.predict(["I loved this film"])["label"][0])
        bad = sorted(m for m in sys.modules if m == "transformers" or m.startswith("transformers."))
        assert not bad, bad
        assert "torch" in sys.modules
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]


# --- bad input: a clear error each, nothing registered -------------------------------------------------


@pytest.mark.parametrize(
    ("trace_shape", "match"),
    [
        (None, "needs trace_shape"),
        ("0x8", "must be positive"),
        ((1, -8), "must be positive"),
        ("1.5x8", "must be two integers"),
        ((1, 8.0), "must hold integers"),
        ("1x65", "longer than the model's maximum of 64"),
        ([f"1x{n}" for n in range(1, 10)], "at most 8 buckets"),
        ("8", "BATCHxSEQUENCE"),
    ],
)
@pytest.mark.integration
def test_bad_trace_shapes_register_nothing(registry: Dict[str, Any], trace_shape: Any, match: str) -> None:
    before = versions(NAME)
    with pytest.raises(ExportError, match=match):
        mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape=trace_shape, force=True)
    assert versions(NAME) == before


@pytest.mark.integration
def test_neuron_options_on_torchscript_are_rejected(registry: Dict[str, Any]) -> None:
    before = versions(NAME)
    with pytest.raises(ExportError, match="format='neuron' only"):
        mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape="1x8", neuron_target="inf1")
    assert versions(NAME) == before


@pytest.mark.integration
def test_task_with_untraceable_output_axes_is_rejected(registry: Dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TASKS["text-classification"]
    monkeypatch.setitem(TASKS, "text-classification",
                        replace(spec, outputs=(OutputSpec("logits", {0: BATCH, 1: "num_choices"}),)))
    before = versions(NAME)
    with pytest.raises(ExportError, match="cannot be exported to torchscript"):
        mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape="1x8", force=True)
    assert versions(NAME) == before


@pytest.mark.integration
def test_task_whose_outputs_cannot_be_traced_is_rejected(registry: Dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TASKS["text-classification"]
    monkeypatch.setitem(TASKS, "text-classification",
                        replace(spec, outputs=spec.outputs + (OutputSpec("hidden_states", {0: BATCH}),)))
    before = versions(NAME)
    # The eager run before tracing finds that the model has no such output.
    with pytest.raises(ExportError, match="cannot run text-classification .*KeyError: 'hidden_states'"):
        mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape="1x8", force=True)
    assert versions(NAME) == before


@pytest.mark.integration
def test_reexport_is_idempotent(registry: Dict[str, Any]) -> None:
    again = mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape="1x32,1x8")
    assert not again.created and str(again.model_version.version) == "2"


@pytest.mark.integration
def test_mlmodel_is_plain_yaml(registry: Dict[str, Any], tmp_path: Any) -> None:
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2", dst_path=str(tmp_path))
    mlmodel = yaml.safe_load(read(os.path.join(local, "MLmodel")))
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow_tfexport.serving.pyfunc"


@pytest.mark.integration
def test_export_validated_on_real_rows_at_the_largest_bucket(registry: Dict[str, Any]) -> None:
    """The served embeddings of the variant and the source agree on real rows, both truncated where the variant
    truncates (its largest bucket); padded positions are left out of the tensor checks."""
    rows = list(dict.fromkeys(CORPUS)) + [LONG_TEXT]
    result = mlflow_tfexport.export(f"models:/{FEATURES}/1", format="torchscript", trace_shape=["2x8", "2x16"],
                                    validation_data=rows)
    assert result.created  # other data, another export key
    tags = result.model_version.tags
    assert tags[Tag.DATA_ROWS] == str(len(rows)) and tags[Tag.AGREEMENT_METRIC] == "min_cosine"
    assert float(tags[Tag.AGREEMENT]) >= float(tags[Tag.AGREEMENT_THRESHOLD]) == pytest.approx(1 - 1e-5)
    assert "both models truncate at the variant's 16 tokens" in result.model_version.description
    assert result.report is not None and "real tokens only" in result.report.extra["compared_positions"]


@pytest.mark.integration
def test_deberta_padded_positions_are_not_compared(tmp_path: Any) -> None:
    """DeBERTa's values at padded positions depend on how much padding there is (0.01 apart between the eager
    batch and the bucket); its real tokens are identical, and only they are compared for a static variant."""
    from test_architectures import BY_NAME, build

    from mlflow_tfexport.export.api import export_to_directory

    model, tok = build(BY_NAME["DeBERTa"], "feature-extraction")
    mlflow_tfexport.save_model(model, str(tmp_path / "src"), tokenizer=tok, task="feature-extraction")
    _, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x16",
                                    validation_data=list(dict.fromkeys(CORPUS)))
    assert report.passed and report.agreement is not None and report.agreement.value >= 1 - 1e-5
    assert (5, 10) in report.shapes  # a padded batch, chunked into the 2x16 bucket


# --------------------------------------------------------------------------- architectures at their limits


def _save_arch(arch: str, task: str, path: Any) -> Any:
    from test_architectures import BY_NAME, build

    model, tok = build(BY_NAME[arch], task)
    mlflow_tfexport.save_model(model, str(path), tokenizer=tok, task=task)
    return model


@pytest.mark.integration
def test_deberta_v2_question_answering_compares_real_positions_only(tmp_path: Any) -> None:
    """DeBERTa-v2's logits at padded positions depend on the padding length; its real positions equal the source's,
    along both the batch axis (dummy rows) and the sequence axis (bucket padding)."""
    from mlflow_tfexport.export.api import export_to_directory

    _save_arch("DeBERTa-v2", "question-answering", tmp_path / "src")
    _, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x32")
    assert report.passed and report.max_abs_diff < 1e-5
    assert (5, 21) in report.shapes and "real tokens only" in report.extra["compared_positions"]


@pytest.mark.integration
def test_convbert_token_outputs_are_refused_and_validation_would_catch_them(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ConvBERT's convolution over the sequence sees the bucket's padding: feature-extraction is refused before any
    tracing, with the measured figure; without the refusal, validation catches the difference at real tokens."""
    from mlflow_tfexport.errors import ExportError, ValidationFailedError
    from mlflow_tfexport.export import options
    from mlflow_tfexport.export.api import export_to_directory

    _save_arch("ConvBERT", "feature-extraction", tmp_path / "src")
    with pytest.raises(ExportError, match=r"ConvBertModel \(feature-extraction\) cannot be exported to torchscript: "
                       r"ConvBERT's span-based dynamic convolution .*\(by 8\.2e-03 at real tokens") as refused:
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x32")
    assert not isinstance(refused.value, ValidationFailedError) and not os.path.exists(tmp_path / "ts")
    monkeypatch.setattr(options, "STATIC_PADDING_SENSITIVE", {})
    with pytest.raises(ValidationFailedError) as info:
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x32")
    message = info.value.message
    assert "torchscript export of ConvBertModel (feature-extraction)" in message
    assert "real positions only" in message and "opset" not in message and "exporter" not in message
    assert 1e-4 < info.value.report.max_abs_diff < 0.1  # type: ignore[union-attr]
    assert not os.path.exists(tmp_path / "ts")


@pytest.mark.integration
def test_bloom_traces_with_its_plain_gelu_and_round_trips(tmp_path: Any) -> None:
    """BLOOM's GELU is a custom autograd Function that torch.jit.save cannot serialise; the traced copy uses its
    plain-math twin (the same forward), and the variant answers like the source."""
    from test_architectures import TEXTS

    from mlflow_tfexport.export.api import export_to_directory

    _save_arch("BLOOM", "text-classification", tmp_path / "src")
    _, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x16")
    assert report.passed
    expected = mlflow.pyfunc.load_model(str(tmp_path / "src")).predict(TEXTS)
    got = mlflow.pyfunc.load_model(str(tmp_path / "ts")).predict(TEXTS)
    assert list(got["label"]) == list(expected["label"])
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)


def _bloom_gelu_saves_in_eval_mode() -> bool:
    """Whether this transformers' BloomGelu can be traced and saved as it is in eval mode (transformers 4 switches
    to plain math outside training; transformers 5 always calls the autograd Function)."""
    import io

    import torch
    from transformers.models.bloom.modeling_bloom import BloomGelu

    traced = torch.jit.trace(BloomGelu().eval(), torch.zeros(2, 3))
    try:
        torch.jit.save(traced, io.BytesIO())
    except RuntimeError:
        return False
    return True


@pytest.mark.integration
def test_bloom_without_the_twin_is_refused_precisely(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_tfexport.export import inference_ops
    from mlflow_tfexport.export.api import export_to_directory

    monkeypatch.setattr(inference_ops, "PLAIN_TWINS", {})
    _save_arch("BLOOM", "text-classification", tmp_path / "src")
    if _bloom_gelu_saves_in_eval_mode():  # nothing to swap: the export passes without the twin
        _, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript",
                                        trace_shape="2x16")
        assert report.passed
        return
    with pytest.raises(ExportError) as info:
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x16")
    message = info.value.message
    assert message.startswith("BloomForSequenceClassification (text-classification) was traced for torchscript")
    assert "GeLUFunction" in message and "format='onnx'" in message


def test_unexpected_failures_name_architecture_format_and_advice(tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure from deep inside (here: an error with an empty first line) becomes an ExportError that names the
    architecture, the format, the cause's first real line and the advice of that format."""
    from mlflow_tfexport.export import torchscript
    from mlflow_tfexport.export.api import export_to_directory

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("\nsomething deep went wrong\nmore")

    _save_arch("BERT", "feature-extraction", tmp_path / "src")
    monkeypatch.setattr(torchscript, "untie_weights", broken)
    with pytest.raises(ExportError) as info:
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), "torchscript", trace_shape="2x16")
    assert info.value.message == (
        "The torchscript export of BertModel (feature-extraction) failed at the export stage: RuntimeError: "
        "something deep went wrong. torch.jit.trace could not record this model's forward; use format='onnx'.")


def test_model_run_failures_name_the_side_the_format_and_the_advice() -> None:
    """onnxruntime failing on the exported graph, or the source model failing on a validation input, becomes an
    ExportError naming architecture, task, format, the input shape and what applies."""
    from mlflow_tfexport.export.failures import export_failure
    from mlflow_tfexport.validation.compare import ModelRunFailed

    conf = {"architecture": "LongformerModel", "task": "feature-extraction"}
    raw = RuntimeError("\n[ONNXRuntimeError] : 1 : FAIL : Reshape node\nInput shape:{3,23,1}")
    err = export_failure(ModelRunFailed("exported", (3, 23), raw), conf, "onnx", "validate")
    assert err.message.startswith("Validating the onnx export of LongformerModel (feature-extraction) failed: running "
                                  "the exported model at input 3x23: RuntimeError: [ONNXRuntimeError]")
    assert "onnxruntime cannot run it at this shape" in err.message and "format='torchscript'" in err.message
    funnel = {"architecture": "FunnelForSequenceClassification", "task": "text-classification"}
    err = export_failure(ModelRunFailed("source", (3, 1), IndexError("index 4 is out of bounds")), funnel,
                         "torchscript", "validate")
    assert "running the source model at input 3x1: IndexError: index 4 is out of bounds" in err.message
    assert "The source model itself fails on this input" in err.message and "opset" not in err.message
