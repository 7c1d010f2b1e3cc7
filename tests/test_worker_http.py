"""The worker's HTTP side under hostile clients: every request gets an answer, no thread is held for ever.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and in time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
from helpers import worker_in_thread
from mlflow import MlflowClient

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.worker import (
    DEFAULT_TIMEOUT_S,
    TIMESTAMP_HEADER,
    ExportWorker,
    SignatureVerifier,
    WebhookReceiver,
    make_server,
    sign,
    signed_headers,
)

SECRET = "http-secret-" + uuid.uuid4().hex


def _fake_export(uri: str, **kwargs: Any) -> Any:
    return SimpleNamespace(model_uri=f"models:/{uri.split('/')[1]}/99")


class Served(SimpleNamespace):
    port: int
    server: Any
    jobs: ExportWorker


def _start(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def registry_worker(tracking_uri: str, tmp_path: Any) -> Iterator[ExportWorker]:
    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "unused"), tags={Tag.FORMAT: "transformers"})
    jobs = ExportWorker(client, export_fn=_fake_export).start()
    try:
        yield jobs
    finally:
        jobs.stop(timeout=30)


@pytest.fixture
def served(registry_worker: ExportWorker) -> Iterator[Served]:
    server = make_server(WebhookReceiver(registry_worker, SignatureVerifier(SECRET)), "127.0.0.1", 0)
    _start(server)
    try:
        yield Served(port=server.server_address[1], server=server, jobs=registry_worker)
    finally:
        server.shutdown()
        server.server_close()


def _raw(port: int, data: bytes, timeout: float = 10) -> Tuple[int, Dict[str, Any]]:
    """Send ``data`` as is; (status, JSON body) of the answer, or (0, {}) when the connection ends unanswered."""
    chunks: List[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return 0, {}
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def _post_raw(port: int, length_header: bytes, body: bytes = b"{}") -> Tuple[int, Dict[str, Any]]:
    return _raw(port, b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n" + length_header + b"\r\n\r\n" + body)


# ----------------------------------------------------------------------------------- Content-Length


@pytest.mark.parametrize(
    "header, status",
    [
        (b"Content-Length: \xb2", 400),  # "²" (latin-1): str.isdigit() says yes, int() says no
        (b"Content-Length: \xb3\xb9", 400),  # "³¹"
        (b"Content-Length: -2", 400),
        (b"Content-Length: 1e3", 400),
        (b"Content-Length: 0x10", 400),
        pytest.param(b"Content-Length: " + b"9" * 5000, 400, id="5000-digits"),  # past int()'s 4,300-digit limit
        (b"Content-Length: 2\r\nContent-Length: 3", 400),  # two different lengths: which one?
        (b"Content-Length: 99999999", 413),
        (b"Transfer-Encoding: chunked", 411),
        (b"X-Nothing: 1", 411),
    ],
)
def test_content_length_is_read_strictly(served: Served, header: bytes, status: int) -> None:
    got, body = _post_raw(served.port, header)
    assert got == status, (header[:40], got, body)
    assert body["error"]
    if status == 400:
        assert "Content-Length must be one byte count in ASCII digits" in body["error"]
    # The server goes on answering.
    assert requests.get(f"http://127.0.0.1:{served.port}/health", timeout=10).status_code == 200


def test_a_body_shorter_than_its_content_length_is_refused(registry_worker: ExportWorker) -> None:
    server = make_server(WebhookReceiver(registry_worker, SignatureVerifier(SECRET)), "127.0.0.1", 0, timeout_s=1)
    _start(server)
    try:
        started = time.monotonic()
        got, body = _raw(server.server_address[1], b"POST /webhook HTTP/1.0\r\nContent-Length: 100\r\n\r\n{}")
        # The client sent 2 of 100 bytes and waits: the server's socket timeout ends the wait with an answer.
        assert got == 408 and "did not arrive" in body["error"]
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------------- signed but malformed


def _deliver(port: int, body: bytes, **kw: Any) -> requests.Response:
    headers = signed_headers(SECRET, body, delivery_id=uuid.uuid4().hex, **kw)
    return requests.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers, timeout=30)


def _delivery(data: Any, **top: Any) -> bytes:
    return json.dumps({"entity": "model_version_tag", "action": "set", "data": data, **top}).encode()


_REQUEST = {"name": "m", "version": "1", "key": Tag.REQUEST, "value": "onnx"}


@pytest.mark.parametrize(
    "body, mentions",
    [
        pytest.param(_delivery({**_REQUEST, "value": 5}), "data.value must be a string", id="int-value"),
        pytest.param(_delivery({**_REQUEST, "value": ["onnx"]}), "data.value must be a string", id="list-value"),
        pytest.param(_delivery({**_REQUEST, "value": {"f": 1}}), "data.value must be a string", id="dict-value"),
        pytest.param(_delivery({**_REQUEST, "name": 7}), "data.name is 7", id="int-name"),
        pytest.param(_delivery({**_REQUEST, "version": 1}), "data.version is 1", id="int-version"),
        pytest.param(_delivery([1, 2]), "received list data", id="list-data"),
        pytest.param(b'{"entity": ' + b"1" * 4301 + b"}", "body is not JSON", id="int-past-4300-digits"),
        pytest.param(b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply", id="nested"),
        pytest.param(b"[" * 200_000, "nested too deeply", id="nested-unclosed"),
        pytest.param(b"\xff\xfe{}", "body is not JSON", id="not-utf8"),
        pytest.param(b"null", "not a JSON object", id="null"),
    ],
)
def test_signed_malformed_deliveries_get_400_with_the_reason(served: Served, body: bytes, mentions: str) -> None:
    r = _deliver(served.port, body)
    assert r.status_code == 400, r.text
    assert mentions in r.json()["error"]
    assert served.jobs.pending == 0


def test_a_version_that_is_not_a_number_is_400_naming_the_field(served: Served) -> None:
    for version in ("abc", "", " 1", "1.0", "²", "9" * 40):
        r = _deliver(served.port, _delivery({**_REQUEST, "version": version}))
        assert r.status_code == 400, (version, r.status_code, r.text)
        assert "data.version must be a model version number" in r.json()["error"]
    r = _deliver(served.port, _delivery({**_REQUEST, "name": ""}))
    assert r.status_code == 400 and "registry refused" in r.json()["error"], r.text


def test_event_fields_of_any_type_are_ignored_with_an_answer(served: Served) -> None:
    r = _deliver(served.port, json.dumps({"entity": ["x"] * 1000, "action": {"a": 1}}).encode())
    assert r.status_code == 200 and r.json()["ignored"].startswith("event ['x', ")
    assert len(r.json()["ignored"]) < 300  # the received value is cut short, not echoed whole


@pytest.mark.parametrize(
    "timestamp",
    [pytest.param("1" * 4300, id="4300-digits"), pytest.param("9" * 16, id="16-digits"), "\u00b2", "-1700000000"],
)
def test_malformed_signed_timestamps_are_401(served: Served, timestamp: str) -> None:
    body = _delivery(_REQUEST)
    headers = signed_headers(SECRET, body, delivery_id="d-ts")
    headers[TIMESTAMP_HEADER] = timestamp
    headers["X-MLflow-Signature"] = sign(SECRET, "d-ts", timestamp, body)  # validly signed, timestamp and all
    r = requests.post(f"http://127.0.0.1:{served.port}/webhook", data=body, timeout=30,
                      headers={k: v.encode("latin-1") for k, v in headers.items()})
    assert r.status_code == 401, r.text
    assert "malformed X-MLflow-Timestamp" in r.json()["error"] and "unix seconds" in r.json()["error"]


def test_an_unexpected_error_is_a_500_with_a_message(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    receiver = served.server.RequestHandlerClass.receiver
    monkeypatch.setattr(receiver, "handle", broken)
    r = _deliver(served.port, _delivery(_REQUEST))
    assert r.status_code == 500 and "log has the details" in r.json()["error"]


# ----------------------------------------------------------------------------------- timeouts, backlog, connections


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_idle_connections_are_closed_after_the_timeout(registry_worker: ExportWorker) -> None:
    assert make_server.__kwdefaults__["timeout_s"] == DEFAULT_TIMEOUT_S == 10
    server = make_server(WebhookReceiver(registry_worker, SignatureVerifier(SECRET)), "127.0.0.1", 0, timeout_s=1)
    _start(server)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    half.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
    try:
        deadline = time.monotonic() + 5
        while _handler_threads() < 17 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        for sock in [*idle, half]:  # the server hangs up: recv returns b"" (not a client-side timeout)
            sock.settimeout(max(0.1, started + 8 - time.monotonic()))
            assert sock.recv(1024) == b""
        assert time.monotonic() - started < 8
        deadline = time.monotonic() + 5
        while _handler_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _handler_threads() == 0, "a thread still serves a closed idle connection"
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        for sock in [*idle, half]:
            sock.close()
        server.shutdown()
        server.server_close()


def _connect(port: int, timeout: float) -> Optional[socket.socket]:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None


def test_64_clients_at_once_are_all_answered(registry_worker: ExportWorker) -> None:
    server = make_server(WebhookReceiver(registry_worker, SignatureVerifier(SECRET)), "127.0.0.1", 0)
    port = server.server_address[1]
    # The server listens but does not accept yet (a busy accept loop): the listen backlog must hold them all.
    socks: List[Optional[socket.socket]] = [None] * 64

    def connect(i: int) -> None:
        socks[i] = _connect(port, timeout=3)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    connected = [s for s in socks if s is not None]
    serving = False
    try:
        assert len(connected) == 64, f"{64 - len(connected)} of 64 connections refused or timed out (backlog)"
        _start(server)
        serving = True
        answers: List[Optional[int]] = [None] * 64

        def ask(i: int, sock: socket.socket) -> None:
            sock.settimeout(30)
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            answers[i] = int(data.split()[1]) if data else 0

        threads = [threading.Thread(target=ask, args=(i, s)) for i, s in enumerate(connected)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == [200] * 64
        # And 64 new clients at once, each a full request.
        barrier = threading.Barrier(64)
        codes: List[Any] = [None] * 64

        def post(i: int) -> None:
            barrier.wait(10)
            try:
                codes[i] = requests.post(f"http://127.0.0.1:{port}/webhook", data=b"{}", timeout=30).status_code
            except requests.RequestException as exc:
                codes[i] = repr(exc)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert codes == [401] * 64  # unsigned: every one answered
    finally:
        for s in connected:
            s.close()
        if serving:
            server.shutdown()
        server.server_close()


def test_connections_past_the_limit_get_503_at_once(registry_worker: ExportWorker) -> None:
    """Every slot held by a connection past its headers (sending a body): a new one gets 503 at once. (Slots held
    by connections still sending headers are freed for it instead: test_worker_data_trust.py.)"""
    server = make_server(WebhookReceiver(registry_worker, SignatureVerifier(SECRET)), "127.0.0.1", 0,
                         timeout_s=5, max_connections=2)
    _start(server)
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    for sock in held:  # headers sent, the body never comes
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n")
    try:
        deadline = time.monotonic() + 5
        while _handler_threads() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # both handlers past the headers they were sent at once
        started = time.monotonic()
        status, body = _raw(port, b"GET /health HTTP/1.0\r\n\r\n", timeout=4)
        assert status == 503 and "2 connections at once" in body["error"]
        assert time.monotonic() - started < 2
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while _handler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_stalled_tls_handshake_holds_up_no_one(tracking_uri: str, tmp_path: Any) -> None:
    """With TLS, the handshake runs on the connection's thread: one silent client does not block accept."""
    from test_worker import _self_signed

    cert, key = _self_signed(tmp_path)
    with worker_in_thread(secret=SECRET, certfile=cert, keyfile=key, timeout_s=2) as server:
        port = server.server_address[1]
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # connects, never says hello
        try:
            time.sleep(0.2)
            r = requests.get(f"https://127.0.0.1:{port}/health", verify=cert, timeout=1.5)
            assert r.status_code == 200
            silent.settimeout(5)
            assert silent.recv(1024) == b""  # dropped after its 2 s timeout
        finally:
            silent.close()
