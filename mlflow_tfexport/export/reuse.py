"""Quantise the fp32 graph of an existing ONNX version instead of exporting its source again.

``export("models:/m/2", format="onnx", quantize="int8")`` where version 2 is an
fp32 ONNX variant: the graph is taken from version 2 (copied, fused if
``optimize=True`` asks for it and it is not fused yet, then quantised), and
the result is validated against, and recorded as coming from, the
transformers source version that version 2 names in its ``tfexport.source``
tag. The new version's ``tfexport.quantized_from`` tag (and the flavor
block's ``quantized_from``) names version 2, and so does its export key
(:class:`GraphExportOptions`).

What is taken from the ONNX version is fixed by its graph: its opset and
exporter (a different ``opset=`` or ``exporter=`` is refused, not ignored).
Only a registered version (``models:/<name>/<version>`` or
``models:/<name>@<alias>``) can be a graph source: its tags say which source
version it came from. Anything else goes to ``export.source.resolve_source``
unchanged (which refuses every other variant with its message).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, Optional, Tuple

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export.options import ExportOptions
from mlflow_tfexport.export.source import ResolvedSource, resolve_source
from mlflow_tfexport.registry import parse_models_uri
from mlflow_tfexport.serving.conf import read_flavor_conf


@dataclass(frozen=True)
class GraphExportOptions(ExportOptions):
    """``ExportOptions`` of an export whose graph comes from an existing ONNX version (not user options: set by
    :func:`resolve_graph_source`). ``dataclasses.replace`` keeps the class, so the backend's ``check`` keeps them."""

    quantize_from: Optional[str] = None  # the ONNX version whose fp32 graph is quantised, models:/<name>/<version>
    quantize_from_dir: Optional[str] = field(default=None, compare=False)  # its downloaded directory

    def key_fields(self) -> Dict[str, Any]:
        """Another graph, another variant: the ONNX version is part of the export key."""
        return {**super().key_fields(), "quantize_from": self.quantize_from}


def onnx_version(client: MlflowClient, model_uri: str) -> Optional[Any]:
    """The registered ``ModelVersion`` that ``model_uri`` names when it is an ONNX variant (its
    ``tfexport.format`` tag), else None."""
    parsed = parse_models_uri(model_uri) if isinstance(model_uri, str) else None
    if parsed is None:
        return None
    try:
        if parsed.alias:
            mv = client.get_model_version_by_alias(parsed.name, parsed.alias)
        else:
            mv = client.get_model_version(parsed.name, str(parsed.version))
    except MlflowException:
        return None  # resolve_source reports a version that does not exist
    return mv if (mv.tags or {}).get(Tag.FORMAT) == Format.ONNX else None


def _check_request(uri: str, tags: Any, options: ExportOptions) -> str:
    """The source URI of ONNX version ``uri`` (``tags``) if ``options`` can be applied to its graph."""
    source_uri = tags.get(Tag.SOURCE)
    hint = f"export from its source version ({source_uri})" if source_uri else "export from its source version"
    if options.format != Format.ONNX:
        raise ExportError(f"{uri} is an ONNX variant; a {options.format} export comes from the source: {hint}.")
    if not options.quantize:
        raise ExportError(
            f"{uri} is already an exported variant (format 'onnx'). Pass quantize= to quantise its graph "
            f"(e.g. quantize='int8'), or {hint}."
        )
    if tags.get(Tag.QUANTIZED):
        raise ExportError(
            f"{uri} is already quantised ({tags.get(Tag.QUANTIZED)}); quantise an fp32 ONNX version, or {hint}."
        )
    if not source_uri:
        raise ExportError(
            f"{uri} has no {Tag.SOURCE} tag, so its source version (the reference of the validation) is unknown; "
            "export from the source version instead."
        )
    return str(source_uri)


def _graph_options(uri: str, conf: Any, tags: Any, options: ExportOptions) -> ExportOptions:
    opset = conf.get(FlavorKey.OPSET)
    exporter = tags.get(Tag.EXPORTER) or None
    if options.opset is not None and opset is not None and int(options.opset) != int(opset):
        raise ExportError(
            f"opset={options.opset} differs from the opset of {uri}'s graph ({opset}); drop opset= to quantise "
            "that graph, or export from the source version with the opset you need."
        )
    if options.exporter and exporter and options.exporter != exporter:
        raise ExportError(
            f"exporter={options.exporter!r} differs from the exporter of {uri}'s graph ({exporter!r}); drop "
            "exporter= to quantise that graph, or export from the source version."
        )
    return replace(
        options,
        opset=int(opset) if opset is not None else options.opset,
        exporter=exporter or options.exporter,
        optimize=True if conf.get(FlavorKey.OPTIMIZED) else options.optimize,
    )


Resolve = Callable[..., ResolvedSource]


def resolve_graph_source(client: MlflowClient, mv: Any, options: ExportOptions, dst_path: str,
                         resolve: Resolve = resolve_source) -> Tuple[ResolvedSource, ExportOptions]:
    """Download ONNX version ``mv``, check that ``options`` apply to its graph, resolve its source version (with
    ``resolve``); returns the source and ``options`` naming the graph (``quantize_from``, ``quantize_from_dir``)
    with the graph's opset, exporter and fusion."""
    uri = f"models:/{mv.name}/{mv.version}"
    tags = dict(mv.tags or {})
    source_uri = _check_request(uri, tags, options)
    graph_dir = dst_path.rstrip("/\\") + "-graph"
    try:
        local = download_artifacts(artifact_uri=uri, dst_path=graph_dir)
    except (MlflowException, OSError) as exc:
        raise ExportError(f"Cannot download {uri}: {type(exc).__name__}: {exc}") from exc
    conf = read_flavor_conf(local)
    if conf.get(FlavorKey.FORMAT) != Format.ONNX or conf.get(FlavorKey.QUANTIZED) or conf.get(FlavorKey.GENERATION):
        raise ExportError(
            f"{uri} is not a single fp32 ONNX graph (format {conf.get(FlavorKey.FORMAT)!r}, quantized "
            f"{conf.get(FlavorKey.QUANTIZED)!r}, generation layout {conf.get(FlavorKey.GENERATION)!r}); quantise "
            f"from its source version ({source_uri}) instead."
        )
    source = resolve(client, source_uri, dst_path=dst_path)
    source_task = source.flavor_conf.get(FlavorKey.TASK)
    if source_task != conf.get(FlavorKey.TASK):
        raise ExportError(
            f"{uri} ({conf.get(FlavorKey.TASK)}) does not come from {source_uri} ({source_task}) as its "
            "tfexport.source tag says; export from the source version instead."
        )
    options = _graph_options(uri, conf, tags, options)
    values = {f.name: getattr(options, f.name) for f in fields(ExportOptions)}
    return source, GraphExportOptions(**values, quantize_from=uri, quantize_from_dir=os.path.abspath(local))


def resolve_export_source(client: MlflowClient, model_uri: str, options: ExportOptions, dst_path: str,
                          resolve: Resolve = resolve_source) -> Tuple[ResolvedSource, ExportOptions]:
    """What ``export()`` exports from: the source version ``model_uri`` names (``resolve``, by default
    ``export.source.resolve_source``), or, when it names an fp32 ONNX version and ``quantize`` is asked for,
    that version's source with ``options`` naming its graph (see the module docstring)."""
    mv = onnx_version(client, model_uri)
    if mv is None:
        return resolve(client, model_uri, dst_path=dst_path), options
    return resolve_graph_source(client, mv, options, dst_path, resolve)
