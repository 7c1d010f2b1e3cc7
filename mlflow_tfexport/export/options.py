"""The options of an export: parsed, bounded and checked against the format in one place.

``make_options`` turns the keyword arguments of ``export()`` (and of
``export_to_directory()``, the worker's request grammar, the CLI) into an
``ExportOptions`` record: trace shapes parsed and bounded, ``atol`` and
``opset`` read as numbers, and every option that does not apply to the chosen
format refused, using the format's record (``formats.FORMATS[fmt].options``).
What depends on the source model or on the machine (the opset range of an
exporter, a sequence longer than the model's maximum, a Neuron SDK, a GPU) is
completed by the backend's ``check`` afterwards, before any work.

Also here: what every backend receives (``SourceModel``, ``ExportOptions``)
and returns (``ExportedArtifact``), and the ``Backend`` verbs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import ExportError, UnknownFormatError
from mlflow_tfexport.formats import FORMATS, FormatSpec, export_formats
from mlflow_tfexport.serving.runtimes.static import shape_name
from mlflow_tfexport.tasks import IMAGE, SEQUENCE, TaskSpec

Shape = Tuple[int, int]  # (batch, sequence)
TraceShapeArg = Union[None, str, Tuple[int, int], Sequence[Union[str, Tuple[int, int]]]]

#: At most this many static-shape buckets per export (each is a traced module in the variant).
MAX_BUCKETS = 8
#: A trace shape's batch: larger requests are split into chunks of the bucket's batch anyway.
MAX_TRACE_BATCH = 256
#: A trace shape's batch x sequence: what one traced call holds in memory (512 x 512 at most).
MAX_TRACE_ELEMENTS = 262_144
#: ``quantize=`` values (onnxruntime int8 quantisation, ``export/onnx/optimize.py``), with what each does.
QUANTIZE_HELP: Dict[str, str] = {
    "int8": "dynamic int8, weights quantised per output channel (the default int8)",
    "int8-per-tensor": "dynamic int8, one scale per weight tensor",
    "int8-static": "static int8 (QDQ): activation scales calibrated on the validation data",
    "int8-blockwise": "int8 weights with a scale per block of 128 inputs, activations quantised per row "
    "(MatMulNBits): the most accurate int8, slower than 'int8'",
    "int8-mixed": "blockwise int8 matrix products (as 'int8-blockwise') and the fused attention's input projection "
    "dynamic int8 per channel: the embedder's int8 (quantize='int8' of feature-extraction)",
}
QUANTIZE_MODES: Tuple[str, ...] = tuple(QUANTIZE_HELP)
STATIC_QUANTIZE = "int8-static"
BLOCKWISE_QUANTIZE = "int8-blockwise"
MIXED_QUANTIZE = "int8-mixed"
#: Operator types ``quantize_op_types`` may name, per kind of quantisation (onnxruntime's registries, restricted
#: to what transformer graphs hold; ``Attention`` and ``EmbedLayerNormalization`` exist in optimize=True graphs).
DYNAMIC_OP_TYPES: Tuple[str, ...] = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Conv")
STATIC_OP_TYPES: Tuple[str, ...] = ("MatMul", "Gemm", "Gather", "Conv")
BLOCKWISE_OP_TYPES: Tuple[str, ...] = ("MatMul",)
#: int8-mixed: MatMul blockwise, the others dynamic per channel.
MIXED_OP_TYPES: Tuple[str, ...] = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")
#: The operator types quantised when ``quantize_op_types`` is not given.
DEFAULT_OP_TYPES: Dict[str, Tuple[str, ...]] = {
    "int8": ("MatMul", "Attention", "Gather", "EmbedLayerNormalization"),
    "int8-per-tensor": ("MatMul", "Attention", "Gather", "EmbedLayerNormalization"),
    "int8-static": ("MatMul",),
    "int8-blockwise": ("MatMul",),
    "int8-mixed": ("MatMul", "Attention"),
}
#: How the options are spelled in ``export()`` where the record's field name differs.
_ARGUMENT = {"trace_shapes": "trace_shape"}
#: Why an option does not apply to a format, where that is not obvious from its name.
_WHY_NOT: Dict[Tuple[str, str], str] = {
    ("trace_shapes", "onnx"): "ONNX exports have dynamic batch and sequence axes",
    ("device", "onnx"): "an ONNX model chooses its device when it is loaded "
    "(model_config={'providers': ['CUDAExecutionProvider', 'CPUExecutionProvider']})",
    ("device", "neuron"): "a Neuron module runs on the instance's NeuronCores, chosen with neuron_target=",
}
HOW_TO_PASS = (
    "pass trace_shape=(batch, sequence), e.g. trace_shape=(1, 128), or several buckets, e.g. "
    "trace_shape=['1x32', '1x128'] (CLI: --trace-shape 1x128, repeatable)"
)


@dataclass(frozen=True)
class ExportOptions:
    """User options of one export. Part of the export key: equal options, same variant."""

    format: str
    opset: Optional[int] = None
    trace_shapes: Tuple[Shape, ...] = ()
    atol: Optional[float] = None
    exporter: Optional[str] = None
    optimize: Optional[bool] = None  # None: False, or the task's int8 recipe with quantize="int8"
    quantize: Optional[str] = None
    min_agreement: Optional[float] = None  # quantised exports: label agreement required by validation
    quantize_per_channel: Optional[bool] = None  # weight scales per output channel (None: the mode's default)
    quantize_op_types: Tuple[str, ...] = ()  # operator types to quantise (empty: the mode's DEFAULT_OP_TYPES)
    quantize_reduce_range: bool = False  # 7-bit weights: for CPUs without VNNI, where 8 bits may saturate
    neuron_target: Optional[str] = None
    compiler_args: Tuple[str, ...] = ()
    device: Optional[str] = None  # TorchScript: the device the trace is recorded on ("cpu", "cuda", "cuda:N")

    def given(self) -> Dict[str, Any]:
        """The options set to something other than their default (``format`` excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "format" and getattr(self, f.name) != f.default}

    def key_fields(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "opset": self.opset,
            "trace_shapes": [list(s) for s in self.trace_shapes],
            "atol": self.atol,
            "exporter": self.exporter,
            "optimize": bool(self.optimize),
            "quantize": self.quantize,
            "neuron_target": self.neuron_target,
            "compiler_args": list(self.compiler_args),
            # Only when set, so the keys of earlier exports stay valid.
            **({"min_agreement": self.min_agreement} if self.min_agreement is not None else {}),
            **({"device": self.device} if self.device is not None else {}),
            **self.quantize_key_fields(),
        }

    def quantize_key_fields(self) -> Dict[str, Any]:
        """The quantisation settings (completed by the backend's ``check``) of a quantised export: a per-tensor
        and a per-channel int8 are other variants. Empty without ``quantize``."""
        if not self.quantize:
            return {}
        return {
            "quantize_per_channel": self.quantize_per_channel,
            "quantize_op_types": list(self.quantize_op_types),
            "quantize_reduce_range": self.quantize_reduce_range,
        }


