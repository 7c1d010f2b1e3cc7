"""Re-validate a registered variant against its source on new rows (``mlflow-tfexport validate``).

The variant and its source version (the variant's ``tfexport.source`` tag) are
downloaded, both are served end to end on the rows, and the task's agreement
metric is checked as at export time: the task's fp32 value, or for a quantised
variant ``min_agreement`` (default: the ``tfexport.min_agreement`` the export
recorded, else the task's). ``tags()`` is what ``--tag`` records on the version,
``tfexport.validation`` included, so that ``promote`` refuses a variant whose
last recorded validation failed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Optional

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import VALIDATION_FAILED, VALIDATION_PASSED, FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.registry import resolve_version
from mlflow_tfexport.serving.conf import read_flavor_conf
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.validation.agreement import (
    FP32,
    compared_conf,
    measure,
    pyfunc_for,
    threshold_for,
    validation_rows,
)
from mlflow_tfexport.validation.report import SYNTHETIC_ONLY, AgreementCheck


@dataclass
class Revalidation:
    """The outcome of re-validating version ``version`` of ``name`` against ``source_uri`` on new rows."""

    name: str
    version: str
    source_uri: str
    check: AgreementCheck

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def passed(self) -> bool:
        return self.check.passed

    def tags(self) -> Dict[str, str]:
        """What ``validate --tag`` records on the version: the verdict and the check's tags."""
        return {Tag.VALIDATION: VALIDATION_PASSED if self.passed else VALIDATION_FAILED, **self.check.tags()}

    def to_text(self) -> str:
        lines = [f"{self.model_uri} against its source {self.source_uri}:",
                 f"  {self.check.mark} real data: {self.check.summary()}"]
        if self.check.note:
            lines.append(f"    {self.check.note}")
        if not self.passed:
            lines.append(f"  {self.check.failure()}")
            if self.check.advice:
                lines.append(f"  {self.check.advice}")
        return "\n".join(lines)


def _min_agreement(tags: Dict[str, str]) -> Optional[float]:
    try:
        return float(tags[Tag.MIN_AGREEMENT]) if tags.get(Tag.MIN_AGREEMENT) else None
    except ValueError:
        return None


def validate_version(
    model_uri: str,
    data: Any,
    *,
    min_agreement: Optional[float] = None,
    client: Optional[MlflowClient] = None,
) -> Revalidation:
    """Serve the variant ``model_uri`` and its source version on ``data``'s rows and check the task's metric.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` of an exported variant.
        data: The rows, in any form ``export(validation_data=...)`` takes (a list of texts, a DataFrame, a
            ``.csv``/``.parquet``/``.jsonl``/``.txt`` path, an ``mlflow.data`` dataset); None: the source's
            logged input example.
        min_agreement: For a quantised variant, the value required (default: the one its export recorded,
            else the task's ``quantized_min_agreement``). An fp32 variant must give the source's answers.
        client: The ``MlflowClient`` to use.

    Returns:
        A ``Revalidation``: ``.check`` (the ``AgreementCheck``), ``.passed``, ``.tags()``, ``.to_text()``.

    Raises:
        TfexportError: ``model_uri`` is not a registered exported variant, or it has no source to compare with.
        ExportError: the data cannot be used, or the source cannot answer it.
    """
    client = client or MlflowClient()
    name, version = resolve_version(model_uri, client)
    try:
        tags = dict(client.get_model_version(name, version).tags or {})
    except MlflowException as exc:
        raise TfexportError(f"Cannot find {model_uri}: {exc.message}") from exc
    fmt = tags.get(Tag.FORMAT)
    source_uri = tags.get(Tag.SOURCE)
    if fmt is None or fmt == Format.TRANSFORMERS or not source_uri:
        raise TfexportError(
            f"models:/{name}/{version} is not an exported variant (tags {Tag.FORMAT}={fmt!r}, "
            f"{Tag.SOURCE}={source_uri!r}); validate a version that mlflow-tfexport export registered."
        )
    with tempfile.TemporaryDirectory(prefix="tfexport-validate-") as workdir:
        try:
            variant_dir = download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                             dst_path=os.path.join(workdir, "variant"))
            source_dir = download_artifacts(artifact_uri=source_uri, dst_path=os.path.join(workdir, "source"))
        except MlflowException as exc:
            raise TfexportError(f"Cannot download models:/{name}/{version} or its source {source_uri}: "
                                f"{exc.message}") from exc
        conf = read_flavor_conf(variant_dir)
        source_conf = read_flavor_conf(source_dir)
        spec = task_of(conf)
        rows, reason = validation_rows(data, spec, source_dir)
        if rows is None:
            raise ExportError(f"Nothing to validate models:/{name}/{version} on ({SYNTHETIC_ONLY}: {reason}); "
                              "pass the rows, e.g. --data examples/data/reviews.csv.")
        quantized = conf.get(FlavorKey.QUANTIZED)
        required = min_agreement if min_agreement is not None else _min_agreement(tags)
        threshold = threshold_for(spec, quantized, required)
        src_conf = compared_conf(source_conf, conf)
        note = ""
        if src_conf.get(FlavorKey.MAX_LENGTH) != source_conf.get(FlavorKey.MAX_LENGTH):
            note = f"both models truncate at the variant's {src_conf[FlavorKey.MAX_LENGTH]} tokens"
        source = pyfunc_for(source_dir, src_conf, load_runner(source_dir, src_conf, {}))
        variant = pyfunc_for(variant_dir, conf, load_runner(variant_dir, conf, {}))
        check = measure(source, variant, rows, spec, threshold=threshold,
                        mode=str(quantized) if quantized else FP32, note=note)
    return Revalidation(name, version, source_uri, check)
