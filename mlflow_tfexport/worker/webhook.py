"""Webhook deliveries: MLflow's HMAC signatures, and one delivery -> one reply (and maybe a queued job).

``model_version_tag.set`` deliveries of ``tfexport.request`` queue exports; ``model_version_alias.created`` and
``.deleted`` deliveries queue their model for the alias guard (``guard.AliasGuard``), which checks the alias
against the model's promotion policy.

Deliveries are authenticated the way MLflow signs them (``mlflow.webhooks.delivery``): headers
``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (unix seconds) and ``X-MLflow-Signature`` =
``v1,`` + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")). Unsigned deliveries answer 401,
forged ones 403, ones whose timestamp is outside the tolerance window 403, and a delivery id seen before 409;
none of them is ever exported. A signed delivery that is not what MLflow sends answers 400 with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Dict, Mapping, Optional

from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.worker.guard import AliasGuard
from mlflow_tfexport.worker.queue import ExportWorker, Job, QueueFull, reason

_logger = logging.getLogger(__name__)

SECRET_ENV = "MLFLOW_TFEXPORT_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
EVENT = ("model_version_tag", "set")
#: Alias events: the model named is reconciled with its promotion policy (``guard``).
ALIAS_EVENTS = (("model_version_alias", "created"), ("model_version_alias", "deleted"))
#: What ``mlflow-tfexport worker`` needs delivered (``MlflowClient.create_webhook(events=...)``).
EVENTS = tuple(".".join(e) for e in (EVENT, *ALIAS_EVENTS))

_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # unix seconds, ASCII digits only (str.isdigit() accepts "²")
_VERSION = re.compile(r"[0-9]{1,10}")
#: Delivery ids remembered at most (the replay cache); past it, the ones that expire first are forgotten.
MAX_REMEMBERED = 10_000
#: Bytes of a persisted replay cache read at most.
MAX_CACHE_FILE_BYTES = 4 << 20
_SHOWN_CHARS = 80


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _shown(value: Any) -> str:
    """``repr`` of a received value, cut short for a reply or a log."""
    try:
        return _cut(repr(value))
    except (RecursionError, ValueError):  # nested too deeply to print, or an int past the digit limit
        return f"<a {type(value).__name__}>"


def _plain(value: Any) -> str:
    """``str`` of a received value, cut short for a reply or a log."""
    try:
        return _cut(str(value))
    except (RecursionError, ValueError):
        return f"<a {type(value).__name__}>"


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

    With ``state_path``, the accepted ids (as sha256 digests, with their expiry in unix seconds) are kept in
    that JSON file too, rewritten atomically on each acceptance and read back at start: a replay after a
    restart, within the tolerance window, still gets 409. At most ``MAX_REMEMBERED`` ids are kept.
    """

    def __init__(
        self, secret: str, tolerance_s: float = DEFAULT_TOLERANCE_S, clock: Callable[[], float] = time.time,
        *, state_path: Optional[str] = None,
    ) -> None:
        if not secret:
            raise ValueError(f"A webhook secret is required (--secret or {SECRET_ENV}).")
        self._secret = secret
        self.tolerance_s = float(tolerance_s)
        self._clock = clock
        self._seen: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.state_path = os.path.abspath(os.path.expanduser(state_path)) if state_path else None
        if self.state_path:
            self._load()

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
        if not _TIMESTAMP.fullmatch(timestamp):
            raise DeliveryRejected(
                HTTPStatus.UNAUTHORIZED,
                f"malformed {TIMESTAMP_HEADER} {timestamp[:40]!r}{'...' if len(timestamp) > 40 else ''}: "
                "expected unix seconds in ASCII digits, e.g. 1700000000",
            )
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
            if _key(delivery_id) in self._seen:
                raise DeliveryRejected(HTTPStatus.CONFLICT,
                                       f"replayed delivery: {_cut(delivery_id)} was already received")
        return delivery_id

    def remember(self, delivery_id: str) -> None:
        with self._lock:
            self._forget_expired()
            self._seen[_key(delivery_id)] = self._clock() + 2 * self.tolerance_s
            if len(self._seen) > MAX_REMEMBERED:
                for key, _ in sorted(self._seen.items(), key=lambda item: item[1])[: len(self._seen) - MAX_REMEMBERED]:
                    del self._seen[key]
            if self.state_path:
                self._save()

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, expiry in self._seen.items() if expiry < now]:
            del self._seen[key]

    def _load(self) -> None:
        assert self.state_path is not None
        try:
            with open(self.state_path, "rb") as f:
                raw = f.read(MAX_CACHE_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            _logger.warning("replay cache %s cannot be read (%s); starting with an empty one", self.state_path, exc)
            return
        try:
            data = json.loads(raw) if len(raw) <= MAX_CACHE_FILE_BYTES else None
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("seen"), dict):
            _logger.warning("replay cache %s is not one this worker wrote; starting with an empty one", self.state_path)
            return
        now = self._clock()
        for key, expiry in list(data["seen"].items())[: 2 * MAX_REMEMBERED]:
            if isinstance(key, str) and len(key) == 64 and isinstance(expiry, (int, float)) and expiry >= now:
                self._seen[key] = float(expiry)

    def _save(self) -> None:
        assert self.state_path is not None
        folder = os.path.dirname(self.state_path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".deliveries-", dir=folder)
            with os.fdopen(fd, "w") as f:
                json.dump({"seen": self._seen}, f)
            os.replace(tmp, self.state_path)
        except OSError as exc:  # the delivery is still answered; a replay after a restart might then pass
            _logger.warning("replay cache %s cannot be written: %s", self.state_path, exc)


def _key(delivery_id: str) -> str:
    """What the replay cache stores for a delivery id: its sha256 (bounded size, whatever the id)."""
    return hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Reply:
    status: int
    body: Dict[str, Any]


