"""The export worker: request grammar, webhook signatures, and on-demand exports end to end.

The end-to-end tests start a real ``mlflow server`` (SQLite, artifacts served by it) once for the module,
register a webhook with ``MlflowClient.create_webhook`` and let the server deliver ``model_version_tag.set``
events to the worker on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import mlflow
import pytest
import requests
from helpers import version_numbers, wait_for, worker_in_thread
from mlflow import MlflowClient
from servers import free_port, stop, tail

import mlflow_tfexport
from mlflow_tfexport import worker as wk
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.worker import (
    DeliveryRejected,
    ExportSpec,
    ExportWorker,
    Job,
    RequestError,
    SignatureVerifier,
    WebhookReceiver,
    format_status,
    is_pending,
    make_server,
    parse_request,
    sign,
    signed_headers,
)

SECRET = "test-secret-" + uuid.uuid4().hex
WAIT_S = 120.0
SERVER_START_S = 120.0


def _payload(name: str = "m", version: str = "1", key: str = Tag.REQUEST, value: str = "onnx") -> bytes:
    """A delivery body exactly as MLflow builds it (json.dumps of entity, action, timestamp, data)."""
    return json.dumps(
        {
            "entity": "model_version_tag",
            "action": "set",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": name, "version": version, "key": key, "value": value},
        }
    ).encode()


# ----------------------------------------------------------------------------------- request grammar


@pytest.mark.parametrize(
    "value, labels",
    [
        ("onnx", ["onnx"]),
        ("ONNX", ["onnx"]),
        ("onnx:opset=18", ["onnx:opset=18"]),
        ("torchscript:1x128", ["torchscript:1x128"]),
        ("onnx,torchscript:1x32+1x128", ["onnx", "torchscript:1x32+1x128"]),
        (" onnx , torchscript:1x128+1x32 ", ["onnx", "torchscript:1x32+1x128"]),
        ("onnx,onnx", ["onnx"]),
        ("neuron:1x128:target=inf2:atol=1e-3", ["neuron:1x128:atol=0.001:target=inf2"]),
        ("onnx:exporter=dynamo:opset=18", ["onnx:opset=18:exporter=dynamo"]),
    ],
)
def test_request_grammar(value: str, labels: List[str]) -> None:
    assert [s.label for s in parse_request(value)] == labels


def test_request_spec_becomes_export_arguments() -> None:
    (spec,) = parse_request("torchscript:1x32+1x128:atol=1e-3")
    assert spec == ExportSpec("torchscript", ((1, 32), (1, 128)), atol=1e-3)
    assert spec.export_kwargs() == {
        "format": "torchscript", "opset": None, "trace_shape": [(1, 32), (1, 128)], "atol": 1e-3,
        "exporter": None, "neuron_target": None,
    }
    # A spec's label parses back to the same spec.
    assert parse_request(spec.label) == [spec]


@pytest.mark.parametrize(
    "value, mentions",
    [
        ("tensorflow", "unknown format 'tensorflow'"),
        ("onnx,tflite", "unknown format 'tflite'"),
        ("", "is empty"),
        ("onnx,,torchscript", "empty entry"),
        ("onnx:opset=x", "opset must be an integer"),
        ("torchscript:1x0", "must be positive"),
        ("torchscript:1x32:1x64", "trace shapes twice"),
        ("onnx:color=red", "cannot read 'color=red'"),
        ("onnx:atol=-1", "atol must be a positive number"),
        (",".join(f"torchscript:1x{n}" for n in range(8, 17)), "at most 8"),
    ],
)
def test_request_grammar_refuses_bad_values(value: str, mentions: str) -> None:
    with pytest.raises(RequestError, match=mentions) as err:
        parse_request(value)
    assert "e.g." in err.value.message or "at most" in err.value.message or "positive" in err.value.message


def test_status_text() -> None:
    assert format_status([("onnx", "models:/m/3")]) == "done: models:/m/3"
    assert (
        format_status([("onnx", "models:/m/3"), ("torchscript:1x128", "models:/m/4")])
        == "done: onnx -> models:/m/3, torchscript:1x128 -> models:/m/4"
    )
    assert format_status([], [("", "boom")]) == "failed: boom"
    assert (
        format_status([("onnx", "models:/m/3")], [("torchscript:1x128", "boom")])
        == "failed: torchscript:1x128: boom (done: onnx -> models:/m/3)"
    )


def test_pending_means_no_answer_for_the_current_request() -> None:
    assert is_pending({Tag.REQUEST: "onnx"})
    assert not is_pending({Tag.REQUEST: "onnx", Tag.REQUEST_STATUS: "done: models:/m/2", Tag.REQUEST_HANDLED: "onnx"})
    assert is_pending({Tag.REQUEST: "onnx:opset=18", Tag.REQUEST_STATUS: "done: x", Tag.REQUEST_HANDLED: "onnx"})
    # "running" has no handled value yet: a restarted poller picks it up again (the export is idempotent).
    assert is_pending({Tag.REQUEST: "onnx", Tag.REQUEST_STATUS: "running: onnx (1/1)"})
    assert not is_pending({Tag.REQUEST: "  "})
    assert not is_pending({})


# ----------------------------------------------------------------------------------- signatures


def test_signature_is_the_one_mlflow_sends() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature  # what the server calls

    body = _payload()
    assert sign(SECRET, "d-1", "1700000000", body) == _generate_hmac_signature(
        SECRET, "d-1", "1700000000", body.decode()
    )
    from mlflow.webhooks import constants

    assert (wk.SIGNATURE_HEADER, wk.TIMESTAMP_HEADER, wk.DELIVERY_ID_HEADER) == (
        constants.WEBHOOK_SIGNATURE_HEADER, constants.WEBHOOK_TIMESTAMP_HEADER, constants.WEBHOOK_DELIVERY_ID_HEADER
    )


def _rejected(verifier: SignatureVerifier, headers: Dict[str, str], body: bytes) -> DeliveryRejected:
    with pytest.raises(DeliveryRejected) as err:
        verifier.verify(headers, body)
    return err.value


def test_verifier_accepts_a_signed_fresh_delivery() -> None:
    body = _payload()
    verifier = SignatureVerifier(SECRET)
    assert verifier.verify(signed_headers(SECRET, body, delivery_id="d-1"), body) == "d-1"
    # Header names are case-insensitive, as in HTTP.
    lower = {k.lower(): v for k, v in signed_headers(SECRET, body, delivery_id="d-2").items()}
    assert verifier.verify(lower, body) == "d-2"
    # Standard Webhooks allows several space-separated signatures (key rotation): one must match.
    headers = signed_headers(SECRET, body, delivery_id="d-3")
    headers[wk.SIGNATURE_HEADER] = sign("old-secret", "d-3", headers[wk.TIMESTAMP_HEADER], body) + " " + headers[
        wk.SIGNATURE_HEADER
    ]
    assert verifier.verify(headers, body) == "d-3"


@pytest.mark.parametrize("drop", [wk.SIGNATURE_HEADER, wk.TIMESTAMP_HEADER, wk.DELIVERY_ID_HEADER])
def test_unsigned_delivery_is_401(drop: str) -> None:
    body = _payload()
    headers = signed_headers(SECRET, body, delivery_id="d-1")
    del headers[drop]
    err = _rejected(SignatureVerifier(SECRET), headers, body)
    assert err.status == 401 and "unsigned" in err.reason and drop in err.reason


def test_forged_delivery_is_403() -> None:
    body = _payload()
    verifier = SignatureVerifier(SECRET)
    wrong_secret = signed_headers("not-the-secret", body, delivery_id="d-1")
    assert _rejected(verifier, wrong_secret, body).status == 403
    tampered = _payload(value="onnx,torchscript:1x128")  # signed body, different body sent
    err = _rejected(verifier, signed_headers(SECRET, body, delivery_id="d-2"), tampered)
    assert err.status == 403 and "forged" in err.reason
    # The timestamp and delivery id are signed too: changing either breaks the signature.
    headers = signed_headers(SECRET, body, delivery_id="d-3")
    headers[wk.DELIVERY_ID_HEADER] = "d-4"
    assert _rejected(verifier, headers, body).status == 403
    headers = signed_headers(SECRET, body, delivery_id="d-5")
    headers[wk.TIMESTAMP_HEADER] = str(int(headers[wk.TIMESTAMP_HEADER]) + 1)
    assert _rejected(verifier, headers, body).status == 403
    headers[wk.TIMESTAMP_HEADER] = "yesterday"
    assert _rejected(verifier, headers, body).status == 401


def test_stale_and_replayed_deliveries_are_refused() -> None:
    body = _payload()
    now = [1_800_000_000.0]
    verifier = SignatureVerifier(SECRET, tolerance_s=300, clock=lambda: now[0])
    old = signed_headers(SECRET, body, delivery_id="d-old", timestamp=int(now[0]) - 301)
    err = _rejected(verifier, old, body)
    assert err.status == 403 and "stale" in err.reason
    future = signed_headers(SECRET, body, delivery_id="d-future", timestamp=int(now[0]) + 301)
    assert _rejected(verifier, future, body).status == 403
    fresh = signed_headers(SECRET, body, delivery_id="d-1", timestamp=int(now[0]) - 299)
    assert verifier.verify(fresh, body) == "d-1"
    verifier.remember("d-1")
    err = _rejected(verifier, fresh, body)
    assert err.status == 409 and "replayed" in err.reason
    # Ids are remembered for as long as their timestamps could still pass, then forgotten.
    now[0] += 10_000
    assert _rejected(verifier, fresh, body).status == 403


def test_a_secret_is_required(tracking_uri: str, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="secret"):
        SignatureVerifier("")
    monkeypatch.delenv(wk.SECRET_ENV, raising=False)
    assert cli_main(["worker", "--port", "0"]) == 2
    assert wk.SECRET_ENV in capsys.readouterr().err


# ----------------------------------------------------------------------------------- receiver over HTTP


class FakeExport:
    """Stands in for ``mlflow_tfexport.export`` in the receiver tests: counts calls, can block, can fail."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, uri: str, **kwargs: Any) -> Any:
        self.calls.append((uri, kwargs))
        self.started.set()
        assert self.release.wait(30)
        name = uri.split("/")[1]
        return SimpleNamespace(model_uri=f"models:/{name}/{10 + len(self.calls)}")


