"""On-demand exports from the registry UI: a webhook receiver and a poller.

A user sets the model version tag ``tfexport.request`` (e.g. ``onnx`` or
``torchscript:1x32+1x128``) on a source version. The worker hears about it
either from MLflow's registry webhooks (``model_version_tag.set``, delivered
to ``POST /webhook``) or by polling ``search_model_versions``, runs the
exports on a background thread and writes the outcome back on the source
version as ``tfexport.request.status``:

- ``running: onnx (1/2)`` while it works,
- ``done: models:/sentiment/3`` (one export) or
  ``done: onnx -> models:/sentiment/3, torchscript:1x128 -> models:/sentiment/4``,
- ``failed: <reason>``,

and ``tfexport.request.handled`` = the request value that status answers.

Request grammar (the value of ``tfexport.request``)::

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

Webhook deliveries are authenticated the way MLflow signs them
(``mlflow.webhooks.delivery``): headers ``X-MLflow-Delivery-Id``,
``X-MLflow-Timestamp`` (unix seconds) and ``X-MLflow-Signature`` =
``v1,`` + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")).
Unsigned deliveries answer 401, forged ones 403, ones whose timestamp is
outside the tolerance window 403, and a delivery id seen before 409; none of
them is ever exported.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import TfexportError

_logger = logging.getLogger(__name__)

SECRET_ENV = "MLFLOW_TFEXPORT_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
MAX_BODY_BYTES = 1 << 20
MAX_SPECS = 8
MAX_REASON_CHARS = 1000
WEBHOOK_PATH = "/webhook"
EVENT = ("model_version_tag", "set")

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"


class RequestError(TfexportError):
    """The value of ``tfexport.request`` does not follow the request grammar."""


# --------------------------------------------------------------------------- request grammar


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
    from mlflow_tfexport.export.api import check_atol, parse_trace_shapes
    from mlflow_tfexport.formats import export_formats as known_formats

    head, *fields = [p.strip() for p in text.split(":")]
    fmt = head.lower()
    if fmt not in known_formats():
        raise RequestError(
            f"unknown format {head!r} in {Tag.REQUEST} {whole!r}; known formats: {', '.join(known_formats())} "
            f"({_EXAMPLE})."
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


# --------------------------------------------------------------------------- signatures


class DeliveryRejected(Exception):
    """A webhook delivery that must not be acted on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` MLflow sends for this delivery (``v1,<base64 HMAC-SHA256>``)."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, body: bytes, *, delivery_id: str, timestamp: Optional[int] = None) -> Dict[str, str]:
    """Headers of a delivery signed like MLflow signs it: for tests and hand-made deliveries."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, delivery_id, ts, body),
    }


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


class SignatureVerifier:
    """Checks MLflow webhook signatures, timestamps and delivery ids.

    ``verify`` raises ``DeliveryRejected`` with 401 (unsigned or malformed headers), 403 (forged signature,
    or a timestamp outside ``tolerance_s``) or 409 (a delivery id already accepted). Call ``remember`` once a
    delivery has been accepted, so that an exact replay within the window is refused; a delivery that was
    answered with an error (e.g. 503) is not remembered, so MLflow's retry of it goes through.
    """

    def __init__(
        self, secret: str, tolerance_s: float = DEFAULT_TOLERANCE_S, clock: Callable[[], float] = time.time
    ) -> None:
        if not secret:
            raise ValueError(f"A webhook secret is required (--secret or {SECRET_ENV}).")
        self._secret = secret
        self.tolerance_s = float(tolerance_s)
        self._clock = clock
        self._seen: Dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Return the delivery id of an authentic, fresh, new delivery; raise ``DeliveryRejected`` otherwise."""
        signature = _header(headers, SIGNATURE_HEADER)
        timestamp = _header(headers, TIMESTAMP_HEADER)
        delivery_id = _header(headers, DELIVERY_ID_HEADER)
        missing = [
            n for n, v in ((SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp),
                           (DELIVERY_ID_HEADER, delivery_id)) if not v
        ]
        if missing:
            raise DeliveryRejected(
                HTTPStatus.UNAUTHORIZED,
                f"unsigned delivery: missing {', '.join(missing)}; register the webhook with the worker's secret",
            )
        assert signature is not None and timestamp is not None and delivery_id is not None
        if not timestamp.isdigit():
            raise DeliveryRejected(HTTPStatus.UNAUTHORIZED, f"malformed {TIMESTAMP_HEADER} {timestamp[:40]!r}")
        expected = sign(self._secret, delivery_id, timestamp, body)
        offered = [s.strip() for s in signature.split(" ") if s.strip()]  # Standard Webhooks: space-separated
        if not any(hmac.compare_digest(expected.encode(), s.encode()) for s in offered):
            raise DeliveryRejected(HTTPStatus.FORBIDDEN, "forged delivery: the signature does not match the secret")
        age = self._clock() - int(timestamp)
        if abs(age) > self.tolerance_s:
            raise DeliveryRejected(
                HTTPStatus.FORBIDDEN,
                f"stale delivery: signed {age:.0f} s ago, outside the {self.tolerance_s:.0f} s window "
                "(a replay, or clocks out of sync)",
            )
        with self._lock:
            self._forget_expired()
            if delivery_id in self._seen:
                raise DeliveryRejected(HTTPStatus.CONFLICT, f"replayed delivery: {delivery_id} was already received")
        return delivery_id

    def remember(self, delivery_id: str) -> None:
        with self._lock:
            self._seen[delivery_id] = self._clock() + 2 * self.tolerance_s

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, expiry in self._seen.items() if expiry < now]:
            del self._seen[key]


# --------------------------------------------------------------------------- the export queue


@dataclass(frozen=True)
class Job:
    name: str
    version: str
    request: str
    origin: str = "webhook"

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.name, self.version, self.request)


@dataclass
class Outcome:
    """What a job did: the status written on the source version."""

    job: Job
    status: Optional[str]
    results: List[Tuple[str, str]] = field(default_factory=list)  # (spec label, model URI)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def format_status(results: Sequence[Tuple[str, str]], failures: Sequence[Tuple[str, str]] = ()) -> str:
    """``done: models:/m/3``, ``done: onnx -> models:/m/3, ...`` or ``failed: [<spec>: ]<reason>``.

    ``results`` are (spec label, model URI) pairs, ``failures`` (spec label or "", reason) pairs.
    """
    done = ", ".join(f"{label} -> {uri}" for label, uri in results)
    if failures:
        text = f"{STATUS_FAILED}: " + "; ".join(f"{label}: {reason}" if label else reason for label, reason in failures)
        return text + (f" ({STATUS_DONE}: {done})" if results else "")
    if len(results) == 1:
        return f"{STATUS_DONE}: {results[0][1]}"
    return f"{STATUS_DONE}: {done}"


def _default_export() -> Callable[..., Any]:
    from mlflow_tfexport.export.api import export

    return export


class ExportWorker:
    """A small queue of export jobs, worked off by background threads.

    ``submit`` never blocks on an export: it dedupes (a job for the same version and request already queued
    or running is not queued twice) and returns at once. Each job re-reads the version, parses its request,
    exports every spec through ``export_fn`` (``mlflow_tfexport.export``; idempotent) and writes the status.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        export_fn: Optional[Callable[..., Any]] = None,
        threads: int = 1,
        max_queue: int = 100,
    ) -> None:
        from mlflow import MlflowClient

        self.client = client or MlflowClient()
        self._export_fn = export_fn
        self._queue: queue.Queue[Optional[Job]] = queue.Queue(maxsize=max_queue)
        self._pending: Set[Tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._n_threads = max(1, int(threads))
        self._threads: List[threading.Thread] = []
        self.started = False

    # -- lifecycle
    def start(self) -> ExportWorker:
        if not self.started:
            self._threads = [
                threading.Thread(target=self._loop, name=f"tfexport-worker-{i}", daemon=True)
                for i in range(self._n_threads)
            ]
            for t in self._threads:
                t.start()
            self.started = True
        return self

    def stop(self, timeout: Optional[float] = None, *, drain: bool = False) -> None:
        """Stop the threads after the jobs they run; queued jobs are dropped unless ``drain``.

        A dropped job is not lost: its version still has no answering status, so ``--poll`` finds it.
        """
        if not self.started:
            return
        if not drain:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    with self._lock:
                        self._pending.discard(job.key)
                self._queue.task_done()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self.started = False

    def join(self) -> None:
        """Wait until every submitted job is done."""
        self._queue.join()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- submitting
    def submit(self, job: Job) -> Tuple[bool, str]:
        """Queue ``job`` unless the same one is queued or running. Returns (queued, why)."""
        with self._lock:
            if job.key in self._pending:
                return False, "already queued or running"
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise DeliveryRejected(HTTPStatus.SERVICE_UNAVAILABLE, "export queue is full; retry later") from None
            self._pending.add(job.key)
        return True, "queued"

    # -- working
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.process(job)
            except Exception:  # never let one job kill the thread
                _logger.exception("export job %s failed unexpectedly", job)
            finally:
                if job is not None:
                    with self._lock:
                        self._pending.discard(job.key)
                self._queue.task_done()

    def _set_status(self, job: Job, status: str, *, final: bool) -> None:
        self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_STATUS, status)
        if final:
            self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_HANDLED, job.request)

    def process(self, job: Job) -> Outcome:
        """Run one job on this thread; record the outcome on the source version."""
        from mlflow.exceptions import MlflowException

        where = f"models:/{job.name}/{job.version}"
        try:
            mv = self.client.get_model_version(job.name, job.version)
        except MlflowException as exc:
            _logger.warning("request %r for %s refused: %s", job.request, where, _reason(exc))
            return Outcome(job, None)
        current = (mv.tags or {}).get(Tag.REQUEST)
        if current != job.request:
            _logger.info("request %r for %s superseded by %r; skipped", job.request, where, current)
            return Outcome(job, None)
        try:
            specs = parse_request(job.request)
        except RequestError as exc:
            status = format_status([], [("", _reason(exc))])
            _logger.warning("request %r for %s refused: %s", job.request, where, status)
            self._set_status(job, status, final=True)
            return Outcome(job, status)

        export_fn = self._export_fn or _default_export()
        results: List[Tuple[str, str]] = []
        failures: List[Tuple[str, str]] = []
        for i, spec in enumerate(specs, 1):
            self._set_status(job, f"{STATUS_RUNNING}: {spec.label} ({i}/{len(specs)})", final=False)
            _logger.info("exporting %s as %s (%d/%d)", where, spec.label, i, len(specs))
            try:
                result = export_fn(where, **spec.export_kwargs())
            except Exception as exc:
                failures.append(("" if len(specs) == 1 else spec.label, _reason(exc)))
                _logger.warning("export of %s as %s failed: %s", where, spec.label, failures[-1][1])
                continue
            results.append((spec.label, str(result.model_uri)))
            _logger.info("exported %s as %s -> %s", where, spec.label, result.model_uri)
        status = format_status(results, failures)
        self._set_status(job, status, final=True)
        return Outcome(job, status, results)


# --------------------------------------------------------------------------- webhook receiver


@dataclass
class Reply:
    status: int
    body: Dict[str, Any]


class WebhookReceiver:
    """Turns one HTTP delivery into a reply, queueing an export job when it asks for one."""

    def __init__(self, worker: ExportWorker, verifier: SignatureVerifier) -> None:
        self.worker = worker
        self.verifier = verifier

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        try:
            delivery_id = self.verifier.verify(headers, body)
        except DeliveryRejected as exc:
            _logger.warning("webhook delivery rejected (%d): %s", exc.status, exc.reason)
            return Reply(exc.status, {"error": exc.reason})
        try:
            reply = self._accept(body)
        except DeliveryRejected as exc:
            if exc.status >= 500:  # not remembered: MLflow's retry of this delivery may go through
                _logger.warning("webhook delivery %s not accepted (%d): %s", delivery_id, exc.status, exc.reason)
                return Reply(exc.status, {"error": exc.reason})
            self.verifier.remember(delivery_id)
            _logger.warning("webhook delivery %s refused (%d): %s", delivery_id, exc.status, exc.reason)
            return Reply(exc.status, {"error": exc.reason})
        self.verifier.remember(delivery_id)
        reply.body["delivery_id"] = delivery_id
        return reply

    def _accept(self, body: bytes) -> Reply:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise DeliveryRejected(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
        if not isinstance(payload, dict):
            raise DeliveryRejected(HTTPStatus.BAD_REQUEST, "body is not a JSON object")
        event = (payload.get("entity"), payload.get("action"))
        if event != EVENT:
            return Reply(HTTPStatus.OK, {"ignored": f"event {event[0]}.{event[1]} is not {'.'.join(EVENT)}"})
        data = payload.get("data")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("name", "version", "key")):
            raise DeliveryRejected(HTTPStatus.BAD_REQUEST, "data must hold string name, version, key and value")
        if data["key"] != Tag.REQUEST:
            return Reply(HTTPStatus.OK, {"ignored": f"tag {data['key']!r} is not {Tag.REQUEST}"})
        value = data.get("value") or ""
        if not value.strip():
            return Reply(HTTPStatus.OK, {"ignored": f"{Tag.REQUEST} is empty"})
        self._check_version(data["name"], data["version"])
        queued, why = self.worker.submit(Job(data["name"], data["version"], value))
        _logger.info("request %r for models:/%s/%s: %s", value, data["name"], data["version"], why)
        return Reply(HTTPStatus.ACCEPTED if queued else HTTPStatus.OK,
                     {"status": why, "model_version": f"models:/{data['name']}/{data['version']}", "request": value})

    def _check_version(self, name: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.worker.client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise DeliveryRejected(
                    HTTPStatus.NOT_FOUND, f"models:/{name}/{version} does not exist: {_reason(exc)}"
                ) from None
            raise DeliveryRejected(HTTPStatus.SERVICE_UNAVAILABLE, f"registry unavailable: {_reason(exc)}") from None


def make_server(receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server answering ``POST /webhook`` (deliveries) and ``GET /health``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mlflow-tfexport-worker"

        def _reply(self, status: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", "pending": receiver.worker.pending})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}; deliveries go to POST /webhook"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != WEBHOOK_PATH:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}; deliveries go to POST /webhook"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return
            if int(length) > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            body = self.rfile.read(int(length))
            reply = receiver.handle(dict(self.headers.items()), body)
            self._reply(reply.status, reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            _logger.debug("%s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


# --------------------------------------------------------------------------- polling


def is_pending(tags: Mapping[str, str]) -> bool:
    """A request with no status yet, or whose status answers an older request value."""
    request = (tags.get(Tag.REQUEST) or "").strip()
    if not request:
        return False
    return Tag.REQUEST_STATUS not in tags or tags.get(Tag.REQUEST_HANDLED) != tags.get(Tag.REQUEST)


def find_pending(client: Any, page_size: int = 200) -> List[Job]:
    """Versions of any registered model whose ``tfexport.request`` waits for an answer."""
    jobs: List[Job] = []
    token = None
    while True:
        page = client.search_model_versions(
            f"tags.`{Tag.REQUEST}` LIKE '%'", max_results=page_size, page_token=token
        )
        for mv in page:
            tags = mv.tags or {}
            if is_pending(tags):
                jobs.append(Job(mv.name, str(mv.version), tags[Tag.REQUEST], origin="poll"))
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(jobs, key=lambda j: (j.name, int(j.version)))


def poll(worker: ExportWorker, *, interval_s: float = 30.0, once: bool = False,
         stop: Optional[threading.Event] = None) -> int:
    """Queue pending requests every ``interval_s``; with ``once``, one pass and wait for its jobs."""
    stop = stop or threading.Event()
    total = 0
    while not stop.is_set():
        try:
            jobs = find_pending(worker.client)
        except Exception as exc:  # the registry being down must not end the poller
            _logger.warning("polling the registry failed: %s", _reason(exc))
            jobs = []
        for job in jobs:
            queued, _ = worker.submit(job)
            total += queued
        if once:
            worker.join()
            break
        stop.wait(interval_s)
    return total


# --------------------------------------------------------------------------- entry point used by the CLI


def serve(
    *,
    secret: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    threads: int = 1,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
    ready: Optional[Callable[[ThreadingHTTPServer], None]] = None,
) -> None:
    """Serve webhook deliveries until interrupted (``mlflow-tfexport worker``)."""
    worker = ExportWorker(threads=threads).start()
    server = make_server(WebhookReceiver(worker, SignatureVerifier(secret, tolerance_s)), host, port)
    scheme = "http"
    if certfile:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    bound_host, bound_port = server.server_address[:2]
    _logger.info("listening on %s://%s:%s%s", scheme, bound_host, bound_port, WEBHOOK_PATH)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        worker.stop()
