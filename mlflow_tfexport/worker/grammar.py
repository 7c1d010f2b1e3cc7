"""The request grammar: the value of the ``tfexport.request`` tag -> the exports it asks for.

::

    request := spec ("," spec)*                      at most 8 specs
    spec    := FORMAT (":" field)*                   onnx | torchscript | neuron
    field   := shapes | KEY "=" VALUE
    shapes  := BATCHxSEQ ("+" BATCHxSEQ)*            static trace shapes (buckets)
    KEY     := opset | atol | exporter | target      target: inf1 | inf2 (neuron)

    onnx                               ONNX, the task's default opset
    onnx:opset=18                      ONNX, opset 18
    torchscript:1x128                  TorchScript traced at batch 1, sequence 128
    onnx,torchscript:1x32+1x128        two exports; the TorchScript one with two buckets
    neuron:1x128:target=inf2:atol=1e-3
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.export.options import check_atol, parse_trace_shapes
from mlflow_tfexport.formats import export_formats

MAX_SPECS = 8


class RequestError(TfexportError):
    """The value of ``tfexport.request`` does not follow the request grammar."""


@dataclass(frozen=True)
class ExportSpec:
    """One export asked for in ``tfexport.request``."""

    format: str
    trace_shapes: Tuple[Tuple[int, int], ...] = ()
    opset: Optional[int] = None
    atol: Optional[float] = None
    exporter: Optional[str] = None
    neuron_target: Optional[str] = None

    @property
    def label(self) -> str:
        """The canonical text of this spec, e.g. ``torchscript:1x32+1x128``."""
        parts = [self.format]
        if self.trace_shapes:
            parts.append("+".join(f"{b}x{s}" for b, s in self.trace_shapes))
        if self.opset is not None:
            parts.append(f"opset={self.opset}")
        if self.atol is not None:
            parts.append(f"atol={self.atol:g}")
        if self.exporter is not None:
            parts.append(f"exporter={self.exporter}")
        if self.neuron_target is not None:
            parts.append(f"target={self.neuron_target}")
        return ":".join(parts)

    def export_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of ``mlflow_tfexport.export`` for this spec."""
        return {
            "format": self.format,
            "opset": self.opset,
            "trace_shape": list(self.trace_shapes) or None,
            "atol": self.atol,
            "exporter": self.exporter,
            "neuron_target": self.neuron_target,
        }


_SHAPES = re.compile(r"^\d+x\d+(\+\d+x\d+)*$")
_KEYS = ("opset", "atol", "exporter", "target")
_EXAMPLE = "e.g. 'onnx', 'onnx:opset=18', 'torchscript:1x128' or 'onnx,torchscript:1x32+1x128'"


def _parse_spec(text: str, whole: str) -> ExportSpec:
    head, *fields = [p.strip() for p in text.split(":")]
    fmt = head.lower()
    known = export_formats()
    if fmt not in known:
        raise RequestError(
            f"unknown format {head!r} in {Tag.REQUEST} {whole!r}; known formats: {', '.join(known)} ({_EXAMPLE})."
        )
    values: Dict[str, Any] = {}
    for item in fields:
        low = item.lower()
        if not item:
            raise RequestError(f"empty field in {text!r} of {Tag.REQUEST} {whole!r} ({_EXAMPLE}).")
        if _SHAPES.match(low):
            if "trace_shapes" in values:
                raise RequestError(f"{text!r} gives trace shapes twice; join buckets with '+', e.g. 1x32+1x128.")
            values["trace_shapes"] = parse_trace_shapes(low.split("+"))
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in _KEYS or not value:
            raise RequestError(
                f"cannot read {item!r} in {text!r} of {Tag.REQUEST} {whole!r}: expected trace shapes like "
                f"1x128 or 1x32+1x128, or one of {', '.join(k + '=' for k in _KEYS)} ({_EXAMPLE})."
            )
        if key == "opset":
            if not value.isdigit():
                raise RequestError(f"opset must be an integer, received {value!r} in {text!r}; e.g. onnx:opset=18.")
            values["opset"] = int(value)
        elif key == "atol":
            values["atol"] = check_atol(value)
        elif key == "exporter":
            values["exporter"] = value.lower()
        else:
            values["neuron_target"] = value.lower()
    return ExportSpec(format=fmt, **values)


def parse_request(value: str) -> List[ExportSpec]:
    """The value of ``tfexport.request`` -> the exports it asks for, in order, without duplicates.

    >>> [s.label for s in parse_request("onnx, torchscript:1x128+1x32")]
    ['onnx', 'torchscript:1x32+1x128']
    """
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{Tag.REQUEST} is empty; set it to the export(s) you want, {_EXAMPLE}.")
    specs: List[ExportSpec] = []
    for text in value.split(","):
        if not text.strip():
            raise RequestError(f"empty entry in {Tag.REQUEST} {value!r} ({_EXAMPLE}).")
        try:
            spec = _parse_spec(text.strip(), value)
        except RequestError:
            raise
        except TfexportError as exc:  # trace shape / atol checks of the export API
            raise RequestError(f"{text.strip()!r} in {Tag.REQUEST} {value!r}: {exc.message}") from exc
        if spec not in specs:
            specs.append(spec)
    if len(specs) > MAX_SPECS:
        raise RequestError(f"{Tag.REQUEST} asks for {len(specs)} exports; at most {MAX_SPECS} at once.")
    return specs
