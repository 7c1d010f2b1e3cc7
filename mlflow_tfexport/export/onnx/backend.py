"""ONNX backend on ``torch.onnx.export`` (or on the graph of an existing fp32 ONNX version).

The TorchScript-based exporter (``exporter="legacy"``, the default) is used
because, measured on MiniLM-L6 with torch 2.13, it exports 2.5x faster than the
dynamo exporter, writes one self-contained file and both give outputs equal
to 1e-7 at shapes other than the export shape (dynamic axes verified by the
validation step of every export). ``exporter="dynamo"`` is available for
opsets 18 and above.

Fusion (``optimize=True``) and int8 quantisation (``quantize=``) are
post-processing of the written graph (``export/onnx/optimize.py``);
``int8-static`` calibrates on tokenized rows (``export/onnx/calibration.py``).
:meth:`OnnxBackend.export_from_graph` quantises the fp32 graph of an existing
ONNX version instead of exporting the source again (``export/reuse.py`` finds
it and sets ``options.quantize_from``/``quantize_from_dir``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import ONNX_FILE, FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError, cause
from mlflow_tfexport.export.onnx import calibration as calib
from mlflow_tfexport.export.onnx import optimize as onnx_optimize
from mlflow_tfexport.export.onnx.fused_decoder import FUSED_EXPORTER, FUSED_MODEL_TYPES
from mlflow_tfexport.export.onnx.generation import export_generation
from mlflow_tfexport.export.options import (
    STATIC_QUANTIZE,
    ExportedArtifact,
    ExportOptions,
    Shape,
    SourceModel,
    check_padding_invariant,
)
from mlflow_tfexport.export.wrapper import (
    check_exportable,
    fixed_length_reason,
    make_wrapper,
    onnx_safe_paths,
    source_inputs,
)
from mlflow_tfexport.serving.conf import read_flavor_conf
from mlflow_tfexport.tasks import IMAGE, TaskSpec, input_axes

EXPORT_SHAPE: Shape = (2, 16)
VALIDATION_SHAPE: Shape = (3, 23)
#: Opsets each exporter supports with transformers models (attention needs >= 14).
OPSET_RANGE: Dict[str, Tuple[int, int]] = {"legacy": (14, 20), "dynamo": (18, 23), FUSED_EXPORTER: (14, 21)}
DEFAULT_EXPORTER = "legacy"
#: Above this many bytes of weights the model is written with ONNX external data (protobuf caps at 2 GB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def save_with_external_data(path: str) -> None:
    """Move the weights of ``path`` into ``<file>.data`` beside it."""
    onnx = require("onnx")
    proto = onnx.load(path, load_external_data=True)
    onnx.save_model(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=os.path.basename(path) + ".data",
        size_threshold=1024,
    )


def with_past(spec: TaskSpec, exporter: str) -> bool:
    """Generation tasks export with past key values (``export/onnx/generation.py``) with the legacy exporter;
    the dynamo exporter writes a causal LM's single logits graph (decoded by re-running it)."""
    return spec.generative and (exporter in (DEFAULT_EXPORTER, FUSED_EXPORTER) or not spec.causal)


def default_exporter(options: ExportOptions, source_conf: Mapping[str, Any], spec: TaskSpec) -> str:
    """``exporter='fused'`` (``export/onnx/fused_decoder.py``) for a causal LM of the Llama family exported
    without post-processing (``optimize``/``quantize`` work on the traced graph), else the legacy exporter."""
    fused = (spec.generative and spec.causal and source_conf.get(FlavorKey.MODEL_TYPE) in FUSED_MODEL_TYPES
             and not options.optimize and not options.quantize)
    return FUSED_EXPORTER if fused else DEFAULT_EXPORTER


def _check_generation(exporter: str, options: ExportOptions, spec: TaskSpec) -> None:
    if exporter != DEFAULT_EXPORTER and not spec.causal:
        raise ExportError(
            f"exporter={exporter!r} does not export {spec.name} (encoder and decoder with past key values); use "
            f"the default exporter ({DEFAULT_EXPORTER!r})."
        )
    if options.quantize == STATIC_QUANTIZE:
        raise ExportError(
            "quantize='int8-static' calibrates on the inputs of one graph; generation graphs with past key values "
            "take caches it has no rows for. Use quantize='int8' (dynamic, per channel) or 'int8-blockwise'."
        )


