"""``export()``: a logged source version -> a validated, tagged registry version.

Stages: check options, load, export, validate, log, register. Everything that
can be checked is checked before any work (the validation data is read then too).
The variant is written into a staging directory, validated with the same runner
the pyfunc will use (tensors on padded batches, then the served answers on real
rows: the validation data, else the source's input example), logged inside an
MLflow run (the rows as its dataset input), and only then registered, with its
tags and report passed to ``create_model_version`` itself: a failure at any
stage leaves the registry as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tfexport.constants import LOGGED_MODEL_NAME, VALIDATION_FILE, VALIDATION_PASSED, FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.export.custom import check_fits, load_config
from mlflow_tfexport.export.failures import export_failure
from mlflow_tfexport.export.formats import get_backend
from mlflow_tfexport.export.options import (
    ExportedArtifact,
    ExportOptions,
    SourceModel,
    TraceShapeArg,
    make_options,
)
from mlflow_tfexport.export.recovery import owner_tags, recover_stale_exports_once, temp_prefix
from mlflow_tfexport.export.reuse import resolve_export_source
from mlflow_tfexport.export.source import ResolvedSource, local_source, resolve_source
from mlflow_tfexport.flavor import variant
from mlflow_tfexport.flavor.block import variant_block
from mlflow_tfexport.flavor.environment import default_requirements, pinned
from mlflow_tfexport.flavor.signatures import with_default_inputs
from mlflow_tfexport.registry import check_model_name, find_by_export_key, register_version, settle_duplicates
from mlflow_tfexport.registry.attest import Signer, attest_version
from mlflow_tfexport.serving.export_config import task_of, with_config
from mlflow_tfexport.serving.runtimes.eager import load_transformers_model
from mlflow_tfexport.serving.runtimes.static import shape_name
from mlflow_tfexport.validation.agreement import validation_rows
from mlflow_tfexport.validation.data import ValidationData
from mlflow_tfexport.validation.report import SYNTHETIC_ONLY, ValidationReport, describe, raise_for_failures
from mlflow_tfexport.validation.run import run_validation

STAGES = ("load", "export", "validate", "log", "register")
_BACKEND_LOCK = threading.Lock()  # exports in threads of one process (the worker, tests) take turns
Progress = Callable[[str, str], None]


@dataclass
class ExportResult:
    """What ``export`` returns: the registered version, its URI and the validation report."""

    model_version: ModelVersion
    model_uri: str
    report: Optional[ValidationReport]
    created: bool = True
    run_id: Optional[str] = None


def export_key(source: ResolvedSource, options: ExportOptions, data_digest: Optional[str] = None,
               config_digest: Optional[str] = None) -> str:
    """A digest of the source and the options; of the validation data too when some was given (other data is
    another validation), and only then, so that the keys of exports without it stay valid; of an overriding
    export config likewise."""
    extra = {"validation_data": data_digest} if data_digest else {}
    if config_digest:
        extra["export_config"] = config_digest
    payload = json.dumps({"source": source.identity, **options.key_fields(), **extra}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def tool_versions(packages: Iterable[str]) -> str:
    """``torch==2.13.0,onnx==...``: the same pins as the variant's requirements (``pinned``: no ``+cpu`` tag)."""
    found = [pinned(p) for p in packages]
    return ",".join(p for p in found if "==" in p)


def _noop(stage: str, detail: str) -> None:
    return None


def _model_words(conf: Dict[str, Any]) -> str:
    """``BertForSequenceClassification (text-classification)``: the architecture and task, for messages."""
    return f"{conf.get(FlavorKey.ARCHITECTURE) or 'the model'} ({conf.get(FlavorKey.TASK)})"


def load_source_model(source: ResolvedSource) -> SourceModel:
    """The eager source model (torch, transformers) with its task spec and flavor block."""
    model = load_transformers_model(source.local_path, source.flavor_conf)
    loaded = SourceModel(model, task_of(source.flavor_conf), source.flavor_conf, source.local_path)
    if loaded.spec.custom is not None:  # a user's export config: refused before any export if it does not fit
        check_fits(model, loaded.spec.custom, vocab_size=loaded.vocab_size,
                   pad_token_id=source.flavor_conf.get(FlavorKey.PAD_TOKEN_ID), max_length=loaded.max_length)
    return loaded