@pytest.fixture
def receiver(tracking_uri: str, tmp_path: Any) -> Iterator[Tuple[str, ExportWorker, FakeExport]]:
    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "unused"), tags={Tag.FORMAT: "transformers"})
    fake = FakeExport()
    jobs = ExportWorker(client, export_fn=fake).start()
    server = make_server(WebhookReceiver(jobs, SignatureVerifier(SECRET)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/webhook", jobs, fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        jobs.stop(timeout=30)


def _post(url: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> requests.Response:
    return requests.post(url, data=body, headers=headers or {"Content-Type": "application/json"}, timeout=10)


def _deliver(url: str, body: bytes, delivery_id: Optional[str] = None, **kw: Any) -> requests.Response:
    return _post(url, body, signed_headers(SECRET, body, delivery_id=delivery_id or uuid.uuid4().hex, **kw))


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    return wait_for(predicate, what, timeout, poll_s=0.25)


def _tags(name: str, version: str = "1", client: Optional[MlflowClient] = None) -> Dict[str, str]:
    return dict((client or MlflowClient()).get_model_version(name, version).tags or {})


def _answered(name: str, request: str, version: str = "1", client: Optional[MlflowClient] = None) -> Dict[str, str]:
    tags = _tags(name, version, client)
    return tags if tags.get(Tag.REQUEST_HANDLED) == request and Tag.REQUEST_STATUS in tags else {}


def test_request_data_tag_becomes_the_exports_validation_data(tracking_uri: str, tmp_path: Any) -> None:
    """``tfexport.request.data`` names the validation data: a path under a ``--data-dir`` of the worker, or a
    registry artifact URI; one that cannot be read fails the request with the reason and exports nothing."""
    from mlflow_tfexport.validation.data import DataFile
    from mlflow_tfexport.worker.fetch import DataPolicy

    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "unused"), tags={Tag.FORMAT: "transformers"})
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    data = allowed / "texts.txt"
    data.write_text("I loved it\nI hated it\n")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(data), "data")
    fake = FakeExport()
    worker = ExportWorker(client, export_fn=fake, data_policy=DataPolicy(data_dirs=(str(allowed),)))
    for value in (str(data), f"runs:/{run.info.run_id}/data/texts.txt"):
        client.set_model_version_tag("m", "1", Tag.REQUEST_DATA, value)
        client.set_model_version_tag("m", "1", Tag.REQUEST, "onnx")
        outcome = worker.process(Job("m", "1", "onnx"))
        assert outcome.status is not None and outcome.status.startswith("done"), outcome.status
        given = fake.calls[-1][1]["validation_data"]
        assert isinstance(given, DataFile) and given.path.endswith("texts.txt")
        assert str(tmp_path) not in given.label and str(tmp_path) not in str(given.source)
    client.set_model_version_tag("m", "1", Tag.REQUEST_DATA, str(allowed / "missing.csv"))
    calls = len(fake.calls)
    outcome = worker.process(Job("m", "1", "onnx"))
    assert outcome.status is not None and outcome.status.startswith("failed")
    assert Tag.REQUEST_DATA in outcome.status and "missing.csv" in outcome.status
    assert len(fake.calls) == calls


