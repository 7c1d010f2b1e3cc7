"""``export()``: a logged source version -> a validated, tagged registry version.

Stages: check options, load, export, validate, log, register. Everything that
can be checked is checked before any work. The variant is written into a
staging directory, validated with the same runner the pyfunc will use, logged
inside an MLflow run, and only then registered, with its tags and report
passed to ``create_model_version`` itself: a failure at any stage leaves the
registry as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tfexport.constants import VALIDATION_FILE, VALIDATION_PASSED, FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export.formats import get_backend
from mlflow_tfexport.export.options import ExportedArtifact, ExportOptions, Shape, SourceModel
from mlflow_tfexport.export.source import ResolvedSource, resolve_source
from mlflow_tfexport.flavor.environment import default_requirements
from mlflow_tfexport.registry import find_by_export_key, register_version
from mlflow_tfexport.tasks import get_task
from mlflow_tfexport.validation.report import ValidationReport, raise_for_failures, validate

STAGES = ("load", "export", "validate", "log", "register")
_BACKEND_LOCK = threading.Lock()  # exports in threads of one process (the worker, tests) take turns
MAX_BUCKETS = 8
Progress = Callable[[str, str], None]
TraceShapeArg = Union[None, str, Tuple[int, int], Sequence[Union[str, Tuple[int, int]]]]


@dataclass
class ExportResult:
    """What ``export`` returns: the registered version, its URI and the validation report."""

    model_version: ModelVersion
    model_uri: str
    report: Optional[ValidationReport]
    created: bool = True
    run_id: Optional[str] = None


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
    return (int(value[0]), int(value[1]))


def parse_trace_shapes(trace_shape: TraceShapeArg) -> Tuple[Shape, ...]:
    """``"1x128"``, ``(1, 128)``, ``"1x32,1x128"`` or a list of those -> sorted unique shapes."""
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
    if atol is None:
        return None
    try:
        value = float(atol)
    except (TypeError, ValueError):
        raise ExportError(f"atol must be a positive number, received {atol!r}; e.g. 1e-4.") from None
    if isinstance(atol, bool) or not math.isfinite(value) or value <= 0:
        raise ExportError(f"atol must be a positive number, received {atol!r}; e.g. 1e-4.")
    return value


def check_model_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or "/" in name or ":" in name:
        raise ExportError(
            f"Registered model name {name!r} is not allowed: it must be non-empty and contain no '/' or ':'."
        )


def make_options(
    format: str,
    *,
    opset: Optional[int],
    trace_shape: TraceShapeArg,
    atol: Optional[float],
    exporter: Optional[str],
    optimize: bool,
    quantize: Optional[str],
    min_agreement: Optional[float],
    neuron_target: Optional[str],
    compiler_args: Sequence[str],
    device: Optional[str],
) -> ExportOptions:
    """The options of ``export()`` and ``export_to_directory()``, parsed (trace shapes, atol) but not yet checked
    by the backend."""
    return ExportOptions(format=format, opset=opset, trace_shapes=parse_trace_shapes(trace_shape),
                         atol=check_atol(atol), exporter=exporter, optimize=bool(optimize), quantize=quantize,
                         min_agreement=min_agreement, neuron_target=neuron_target,
                         compiler_args=tuple(compiler_args), device=device)


def export_key(source: ResolvedSource, options: ExportOptions) -> str:
    payload = json.dumps({"source": source.identity, **options.key_fields()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def tool_versions(packages: Iterable[str]) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ",".join(found)


def _noop(stage: str, detail: str) -> None:
    return None


# MLflow's UI renders markdown tables without cell padding (its sanitizer drops style attributes):
# an em space after each cell keeps the columns, their headers in particular, from running together.
UI_CELL_GAP = "&emsp;"


def describe(fmt: str, source: ResolvedSource, options: ExportOptions, report: ValidationReport) -> str:
    what = {Format.ONNX: f"ONNX (opset {options.opset}, dynamic batch and sequence)"}.get(
        fmt, f"{fmt} (trace shapes {', '.join(f'{b}x{s}' for b, s in options.trace_shapes)})"
    )
    return (
        # Plain first words: the registry's versions table previews the description's raw text.
        f"{what} export of `{source.canonical_uri}` "
        f"({source.flavor_conf[FlavorKey.TASK]}, {source.flavor_conf.get(FlavorKey.ARCHITECTURE)}).\n\n"
        f"Validated against the eager model on padded batches: **{'passed' if report.passed else 'failed'}**, "
        f"max abs diff {report.max_abs_diff:.2e} (atol {report.atol:g}).\n\n" + report.to_markdown(gap=UI_CELL_GAP)
    )


def load_source_model(source: ResolvedSource) -> SourceModel:
    from mlflow_tfexport.serving.runtimes.eager import load_transformers_model

    model = load_transformers_model(source.local_path, source.flavor_conf)
    return SourceModel(model, get_task(source.flavor_conf[FlavorKey.TASK]), source.flavor_conf, source.local_path)


def run_validation(
    source: SourceModel, staging: str, conf: Dict[str, Any], shapes: Sequence[Shape], atol: float,
    options: Optional[ExportOptions] = None,
) -> ValidationReport:
    from mlflow_tfexport.export.wrapper import source_inputs
    from mlflow_tfexport.serving.runtimes import load_runner
    from mlflow_tfexport.serving.runtimes.eager import EagerRunner

    if conf.get(FlavorKey.GENERATION):  # graphs with past key values: checked step by step
        from mlflow_tfexport.export.onnx.generation import validate_generation

        return validate_generation(source, staging, conf, shapes, atol)
    reference = EagerRunner(source.model, source.input_names, source.output_names)
    exported = load_runner(staging, conf, {})
    feeds = [source_inputs(source, b, s, seed=1000 + i) for i, (b, s) in enumerate(shapes)]
    if options is not None and options.quantize:  # a quantised model is checked at task level
        from mlflow_tfexport.export.onnx.optimize import validate_quantized

        return validate_quantized(reference.run, exported.run, feeds, source.spec.outputs, source.spec.name,
                                  atol, options.min_agreement, options.quantize)
    return validate(reference.run, exported.run, feeds, source.output_names, atol)


@dataclass
class StagedExport:
    """An exported, validated variant in a staging directory, before any logging or registration."""

    conf: Dict[str, Any]  # the variant's tfexport flavor block
    artifact: ExportedArtifact
    report: ValidationReport
    export_seconds: float


def stage_export(
    source: ResolvedSource,
    backend: Any,
    options: ExportOptions,
    tolerance: float,
    staging: str,
    say: Progress = _noop,
) -> StagedExport:
    """Load ``source``, export it into ``staging`` (model file + tokenizer) and validate it.

    ``options`` must already be completed by ``backend.check``. Never raises on a validation
    mismatch: the report says so, and the caller decides.
    """
    import shutil

    started = time.perf_counter()
    loaded = load_source_model(source)
    say("export", options.format)
    with _BACKEND_LOCK:  # torch.onnx.export / tracing keep process-global state: one export at a time
        artifact = backend.export(loaded, options, staging)
    assets = {key: source.flavor_conf[key] for key in (FlavorKey.TOKENIZER_DIR, FlavorKey.IMAGE_PROCESSOR_DIR)
              if source.flavor_conf.get(key)}  # the tokenizer, or an image model's image processor
    for folder in assets.values():
        shutil.copytree(os.path.join(source.local_path, folder), os.path.join(staging, folder))
    conf = {k: v for k, v in source.flavor_conf.items() if k != "code"}
    conf.update({FlavorKey.FORMAT: options.format, FlavorKey.MODEL_FILE: artifact.model_file,
                 **assets, **artifact.flavor_conf})
    export_seconds = time.perf_counter() - started
    say("validate", f"atol {tolerance:g}")
    report = run_validation(loaded, staging, conf, backend.validation_shapes(options), tolerance, options)
    return StagedExport(conf, artifact, report, export_seconds)


def export_to_directory(
    source_dir: str,
    path: str,
    format: str = Format.ONNX,
    *,
    opset: Optional[int] = None,
    atol: Optional[float] = None,
    exporter: Optional[str] = None,
    trace_shape: TraceShapeArg = None,
    optimize: bool = False,
    quantize: Optional[str] = None,
    min_agreement: Optional[float] = None,
    neuron_target: Optional[str] = None,
    compiler_args: Sequence[str] = (),
    device: Optional[str] = None,
) -> Tuple[Dict[str, Any], ValidationReport]:
    """Export the tfexport source model saved in ``source_dir`` into a new model directory ``path``.

    The same export and validation as ``export()``, without tracking or registry: ``path`` becomes
    a complete MLflow model (loadable with ``mlflow.pyfunc.load_model``). Returns the variant's
    flavor block and the validation report; a validation failure raises and leaves ``path`` absent.

    Example:
        >>> mlflow_tfexport.save_model(model, "bert-src", tokenizer=tok)
        >>> conf, report = export_to_directory("bert-src", "bert-onnx", "onnx")
    """
    from mlflow_tfexport.flavor import variant
    from mlflow_tfexport.serving.conf import read_flavor_conf

    backend = get_backend(format)
    options = make_options(format, opset=opset, trace_shape=trace_shape, atol=atol, exporter=exporter,
                           optimize=optimize, quantize=quantize, min_agreement=min_agreement,
                           neuron_target=neuron_target, compiler_args=compiler_args, device=device)
    source_conf = read_flavor_conf(source_dir)
    if source_conf.get(FlavorKey.FORMAT) != Format.TRANSFORMERS:
        raise ExportError(
            f"{source_dir} is already an exported variant (format {source_conf.get(FlavorKey.FORMAT)!r}); "
            "export from its source model instead."
        )
    spec = get_task(source_conf[FlavorKey.TASK])
    options = backend.check(options, source_conf, spec)
    tolerance = options.atol if options.atol is not None else spec.atol
    if os.path.exists(path) and os.listdir(path):
        raise ExportError(f"Path {path!r} already exists and is not empty; choose a new path.")
    with tempfile.TemporaryDirectory(prefix="tfexport-") as staging:
        signature = Model.load(os.path.join(source_dir, "MLmodel")).signature
        source = ResolvedSource(source_dir, source_dir, source_conf, signature, None, None, None, None)
        staged = stage_export(source, backend, options, tolerance, staging)
        raise_for_failures(staged.report, f"the {format} export of {source_dir}")
        with open(os.path.join(staging, VALIDATION_FILE), "w") as f:
            f.write(staged.report.to_json())
        variant.save_model(
            path, staged_dir=staging, flavor_conf=staged.conf,
            requirements=staged.artifact.requirements or default_requirements(format),
            signature=source.signature,
            python_version=staged.artifact.python_version, extra_index_urls=staged.artifact.extra_index_urls,
        )
    return staged.conf, staged.report


def export(
    model_uri: str,
    format: str = Format.ONNX,
    *,
    opset: Optional[int] = None,
    trace_shape: TraceShapeArg = None,
    atol: Optional[float] = None,
    registered_model_name: Optional[str] = None,
    exporter: Optional[str] = None,
    optimize: bool = False,
    quantize: Optional[str] = None,
    min_agreement: Optional[float] = None,
    neuron_target: Optional[str] = None,
    compiler_args: Sequence[str] = (),
    device: Optional[str] = None,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> ExportResult:
    """Export a logged tfexport source version and register the result as a new version.

    Example:
        >>> result = mlflow_tfexport.export("models:/sentiment/1", format="onnx", opset=17)
        >>> result.model_version.version
        '2'

    Asking again for the same source and options returns the existing version
    (``result.created`` is False) unless ``force=True``. Any failure raises a
    ``TfexportError`` and registers nothing.
    """
    say = progress or _noop
    backend = get_backend(format)
    options = make_options(format, opset=opset, trace_shape=trace_shape, atol=atol, exporter=exporter,
                           optimize=optimize, quantize=quantize, min_agreement=min_agreement,
                           neuron_target=neuron_target, compiler_args=compiler_args, device=device)
    if registered_model_name is not None:
        check_model_name(registered_model_name)
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="tfexport-") as workdir:
        source = resolve_source(client, model_uri, dst_path=os.path.join(workdir, "source"))
        name = registered_model_name or source.registered_name
        if not name:
            raise ExportError(
                f"{model_uri} is not a registered model version; pass registered_model_name= to say "
                "which registered model the export becomes a version of."
            )
        spec = get_task(source.flavor_conf[FlavorKey.TASK])
        options = backend.check(options, source.flavor_conf, spec)
        tolerance = options.atol if options.atol is not None else spec.atol
        key = export_key(source, replace(options, atol=tolerance))
        if not force:
            existing = find_by_export_key(client, name, key)
            if existing:
                mv = existing[0]
                return ExportResult(mv, f"models:/{name}/{mv.version}", None, created=False, run_id=mv.run_id)
        return _export_new(_Job(client, backend, source, options, tolerance, key, name, say, force), workdir)


def _experiment_id(client: MlflowClient, source: ResolvedSource) -> Optional[str]:
    if source.run_id:
        try:
            return str(client.get_run(source.run_id).info.experiment_id)
        except MlflowException:
            return None
    return None


@dataclass
class _Job:
    """One export whose options are checked: what the run, the log and the registration need."""

    client: MlflowClient
    backend: Any
    source: ResolvedSource
    options: ExportOptions
    tolerance: float
    key: str
    name: str
    say: Progress
    force: bool


def _export_new(job: _Job, workdir: str) -> ExportResult:
    """Run the export inside its own MLflow run (nested in the active or the project's run)."""
    source, fmt = job.source, job.options.format
    staging = os.path.join(workdir, "staging")
    os.makedirs(staging)
    run_tags = {Tag.SOURCE: source.canonical_uri, Tag.FORMAT: fmt, Tag.EXPORT_KEY: job.key}
    if source.run_id:
        run_tags["tfexport.source_run_id"] = source.run_id
    with contextlib.ExitStack() as stack:
        if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID"):
            # Inside `mlflow run`: the project's run is the parent of the export run.
            stack.enter_context(mlflow.start_run())
        parent = mlflow.active_run()
        run = stack.enter_context(
            mlflow.start_run(
                experiment_id=parent.info.experiment_id if parent else _experiment_id(job.client, source),
                run_name=f"export-{fmt}",
                nested=parent is not None,
                tags=run_tags,
            )
        )
        return _export_in_run(job, staging, run.info.run_id)


def _export_in_run(job: _Job, staging: str, run_id: str) -> ExportResult:
    from mlflow_tfexport.flavor import variant

    source, options, fmt = job.source, job.options, job.options.format
    mlflow.log_params(
        {"format": fmt, "opset": options.opset, "atol": job.tolerance, "source": source.canonical_uri,
         "trace_shape": ",".join(f"{b}x{s}" for b, s in options.trace_shapes) or "dynamic",
         "exporter": options.exporter, "optimize": options.optimize, "quantize": options.quantize}
    )
    job.say("load", source.canonical_uri)
    staged = stage_export(source, job.backend, options, job.tolerance, staging, job.say)
    conf, artifact, report, export_seconds = staged.conf, staged.artifact, staged.report, staged.export_seconds
    report.extra.update({"format": fmt, "source": source.canonical_uri, "export_seconds": export_seconds})
    mlflow.log_metrics({"max_abs_diff": report.max_abs_diff, "export_seconds": export_seconds})
    mlflow.log_text(report.to_json(), VALIDATION_FILE)
    raise_for_failures(report, f"the {fmt} export of {source.canonical_uri}")
    with open(os.path.join(staging, VALIDATION_FILE), "w") as f:
        f.write(report.to_json())
    job.say("log", "model")
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=variant,
        staged_dir=staging,
        flavor_conf=conf,
        requirements=artifact.requirements or default_requirements(fmt),
        signature=source.signature,
        python_version=artifact.python_version,
        extra_index_urls=artifact.extra_index_urls,
    )
    tags = {
        Tag.FORMAT: fmt,
        Tag.TASK: conf[FlavorKey.TASK],
        Tag.ATOL: f"{job.tolerance:g}",
        Tag.MAX_ABS_DIFF: f"{report.max_abs_diff:.3e}",
        Tag.VALIDATION: VALIDATION_PASSED,
        Tag.VALIDATED_SHAPE: ",".join(f"{b}x{s}" for b, s in report.shapes),
        Tag.SOURCE: source.canonical_uri,
        Tag.EXPORT_KEY: job.key,
        Tag.EXPORT_SECONDS: f"{export_seconds:.2f}",
        Tag.VERSIONS: tool_versions(
            ["mlflow-tfexport", "torch", "transformers", "onnx", "onnxruntime", "mlflow"]
        ),
        **artifact.tags,
        **report.tags,
    }
    job.say("register", job.name)
    mv = register_version(job.name, info, tags=tags, description=describe(fmt, source, options, report),
                          client=job.client)
    if not job.force:
        mv = _settle_duplicates(job.client, job.name, job.key, mv)
    return ExportResult(mv, f"models:/{job.name}/{mv.version}", report, created=True, run_id=run_id)


def _settle_duplicates(client: MlflowClient, name: str, key: str, mine: ModelVersion) -> ModelVersion:
    """Two identical exports racing: the lowest version wins, later duplicates delete themselves."""
    same = find_by_export_key(client, name, key)
    if same and int(same[0].version) < int(mine.version):
        client.delete_model_version(name, mine.version)
        return same[0]
    return mine