def apply_config(source: ResolvedSource, config: Any) -> Optional[str]:
    """Put ``config`` (``export(config=...)``: it overrides the source's saved one) into ``source``'s flavor block;
    return its digest for the export key (None without one: the saved config is part of the source)."""
    loaded = load_config(config)
    if loaded is None:
        return None
    source.flavor_conf = with_config(source.flavor_conf, loaded)
    payload = json.dumps(loaded.to_dict(), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
    data: Optional[ValidationData] = None,
    synthetic_reason: str = "",
) -> StagedExport:
    """Load ``source``, export it into ``staging`` (model file + tokenizer) and validate it (on ``data``'s rows
    too, when given; else the report says why not: ``synthetic_reason``).

    ``options`` must already be completed by ``backend.check``. Never raises on a validation
    mismatch: the report says so, and the caller decides.
    """
    started = time.perf_counter()
    try:
        loaded = load_source_model(source)
    except TfexportError:
        raise
    except Exception as exc:
        raise export_failure(exc, source.flavor_conf, options.format, "load") from exc
    loaded.calibration_data = data  # int8-static calibrates on the validation rows
    say("export", options.format)
    try:
        with _BACKEND_LOCK:  # torch.onnx.export / tracing keep process-global state: one export at a time
            artifact = backend.export(loaded, options, staging)
    except TfexportError:
        raise
    except Exception as exc:
        raise export_failure(exc, source.flavor_conf, options.format, "export") from exc
    assets = {key: source.flavor_conf[key] for key in (FlavorKey.TOKENIZER_DIR, FlavorKey.IMAGE_PROCESSOR_DIR)
              if source.flavor_conf.get(key)}  # the tokenizer, or an image model's image processor
    for folder in assets.values():
        shutil.copytree(os.path.join(source.local_path, folder), os.path.join(staging, folder))
    conf = variant_block(source.flavor_conf, fmt=options.format, model_file=artifact.model_file,
                         entries={**assets, **artifact.flavor_conf})
    export_seconds = time.perf_counter() - started
    say("validate", f"atol {tolerance:g}; " + (data.describe() if data is not None else SYNTHETIC_ONLY))
    try:
        report = run_validation(loaded, staging, conf, backend.validation_shapes(options), tolerance, options,
                                data=data, synthetic_reason=synthetic_reason,
                                progress=lambda detail: say("validate", detail))
    except TfexportError:
        raise
    except Exception as exc:
        raise export_failure(exc, source.flavor_conf, options.format, "validate") from exc
    return StagedExport(conf, artifact, report, export_seconds)


def export_to_directory(
    source_dir: str,
    path: str,
    format: str = Format.ONNX,
    *,
    opset: Union[int, str, None] = None,
    atol: Optional[float] = None,
    exporter: Optional[str] = None,
    trace_shape: TraceShapeArg = None,
    optimize: Optional[bool] = None,
    quantize: Optional[str] = None,
    quantize_per_channel: Optional[bool] = None,
    quantize_op_types: Union[str, Sequence[str], None] = None,
    quantize_reduce_range: bool = False,
    min_agreement: Optional[float] = None,
    neuron_target: Optional[str] = None,
    compiler_args: Sequence[str] = (),
    device: Optional[str] = None,
    validation_data: Any = None,
    config: Any = None,
) -> Tuple[Dict[str, Any], ValidationReport]:
    """Export the tfexport source model saved in ``source_dir`` into a new model directory ``path``.

    The same export and validation as :func:`export`, without tracking or registry: ``path`` becomes a
    complete MLflow model (loadable with ``mlflow.pyfunc.load_model`` and servable with
    ``mlflow models serve -m <path>``). The keyword options (``opset``, ``atol``, ``exporter``,
    ``trace_shape``, ``optimize``, the ``quantize*`` options, ``min_agreement``, ``neuron_target``,
    ``compiler_args``, ``device``, ``validation_data``, ``config``) mean what they mean for :func:`export`.

    Args:
        source_dir: A directory written by ``mlflow_tfexport.save_model`` (a source model, not a variant).
        path: The directory to write; it must not exist or be empty.
        format: ``"onnx"`` (default), ``"torchscript"`` or ``"neuron"``.

    Returns:
        The variant's ``tfexport`` flavor block and its validation report.

    Raises:
        ExportError: a bad option (refused before any work), ``source_dir`` not a tfexport source model,
            ``path`` not empty, or an export that fails.
        ValidationFailedError: the exported model differs from the source beyond the tolerance; ``path`` is
            then left absent.
        MissingDependencyError: a package the format needs is not installed (the message names the extra).

    Example:
        >>> mlflow_tfexport.save_model(model, "bert-src", tokenizer=tok)
        >>> conf, report = export_to_directory("bert-src", "bert-onnx", "onnx")
        >>> report.passed
        True
    """
    backend = get_backend(format)
    options = make_options(format, opset=opset, trace_shape=trace_shape, atol=atol, exporter=exporter,
                           optimize=optimize, quantize=quantize, min_agreement=min_agreement,
                           neuron_target=neuron_target, compiler_args=compiler_args, device=device,
                           quantize_per_channel=quantize_per_channel, quantize_op_types=quantize_op_types,
                           quantize_reduce_range=quantize_reduce_range)
    source = local_source(source_dir)
    apply_config(source, config)
    spec = task_of(source.flavor_conf)
    options = backend.check(options, source.flavor_conf, spec)
    tolerance = options.atol if options.atol is not None else spec.atol
    if os.path.exists(path) and os.listdir(path):
        raise ExportError(f"Path {path!r} already exists and is not empty; choose a new path.")
    data, synthetic_reason = validation_rows(validation_data, spec, source.local_path)
    with tempfile.TemporaryDirectory(prefix=temp_prefix()) as staging:
        staged = stage_export(source, backend, options, tolerance, staging, data=data,
                              synthetic_reason=synthetic_reason)
        what = f"the {format} export of {_model_words(source.flavor_conf)} from {source_dir}"
        raise_for_failures(staged.report, what)
        with open(os.path.join(staging, VALIDATION_FILE), "w") as f:
            f.write(staged.report.to_json())
        example = source.input_example()
        variant.save_model(
            path, staged_dir=staging, flavor_conf=staged.conf,
            requirements=staged.artifact.requirements or default_requirements(format),
            signature=with_default_inputs(source.signature, spec, example), input_example=example,
            python_version=staged.artifact.python_version, extra_index_urls=staged.artifact.extra_index_urls,
        )
    return staged.conf, staged.report