def test_bad_deliveries_never_export(receiver: Tuple[str, ExportWorker, FakeExport]) -> None:
    url, jobs, fake = receiver
    MlflowClient().set_model_version_tag("m", "1", Tag.REQUEST, "onnx")
    body = _payload()
    r = _post(url, body)
    assert r.status_code == 401 and "unsigned" in r.json()["error"]
    r = _post(url, body, signed_headers("wrong", body, delivery_id="x"))
    assert r.status_code == 403 and "forged" in r.json()["error"]
    r = _deliver(url, body, timestamp=int(time.time()) - 3600)
    assert r.status_code == 403 and "stale" in r.json()["error"]
    r = _post(url, b"{}", signed_headers(SECRET, body, delivery_id="y"))  # signed for another body
    assert r.status_code == 403
    r = requests.post(url.replace("/webhook", "/other"), data=body, timeout=10)
    assert r.status_code == 404
    time.sleep(0.5)
    assert fake.calls == [] and jobs.pending == 0
    assert Tag.REQUEST_STATUS not in _tags("m")


def test_signed_delivery_exports_and_records_done(receiver: Tuple[str, ExportWorker, FakeExport]) -> None:
    url, jobs, fake = receiver
    MlflowClient().set_model_version_tag("m", "1", Tag.REQUEST, "onnx,torchscript:1x32+1x16")
    body = _payload(value="onnx,torchscript:1x32+1x16")
    r = _deliver(url, body, delivery_id="d-1")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["delivery_id"] == "d-1"
    tags = _wait_for(lambda: _answered("m", "onnx,torchscript:1x32+1x16"), "the status")
    assert tags[Tag.REQUEST_STATUS] == "done: onnx -> models:/m/11, torchscript:1x16+1x32 -> models:/m/12"
    assert [c[1]["format"] for c in fake.calls] == ["onnx", "torchscript"]
    assert fake.calls[1][1]["trace_shape"] == [(1, 16), (1, 32)]
    assert all(c[0] == "models:/m/1" for c in fake.calls)
    # The exact delivery again (a replay): refused, nothing exported.
    r = _post(url, body, signed_headers(SECRET, body, delivery_id="d-1"))
    assert r.status_code == 409 and "replayed" in r.json()["error"]
    assert len(fake.calls) == 2
    # Deliveries about other tags (the worker's own status writes among them) and other events are ignored.
    r = _deliver(url, _payload(key=Tag.REQUEST_STATUS, value="done"))
    assert r.status_code == 200 and "ignored" in r.json()
    other = json.dumps({"entity": "model_version", "action": "created", "data": {}}).encode()
    assert _deliver(url, other).json()["ignored"].startswith("event model_version.created")