class OnnxBackend:
    name = Format.ONNX

    def check(self, options: ExportOptions, source_conf: Mapping[str, Any], spec: TaskSpec) -> ExportOptions:
        """The exporter and the opset (default: the task's, within the exporter's range); generation limits.
        Options of other formats were refused by ``make_options``."""
        exporter = options.exporter or default_exporter(options, source_conf, spec)
        if exporter not in OPSET_RANGE:
            raise ExportError(f"Unknown ONNX exporter {exporter!r}; use one of {', '.join(OPSET_RANGE)}.")
        model_type = source_conf.get(FlavorKey.MODEL_TYPE)
        if exporter == FUSED_EXPORTER and not (spec.generative and spec.causal and model_type in FUSED_MODEL_TYPES):
            raise ExportError(
                f"exporter='fused' writes text-generation graphs of model types {', '.join(FUSED_MODEL_TYPES)}; "
                f"received task {spec.name!r}, model type {model_type!r}. Use exporter='legacy' (traced) instead."
            )
        low, high = OPSET_RANGE[exporter]
        opset = options.opset if options.opset is not None else max(spec.default_opset, low)
        if not isinstance(opset, int) or isinstance(opset, bool) or not low <= opset <= high:
            raise ExportError(
                f"opset {options.opset!r} is outside what the {exporter} exporter of the installed torch "
                f"supports for transformers models: {low}..{high}. Pick an opset in that range"
                + (" or exporter='dynamo' for opsets above 20." if exporter == "legacy" and isinstance(opset, int)
                   and opset > high else ".")
            )
        if spec.input_kind != IMAGE:
            check_padding_invariant(source_conf, spec, self.name)
        if with_past(spec, exporter):
            _check_generation(exporter, options, spec)
        optimize = options.optimize
        if optimize is None:  # the task's measured int8 recipe (tasks.py int8_optimize), else no fusion
            optimize = bool(options.quantize == "int8" and getattr(spec, "int8_optimize", False))
        quantize = options.quantize
        if (quantize == "int8" and optimize and getattr(spec, "int8_mode", None) and not options.quantize_op_types
                and options.quantize_per_channel is None and not options.quantize_reduce_range):
            quantize = spec.int8_mode  # the task's measured int8 on a fused graph (tasks.py int8_mode)
        return onnx_optimize.complete_quantize(
            replace(options, opset=opset, exporter=exporter, optimize=optimize, quantize=quantize), spec)

    def export(self, source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
        if getattr(options, "quantize_from_dir", None):  # the graph of an existing fp32 ONNX version, quantised
            return self.export_from_graph(source, options, staging_dir)
        if with_past(source.spec, str(options.exporter)):  # graph(s) with past key values, numpy decoding
            return export_generation(source, options, staging_dir)
        torch = require("torch")
        onnx = require("onnx")
        names = source.input_names
        outputs = source.output_names
        batch, seq = EXPORT_SHAPE
        fixed = fixed_length_reason(source.model.config) is not None  # Longformer, Funnel: right at one length
        seq = source.max_length if fixed else seq
        feeds = source_inputs(source, batch, seq)
        args = tuple(torch.from_numpy(feeds[n]) for n in names)
        onnx_optimize.prepare_model(source.model, options)
        onnx_safe_paths(source.model)
        wrapper = make_wrapper(source.model, names, outputs, custom=source.spec.custom is not None)
        check_exportable(source, wrapper, args)
        path = os.path.join(staging_dir, ONNX_FILE)
        large = _param_bytes(source.model) > EXTERNAL_DATA_THRESHOLD
        try:
            with torch.no_grad():
                if options.exporter == "dynamo":
                    require("onnxscript")
                    dims: Dict[str, Any] = {}
                    dynamic = {n: {i: dims.setdefault(d, torch.export.Dim(d))
                                   for i, d in input_axes(source.spec, n).items()} for n in names}
                    torch.onnx.export(
                        wrapper, args, path, input_names=names, output_names=outputs,
                        opset_version=options.opset, dynamo=True, external_data=large,
                        dynamic_shapes=dynamic,
                    )
                else:
                    axes = {n: input_axes(source.spec, n) for n in names}
                    axes.update({o.name: dict(o.axes) for o in source.spec.outputs if o.name in outputs})
                    torch.onnx.export(
                        wrapper, args, path, input_names=names, output_names=outputs,
                        opset_version=options.opset, dynamo=False, dynamic_axes=axes,
                        do_constant_folding=True,
                    )
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export failed for {source.flavor_conf.get(FlavorKey.ARCHITECTURE)} "
                f"({source.spec.name}, opset {options.opset}, {options.exporter} exporter): "
                f"{cause(exc)}. "
                + ("Try the default exporter (exporter='legacy')" if options.exporter == "dynamo"
                   else "Try another opset (opset=) or exporter='dynamo'")
                + ", or format='torchscript'."
            ) from exc
        if large and options.exporter != "dynamo":
            save_with_external_data(path)
        onnx.checker.check_model(path)
        post = onnx_optimize.postprocess(path, source.model, source.flavor_conf, options,
                                         calibration(source, options, path))
        artifact = _artifact(options, post)
        if fixed:  # every request is padded (masked) to the length the graph was traced at
            artifact.flavor_conf[FlavorKey.PAD_TO_MULTIPLE_OF] = source.max_length
        return artifact

    def export_from_graph(self, source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
        """Quantise (and fuse, with ``optimize=True``, unless it is fused already) the fp32 graph of the ONNX
        version downloaded in ``options.quantize_from_dir`` (``export.reuse.GraphExportOptions``), instead of
        exporting ``source`` again; ``source`` (its transformers source version) is what the result is validated
        against."""
        onnx = require("onnx")
        base_dir = str(getattr(options, "quantize_from_dir", ""))
        quantize_from = getattr(options, "quantize_from", None)
        base = read_flavor_conf(base_dir)
        if base.get(FlavorKey.QUANTIZED) or base.get(FlavorKey.GENERATION) or base.get(FlavorKey.FORMAT) != Format.ONNX:
            raise ExportError(
                f"{quantize_from or base_dir} is not a single fp32 ONNX graph (format "
                f"{base.get(FlavorKey.FORMAT)!r}, quantized {base.get(FlavorKey.QUANTIZED)!r}, generation "
                f"{base.get(FlavorKey.GENERATION)!r}); quantise from its source version instead."
            )
        model_file = str(base[FlavorKey.MODEL_FILE])
        path = onnx_optimize.copy_graph(base_dir, model_file, staging_dir, ONNX_FILE)
        onnx.checker.check_model(path)
        post = onnx_optimize.postprocess(path, source.model, source.flavor_conf, options,
                                         calibration(source, options, path),
                                         already_optimized=base.get(FlavorKey.OPTIMIZED))
        artifact = _artifact(options, post)
        if base.get(FlavorKey.PAD_TO_MULTIPLE_OF):  # a fixed-length graph stays one
            artifact.flavor_conf[FlavorKey.PAD_TO_MULTIPLE_OF] = base[FlavorKey.PAD_TO_MULTIPLE_OF]
        return artifact

    def validation_shapes(self, options: ExportOptions) -> List[Shape]:
        return onnx_optimize.validation_shapes(options, [VALIDATION_SHAPE])


def calibration(source: SourceModel, options: ExportOptions, path: str) -> Optional[Tuple[str, List[Dict[str, Any]]]]:
    """``int8-static``: (description, batches of the inputs of graph ``path``) of the rows to calibrate on
    (``source.calibration_data``, the export's validation data, else the built-in texts; see
    ``export/onnx/calibration.py``). None for the other modes."""
    if options.quantize != STATIC_QUANTIZE:
        return None
    onnx = require("onnx")
    input_names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    rows = calib.calibration_rows(source.calibration_data, source.spec)
    feeds = calib.calibration_feeds(rows, calib.encoder_for(source), input_names)
    return rows.describe(), feeds


def _artifact(options: ExportOptions, post: onnx_optimize.PostProcessed) -> ExportedArtifact:
    extra_conf: Dict[str, Any] = {FlavorKey.OPSET: options.opset, **post.flavor_conf}
    tags = {Tag.OPSET: str(options.opset), Tag.TRACE_SHAPE: "dynamic", Tag.EXPORTER: str(options.exporter),
            **post.tags}
    return ExportedArtifact(model_file=ONNX_FILE, flavor_conf=extra_conf, tags=tags)


BACKEND = OnnxBackend()
