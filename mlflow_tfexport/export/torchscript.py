"""TorchScript backend: ``torch.jit.trace`` of the export wrapper, one module per bucket.

transformers 5 dropped the ``torchscript=True`` config flag, so this backend
does its job itself: it traces the positional-tensors-in, tuple-out wrapper
(``export/wrapper.py``) of a *deep copy* of the model whose tied embedding /
LM-head weights have been untied, in eval mode, without gradients. The loaded
source model is never modified, so the validation reference stays the model
that was logged.

Artifact layout: a folder ``torchscript/`` with one ``torch.jit.save`` file per
bucket (``1x32.pt``, ``1x128.pt``) and the bucket list in the flavor block.
One file per bucket rather than one scripted container module because (1) each
bucket is a separate static-shape graph anyway (Neuron compiles each one
separately, and this layout is shared with the Neuron backend), (2) a
container would have to be ``torch.jit.script``-ed with a dispatch over a
variable number of inputs and outputs, which works for neither Neuron SDK, and
(3) the runner can load the buckets independently.

The per-bucket compile step is ``StaticBackend.compile``: ``torch.jit.trace``
here, the Neuron compiler in ``export/neuron.py``.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Tuple

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError, TfexportError, cause
from mlflow_tfexport.export.inference_ops import swap_autograd_functions
from mlflow_tfexport.export.options import (
    ExportedArtifact,
    ExportOptions,
    Shape,
    SourceModel,
    check_image_trace_shapes,
    check_padding_invariant,
    check_sequence_lengths,
)
from mlflow_tfexport.export.static_seq2seq import export_static_seq2seq
from mlflow_tfexport.export.tracing import trace_inputs, traceable_masks
from mlflow_tfexport.export.wrapper import check_runs, make_wrapper, untie_weights
from mlflow_tfexport.serving.runtimes.device import check_device_name
from mlflow_tfexport.serving.runtimes.static import TORCHSCRIPT_DIR, bucket_file, shape_name
from mlflow_tfexport.tasks import BATCH, IMAGE, SEQUENCE, TaskSpec


def check_traceable(spec: TaskSpec, fmt: str) -> None:
    """Every output needs a batch axis (and at most a sequence axis besides) so padding can be stripped."""
    if spec.encoder_decoder:  # an encoder per bucket, a cache-free decoder per length (export/static_seq2seq.py)
        return
    bad = [
        o.name for o in spec.outputs
        if BATCH not in o.axes.values() or any(name not in (BATCH, SEQUENCE) for name in o.axes.values())
    ]
    if bad or not spec.outputs:
        raise ExportError(
            f"Task {spec.name!r} cannot be exported to {fmt}: output(s) {bad or '(none)'} have dynamic axes "
            f"{[dict(o.axes) for o in spec.outputs if o.name in bad]} that a static-shape trace cannot pad and "
            "un-pad (only a batch axis and a sequence axis are supported). Use format='onnx' for this task."
        )


class StaticBackend:
    """Shared by the TorchScript and Neuron backends: checks, buckets, tracing, validation shapes."""

    name = Format.TORCHSCRIPT
    folder = TORCHSCRIPT_DIR

    def check(self, options: ExportOptions, source_conf: Mapping[str, Any], spec: TaskSpec) -> ExportOptions:
        """Trace shapes within the model's maximum length, a traceable task, then the target (device or
        Neuron compiler). The shapes' form and bounds, and options of other formats, were checked by
        ``make_options``."""
        if spec.input_kind == IMAGE:
            check_image_trace_shapes(options, source_conf, spec)
        else:
            check_sequence_lengths(options, source_conf)
            check_padding_invariant(source_conf, spec, self.name)
        check_traceable(spec, self.name)
        return self.check_target(options)

    def check_target(self, options: ExportOptions) -> ExportOptions:
        """TorchScript: where to trace (default CPU); a GPU must be visible to trace there."""
        if options.device is None:
            return options
        try:
            device = check_device_name(options.device)
        except TfexportError as exc:
            raise ExportError(str(exc).split(". Pass")[0] + ". Trace on 'cpu' (default) or 'cuda'.") from exc
        if device == "auto":
            raise ExportError("device='auto' is for loading; say where to trace: device='cpu' or 'cuda'.")
        torch = require("torch")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ExportError(
                f"device={options.device!r}: torch {torch.__version__} sees no CUDA GPU on this machine, so the "
                "trace cannot be recorded (or validated) there. Export on a GPU machine, or drop device= for a "
                "CPU trace."
            )
        return replace(options, device=device)

    def trace_device(self, options: ExportOptions) -> str:
        """Where the trace is recorded (and must later run)."""
        return options.device or "cpu"

    def compile(self, module: Any, example_inputs: Tuple[Any, ...], options: ExportOptions) -> Any:
        """One bucket: static-shape tensors in, a TorchScript module out."""
        torch = require("torch")
        return torch.jit.trace(module, example_inputs, check_trace=False)

    def export(self, source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
        torch = require("torch")
        names = source.input_names
        device = torch.device(self.trace_device(options))
        model = copy.deepcopy(source.model)  # untie on a copy: the reference model stays as logged
        untie_weights(model)
        swap_autograd_functions(model)  # custom autograd Functions cannot be saved; their plain-math twins can
        model.eval().to(device)
        wrapper = make_wrapper(model, names, source.output_names, custom=source.spec.custom is not None)
        folder = os.path.join(staging_dir, self.folder)
        os.makedirs(folder)
        conf: Dict[str, Any] = {FlavorKey.TRACE_SHAPES: [list(s) for s in options.trace_shapes]}
        tags = {Tag.TRACE_SHAPE: ",".join(shape_name(s) for s in options.trace_shapes)}
        if source.spec.encoder_decoder:
            more_conf, more_tags = export_static_seq2seq(self, source, model, options, folder, device)
            conf.update(more_conf)
            tags.update(more_tags)
        for i, shape in enumerate(() if source.spec.encoder_decoder else options.trace_shapes):
            feeds = trace_inputs(source, shape, seed=i)
            args = tuple(torch.from_numpy(feeds[n]).to(device) for n in names)
            if i == 0:
                check_runs(source, wrapper, args)  # a forward that cannot run from these inputs: say why
            try:
                with torch.no_grad(), warnings.catch_warnings(), traceable_masks():
                    warnings.simplefilter("ignore")  # TracerWarnings about Python control flow
                    traced = self.compile(wrapper, args, options)
                    out = traced(*args)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(
                    f"Tracing {source.flavor_conf.get(FlavorKey.ARCHITECTURE)} ({source.spec.name}) for "
                    f"{self.name} at {shape_name(shape)} failed: the outputs "
                    f"{source.output_names} could not be traced: {cause(exc)}. The model's forward does something "
                    "torch.jit.trace cannot record; use format='onnx'."
                ) from exc
            self._check_outputs(out, source.output_names, shape)
            self._save(traced, os.path.join(folder, bucket_file(shape)), source, shape)
            del traced
        largest = max(s for _, s in options.trace_shapes)
        if source.spec.input_kind != IMAGE:  # an image model's size is fixed by its processor
            conf[FlavorKey.MAX_LENGTH] = min(largest, source.max_length)
        if self.name == Format.TORCHSCRIPT:
            conf[FlavorKey.TRACE_DEVICE] = tags[Tag.TRACE_DEVICE] = device.type
        return self.artifact(source, options, conf, tags)

    def artifact(
        self, source: SourceModel, options: ExportOptions, conf: Dict[str, Any], tags: Dict[str, str]
    ) -> ExportedArtifact:
        return ExportedArtifact(model_file=self.folder, flavor_conf=conf, tags=tags)

    def _save(self, traced: Any, path: str, source: SourceModel, shape: Shape) -> None:
        """``torch.jit.save``; a trace holding Python ops (a custom autograd Function) is refused precisely."""
        torch = require("torch")
        try:
            torch.jit.save(traced, path)
        except Exception as exc:
            ops = sorted({str(n.pyname()) for n in traced.inlined_graph.nodes() if n.kind() == "prim::PythonOp"})
            arch = source.flavor_conf.get(FlavorKey.ARCHITECTURE)
            raise ExportError(
                f"{arch} ({source.spec.name}) was traced for {self.name} at {shape_name(shape)} but cannot be saved: "
                + (f"its forward calls the Python autograd Function(s) {', '.join(ops)}, which TorchScript cannot "
                   "serialise (no plain-math twin is known for them)" if ops else cause(exc))
                + ". Use format='onnx'."
            ) from exc

    def _check_outputs(self, out: Any, names: List[str], shape: Shape) -> None:
        values = out if isinstance(out, (tuple, list)) else (out,)
        kinds = [type(v).__name__ for v in values]
        if len(values) != len(names) or not all(hasattr(v, "shape") for v in values):
            raise ExportError(
                f"The traced {self.name} module at {shape_name(shape)} returned {kinds}, expected "
                f"{len(names)} tensor(s) {names}: the task's outputs cannot be traced."
            )

    def validation_shapes(self, options: ExportOptions) -> List[Shape]:
        """Each traced shape, plus shapes that exercise padding and chunking through the real runner:
        a batch larger than the bucket's (chunks + dummy rows) with a shorter sequence, and 1 token."""
        shapes = set()
        for b, s in options.trace_shapes:
            shapes.add((b, s))
            shapes.add((2 * b + 1, max(1, (2 * s) // 3)))
        smallest = min(options.trace_shapes, key=lambda x: (x[1], x[0]))
        shapes.add((smallest[0] + 1, 1))
        return sorted(shapes, key=lambda x: (x[1], x[0]))


BACKEND = StaticBackend()