def test_duplicate_deliveries_export_once(receiver: Tuple[str, ExportWorker, FakeExport]) -> None:
    url, jobs, fake = receiver
    MlflowClient().set_model_version_tag("m", "1", Tag.REQUEST, "onnx")
    fake.release.clear()  # hold the first export while the duplicates arrive
    body = _payload()
    assert _deliver(url, body).status_code == 202
    assert fake.started.wait(30)
    answers = [_deliver(url, body) for _ in range(3)]  # MLflow retries / the same tag set again: new ids
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["status"] == "already queued or running" for a in answers)
    assert _tags("m")[Tag.REQUEST_STATUS] == "running: onnx (1/1)"
    fake.release.set()
    tags = _wait_for(lambda: _answered("m", "onnx"), "the status")
    assert tags[Tag.REQUEST_STATUS] == "done: models:/m/11"
    assert len(fake.calls) == 1


def test_bad_requests_are_recorded_where_the_user_looks(receiver: Tuple[str, ExportWorker, FakeExport]) -> None:
    url, jobs, fake = receiver
    client = MlflowClient()
    # Unknown format: the status tag of the version says why.
    client.set_model_version_tag("m", "1", Tag.REQUEST, "tensorflow")
    assert _deliver(url, _payload(value="tensorflow")).status_code == 202
    tags = _wait_for(lambda: _answered("m", "tensorflow"), "the status")
    assert tags[Tag.REQUEST_STATUS].startswith("failed: unknown format 'tensorflow'")
    assert "onnx" in tags[Tag.REQUEST_STATUS]
    # A version that does not exist: there is no version to tag, so the HTTP answer says why.
    r = _deliver(url, _payload(version="99"))
    assert r.status_code == 404 and "models:/m/99 does not exist" in r.json()["error"]
    r = _deliver(url, _payload(name="nope"))
    assert r.status_code == 404
    # Malformed but signed: 400.
    assert _deliver(url, b"not json").status_code == 400
    assert _deliver(url, json.dumps({"entity": "model_version_tag", "action": "set"}).encode()).status_code == 400
    # An export that raises: its reason, on one line.
    client.set_model_version_tag("m", "1", Tag.REQUEST, "onnx:opset=99")

    def failing_export(uri: str, **kwargs: Any) -> Any:
        raise ExportError("opset 99 is outside what the legacy exporter supports.\nmore")

    jobs._export_fn = failing_export
    assert _deliver(url, _payload(value="onnx:opset=99")).status_code == 202
    tags = _wait_for(lambda: _answered("m", "onnx:opset=99"), "the status")
    assert tags[Tag.REQUEST_STATUS] == "failed: opset 99 is outside what the legacy exporter supports. more"
    assert fake.calls == []