def export(
    model_uri: str,
    format: str = Format.ONNX,
    *,
    opset: Union[int, str, None] = None,
    trace_shape: TraceShapeArg = None,
    atol: Optional[float] = None,
    registered_model_name: Optional[str] = None,
    exporter: Optional[str] = None,
    optimize: Optional[bool] = None,
    quantize: Optional[str] = None,
    quantize_per_channel: Optional[bool] = None,
    quantize_op_types: Union[str, Sequence[str], None] = None,
    quantize_reduce_range: bool = False,
    min_agreement: Optional[float] = None,
    neuron_target: Optional[str] = None,
    compiler_args: Sequence[str] = (),
    device: Optional[str] = None,
    validation_data: Any = None,
    force: bool = False,
    progress: Optional[Progress] = None,
    config: Any = None,
) -> ExportResult:
    """Export a logged tfexport source model and register the validated result as a new model version.

    The source is loaded, exported, validated against the eager model on padded batches of other shapes
    than the export's (and, for ONNX, at the model's maximum length), then on real rows: the source and the
    variant, both served end to end, answer ``validation_data`` (else the source's logged input example) and
    the task's agreement metric must reach the task's threshold (every answer the same for an fp32 variant,
    ``min_agreement`` for a quantised one). It is logged in its own MLflow run (nested in the active run, if
    any; the rows are its ``validation`` dataset input) and registered with its ``tfexport.*`` tags and a
    markdown validation report as description. Every option is checked before any work, and any failure
    registers nothing. Asking again for the same source, options and validation data returns the existing
    version (``created`` is False) unless ``force=True``.

    Args:
        model_uri: The source model: ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            ``runs:/<run_id>/<path>``, ``models:/<model_id>`` or a local directory written by
            ``save_model``. It must be a source model logged with ``mlflow.tfexport.log_model``, not an
            exported variant.
        format: ``"onnx"`` (default, dynamic batch and sequence), ``"torchscript"`` or ``"neuron"``
            (static shapes: need ``trace_shape``).
        opset: ONNX opset; default the task's (17), within the exporter's range (legacy 14..20,
            dynamo 18..23). A string of digits is read as the number.
        trace_shape: TorchScript/Neuron: ``(batch, sequence)``, ``"1x128"``, or several buckets
            (``["1x32", "1x128"]`` or ``"1x32,1x128"``); at most 8 buckets, batch <= 256,
            batch x sequence <= 262144, sequence <= the model's maximum length.
        atol: Validation tolerance (max abs diff per output); default the task's (1e-4).
        registered_model_name: The registered model the export becomes a version of; default the
            source's. It may not contain ``/``, ``:``, ``@`` or ``?`` (it could not be loaded back as a
            ``models:/`` URI).
        exporter: ONNX: ``"legacy"`` (default, TorchScript-based) or ``"dynamo"`` (opset >= 18).
        optimize: ONNX: fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer. Default
            None: off, except with ``quantize="int8"`` for a task whose measured int8 recipe fuses first
            (``int8_optimize`` in the task table: text-classification, feature-extraction); False keeps
            the graph unfused.
        quantize: ONNX: ``"int8"`` (dynamic, weights per channel; the default int8), ``"int8-per-tensor"``,
            ``"int8-static"`` (calibrated on the validation data), ``"int8-blockwise"`` (the most accurate)
            or ``"int8-mixed"`` (blockwise MatMuls, dynamic fused attention), validated by task-level
            agreement on real data. feature-extraction's ``"int8"`` on a fused graph is ``"int8-mixed"``
            (``int8_mode`` in the task table) unless a ``quantize_*`` option refines it. With ``model_uri``
            naming an fp32 ONNX version, its graph is quantised instead of exporting the source again.
        quantize_per_channel: ONNX int8: one scale per output channel of each weight (default: per the mode).
        quantize_op_types: ONNX int8: the op types to quantise, e.g. ``"MatMul,Attention"`` (default: per the mode).
        quantize_reduce_range: ONNX int8: 7-bit weights, for CPUs without VNNI (default False). These settings
            are recorded in the ``tfexport.quantize.*`` tags.
        min_agreement: With ``quantize``: the agreement with the source that validation requires, in
            (0, 1]; on real rows the default is the task's ``quantized_min_agreement``.
        neuron_target: Neuron: ``"inf1"`` (torch-neuron) or ``"inf2"`` (torch-neuronx, Inf2/Trn1);
            default the installed SDK.
        compiler_args: Neuron: extra compiler arguments (default: keep fp32 numerics).
        device: TorchScript: where to trace (``"cpu"``, default, ``"cuda"`` or ``"cuda:N"``); the variant
            runs on that device type.
        validation_data: Rows to validate the answers on: a list of texts, a pandas DataFrame with the task's
            request columns, a path to a ``.csv``/``.parquet``/``.jsonl``/``.txt`` file or an ``mlflow.data``
            dataset (see ``validation/data.py``). Default: the source's logged input example; without one,
            the report says "synthetic only". Recorded in the ``tfexport.data_*`` and ``tfexport.agreement*``
            tags and part of the export key.
        force: Export and register again even if this export exists.
        config: An export config (``ExportConfig``, its ``to_dict()`` or a JSON file) overriding the one saved
            with the source (``log_model(export_config=...)``); part of the export key. Checked against the model
            before any export.
        progress: Called as ``progress(stage, detail)`` at each stage (``STAGES``), e.g. to print them.

    Returns:
        ExportResult: ``model_version`` (the registered ``ModelVersion``), ``model_uri``
        (``models:/<name>/<version>``), ``report`` (the ``ValidationReport``; None when an existing
        version was returned), ``created`` and ``run_id`` (the export run).

    Raises:
        UnknownFormatError: ``format`` is not an export format (the message lists them).
        ExportError: a bad option, a model URI that is not a tfexport source model, a registered model
            name that is not allowed, or an export that fails. Nothing is registered.
        ValidationFailedError: the exported model differs from the source beyond the tolerance; the
            message lists every failing output and ``.report`` holds the report. Nothing is registered.
        MissingDependencyError: a package the format needs is not installed (the message names the extra).

    Example:
        >>> result = mlflow_tfexport.export("models:/sentiment/1", format="onnx", opset=17)
        >>> result.model_uri
        'models:/sentiment/2'
        >>> ts = mlflow_tfexport.export("models:/sentiment/1", format="torchscript", trace_shape=["1x32", "1x128"])
        >>> mlflow.pyfunc.load_model(ts.model_uri).predict(["I loved it"])
    """
    say = progress or _noop
    backend = get_backend(format)
    options = make_options(format, opset=opset, trace_shape=trace_shape, atol=atol, exporter=exporter,
                           optimize=optimize, quantize=quantize, min_agreement=min_agreement,
                           neuron_target=neuron_target, compiler_args=compiler_args, device=device,
                           quantize_per_channel=quantize_per_channel, quantize_op_types=quantize_op_types,
                           quantize_reduce_range=quantize_reduce_range)
    if registered_model_name is not None:
        check_model_name(registered_model_name)
    client = MlflowClient()
    recover_stale_exports_once(client)  # runs and folders left by killed exports (export/recovery.py)
    with tempfile.TemporaryDirectory(prefix=temp_prefix()) as workdir:
        source, options = resolve_export_source(client, model_uri, options, os.path.join(workdir, "source"),
                                                resolve=resolve_source)
        name = registered_model_name or source.registered_name
        if not name:
            raise ExportError(
                f"{model_uri} is not a registered model version; pass registered_model_name= to say "
                "which registered model the export becomes a version of."
            )
        config_digest = apply_config(source, config)
        spec = task_of(source.flavor_conf)
        options = backend.check(options, source.flavor_conf, spec)
        tolerance = options.atol if options.atol is not None else spec.atol
        data, synthetic_reason = validation_rows(validation_data, spec, source.local_path)
        given = data.digest if data is not None and validation_data is not None else None
        key = export_key(source, replace(options, atol=tolerance), given, config_digest)
        if not force:
            existing = find_by_export_key(client, name, key)
            if existing:
                mv = existing[0]
                return ExportResult(mv, f"models:/{name}/{mv.version}", None, created=False, run_id=mv.run_id)
        job = _Job(client, backend, source, options, tolerance, key, name, say, force, data, synthetic_reason)
        return _export_new(job, workdir)


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
    data: Optional[ValidationData] = None  # the rows validated on (None: synthetic only, for this reason:)
    synthetic_reason: str = ""


