"""Validate a staged variant against its source: the check that fits the export.

- generation graphs with past key values: decoded step by step (``validation/generation.py``);
- a quantised model: task-level agreement (``validation/quantized.py``);
- anything else: every output within ``atol`` of the eager model (``validation/compare.py``).

The exported side always runs through the serving runner the pyfunc will
use (``serving.runtimes.load_runner``), on padded batches of shapes other
than the export shape.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.export.options import ExportOptions, Shape, SourceModel
from mlflow_tfexport.export.wrapper import source_inputs
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.serving.runtimes.eager import EagerRunner
from mlflow_tfexport.validation.compare import validate
from mlflow_tfexport.validation.generation import validate_generation
from mlflow_tfexport.validation.quantized import validate_quantized
from mlflow_tfexport.validation.report import ValidationReport


def run_validation(
    source: SourceModel, staging: str, conf: Dict[str, Any], shapes: Sequence[Shape], atol: float,
    options: Optional[ExportOptions] = None,
) -> ValidationReport:
    """Validate the variant in ``staging`` (flavor block ``conf``) at ``shapes``; never raises on a mismatch."""
    if conf.get(FlavorKey.GENERATION):  # graphs with past key values: checked step by step
        return validate_generation(source, staging, conf, shapes, atol)
    reference = EagerRunner(source.model, source.input_names, source.output_names)
    exported = load_runner(staging, conf, {})
    feeds = [source_inputs(source, b, s, seed=1000 + i) for i, (b, s) in enumerate(shapes)]
    if options is not None and options.quantize:  # a quantised model is checked at task level
        return validate_quantized(reference.run, exported.run, feeds, source.spec.outputs, source.spec.agreement,
                                  atol, options.min_agreement, options.quantize)
    return validate(reference.run, exported.run, feeds, source.output_names, atol)