def test_superseded_request_is_skipped(receiver: Tuple[str, ExportWorker, FakeExport]) -> None:
    url, jobs, fake = receiver
    MlflowClient().set_model_version_tag("m", "1", Tag.REQUEST, "torchscript:1x16")
    outcome = jobs.process(Job("m", "1", "onnx"))  # a late delivery of an older value
    assert outcome.status is None and fake.calls == []
    assert Tag.REQUEST_STATUS not in _tags("m")


def test_non_tfexport_model_fails_with_the_reason(tracking_uri: str, tmp_path: Any) -> None:
    model_dir = tmp_path / "plain"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: some.module\n")
    with mlflow.start_run():
        mlflow.log_artifacts(str(model_dir), "plain")
        uri = mlflow.get_artifact_uri("plain")
    client = MlflowClient()
    client.create_registered_model("plain")
    client.create_model_version("plain", source=uri)
    client.set_model_version_tag("plain", "1", Tag.REQUEST, "onnx")
    outcome = ExportWorker(client).process(Job("plain", "1", "onnx"))  # the real export()
    assert outcome.status is not None and outcome.status.startswith("failed: ")
    assert "is not a tfexport model" in outcome.status
    assert _tags("plain")[Tag.REQUEST_STATUS] == outcome.status
    assert _tags("plain")[Tag.REQUEST_HANDLED] == "onnx"
    assert version_numbers("plain", client) == ["1"]


