"""Validate a staged variant against its source: the checks that fit the export.

Tensor checks, on padded batches of shapes other than the export shape:

- generation graphs with past key values: decoded step by step (``validation/generation.py``);
- a quantised model: task-level agreement on the tensors (``validation/quantized.py``);
- anything else: every output within ``atol`` of the eager model (``validation/compare.py``); a
  static-shape variant (TorchScript, Neuron) at real positions only, its padded ones mean nothing.

A text model with dynamic axes (ONNX) is also checked at the model's maximum length
(``max_length`` of its flavor block), unless a shape already reaches it, so a code path
that changes with the length is caught; a static variant is checked at each of its
buckets, the largest included (the backend's ``validation_shapes``).

Then the check on real data (``validation/agreement.py``): the source and the variant,
both served end to end, answer the user's rows (or the source's input example), and
the task's agreement metric must reach the task's threshold. Without rows the report
says "synthetic only" and why.

The exported side always runs through the serving runner the pyfunc will
use (``serving.runtimes.load_runner``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.export.options import ExportOptions, Shape, SourceModel
from mlflow_tfexport.export.wrapper import source_inputs
from mlflow_tfexport.formats import get_format
from mlflow_tfexport.serving.runtimes import Runner, load_runner
from mlflow_tfexport.serving.runtimes.eager import EagerRunner
from mlflow_tfexport.tasks import IMAGE
from mlflow_tfexport.validation.agreement import FP32, compared_conf, measure, pyfunc_for, threshold_for
from mlflow_tfexport.validation.compare import validate
from mlflow_tfexport.validation.data import ValidationData
from mlflow_tfexport.validation.generation import validate_generation
from mlflow_tfexport.validation.quantized import validate_quantized
from mlflow_tfexport.validation.report import SYNTHETIC_ONLY, ValidationReport

#: The longest sequence the maximum-length check runs at (the eager model at batch 2 must fit in memory).
MAX_CHECKED_LENGTH = 4096
#: The batch of the maximum-length check (two rows: one of them padded).
MAX_LENGTH_BATCH = 2


def with_max_length(shapes: Sequence[Shape], source: SourceModel, conf: Dict[str, Any]) -> List[Shape]:
    """``shapes`` plus ``(2, max_length)`` for a text model with dynamic axes, unless one already reaches it."""
    out = list(shapes)
    if get_format(conf[FlavorKey.FORMAT]).static_shapes or source.spec.input_kind == IMAGE:
        return out
    longest = min(int(conf.get(FlavorKey.MAX_LENGTH) or source.max_length), MAX_CHECKED_LENGTH)
    if longest > 1 and not any(seq >= longest for _, seq in out):
        out.append((MAX_LENGTH_BATCH, longest))
    return out


def run_validation(
    source: SourceModel,
    staging: str,
    conf: Dict[str, Any],
    shapes: Sequence[Shape],
    atol: float,
    options: Optional[ExportOptions] = None,
    *,
    data: Optional[ValidationData] = None,
    synthetic_reason: str = "",
    progress: Optional[Callable[[str], None]] = None,
) -> ValidationReport:
    """Validate the variant in ``staging`` (flavor block ``conf``) at ``shapes`` (and at the model's maximum
    length), then on ``data``'s rows when given; never raises on a mismatch. ``progress`` hears each step."""
    shapes = with_max_length(shapes, source, conf)
    exported: Optional[Runner] = None
    if conf.get(FlavorKey.GENERATION):  # graphs with past key values: checked step by step
        report = validate_generation(source, staging, conf, shapes, atol,
                                     options.quantize if options is not None else None,
                                     options.min_agreement if options is not None else None)
    else:
        reference = EagerRunner(source.model, source.input_names, source.output_names)
        exported = load_runner(staging, conf, {})
        feeds = [source_inputs(source, b, s, seed=1000 + i) for i, (b, s) in enumerate(shapes)]
        if options is not None and options.quantize:  # a quantised model is checked at task level
            report = validate_quantized(reference.run, exported.run, feeds, source.spec.outputs,
                                        source.spec.agreement, atol, options.min_agreement, options.quantize)
        else:
            # Static shapes and fixed-length graphs pad every request: their padded positions mean nothing.
            static = get_format(conf[FlavorKey.FORMAT]).static_shapes or bool(conf.get(FlavorKey.PAD_TO_MULTIPLE_OF))
            axes = {o.name: o.axes for o in source.spec.outputs} if static else None
            custom = source.spec.custom
            mask_input = next((i.name for i in custom.tokenizer_inputs if i.source == "attention_mask"),
                              "attention_mask") if custom is not None else "attention_mask"
            report = validate(reference.run, exported.run, feeds, source.output_names, atol, real_positions=axes,
                              mask_input=mask_input)
    report.extra.update({"format": conf[FlavorKey.FORMAT], "architecture": conf.get(FlavorKey.ARCHITECTURE)})
    if data is None:
        report.synthetic_reason = synthetic_reason or "no validation data"
        report.tags.update({Tag.DATA_ROWS: "0", Tag.DATA_ORIGIN: SYNTHETIC_ONLY})
        return report
    quantized = (options.quantize if options is not None else None) or conf.get(FlavorKey.QUANTIZED)
    threshold = threshold_for(source.spec, quantized, options.min_agreement if options is not None else None)
    src_conf = compared_conf(source.flavor_conf, conf)
    note = ""
    if src_conf.get(FlavorKey.MAX_LENGTH) != source.flavor_conf.get(FlavorKey.MAX_LENGTH):
        note = (f"both models truncate at the variant's {src_conf[FlavorKey.MAX_LENGTH]} tokens (its largest bucket; "
                f"the source's maximum is {source.flavor_conf[FlavorKey.MAX_LENGTH]})")
    source_model = pyfunc_for(source.local_path, src_conf,
                              EagerRunner(source.model, source.input_names, source.output_names))
    variant_model = pyfunc_for(staging, conf, exported if exported is not None else load_runner(staging, conf, {}))
    report.agreement = measure(source_model, variant_model, data, source.spec, threshold=threshold,
                               mode=str(quantized) if quantized else FP32, note=note, progress=progress)
    report.tags.update(report.agreement.tags())
    return report
