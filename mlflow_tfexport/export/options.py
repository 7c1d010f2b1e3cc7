"""What every export backend receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from mlflow_tfexport.tasks import TaskSpec

Shape = Tuple[int, int]  # (batch, sequence)


@dataclass(frozen=True)
class ExportOptions:
    """User options of one export. Part of the export key: equal options, same variant."""

    format: str
    opset: Optional[int] = None
    trace_shapes: Tuple[Shape, ...] = ()
    atol: Optional[float] = None
    exporter: Optional[str] = None
    optimize: bool = False
    quantize: Optional[str] = None
    min_agreement: Optional[float] = None  # quantised exports: label agreement required by validation
    neuron_target: Optional[str] = None
    compiler_args: Tuple[str, ...] = ()
    device: Optional[str] = None  # TorchScript: the device the trace is recorded on ("cpu", "cuda", "cuda:N")

    def key_fields(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "opset": self.opset,
            "trace_shapes": [list(s) for s in self.trace_shapes],
            "atol": self.atol,
            "exporter": self.exporter,
            "optimize": self.optimize,
            "quantize": self.quantize,
            "neuron_target": self.neuron_target,
            "compiler_args": list(self.compiler_args),
            # Only when set, so the keys of earlier exports stay valid.
            **({"min_agreement": self.min_agreement} if self.min_agreement is not None else {}),
            **({"device": self.device} if self.device is not None else {}),
        }


@dataclass
class SourceModel:
    """The loaded source variant: eager model plus what the flavor block says about it."""

    model: Any  # transformers PreTrainedModel, eval mode
    spec: TaskSpec
    flavor_conf: Dict[str, Any]
    local_path: str  # downloaded source model directory

    @property
    def input_names(self) -> List[str]:
        return list(self.flavor_conf["input_names"])

    @property
    def output_names(self) -> List[str]:
        """The outputs to export: the task's, or those the model has (image models record theirs)."""
        recorded = self.flavor_conf.get("output_names") if self.spec.input_kind == "image" else None
        return list(recorded or self.spec.output_names)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def max_length(self) -> int:
        return int(self.flavor_conf["max_length"])


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
        """Validate and complete options before any work; raise ``ExportError`` on bad ones."""
        ...

    def export(self, source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
        """Write the exported model into ``staging_dir``."""
        ...

    def validation_shapes(self, options: ExportOptions) -> List[Shape]:
        """Shapes to validate at: never only the export shape."""
        ...
