"""Formats as data: one record per format, read by serving, export, the environment writer and the CLI.

A record names the serving runtime module (a ``load(model_dir, flavor_conf,
model_config)`` function), the export backend module (a ``BACKEND`` object;
``None`` for the source format), the packages a variant of the format needs
to serve, the ``model_config`` keys it accepts at load time and the export
options that apply to it. Modules are named, not imported: serving an ONNX
variant never imports the TorchScript runtime, listing formats imports no
backend. Adding a format is one record here plus its runtime and backend
modules. Serving path: Python 3.10, no torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from mlflow_tfexport.constants import Format
from mlflow_tfexport.errors import UnknownFormatError

#: ``model_config`` keys every variant accepts at load time, with their defaults.
BASE_MODEL_CONFIG: Mapping[str, Any] = {"batch_size": 32}
#: Batching of concurrent requests (``serving/batching.py``): on for the formats below that list it, for
#: text tasks that do not generate; at most 64 rows and 8192 tokens (rows x padded length) per shared run.
BATCHING_MODEL_CONFIG: Mapping[str, Any] = {"batching": True, "max_batch_rows": 64, "max_batch_tokens": 8192,
                                             "concurrent_runs": 1}


@dataclass(frozen=True)
class FormatSpec:
    """Everything the package knows about one format."""

    name: str
    runtime: str  # serving module with ``load``
    backend: Optional[str]  # export module with ``BACKEND``; None: not an export target (the source)
    serving_packages: Tuple[str, ...]
    model_config: Mapping[str, Any] = field(default_factory=dict)  # beyond BASE_MODEL_CONFIG
    #: The ``export()`` options (``ExportOptions`` fields) that apply to this format; any other is refused.
    options: Tuple[str, ...] = ()
    static_shapes: bool = False  # traced at fixed (batch, sequence) buckets: needs trace_shape


_PKG = "mlflow_tfexport"
_STATIC_OPTIONS = ("trace_shapes", "atol")

FORMATS: Dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name=Format.TRANSFORMERS,
            runtime=f"{_PKG}.serving.runtimes.eager",
            backend=None,
            serving_packages=("torch", "transformers", "safetensors", "tokenizers", "numpy"),
            model_config={"device": "auto", **BATCHING_MODEL_CONFIG},
        ),
        FormatSpec(
            name=Format.ONNX,
            runtime=f"{_PKG}.serving.runtimes.onnx",
            backend=f"{_PKG}.export.onnx.backend",
            serving_packages=("onnxruntime", "tokenizers", "numpy"),
            # Threads chosen by the workload ("auto", serving/runtimes/lanes.py): a lone call runs on every
            # core; concurrent calls run on one thread each, one run per core (concurrent_runs 0), sharing
            # runs (batching); measured by benchmarks/serve_load.py and benchmarks/threads.py.
            # intra_op_num_threads 0 is onnxruntime's own default (one per core); "all" is its default level.
            model_config={"providers": [], "intra_op_num_threads": "auto", "inter_op_num_threads": 0,
                          "graph_optimization_level": "all", **BATCHING_MODEL_CONFIG, "concurrent_runs": 0},
            options=("opset", "atol", "exporter", "optimize", "quantize", "min_agreement", "quantize_per_channel",
                     "quantize_op_types", "quantize_reduce_range"),
        ),
        FormatSpec(
            name=Format.TORCHSCRIPT,
            runtime=f"{_PKG}.serving.runtimes.torchscript",
            backend=f"{_PKG}.export.torchscript",
            serving_packages=("torch", "tokenizers", "numpy"),
            # Batching off: shared runs land on static buckets (padded rows), and on CPU independent
            # concurrent runs served more (64-75 vs 50-64 req/s at 8 clients, README "Batching").
            model_config={"device": "auto", **BATCHING_MODEL_CONFIG, "batching": False},
            options=(*_STATIC_OPTIONS, "device"),
            static_shapes=True,
        ),
        FormatSpec(
            name=Format.NEURON,
            runtime=f"{_PKG}.serving.runtimes.neuron",
            backend=f"{_PKG}.export.neuron",
            serving_packages=(),  # written by the backend: the Neuron SDK of the target instance
            model_config={**BATCHING_MODEL_CONFIG, "batching": False},  # off until measured on Inferentia
            options=(*_STATIC_OPTIONS, "neuron_target", "compiler_args"),
            static_shapes=True,
        ),
    )
}


def get_format(name: str) -> FormatSpec:
    """The record of format ``name``; an unknown one lists the known ones."""
    spec = FORMATS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownFormatError(f"Unknown format {name!r}. Known formats: {', '.join(FORMATS)}.")
    return spec


def export_formats() -> Tuple[str, ...]:
    """The formats a source can be exported to (the CLI's ``--format`` choices)."""
    return tuple(name for name, spec in FORMATS.items() if spec.backend)


def default_model_config(fmt: str, *, batching: bool = True) -> Dict[str, Any]:
    """The ``model_config`` written into a variant's pyfunc block (MLflow accepts only these keys);
    ``batching=False`` (a task that generates, or takes images) writes ``batching: false`` where the format
    batches."""
    spec = FORMATS.get(fmt)
    config = {**BASE_MODEL_CONFIG, **(spec.model_config if spec else {})}
    if not batching and "batching" in config:
        config["batching"] = False
    return config
