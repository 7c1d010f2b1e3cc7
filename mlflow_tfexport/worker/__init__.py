"""On-demand exports from the registry UI: a webhook receiver and a poller.

A user sets the model version tag ``tfexport.request`` (e.g. ``onnx`` or ``torchscript:1x32+1x128``) on a
source version. The worker hears about it either from MLflow's registry webhooks (``model_version_tag.set``,
delivered to ``POST /webhook``) or by polling ``search_model_versions``, runs the exports on a background
thread and writes the outcome back on the source version as ``tfexport.request.status``:

- ``running: onnx (1/2)`` while it works,
- ``done: models:/sentiment/3`` (one export) or
  ``done: onnx -> models:/sentiment/3, torchscript:1x128 -> models:/sentiment/4``,
- ``failed: <reason>``,

and ``tfexport.request.handled`` = the request value that status answers.

The pieces, each importing only those listed before it:

- ``grammar``: the value of ``tfexport.request`` -> ``ExportSpec`` s (``parse_request``);
- ``fetch``: the value of ``tfexport.request.data`` -> a bounded ``DataFile``, only from the registry's artifact
  URIs or an operator's ``--data-dir`` (``DataPolicy``, ``request_data``; see docs/worker-data.md);
- ``queue``: ``ExportWorker``, the job queue and its threads, and the status text (``format_status``);
- ``memory``: the guard's own memory of the models it guards (``GuardMemory``, ``--state-dir``);
- ``journal``: the guard's own alias writes, in the process (``WriteJournal``), so that a user's move its undo
  overwrote is found from that move's webhook (``Told``);
- ``guard``: aliases moved in the UI checked against the model's promotion policy, refused ones undone
  (``guard_alias``, ``guard_all``, ``AliasGuard``; alias webhooks and every poll pass); its records are signed
  (``mlflow_tfexport.registry.attest``, docs/trust-model.md);
- ``webhook``: MLflow's HMAC signatures (``SignatureVerifier``) and one delivery -> one reply
  (``WebhookReceiver``);
- ``poll``: pending requests (``--poll``) and jobs whose worker died (``requeue_interrupted``);
- ``server``: the HTTP server (``make_server``) and ``serve``, what ``mlflow-tfexport worker`` runs.
"""

from __future__ import annotations

from mlflow_tfexport.worker.grammar import MAX_SPECS, ExportSpec, RequestError, parse_request
from mlflow_tfexport.worker.guard import AliasGuard, guard_alias, guard_all, guard_model
from mlflow_tfexport.worker.journal import Told, WriteJournal
from mlflow_tfexport.worker.memory import STATE_DIR_ENV, GuardMemory
from mlflow_tfexport.worker.poll import (
    find_interrupted,
    find_pending,
    is_interrupted,
    is_pending,
    poll,
    recover,
    requeue_interrupted,
)
from mlflow_tfexport.worker.queue import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RUNNING,
    ExportWorker,
    Job,
    Outcome,
    QueueFull,
    format_status,
)
from mlflow_tfexport.worker.server import DEFAULT_TIMEOUT_S, MAX_BODY_BYTES, WEBHOOK_PATH, make_server, serve
from mlflow_tfexport.worker.webhook import (
    DEFAULT_TOLERANCE_S,
    DELIVERY_ID_HEADER,
    EVENTS,
    SECRET_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryRejected,
    SignatureVerifier,
    WebhookReceiver,
    sign,
    signed_headers,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOLERANCE_S",
    "DELIVERY_ID_HEADER",
    "EVENTS",
    "MAX_BODY_BYTES",
    "MAX_SPECS",
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "STATE_DIR_ENV",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_RUNNING",
    "TIMESTAMP_HEADER",
    "WEBHOOK_PATH",
    "AliasGuard",
    "DeliveryRejected",
    "ExportSpec",
    "ExportWorker",
    "GuardMemory",
    "Job",
    "Outcome",
    "QueueFull",
    "RequestError",
    "SignatureVerifier",
    "Told",
    "WebhookReceiver",
    "WriteJournal",
    "find_interrupted",
    "find_pending",
    "format_status",
    "guard_alias",
    "guard_all",
    "guard_model",
    "is_interrupted",
    "is_pending",
    "make_server",
    "parse_request",
    "poll",
    "recover",
    "requeue_interrupted",
    "serve",
    "sign",
    "signed_headers",
]