def _self_signed(tmp_path: Any) -> Tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def test_serve_over_https(tracking_uri: str, tmp_path: Any) -> None:
    """``serve`` (what ``mlflow-tfexport worker`` runs) with --certfile/--keyfile answers https."""
    cert, key = _self_signed(tmp_path)
    with worker_in_thread(secret=SECRET, certfile=cert, keyfile=key) as server:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        assert requests.get(f"{url}/health", verify=cert, timeout=10).json()["status"] == "ok"
        r = requests.post(f"{url}/webhook", data=_payload(), verify=cert, timeout=10)
        assert r.status_code == 401
        r = requests.post(f"{url}/webhook", data=_payload(version="7"), verify=cert, timeout=10,
                          headers=signed_headers(SECRET, _payload(version="7"), delivery_id="d-1"))
        assert r.status_code == 404 and "does not exist" in r.json()["error"]


# ----------------------------------------------------------------------------------- a real mlflow server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: str) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, served artifacts) that may deliver webhooks to loopback."""
    import shutil

    from cryptography.fernet import Fernet

    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    port = free_port()
    env = dict(
        os.environ,
        # Development/test settings only: production webhooks use https to a public address.
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        MLFLOW_WEBHOOK_CACHE_TTL="1",  # see a webhook created a moment ago
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no background job workers: a lighter, quicker-to-stop server
    )
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    log_path = str(root / "server.log")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(root), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still busy starting
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health in {SERVER_START_S:.0f} s:\n{tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def remote(mlflow_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[str]:
    """Point this process's tracking and registry at the module's server; restore them afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv(wk.SECRET_ENV, SECRET)  # the worker's secret: also signs and checks the guard's records
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    try:
        yield mlflow_server
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _log_source(tiny_model: Any, name: str) -> str:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name=name)
    return name


@pytest.fixture
def webhook_worker(remote: str) -> Iterator[Tuple[MlflowClient, ExportWorker]]:
    """The worker on loopback, with a webhook for ``model_version_tag.set`` registered on the server."""
    client = MlflowClient(remote, remote)
    jobs = ExportWorker(client).start()
    server = make_server(WebhookReceiver(jobs, SignatureVerifier(SECRET)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook = client.create_webhook(
        name=f"tfexport-worker-{uuid.uuid4().hex[:8]}",
        url=f"http://127.0.0.1:{server.server_address[1]}/webhook",
        events=["model_version_tag.set"],
        secret=SECRET,
    )
    try:
        # MLflow's own test delivery (an example model_version_tag.set event) reaches the worker, signed.
        result = client.test_webhook(hook.webhook_id)
        assert result.success and result.response_status == 200, result
        assert "ignored" in json.loads(result.response_body or "{}")
        time.sleep(1.5)  # the server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)
        yield client, jobs
    finally:
        client.delete_webhook(hook.webhook_id)
        time.sleep(1.5)  # let the server's cached webhook list expire before the receiver goes away
        server.shutdown()
        server.server_close()
        jobs.stop(timeout=60)


@pytest.mark.slow
def test_webhook_from_a_real_server_exports_on_demand(
    webhook_worker: Tuple[MlflowClient, ExportWorker], tiny_model: Any
) -> None:
    client, jobs = webhook_worker
    name = _log_source(tiny_model, "wh-sentiment")
    # What a user does in the registry UI: set the tag on the source version.
    client.set_model_version_tag(name, "1", Tag.REQUEST, "onnx")
    tags = _wait_for(lambda: _answered(name, "onnx", client=client), "the export to be answered")
    assert tags[Tag.REQUEST_STATUS] == f"done: models:/{name}/2", tags
    v2 = client.get_model_version(name, "2")
    assert v2.tags[Tag.FORMAT] == "onnx" and v2.tags[Tag.SOURCE] == f"models:/{name}/1"
    assert v2.tags[Tag.VALIDATION] == "passed"

    # Unknown format: failed with the reason, and no new version.
    client.set_model_version_tag(name, "1", Tag.REQUEST, "tensorflow")
    tags = _wait_for(lambda: _answered(name, "tensorflow", client=client), "the failure to be recorded")
    assert tags[Tag.REQUEST_STATUS].startswith("failed: unknown format 'tensorflow'")
    assert version_numbers(name, client) == ["1", "2"]

    # Asking again for onnx (a retried delivery, or the tag set again) exports nothing new.
    client.set_model_version_tag(name, "1", Tag.REQUEST, "onnx")
    tags = _wait_for(lambda: _answered(name, "onnx", client=client), "the repeated request to be answered")
    assert tags[Tag.REQUEST_STATUS] == f"done: models:/{name}/2"
    assert version_numbers(name, client) == ["1", "2"]

    # A request on an exported variant: refused on that version, with the reason.
    client.set_model_version_tag(name, "2", Tag.REQUEST, "onnx")
    tags = _wait_for(lambda: _answered(name, "onnx", version="2", client=client), "the refusal")
    assert tags[Tag.REQUEST_STATUS].startswith("failed: ") and "already an exported variant" in tags[
        Tag.REQUEST_STATUS
    ]
    assert version_numbers(name, client) == ["1", "2"]


@pytest.mark.slow
def test_poll_mode_finds_requests_without_webhooks(remote: str, tiny_model: Any) -> None:
    client = MlflowClient(remote, remote)
    name = _log_source(tiny_model, "poll-sentiment")
    client.set_model_version_tag(name, "1", Tag.REQUEST, "onnx:opset=17,onnx:opset=18")
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", remote]) == 0
    tags = _answered(name, "onnx:opset=17,onnx:opset=18", client=client)
    assert tags[Tag.REQUEST_STATUS] == (
        f"done: onnx:opset=17 -> models:/{name}/2, onnx:opset=18 -> models:/{name}/3"
    ), tags
    assert client.get_model_version(name, "2").tags[Tag.OPSET] == "17"
    assert client.get_model_version(name, "3").tags[Tag.OPSET] == "18"
    # Answered requests are not pending any more: a second pass does nothing.
    assert wk.find_pending(client) == []
    # Deleting the status asks again; the export is idempotent, so no new version.
    client.delete_model_version_tag(name, "1", Tag.REQUEST_STATUS)
    assert [j.key for j in wk.find_pending(client)] == [(name, "1", "onnx:opset=17,onnx:opset=18")]
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", remote]) == 0
    assert version_numbers(name, client) == ["1", "2", "3"]


def _at_once(*calls: Callable[[], Any]) -> List[Any]:
    barrier = threading.Barrier(len(calls))
    results: List[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "an export did not finish"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


@pytest.mark.slow
def test_the_same_export_twice_at_once_registers_one_version(remote: str, tiny_model: Any) -> None:
    client = MlflowClient(remote, remote)
    name = _log_source(tiny_model, "race-same")
    uri = f"models:/{name}/1"
    a, b = _at_once(*[lambda: mlflow_tfexport.export(uri, format="onnx", opset=17)] * 2)
    # Both looked for an existing export before either had registered one, so both registered a
    # version; the later one saw the earlier and deleted itself.
    assert a.created and b.created
    assert version_numbers(name, client) == ["1", "2"]
    assert a.model_uri == b.model_uri == f"models:/{name}/2"
    assert client.get_model_version(name, "2").tags[Tag.OPSET] == "17"


@pytest.mark.slow
def test_two_different_exports_at_once_both_land(remote: str, tiny_model: Any) -> None:
    client = MlflowClient(remote, remote)
    name = _log_source(tiny_model, "race-different")
    uri = f"models:/{name}/1"
    r17, r18 = _at_once(
        lambda: mlflow_tfexport.export(uri, format="onnx", opset=17),
        lambda: mlflow_tfexport.export(uri, format="onnx", opset=18),
    )
    assert version_numbers(name, client) == ["1", "2", "3"]
    assert {r17.model_uri, r18.model_uri} == {f"models:/{name}/2", f"models:/{name}/3"}
    v17 = client.get_model_version(name, r17.model_version.version).tags
    v18 = client.get_model_version(name, r18.model_version.version).tags
    assert (v17[Tag.OPSET], v18[Tag.OPSET]) == ("17", "18")
    assert v17[Tag.EXPORT_KEY] != v18[Tag.EXPORT_KEY]
    assert v17[Tag.SOURCE] == v18[Tag.SOURCE] == uri
