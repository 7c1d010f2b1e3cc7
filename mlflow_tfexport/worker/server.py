"""The HTTP side: ``POST /webhook`` (deliveries) and ``GET /health``, bounded against hostile clients.

Every connection has a socket timeout (``timeout_s``, 10 s by default): an idle client is dropped instead of
holding a thread. Whatever the pace of its bytes, a connection must have sent its request line and headers
within ``header_timeout_s`` (10 s by default) of being accepted, and its body within ``body_timeout_s`` (30 s)
after the headers, or it is closed (a client dribbling one header line every few seconds included). At most
``max_connections`` connections are served at once; when all are taken, the one that has waited longest for
its headers is closed to make room (so slow clients cannot lock genuine deliveries out), and only when every
connection is past its headers does a new one get 503 at once. The listen backlog holds
``LISTEN_BACKLOG`` connections waiting to be accepted. Content-Length is read strictly (ASCII digits,
at most ``MAX_BODY_BYTES``). With TLS, the handshake runs on the connection's thread, under its timeout,
so a client that never finishes it holds up no one else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

from mlflow_tfexport.registry.attest import GUARD_SECRET_ENV, Signer
from mlflow_tfexport.worker.fetch import DataPolicy
from mlflow_tfexport.worker.guard import AliasGuard, guard_all
from mlflow_tfexport.worker.memory import STATE_DIR_ENV, GuardMemory
from mlflow_tfexport.worker.poll import recover
from mlflow_tfexport.worker.queue import MAX_ATTEMPTS, ExportWorker
from mlflow_tfexport.worker.webhook import DEFAULT_TOLERANCE_S, SignatureVerifier, WebhookReceiver

_logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook"
MAX_BODY_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 10.0
#: Seconds a connection has, from being accepted, to send its request line and headers.
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: Seconds a connection has, after its headers, to send its body.
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Seconds a new connection waits for the slot of an evicted slow one before it gets 503.
EVICT_WAIT_S = 2.0
_HEADERS, _BODY = "headers", "body"
#: Where ``mlflow-tfexport worker`` keeps the ids of accepted deliveries (``--replay-cache``).
DEFAULT_REPLAY_CACHE = "~/.cache/mlflow-tfexport/webhook-deliveries.json"
LISTEN_BACKLOG = 128
MAX_CONNECTIONS = 256
_CONTENT_LENGTH = re.compile(r"[0-9]{1,16}")  # ASCII only: str.isdigit() also accepts "²" and "٣"


def _json_response(status: HTTPStatus, body: Dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + data


class WorkerServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them, each under a header and a body deadline.

    When every slot is taken, the connection that has waited longest for its headers is closed to make room;
    when none is still sending headers, the new one is answered 503 at once.
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: Tuple[str, int], handler: Any, *, max_connections: int = MAX_CONNECTIONS,
                 header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        for label, value in (("header_timeout_s", header_timeout_s), ("body_timeout_s", body_timeout_s)):
            if not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, received {value!r}; e.g. 10.")
        self.max_connections = max(1, int(max_connections))
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        # connection -> (deadline, accepted at, phase): the connections still sending headers or a body.
        self._reading: Dict[Any, Tuple[float, float, str]] = {}
        self._reading_lock = threading.Lock()
        super().__init__(address, handler)

    def reading(self, conn: Any, phase: Optional[str]) -> None:
        """Note that ``conn`` now sends its headers or its body (``phase``), or is done reading (None)."""
        now = time.monotonic()
        with self._reading_lock:
            if phase is None:
                self._reading.pop(conn, None)
            else:
                started = self._reading.get(conn, (0.0, now, ""))[1]
                limit = self.header_timeout_s if phase == _HEADERS else self.body_timeout_s
                self._reading[conn] = (now + limit, started, phase)

    def _close(self, conn: Any) -> None:
        with contextlib.suppress(OSError):  # the handler's blocked read returns: its thread ends
            conn.shutdown(socket.SHUT_RDWR)

    def service_actions(self) -> None:
        """Close the connections past their header or body deadline (every poll of ``serve_forever``)."""
        now = time.monotonic()
        with self._reading_lock:
            late = [c for c, (deadline, _, _) in self._reading.items() if deadline < now]
            for conn in late:
                self._reading.pop(conn, None)
        for conn in late:
            self._close(conn)

    def _evict_slowest(self) -> bool:
        """Close the connection that has waited longest for its headers; False when there is none."""
        with self._reading_lock:
            waiting: List[Tuple[float, Any]] = [(started, c) for c, (_, started, phase) in self._reading.items()
                                                if phase == _HEADERS]
            if not waiting:
                return False
            conn = min(waiting, key=lambda item: item[0])[1]
            self._reading.pop(conn, None)
        self._close(conn)
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not (
            self._evict_slowest() and self._slots.acquire(timeout=EVICT_WAIT_S)
        ):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.reading(request, None)
            self._slots.release()

    def _refuse(self, request: Any) -> None:
        if not isinstance(request, ssl.SSLSocket):  # a TLS client would first need a handshake: just close
            try:
                request.settimeout(1.0)
                request.sendall(_json_response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"error": f"the worker serves {self.max_connections} connections at once; retry later"},
                ))
            except OSError:
                pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away, timed out or failed the TLS handshake: not the worker's error.
        _logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mlflow-tfexport-worker"
    receiver: WebhookReceiver
    timeout = DEFAULT_TIMEOUT_S  # socket timeout of each connection (make_server sets it per server)

    server: WorkerServer

    def setup(self) -> None:
        self.server.reading(self.request, _HEADERS)
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, under the timeout, not in the accepting thread
        super().setup()

    def _reply(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_one_request(self) -> None:
        self.server.reading(self.request, _HEADERS)  # each request on a kept-alive connection too
        super().handle_one_request()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.reading(self.request, None)
        if self.path.rstrip("/") == "/health":
            self._reply(HTTPStatus.OK, {"status": "ok", "pending": self.receiver.worker.pending})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}; deliveries go to POST /webhook"})

    def _content_length(self) -> Optional[int]:
        """The body's length, or None once an error reply is sent."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._reply(HTTPStatus.LENGTH_REQUIRED,
                        {"error": "chunked bodies are not accepted; send the body with a Content-Length header"})
            return None
        values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if not values:
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return None
        text = values[0]
        if len(set(values)) > 1 or not _CONTENT_LENGTH.fullmatch(text):
            shown = ", ".join(repr(v[:20]) for v in values[:3])
            self._reply(HTTPStatus.BAD_REQUEST, {
                "error": f"Content-Length must be one byte count in ASCII digits, e.g. 512; received {shown}"
            })
            return None
        length = int(text)
        if length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        {"error": f"body over {MAX_BODY_BYTES} bytes (Content-Length {length})"})
            return None
        return length

    def _read_body(self, length: int) -> Optional[bytes]:
        """The body, or None once an error reply is sent (too slow, or the client stopped sending)."""
        limit_s = self.server.body_timeout_s
        deadline = time.monotonic() + limit_s
        chunks = []
        remaining = length
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            self._reply(HTTPStatus.REQUEST_TIMEOUT, {
                "error": f"the body ({length} bytes by Content-Length) did not arrive within {limit_s:g} s"
            })
            return None
        if remaining:
            self.close_connection = True
            self._reply(HTTPStatus.BAD_REQUEST,
                        {"error": f"the body ended after {length - remaining} of {length} bytes (Content-Length)"})
            return None
        return b"".join(chunks)

    def do_POST(self) -> None:  # noqa: N802
        self.server.reading(self.request, _BODY)
        if self.path.rstrip("/") != WEBHOOK_PATH:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}; deliveries go to POST /webhook"})
            return
        length = self._content_length()
        if length is None:
            return
        body = self._read_body(length)
        self.server.reading(self.request, None)
        if body is None:
            return
        try:
            reply = self.receiver.handle(dict(self.headers.items()), body)
        except Exception:  # a bug must still get an answer, and the worker must go on
            _logger.exception("webhook delivery from %s failed", self.address_string())
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR,
                        {"error": "the worker failed on this delivery; its log has the details"})
            return
        self._reply(reply.status, reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s " + format, self.address_string(), *args)


def make_server(
    receiver: WebhookReceiver,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> WorkerServer:
    """An HTTP server answering ``POST /webhook`` (deliveries) and ``GET /health``.

    ``timeout_s`` is each connection's socket timeout: an idle connection is closed after it.
    ``header_timeout_s``: time from accept to the end of the headers; ``body_timeout_s``: time for the body.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, received {timeout_s!r}; e.g. 10.")
    handler = type("Handler", (_Handler,), {"receiver": receiver, "timeout": float(timeout_s)})
    return WorkerServer((host, port), handler, max_connections=max_connections,
                        header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)


def serve(
    *,
    secret: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    threads: int = 1,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ready: Optional[Callable[[ThreadingHTTPServer], None]] = None,
    data_policy: Optional[DataPolicy] = None,
    max_attempts: int = MAX_ATTEMPTS,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    replay_cache: Optional[str] = None,
    state_dir: Optional[str] = None,
    guard_secret: Optional[str] = None,
) -> None:
    """Serve webhook deliveries until interrupted (``mlflow-tfexport worker``).

    At start, the worker cleans up after exports whose process died and queues again the requests whose
    worker died mid-export (``poll.recover``), since in webhook mode no delivery would ask for them again, and
    checks the aliases moved while it was not running (``guard.guard_all``).

    The guard signs its records with ``guard_secret`` (default: ``MLFLOW_TFEXPORT_GUARD_SECRET``, else the
    webhook ``secret``) and keeps its memory of guarded models in ``state_dir`` (default:
    ``MLFLOW_TFEXPORT_STATE_DIR``; unset: in the process only; see ``memory``).
    """
    signer = Signer(guard_secret or os.environ.get(GUARD_SECRET_ENV) or secret)
    state_dir = state_dir or os.environ.get(STATE_DIR_ENV) or None
    worker = ExportWorker(threads=threads, data_policy=data_policy, max_attempts=max_attempts,
                          signer=signer).start()
    memory = GuardMemory.in_dir(state_dir, _registry_uri()) if state_dir else GuardMemory()
    guard = AliasGuard(worker.client, signer=signer, memory=memory).start()
    verifier = SignatureVerifier(secret, tolerance_s, state_path=replay_cache)
    server = make_server(WebhookReceiver(worker, verifier, guard), host, port, timeout_s=timeout_s,
                         header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)
    scheme = "http"
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "https"
    # In the background: a registry that is slow to answer must not keep deliveries waiting.
    threading.Thread(target=_at_start, args=(worker, guard), name="tfexport-recovery", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    _logger.info("listening on %s://%s:%s%s", scheme, bound_host, bound_port, WEBHOOK_PATH)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        guard.stop(timeout=30)
        worker.stop()


def _registry_uri() -> str:
    import mlflow

    return str(mlflow.get_registry_uri())


def _at_start(worker: ExportWorker, guard: AliasGuard) -> None:
    recover(worker)
    try:
        guard_all(worker.client, via="start", signer=guard.signer, memory=guard.memory, journal=guard.journal)
    except Exception as exc:  # the registry away at start: the next alias delivery checks its model
        _logger.warning("could not check the aliases at start: %s", exc)