def _read_json(body: bytes) -> Dict[str, Any]:
    expected = "MLflow sends a JSON object with entity, action, timestamp and data"
    try:
        payload = json.loads(body)
    except RecursionError:
        raise DeliveryRejected(HTTPStatus.BAD_REQUEST, f"body is JSON nested too deeply to read; {expected}") from None
    except ValueError as exc:  # UnicodeDecodeError included; also ints over Python's 4,300-digit limit
        raise DeliveryRejected(HTTPStatus.BAD_REQUEST, f"body is not JSON ({_plain(exc)}); {expected}") from None
    if not isinstance(payload, dict):
        raise DeliveryRejected(
            HTTPStatus.BAD_REQUEST, f"body is not a JSON object (received a {type(payload).__name__}); {expected}"
        )
    return payload


class WebhookReceiver:
    """Turns one HTTP delivery into a reply, queueing an export job when it asks for one, or an alias check
    (``guard``) when an alias was set or removed."""

    def __init__(self, worker: ExportWorker, verifier: SignatureVerifier, guard: Optional[AliasGuard] = None) -> None:
        self.worker = worker
        self.verifier = verifier
        self.guard = guard if guard is not None else AliasGuard(worker.client)

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
        payload = _read_json(body)
        event = (payload.get("entity"), payload.get("action"))
        if event in ALIAS_EVENTS:
            return self._alias(payload.get("data"), deleted=event[1] == "deleted")
        if event != EVENT:
            ignored = f"event {_plain(event[0])}.{_plain(event[1])} is not one of {', '.join(EVENTS)}"
            return Reply(HTTPStatus.OK, {"ignored": ignored})
        data = payload.get("data")
        if not isinstance(data, dict):
            raise DeliveryRejected(
                HTTPStatus.BAD_REQUEST,
                "data must hold string name, version, key and value; "
                + ("data is missing" if data is None else f"received {type(data).__name__} data"),
            )
        for key in ("name", "version", "key"):
            if not isinstance(data.get(key), str):
                raise DeliveryRejected(
                    HTTPStatus.BAD_REQUEST,
                    f"data must hold string name, version, key and value; data.{key} is "
                    f"{_shown(data.get(key)) if key in data else 'missing'}",
                )
        if data["key"] != Tag.REQUEST:
            return Reply(HTTPStatus.OK, {"ignored": f"tag {_shown(data['key'])} is not {Tag.REQUEST}"})
        value = data.get("value")
        if value is not None and not isinstance(value, str):
            raise DeliveryRejected(
                HTTPStatus.BAD_REQUEST,
                f"data.value must be a string (the tag's value, e.g. 'onnx'); received {type(value).__name__} "
                f"{_shown(value)}",
            )
        if not value or not value.strip():
            return Reply(HTTPStatus.OK, {"ignored": f"{Tag.REQUEST} is empty"})
        name, version = data["name"], data["version"]
        self._check_version(name, version)
        queued, why = self._submit(Job(name, version, value))
        _logger.info("request %r for models:/%s/%s: %s", value, name, version, why)
        return Reply(HTTPStatus.ACCEPTED if queued else HTTPStatus.OK,
                     {"status": why, "model_version": f"models:/{name}/{version}", "request": value})

    def _alias(self, data: Any, *, deleted: bool = False) -> Reply:
        """An alias was set or removed: queue its model for a pass of the alias guard."""
        expected = "data must hold string name and alias (and version, for model_version_alias.created)"
        if not isinstance(data, dict):
            raise DeliveryRejected(HTTPStatus.BAD_REQUEST, f"{expected}; "
                                   + ("data is missing" if data is None else f"received {type(data).__name__} data"))
        for key in ("name", "alias"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise DeliveryRejected(HTTPStatus.BAD_REQUEST, f"{expected}; data.{key} is "
                                       f"{_shown(data.get(key)) if key in data else 'missing'}")
        name, alias = data["name"], data["alias"]
        version = data.get("version")
        told = None if deleted or not isinstance(version, str) or not _VERSION.fullmatch(version) else version
        try:
            queued = self.guard.submit(name, alias, told)
        except queue.Full:
            raise DeliveryRejected(HTTPStatus.SERVICE_UNAVAILABLE,
                                   "the alias guard's queue is full; retry later") from None
        _logger.info("alias @%s of %r changed (to %s): %s", alias, name, _shown(data.get("version")),
                     "queued for the policy check" if queued else "a check of this model is already queued")
        return Reply(HTTPStatus.ACCEPTED if queued else HTTPStatus.OK,
                     {"status": "queued" if queued else "already queued", "registered_model": name, "alias": alias})

    def _submit(self, job: Job) -> tuple[bool, str]:
        try:
            return self.worker.submit(job)
        except QueueFull as exc:
            raise DeliveryRejected(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None

    def _check_version(self, name: str, version: str) -> None:
        if not _VERSION.fullmatch(version):
            raise DeliveryRejected(
                HTTPStatus.BAD_REQUEST,
                f"data.version must be a model version number in digits, e.g. '3'; received {_shown(version)}",
            )
        try:
            self.worker.client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise DeliveryRejected(
                    HTTPStatus.NOT_FOUND, f"models:/{name}/{version} does not exist: {reason(exc)}"
                ) from None
            if exc.error_code == "INVALID_PARAMETER_VALUE":
                raise DeliveryRejected(
                    HTTPStatus.BAD_REQUEST, f"the registry refused models:/{_plain(name)}/{version}: {reason(exc)}"
                ) from None
            raise DeliveryRejected(HTTPStatus.SERVICE_UNAVAILABLE, f"registry unavailable: {reason(exc)}") from None