# --------------------------------------------------------------------------- parsing


def _bounded(shape: Shape) -> Shape:
    batch, seq = shape
    if batch > MAX_TRACE_BATCH:
        raise ExportError(
            f"trace_shape {shape_name(shape)} has batch {batch}, above the maximum of {MAX_TRACE_BATCH}. A request "
            f"with more rows is split into chunks of the bucket's batch, so a larger one gains nothing; use a batch "
            f"<= {MAX_TRACE_BATCH}, e.g. '{MAX_TRACE_BATCH}x{seq}'."
        )
    if batch * seq > MAX_TRACE_ELEMENTS:
        fits = max(1, MAX_TRACE_ELEMENTS // seq)
        raise ExportError(
            f"trace_shape {shape_name(shape)} holds {batch * seq} tokens (batch x sequence), above the maximum of "
            f"{MAX_TRACE_ELEMENTS}. Use a smaller batch for this sequence, e.g. '{fits}x{seq}'."
        )
    return shape


def _shape(value: Any) -> Shape:
    if isinstance(value, str):
        parts = value.lower().split("x")
        if len(parts) != 2:
            raise ExportError(f"trace_shape {value!r} is not BATCHxSEQUENCE, e.g. '1x128'.")
        try:
            value = (int(parts[0]), int(parts[1]))
        except ValueError:
            raise ExportError(f"trace_shape {value!r} must be two integers, e.g. '1x128'.") from None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ExportError(f"trace_shape {value!r} must be (batch, sequence), e.g. (1, 128).")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ExportError(f"trace_shape {tuple(value)!r} must hold integers, received {type(v).__name__}.")
        if v <= 0:
            raise ExportError(f"trace_shape {tuple(value)!r} must be positive, e.g. (1, 128).")
    return _bounded((int(value[0]), int(value[1])))


def parse_trace_shapes(trace_shape: TraceShapeArg) -> Tuple[Shape, ...]:
    """``"1x128"``, ``(1, 128)``, ``"1x32,1x128"`` or a list of those -> sorted unique shapes.

    Each shape is checked (positive integers, batch <= ``MAX_TRACE_BATCH``, batch x sequence <=
    ``MAX_TRACE_ELEMENTS``) and so is their number (<= ``MAX_BUCKETS``).
    """
    if trace_shape is None:
        return ()
    if isinstance(trace_shape, str):
        items: List[Any] = [s for s in trace_shape.split(",") if s.strip()]
    elif isinstance(trace_shape, (tuple, list)) and len(trace_shape) == 2 and all(
        isinstance(v, (int, float)) for v in trace_shape
    ):  # one (batch, sequence) pair; its values are checked by _shape
        items = [tuple(trace_shape)]
    else:  # a list of shapes; a string in it may itself hold several ("1x32,1x128", as from the CLI)
        items = [p for s in trace_shape for p in (s.split(",") if isinstance(s, str) else [s])
                 if not isinstance(p, str) or p.strip()]
    shapes = sorted({_shape(s.strip() if isinstance(s, str) else s) for s in items}, key=lambda s: (s[1], s[0]))
    if len(shapes) > MAX_BUCKETS:
        raise ExportError(f"{len(shapes)} trace shapes given; at most {MAX_BUCKETS} buckets are supported.")
    return tuple(shapes)


def check_atol(atol: Any) -> Optional[float]:
    """``atol`` as a positive finite float (None: the task's default)."""
    if atol is None:
        return None
    try:
        value = float(atol)
    except (TypeError, ValueError):
        raise ExportError(f"atol must be a positive number, received {atol!r}; e.g. 1e-4.") from None
    if isinstance(atol, bool) or not math.isfinite(value) or value <= 0:
        raise ExportError(f"atol must be a positive number, received {atol!r}; e.g. 1e-4.")
    return value


def check_opset(opset: Any) -> Optional[int]:
    """``opset`` as an int; a string of digits (``"17"``, as from a config file) is read as that number.
    The range depends on the exporter and is checked by the ONNX backend."""
    if opset is None:
        return None
    if isinstance(opset, str) and opset.strip().isascii() and opset.strip().isdigit():
        return int(opset.strip())
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(
            f"opset must be an integer such as 17, received {opset!r} ({type(opset).__name__}); "
            "pass opset=17 (CLI: --opset 17) or leave it unset for the task's default."
        )
    return opset


def _modes() -> str:
    return "; ".join(f"{m!r}: {h}" for m, h in QUANTIZE_HELP.items())


def parse_op_types(value: Any) -> Tuple[str, ...]:
    """``"MatMul,Attention"``, ``["MatMul", "Attention"]`` (or None) -> ``("MatMul", "Attention")``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ExportError(f"quantize_op_types must be operator type names such as 'MatMul', received {item!r}.")
        for name in item.split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    return tuple(out)


def check_quantize(options: ExportOptions) -> None:
    """``quantize`` and the options that refine it: known mode, options only with a mode, no contradiction,
    operator types the mode quantises."""
    mode = options.quantize
    refinements = {"quantize_per_channel": options.quantize_per_channel is not None,
                   "quantize_op_types": bool(options.quantize_op_types),
                   "quantize_reduce_range": options.quantize_reduce_range is not False}
    if mode is None:
        given = [name for name, set_ in refinements.items() if set_]
        if given:
            raise ExportError(
                f"{given[0]} applies to quantised exports only; add quantize='int8' (or another mode: "
                f"{', '.join(repr(m) for m in QUANTIZE_MODES if m != 'int8')}) or drop {given[0]}."
            )
        return
    if mode not in QUANTIZE_MODES:
        raise ExportError(f"quantize={mode!r} is not supported; use one of {_modes()}; or leave it unset.")
    for name in ("quantize_per_channel", "quantize_reduce_range"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, bool):
            raise ExportError(f"{name} must be True or False, received {value!r}.")
    if mode == "int8-per-tensor" and options.quantize_per_channel:
        raise ExportError(
            "quantize='int8-per-tensor' quantises each weight tensor with one scale; quantize_per_channel=True "
            "contradicts it. Use quantize='int8' (dynamic, per channel) or drop quantize_per_channel."
        )
    if mode == "int8" and options.quantize_per_channel is False:
        raise ExportError(
            "quantize='int8' quantises weights per channel; for one scale per weight tensor pass "
            "quantize='int8-per-tensor' instead of quantize_per_channel=False."
        )
    if mode == BLOCKWISE_QUANTIZE:
        for name in ("quantize_per_channel", "quantize_reduce_range"):
            if getattr(options, name):
                raise ExportError(
                    f"quantize='int8-blockwise' has a weight scale per block of 128 inputs of each output channel "
                    f"(finer than per channel) and 8-bit weights; {name}=True does not apply to it. Drop {name}."
                )
    if mode == MIXED_QUANTIZE and (options.quantize_reduce_range or options.quantize_per_channel is False):
        raise ExportError(
            "quantize='int8-mixed' quantises matrix products per block of 128 inputs and the rest per channel, "
            "with 8-bit weights; quantize_per_channel=False and quantize_reduce_range=True do not apply to it. "
            "Drop them, or use quantize='int8-per-tensor' / quantize='int8' with quantize_reduce_range=True."
        )
    allowed = {STATIC_QUANTIZE: STATIC_OP_TYPES, BLOCKWISE_QUANTIZE: BLOCKWISE_OP_TYPES,
               MIXED_QUANTIZE: MIXED_OP_TYPES}.get(mode, DYNAMIC_OP_TYPES)
    for op in options.quantize_op_types:
        if op in allowed:
            continue
        if op in STATIC_OP_TYPES or op in DYNAMIC_OP_TYPES:
            owners = [m for m, ops in ((STATIC_QUANTIZE, STATIC_OP_TYPES), ("int8", DYNAMIC_OP_TYPES),
                                       ("int8-per-tensor", DYNAMIC_OP_TYPES)) if op in ops]
            raise ExportError(
                f"quantize_op_types: {op!r} is quantised by quantize={' or '.join(repr(m) for m in owners)} only; "
                f"quantize={mode!r} quantises {', '.join(allowed)}."
            )
        raise ExportError(
            f"quantize_op_types: {op!r} is not an operator type that quantize={mode!r} quantises; use some of "
            f"{', '.join(allowed)} (ONNX operator names, case-sensitive)."
        )


def _check_values(options: ExportOptions) -> None:
    """Values whose range does not depend on the source model or the machine."""
    if options.optimize is not None and not isinstance(options.optimize, bool):
        raise ExportError(f"optimize must be True or False (or None: the task's recipe), received "
                          f"{options.optimize!r}.")
    check_quantize(options)
    threshold = options.min_agreement
    if threshold is not None:
        if options.quantize is None:
            raise ExportError("min_agreement applies to quantised exports only; add quantize='int8' or drop it.")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ExportError(f"min_agreement must be a number in (0, 1], e.g. 0.9; received {threshold!r}.")
    if not all(isinstance(a, str) for a in options.compiler_args):
        raise ExportError(
            f"compiler_args must be strings, received {list(options.compiler_args)!r}; "
            "e.g. compiler_args=['--fast-math', 'none']."
        )


def export_format(fmt: str) -> FormatSpec:
    """The record of export format ``fmt``; an unknown one (or the source format) lists the known ones."""
    spec = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if spec is None or spec.backend is None:
        raise UnknownFormatError(f"Unknown export format {fmt!r}. Known formats: {', '.join(export_formats())}.")
    return spec


def check_applicable(options: ExportOptions) -> None:
    """Refuse every option that does not apply to ``options.format`` (``formats.FORMATS[fmt].options``)."""
    fmt = options.format
    allowed = export_format(fmt).options
    for name, value in options.given().items():
        if name in allowed:
            continue
        argument = _ARGUMENT.get(name, name)
        shown = ",".join(map(shape_name, value)) if name == "trace_shapes" else value
        shown = list(shown) if isinstance(shown, tuple) else shown
        owners = " or ".join(f"format={other!r}" for other, spec in FORMATS.items() if name in spec.options)
        why = _WHY_NOT.get((name, fmt))
        raise ExportError(
            f"{argument}={shown!r} does not apply to format={fmt!r}; it applies to {owners} only"
            + (f": {why}" if why else "") + f". Drop {argument}=, or export with {owners}."
        )
    if FORMATS[fmt].static_shapes and not options.trace_shapes:
        raise ExportError(f"format={fmt!r} traces static shapes and needs trace_shape: {HOW_TO_PASS}.")


def make_options(
    format: str,
    *,
    opset: Any = None,
    trace_shape: TraceShapeArg = None,
    atol: Any = None,
    exporter: Optional[str] = None,
    optimize: Optional[bool] = None,
    quantize: Optional[str] = None,
    min_agreement: Optional[float] = None,
    neuron_target: Optional[str] = None,
    compiler_args: Sequence[str] = (),
    device: Optional[str] = None,
    quantize_per_channel: Optional[bool] = None,
    quantize_op_types: Any = None,
    quantize_reduce_range: bool = False,
) -> ExportOptions:
    """The options of ``export()`` and ``export_to_directory()``: parsed, bounded and checked against the
    format; the backend's ``check`` completes them against the source model."""
    if isinstance(compiler_args, str):  # one string would be split into characters
        compiler_args = compiler_args.split()
    options = ExportOptions(format=format, opset=check_opset(opset), trace_shapes=parse_trace_shapes(trace_shape),
                            atol=check_atol(atol), exporter=exporter, optimize=optimize, quantize=quantize,
                            min_agreement=min_agreement, neuron_target=neuron_target,
                            compiler_args=tuple(compiler_args), device=device,
                            quantize_per_channel=quantize_per_channel,
                            quantize_op_types=parse_op_types(quantize_op_types),
                            quantize_reduce_range=quantize_reduce_range)
    check_applicable(options)
    _check_values(options)
    return options


#: Why a detector cannot be traced at static shapes: its answer depends on the padded canvas.
STATIC_DETECTION_REASON = (
    "a detector's output depends on the size of the canvas its image is padded to (a DETR backbone's "
    "convolutions see the padding: 8e-3 on the logits of a tiny DETR between an image alone and the same image "
    "padded into a larger bucket; YOLOS interpolates its position embeddings to the canvas and attends to the "
    "padding), and a detection request keeps each image's aspect ratio, so no fixed set of image sizes serves "
    "every request equal to the source"
)


def check_image_trace_shapes(options: ExportOptions, source_conf: Mapping[str, Any], spec: TaskSpec) -> None:
    """Image models: buckets over the batch size only. The image size is fixed by the image processor, so a
    trace shape is ``BxH`` with ``H`` the model's image height; detectors (aspect-preserving sizes) are refused."""
    arch = source_conf.get(FlavorKey.ARCHITECTURE)
    if spec.dynamic_image_size:
        raise ExportError(
            f"{arch} ({spec.name}) cannot be exported to {options.format}: {STATIC_DETECTION_REASON}. "
            "Use format='onnx', which keeps height and width dynamic (and serves without torch)."
        )
    height, width = (int(v) for v in source_conf[FlavorKey.IMAGE_SIZE])
    wrong = [shape_name(s) for s in options.trace_shapes if s[1] != height]
    if wrong:
        example = ",".join(f"{b}x{height}" for b in sorted({b for b, _ in options.trace_shapes}))
        raise ExportError(
            f"trace_shape {', '.join(wrong)} does not fit {arch} ({spec.name}): an image model's buckets are over the "
            f"batch size only, its image size is fixed by its image processor at {height}x{width}, so a trace "
            f"shape is BATCHx{height} (batch x image height). Use e.g. trace_shape='{example}'."
        )


#: Model types whose outputs at real tokens change with how far a batch is padded, and why.
PADDING_SENSITIVE: Dict[str, str] = {
    "funnel": "Funnel pools the sequence into blocks and upsamples it back, so its token outputs change with how "
    "far a batch is padded (by 0.94 at real tokens of a tiny Funnel between a batch and the same batch padded to 64 "
    "tokens: benchmarks/padding_sensitivity.py), and an export either fixes the length (ONNX: every request is "
    "padded to it) or pads to a bucket (TorchScript)",
}


#: Model types whose outputs at real tokens near a row's end change with how far the row is padded beyond the
#: batch's longest row: right on ONNX (a batch runs padded to its longest row, as the source runs it), not on
#: static shapes (every row padded to a bucket).
STATIC_PADDING_SENSITIVE: Dict[str, str] = {
    "convbert": "ConvBERT's span-based dynamic convolution (a kernel of conv_kernel_size tokens, 9 by default, "
    "over the hidden states: SeparableConv1D and unfold) reads padded positions, which no attention mask hides, so "
    "its token outputs near a row's end change with how far the row is padded (by 8.2e-03 at real tokens of a tiny "
    "ConvBERT between a batch and the same batch padded to 64 tokens: benchmarks/padding_sensitivity.py; 6e-3 to "
    "9e-3 at the TorchScript bucket), and a static-shape variant pads every row to its bucket",
}


def check_padding_invariant(source_conf: Mapping[str, Any], spec: TaskSpec, fmt: str) -> None:
    """Refuse a task with per-token outputs of a model whose token outputs depend on the padding length
    (``STATIC_PADDING_SENSITIVE``: on static-shape formats only)."""
    model_type = str(source_conf.get(FlavorKey.MODEL_TYPE))
    why = PADDING_SENSITIVE.get(model_type)
    if not why and FORMATS[fmt].static_shapes:
        why = STATIC_PADDING_SENSITIVE.get(model_type)
        if why and any(SEQUENCE in o.axes.values() for o in spec.outputs):
            raise ExportError(
                f"{source_conf.get(FlavorKey.ARCHITECTURE)} ({spec.name}) cannot be exported to {fmt}: {why}. "
                f"Export {spec.name} with format='onnx' (dynamic axes: a batch is padded as the source pads it)."
            )
    if why and any(SEQUENCE in o.axes.values() for o in spec.outputs):
        raise ExportError(
            f"{source_conf.get(FlavorKey.ARCHITECTURE)} ({spec.name}) cannot be exported to {fmt}: {why}. Its "
            "sequence-level task (text-classification, pooled at the first token) exports to format='onnx'; serve "
            f"{spec.name} from the source (transformers) version."
        )


def check_sequence_lengths(options: ExportOptions, source_conf: Mapping[str, Any]) -> None:
    """Every trace shape's sequence fits the source model's maximum length."""
    limit = int(source_conf[FlavorKey.MAX_LENGTH])
    for shape in options.trace_shapes:
        if shape[1] > limit:
            raise ExportError(
                f"trace_shape {shape_name(shape)} has sequence {shape[1]}, longer than the model's maximum of "
                f"{limit} tokens (max_length of {source_conf.get(FlavorKey.ARCHITECTURE)}). Use a sequence "
                f"<= {limit}, e.g. '1x{limit}'."
            )


# --------------------------------------------------------------------------- what backends receive and return


@dataclass
class SourceModel:
    """The loaded source variant: eager model plus what the flavor block says about it."""

    model: Any  # transformers PreTrainedModel, eval mode
    spec: TaskSpec
    flavor_conf: Dict[str, Any]
    local_path: str  # downloaded source model directory
    #: quantize="int8-static": the export's validation data (``validation.data.ValidationData``) to calibrate
    #: activation ranges on; None: built-in texts (``export/onnx/calibration.py``).
    calibration_data: Optional[Any] = None

    @property
    def input_names(self) -> List[str]:
        return list(self.flavor_conf[FlavorKey.INPUT_NAMES])

    @property
    def output_names(self) -> List[str]:
        """The outputs to export: the task's, or those the model has (image models record theirs)."""
        recorded = self.flavor_conf.get(FlavorKey.OUTPUT_NAMES) if self.spec.input_kind == IMAGE else None
        return list(recorded or self.spec.output_names)

    @property
    def vocab_size(self) -> int:
        config = self.model.config
        found = getattr(getattr(config, "text_config", None), "vocab_size", None) or getattr(config, "vocab_size", None)
        if found is None:  # a model of one's own without the attribute: its input embeddings say it
            found = self.model.get_input_embeddings().num_embeddings
        return int(found)

    @property
    def max_length(self) -> int:
        return int(self.flavor_conf[FlavorKey.MAX_LENGTH])


@dataclass
class ExportedArtifact:
    """What a backend wrote into the staging directory."""

    model_file: str  # file name inside the staging directory
    flavor_conf: Dict[str, Any] = field(default_factory=dict)  # entries added to the tfexport block
    tags: Dict[str, str] = field(default_factory=dict)  # registry tags added by the backend
    requirements: Optional[List[str]] = None  # serving requirements, default per format
    python_version: Optional[str] = None
    extra_index_urls: Sequence[str] = ()


class Backend(Protocol):
    """The verbs every export backend implements."""

    name: str

    def check(self, options: ExportOptions, source_conf: Mapping[str, Any], spec: TaskSpec) -> ExportOptions:
        """Complete options checked by ``make_options`` against the source and the machine, before any work;
        raise ``ExportError`` on bad ones."""
        ...

    def export(self, source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
        """Write the exported model into ``staging_dir``."""
        ...

    def validation_shapes(self, options: ExportOptions) -> List[Shape]:
        """Shapes to validate at: never only the export shape."""
        ...
