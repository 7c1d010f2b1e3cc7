"""Any failure inside an export, as an ``ExportError`` that names the architecture, the format, what failed
and the advice that applies to that format (opset and exporter are ONNX's; static shapes are TorchScript's
and Neuron's). Errors of this package pass through unchanged: they say all of that already."""

from __future__ import annotations

from typing import Any, Mapping

from mlflow_tfexport.constants import FlavorKey, Format
from mlflow_tfexport.errors import ExportError, cause
from mlflow_tfexport.validation.compare import ModelRunFailed

#: The export step itself failed (``torch.onnx.export``, ``torch.jit.trace``, the Neuron compiler).
EXPORT_ADVICE: Mapping[str, str] = {
    Format.ONNX: "Try another opset (opset=) or exporter='dynamo'; or format='torchscript', which traces "
    "without converting operators.",
    Format.TORCHSCRIPT: "torch.jit.trace could not record this model's forward; use format='onnx'.",
    Format.NEURON: "The Neuron compiler could not compile this model's forward (see the Neuron SDK's supported "
    "operators); format='onnx' or 'torchscript' serve it off Inferentia.",
}
#: The exported model was written but does not run on the validation inputs.
RUN_ADVICE: Mapping[str, str] = {
    Format.ONNX: "The graph was written, but onnxruntime cannot run it at this shape: the export fixed a step of "
    "the forward that depends on the input length. Use format='torchscript' with buckets at the lengths you serve.",
    Format.TORCHSCRIPT: "The traced module does not run on its bucket's inputs; use format='onnx'.",
    Format.NEURON: "The compiled module does not run on its bucket's inputs; use format='onnx'.",
}
#: The source model could not be loaded back from its saved files.
LOAD_ADVICE = (
    "The source version's saved model could not be loaded with the installed transformers and torch; export "
    "where the versions it was logged with (its tfexport block, transformers_version and torch_version) are installed."
)
SOURCE_ADVICE = (
    "The source model itself fails on this input, so the export cannot be validated there; the forward needs "
    "inputs the served requests do not guarantee."
)


def export_failure(exc: BaseException, conf: Mapping[str, Any], fmt: str, stage: str) -> ExportError:
    """``exc`` (raised while exporting or validating ``conf``'s model to ``fmt``) as an ``ExportError``."""
    if isinstance(exc, ExportError):
        return exc
    model = f"{conf.get(FlavorKey.ARCHITECTURE) or 'the model'} ({conf.get(FlavorKey.TASK)})"
    if isinstance(exc, ModelRunFailed):
        advice = SOURCE_ADVICE if exc.side == "source" else RUN_ADVICE.get(fmt, "")
        return ExportError(f"Validating the {fmt} export of {model} failed: running the {exc}. {advice}")
    advice = LOAD_ADVICE if stage == "load" else EXPORT_ADVICE.get(fmt, "")
    return ExportError(f"The {fmt} export of {model} failed at the {stage} stage: {cause(exc)}. {advice}".rstrip())