def _export_new(job: _Job, workdir: str) -> ExportResult:
    """Run the export inside its own MLflow run (nested in the active or the project's run)."""
    source, fmt = job.source, job.options.format
    staging = os.path.join(workdir, "staging")
    os.makedirs(staging)
    run_tags = {Tag.SOURCE: source.canonical_uri, Tag.FORMAT: fmt, Tag.EXPORT_KEY: job.key, **owner_tags()}
    if source.run_id:
        run_tags[Tag.SOURCE_RUN_ID] = source.run_id
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
    source, options, fmt = job.source, job.options, job.options.format
    mlflow.log_params(
        {"format": fmt, "opset": options.opset, "atol": job.tolerance, "source": source.canonical_uri,
         "trace_shape": ",".join(map(shape_name, options.trace_shapes)) or "dynamic",
         "exporter": options.exporter, "optimize": options.optimize, "quantize": options.quantize,
         "validation_data": job.data.origin if job.data is not None else SYNTHETIC_ONLY}
    )
    if job.data is not None:  # the run shows which rows validated it, also when validation fails
        mlflow.log_input(job.data.to_mlflow_dataset(), context="validation")
    job.say("load", source.canonical_uri)
    staged = stage_export(source, job.backend, options, job.tolerance, staging, job.say, job.data,
                          job.synthetic_reason)
    conf, artifact, report, export_seconds = staged.conf, staged.artifact, staged.report, staged.export_seconds
    report.extra.update({"format": fmt, "source": source.canonical_uri, "export_seconds": export_seconds})
    mlflow.log_metrics({"max_abs_diff": report.max_abs_diff, "export_seconds": export_seconds})
    if report.agreement is not None and not report.agreement.problem:
        mlflow.log_metric(report.agreement.metric, report.agreement.value)
    mlflow.log_text(report.to_json(), VALIDATION_FILE)
    raise_for_failures(report, f"the {fmt} export of {_model_words(conf)} from {source.canonical_uri}")
    with open(os.path.join(staging, VALIDATION_FILE), "w") as f:
        f.write(report.to_json())
    job.say("log", LOGGED_MODEL_NAME)
    example = source.input_example()
    spec = task_of(conf)
    info = Model.log(
        artifact_path=None,
        name=LOGGED_MODEL_NAME,
        flavor=variant,
        staged_dir=staging,
        flavor_conf=conf,
        requirements=artifact.requirements or default_requirements(fmt),
        signature=with_default_inputs(source.signature, spec, example),
        input_example=example,
        python_version=artifact.python_version,
        extra_index_urls=artifact.extra_index_urls,
    )
    tags = {
        Tag.FORMAT: fmt,
        Tag.TASK: conf[FlavorKey.TASK],
        Tag.ATOL: f"{job.tolerance:g}",
        Tag.MAX_ABS_DIFF: f"{report.max_abs_diff:.3e}",
        Tag.VALIDATION: VALIDATION_PASSED,
        Tag.GATE: report.gate(),
        Tag.VALIDATED_SHAPE: ",".join(map(shape_name, report.shapes)),
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
    description = describe(report, fmt=fmt, source_uri=source.canonical_uri, task=conf[FlavorKey.TASK],
                           architecture=conf.get(FlavorKey.ARCHITECTURE), opset=options.opset,
                           trace_shapes=options.trace_shapes)
    mv = register_version(job.name, info, tags=tags, description=description, client=job.client)
    attest_version(job.client, Signer.from_env(), job.name, str(mv.version), tags)  # with the secret set only
    if not job.force:
        mv = settle_duplicates(job.client, job.name, job.key, mv)
    return ExportResult(mv, f"models:/{job.name}/{mv.version}", report, created=True, run_id=run_id)
