"""``tfexport.request.data`` is untrusted input: no credential leaves for a host the operator did not name, no
file outside ``--data-dir`` is read, every file is read within bounds (RSS measured per bomb kind), every
request ends with a status, poison jobs stop, and the worker's HTTP side outlasts slow clients and restarts.

Everything runs on 127.0.0.1 against a real SQLite registry (and, for downloads, a real ``mlflow server``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import mlflow
import pytest
import requests
from helpers import wait_for
from mlflow import MlflowClient
from test_worker import mlflow_server, remote  # noqa: F401 (the module's real mlflow server)

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.validation.files import ReadLimits
from mlflow_tfexport.worker import (
    ExportWorker,
    Job,
    SignatureVerifier,
    WebhookReceiver,
    make_server,
    recover,
    requeue_interrupted,
    signed_headers,
)
from mlflow_tfexport.worker.fetch import DataPolicy, DataRefused, download

SECRET = "trust-secret-" + uuid.uuid4().hex
TOKEN = "token-" + uuid.uuid4().hex
#: Peak RSS the reading of one hostile file may add to the reading process (the figure the docs state).
RSS_BOUND_MB = 150
#: A reading process past this RSS is killed at once (the old code on a bomb): protects the shared machine.
HARD_CAP_MB = 1500


class Recorder:
    """Export calls, answered with a made-up version (the worker's side is what is tested here)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.texts: List[str] = []  # the start of each data file, read while the job runs (its scratch goes after)

    def __call__(self, uri: str, **kwargs: Any) -> Any:
        self.calls.append((uri, kwargs))
        if kwargs.get("validation_data") is not None:
            self.texts.append(Path(kwargs["validation_data"].path).read_text()[:200])
        return SimpleNamespace(model_uri=f"models:/{uri.split('/')[1]}/9")


# ----------------------------------------------------------------------------------- a capture server


class _Capture(BaseHTTPRequestHandler):
    seen: List[Tuple[str, str, Optional[str]]]

    def _any(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body = b"text\nI loved it\nI hated it\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _any  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[Tuple[str, List[Tuple[str, str, Optional[str]]]]]:
    """An HTTP server on 127.0.0.1 that records every request (and would serve a CSV)."""
    seen: List[Tuple[str, str, Optional[str]]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Capture,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _source(client: MlflowClient, tmp_path: Path, name: str = "m") -> None:
    client.create_registered_model(name)
    client.create_model_version(name, source=str(tmp_path / "unused"), tags={Tag.FORMAT: "transformers"})


def _run(worker: ExportWorker, data: str, name: str = "m", request: str = "onnx") -> str:
    client = worker.client
    client.set_model_version_tag(name, "1", Tag.REQUEST_DATA, data)
    client.set_model_version_tag(name, "1", Tag.REQUEST, request)
    outcome = worker.process(Job(name, "1", request))
    tags = client.get_model_version(name, "1").tags
    assert tags.get(Tag.REQUEST_HANDLED) == request, tags  # every request ends with a status
    assert outcome.status == tags[Tag.REQUEST_STATUS]
    return str(outcome.status)


@pytest.mark.parametrize("credentials", ["token", "basic"])
def test_no_credential_leaves_for_a_host_the_operator_did_not_configure(
    tracking_uri: str, tmp_path: Path, capture: Tuple[str, List[Any]], monkeypatch: pytest.MonkeyPatch,
    credentials: str,
) -> None:
    if credentials == "token":
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "worker")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TOKEN)
    host, seen = capture
    client = MlflowClient()
    _source(client, tmp_path)
    # A run whose experiment's artifact root is the attacker's host: runs:/ would resolve there.
    exp = client.create_experiment("elsewhere", artifact_location=f"http://{host}/artifacts")
    run = client.create_run(exp)
    client.create_registered_model("other")
    client.create_model_version("other", source=f"http://{host}/model")
    fake = Recorder()
    worker = ExportWorker(client, export_fn=fake)
    for value in (
        f"http://{host}/api/2.0/mlflow-artifacts/artifacts/x/data.csv",
        f"https://{host}/data.csv",
        f"mlflow-artifacts://{host}/x/data.csv",
        f"runs:/{run.info.run_id}/data.csv",
        "models:/other/1/data.csv",
        f"ftp://{host}/data.csv",
        "s3:/",
    ):
        status = _run(worker, value)
        assert status.startswith("failed: tfexport.request.data cannot be used"), (value, status)
        assert "runs:/, models:/, mlflow-artifacts:/" in status or "by host" in status, status
    assert seen == [], f"requests reached the capture server: {seen}"
    assert fake.calls == []


@pytest.mark.parametrize("scheme", ["http", "https", "file", "HTTPS://"])
def test_no_data_scheme_can_name_a_credential_carrying_one(scheme: str) -> None:
    with pytest.raises(ValueError, match="never http, https, file"):
        DataPolicy(schemes=("s3", scheme))


def test_local_paths_only_under_a_data_dir_and_no_existence_oracle(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    _source(client, tmp_path)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.csv").write_text("text\nI loved it\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("text\nthe-secret-value\n")
    (allowed / "link.csv").symlink_to(secret)
    (allowed / "dir.csv").mkdir()
    fake = Recorder()
    nothing_allowed = ExportWorker(client, export_fn=fake)
    assert "no local paths" in _run(nothing_allowed, str(allowed / "ok.csv"))
    worker = ExportWorker(client, export_fn=fake, data_policy=DataPolicy(data_dirs=(str(allowed),)))
    refusals = {}
    for value in (str(secret), str(tmp_path / "missing.csv"), f"file://{secret}", str(allowed / ".." / "secret.csv"),
                  str(allowed / "link.csv"), "secret.csv", "/etc/passwd", "/etc/no-such-file"):
        status = _run(worker, value)
        assert "is not under a directory the worker reads data from" in status, (value, status)
        refusals[value] = status.replace(repr(value), "<value>")
    # Existing and missing files outside get the same answer: no existence oracle.
    assert len(set(refusals.values())) == 1, refusals
    assert "the-secret-value" not in json.dumps(refusals)
    assert "directory" in _run(worker, str(allowed / "dir.csv"))
    assert fake.calls == []
    status = _run(worker, f"file://{allowed / 'ok.csv'}")
    assert status.startswith("done"), status
    data = fake.calls[-1][1]["validation_data"]
    assert data.label == "ok.csv" and data.source is None  # its name in the data directory, no worker path


# ----------------------------------------------------------------------------------- bounded reading, RSS

READER = textwrap.dedent(
    """
    import json, resource, sys
    from mlflow_tfexport.errors import ExportError
    from mlflow_tfexport.validation.data import DataFile, load_validation_data
    from mlflow_tfexport.validation.files import ReadLimits
    import pandas, pyarrow.parquet  # imported before the baseline: what a worker has loaded already

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = peak_mb()
    try:
        data = load_validation_data(DataFile(sys.argv[1], sys.argv[2], ReadLimits()), sys.argv[3])
        result = {"rows": data.rows, "origin": data.origin, "digest": data.digest}
    except ExportError as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    result["delta_mb"] = peak_mb() - base
    result["base_mb"], result["peak_mb"] = base, peak_mb()
    print(json.dumps(result))
    """
)


def _read_in_child(path: Path, task: str = "text-classification") -> Dict[str, Any]:
    """Read ``path`` as the worker would, in a child process; its result and the peak RSS the reading added.

    The child is killed as soon as its RSS passes ``HARD_CAP_MB`` (the result then says so).
    """
    proc = subprocess.Popen([sys.executable, "-c", READER, str(path), path.name, task], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    peak = 0.0
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
        except OSError:
            rss = 0.0
        peak = max(peak, rss)
        if peak > HARD_CAP_MB or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": f"RSS {peak:.0f} MB or 120 s passed", "delta_mb": peak}
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    result: Dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    print(f"{path.name}: {result}")  # the figure for the report (pytest -s)
    return result


def _refused(result: Dict[str, Any], mentions: str) -> None:
    assert "killed" not in result, result
    assert result.get("error") == "FileRefused" and mentions in result["message"], result
    assert result["delta_mb"] < RSS_BOUND_MB, result


@pytest.mark.slow
def test_parquet_bomb_is_refused_before_decompression(tmp_path: Path) -> None:
    path = tmp_path / "bomb.parquet"
    # 30,000 rows of 10,000 identical characters: 300 MB uncompressed, a few hundred KB on disk.
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import pyarrow as pa, pyarrow.parquet as pq
        table = pa.table({{"text": pa.array(["x" * 10000] * 30000)}})
        pq.write_table(table, {str(path)!r}, compression="zstd", use_dictionary=False, row_group_size=30000)
    """)], check=True)
    assert path.stat().st_size < 2 << 20
    _refused(_read_in_child(path), "max_decompressed_bytes")


@pytest.mark.slow
def test_huge_sparse_csv_stops_at_the_line_bound(tmp_path: Path) -> None:
    path = tmp_path / "sparse.csv"
    with open(path, "wb") as f:
        f.write(b"text\n")
        f.truncate(2 << 30)  # 2 GB of NUL bytes on a sparse file: one endless line
    _refused(_read_in_child(path), "longer than 1048576 bytes (max_line_bytes)")


@pytest.mark.slow
def test_a_55_mb_one_line_txt_stops_at_the_line_bound(tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    with open(path, "wb") as f:
        for _ in range(55):
            f.write(b"a" * (1 << 20))
    _refused(_read_in_child(path), "line 1 is longer than")


@pytest.mark.slow
def test_a_10m_row_csv_is_read_only_up_to_the_row_cap(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with open(path, "wb") as f:
        f.write(b"text\n")
        chunk = b"a short review\n" * 100_000
        for _ in range(100):
            f.write(chunk)
    started = time.monotonic()
    result = _read_in_child(path)
    assert "killed" not in result, result
    assert result.get("rows") == 2000 and "first 2000 rows (the rest not read)" in result["origin"], result
    assert result["delta_mb"] < RSS_BOUND_MB, result
    print(f"10M-row CSV read in {time.monotonic() - started:.1f} s (child start included)")


@pytest.mark.slow
def test_deeply_nested_jsonl_is_refused_by_depth(tmp_path: Path) -> None:
    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    _refused(_read_in_child(path), "nests deeper than 32 (max_depth)")


def test_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    """Column names and cells of a refused file never reach the message (it becomes a registry tag)."""
    from mlflow_tfexport.validation.data import DataFile, load_validation_data

    header = tmp_path / "header.csv"
    header.write_text("SECRET_HEADER_xyz,other\nvalue,1\n")
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"SECRET_KEY_xyz": "v", "SECRET_OTHER": "w"}\n')
    cell = tmp_path / "cell.jsonl"
    cell.write_text('{"text": 12345678}\n')
    for path in (header, keys, cell):
        with pytest.raises(Exception) as info:
            load_validation_data(DataFile(str(path), path.name), "text-classification")
        message = str(info.value)
        assert "SECRET" not in message and "12345678" not in message and str(tmp_path) not in message, message


def test_a_directory_is_refused_and_nothing_is_copied(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow_tfexport.worker.fetch import request_data

    client = MlflowClient()
    allowed = tmp_path / "allowed"
    (allowed / "big.csv").mkdir(parents=True)
    for i in range(20):
        (allowed / "big.csv" / f"part-{i}.csv").write_bytes(b"text\n" + b"x\n" * 100_000)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(allowed / "big.csv"), "big.csv")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    policy = DataPolicy(data_dirs=(str(allowed),))
    for value in (f"file://{allowed / 'big.csv'}", str(allowed / "big.csv"), f"runs:/{run.info.run_id}/big.csv"):
        with pytest.raises(DataRefused, match="directory"):
            request_data(value, client, policy, str(scratch))
        assert list(scratch.iterdir()) == []  # refused before anything was copied


# ----------------------------------------------------------------------------------- downloads


class _Drip(BaseHTTPRequestHandler):
    """An artifact server that answers one byte per second, for ever."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        for _ in range(600):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.integration
def test_a_slow_artifact_server_is_cut_at_the_download_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: f"http://127.0.0.1:{server.server_address[1]}")
    try:
        started = time.monotonic()
        with pytest.raises(DataRefused, match="more than 3 s"):
            download("mlflow-artifacts:/x/data.csv", str(tmp_path), ReadLimits(download_timeout_s=3), "v")
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_downloads_from_a_real_server_are_bounded(remote: str, tmp_path: Path) -> None:  # noqa: F811
    """A real ``mlflow server`` with served artifacts: runs:/ data is downloaded (by a child process), a file
    over --data-max-bytes is cut off, a directory is refused."""
    client = MlflowClient(remote, remote)
    data = tmp_path / "texts.csv"
    data.write_text("text\nI loved it\nI hated it\n")
    big = tmp_path / "big.csv"
    big.write_bytes(b"text\n" + b"y" * 200_000 + b"\n")
    experiment = client.create_experiment(f"dl-{uuid.uuid4().hex[:8]}")  # artifacts under the server's proxy
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(data), "data")
        mlflow.log_artifact(str(big), "data")
        mlflow.log_artifact(str(data), "folder.csv")  # a directory with a file's name
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # served by the server
    client.create_registered_model("dl")
    client.create_model_version("dl", source=f"{run.info.artifact_uri}/data", run_id=run.info.run_id,
                                tags={Tag.FORMAT: "transformers"})
    fake = Recorder()
    worker = ExportWorker(client, export_fn=fake, data_policy=DataPolicy(limits=ReadLimits(max_bytes=100_000)))
    status = _run(worker, f"runs:/{run.info.run_id}/data/texts.csv", "dl")
    assert status.startswith("done"), status
    assert fake.texts[-1].startswith("text\nI loved it")
    assert "passed 100000 bytes" in _run(worker, f"runs:/{run.info.run_id}/data/big.csv", "dl")
    assert "unknown suffix '(none)'" in _run(worker, f"runs:/{run.info.run_id}/data", "dl")
    assert "names a directory" in _run(worker, f"runs:/{run.info.run_id}/folder.csv", "dl")
    assert len(fake.calls) == 1


# ----------------------------------------------------------------------------------- every request ends


def test_every_request_ends_with_a_status_whatever_the_exception(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    _source(client, tmp_path)

    def boom(exc: BaseException) -> Any:
        def export(uri: str, **kwargs: Any) -> Any:
            raise exc
        return export

    errors = (ValueError("bad value"), RecursionError("maximum recursion depth"), KeyError("k"))
    for opset, exc in enumerate(errors, 17):
        worker = ExportWorker(client, export_fn=boom(exc))
        request = f"onnx:opset={opset}"
        client.set_model_version_tag("m", "1", Tag.REQUEST, request)
        outcome = worker.process(Job("m", "1", request))
        assert outcome.status is not None and outcome.status.startswith("failed"), outcome
    # A data value whose download raised a non-MLflow error (botocore's) left no status before.
    status = _run(ExportWorker(client, export_fn=Recorder()), "s3:/", request="onnx")
    assert status.startswith("failed: tfexport.request.data cannot be used")


HANGING_WORKER = textwrap.dedent(
    """
    import sys, time
    from mlflow import MlflowClient
    from mlflow_tfexport.worker import ExportWorker, Job

    def hang(uri, **kwargs):
        time.sleep(300)

    client = MlflowClient(sys.argv[1], sys.argv[1])
    ExportWorker(client, export_fn=hang).process(Job(sys.argv[2], "1", sys.argv[3]))
    """
)


@pytest.mark.slow
def test_a_job_that_killed_its_worker_three_times_is_marked_failed(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    _source(client, tmp_path, "poison")
    client.set_model_version_tag("poison", "1", Tag.REQUEST, "onnx")
    def started(attempt: int, proc: subprocess.Popen[bytes]) -> bool:
        tags = client.get_model_version("poison", "1").tags
        running = tags.get(Tag.REQUEST_STATUS, "").startswith("running")
        return (running and tags.get(Tag.REQUEST_ATTEMPTS, "").startswith(f"{attempt} ")) or proc.poll() is not None

    for attempt in range(1, 4):
        proc = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, tracking_uri, "poison", "onnx"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda a=attempt, p=proc: started(a, p), f"start {attempt} of the job", 60)  # type: ignore[misc]
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    fake = Recorder()
    worker = ExportWorker(client, export_fn=fake).start()
    try:
        assert [j.name for j in requeue_interrupted(worker)] == ["poison"]
        worker.join()
    finally:
        worker.stop(timeout=30)
    tags = client.get_model_version("poison", "1").tags
    assert tags[Tag.REQUEST_STATUS].startswith("failed: the worker stopped 3 times"), tags
    assert tags[Tag.REQUEST_HANDLED] == "onnx" and fake.calls == []


@pytest.mark.integration
def test_recovery_removes_the_scratch_folders_of_dead_workers(tracking_uri: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"tfexport-request-data-{gone.pid}-abc"
    live = tmp_path / f"tfexport-request-data-{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "download").mkdir()
        (folder / "download" / "data.csv").write_text("text\nx\n")
    worker = ExportWorker(MlflowClient(), export_fn=Recorder())
    recover(worker, requeue=False)
    assert not dead.exists() and live.exists()


# ----------------------------------------------------------------------------------- worker HTTP


def _deliver(port: int, name: str = "m", delivery_id: Optional[str] = None) -> requests.Response:
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": name, "version": "1", "key": Tag.REQUEST, "value": "onnx"}}).encode()
    headers = signed_headers(SECRET, body, delivery_id=delivery_id or uuid.uuid4().hex)
    return requests.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers, timeout=10)


@pytest.mark.slow
def test_genuine_deliveries_are_answered_while_256_slow_connections_dribble(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    _source(client, tmp_path)
    jobs = ExportWorker(client, export_fn=Recorder()).start()
    server = make_server(WebhookReceiver(jobs, SignatureVerifier(SECRET)), "127.0.0.1", 0, header_timeout_s=4)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    slow: List[socket.socket] = []
    stop = threading.Event()
    closed_after: List[float] = []

    def dribble() -> None:  # one header line per second on every slow connection
        opened = time.monotonic()
        n = 0
        while not stop.wait(1.0) and slow:
            n += 1
            for sock in list(slow):
                try:
                    sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
                except OSError:
                    slow.remove(sock)
                    closed_after.append(time.monotonic() - opened)

    try:
        for _ in range(256):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        dripper = threading.Thread(target=dribble, daemon=True)
        dripper.start()
        time.sleep(1.0)
        for _ in range(5):
            started = time.monotonic()
            r = _deliver(port)
            assert r.status_code in (200, 202), (r.status_code, r.text)
            assert time.monotonic() - started < 5
        # Dribbling does not keep a connection open past the header deadline (4 s here).
        wait_for(lambda: not slow, "every slow connection to be closed", 20)
        assert max(closed_after) < 12, max(closed_after)
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        server.shutdown()
        server.server_close()
        jobs.stop(timeout=30)


def test_a_replay_after_a_restart_gets_409(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    _source(client, tmp_path)
    state = str(tmp_path / "state" / "deliveries.json")
    delivery = uuid.uuid4().hex
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": "m", "version": "1", "key": Tag.REQUEST, "value": "onnx"}}).encode()
    headers = signed_headers(SECRET, body, delivery_id=delivery)
    codes = []
    for _ in range(2):  # the worker, then the worker started again
        jobs = ExportWorker(client, export_fn=Recorder()).start()
        server = make_server(WebhookReceiver(jobs, SignatureVerifier(SECRET, state_path=state)), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            codes.append(requests.post(f"http://127.0.0.1:{server.server_address[1]}/webhook", data=body,
                                       headers=headers, timeout=10).status_code)
        finally:
            server.shutdown()
            server.server_close()
            jobs.stop(timeout=30)
    assert codes == [202, 409]
    assert delivery not in Path(state).read_text()  # digests only


@pytest.mark.slow
def test_a_real_export_validates_on_data_from_a_data_dir_without_recording_its_path(
    tracking_uri: str, tmp_path: Path, tiny_model: Any
) -> None:
    import mlflow_tfexport

    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="real")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "reviews.csv").write_text("text,label\nI loved it,1\nI hated it,0\nNot bad,1\n")
    (allowed / "bad.csv").write_text("SECRET_COLUMN,OTHER\nvalue,1\n")
    client = MlflowClient()
    worker = ExportWorker(client, data_policy=DataPolicy(data_dirs=(str(allowed),)))
    status = _run(worker, str(allowed / "bad.csv"), "real")
    assert status.startswith("failed") and "SECRET_COLUMN" not in status and str(tmp_path) not in status, status
    assert len(client.search_model_versions("name='real'")) == 1  # nothing registered, so no data digest
    status = _run(worker, str(allowed / "reviews.csv"), "real", request="onnx:opset=17")
    assert status == "done: models:/real/2", status
    variant = client.get_model_version("real", "2")
    assert variant.tags[Tag.DATA_ROWS] == "3" and variant.tags[Tag.DATA_ORIGIN] == "file reviews.csv"
    (logged,) = mlflow.get_run(variant.run_id).inputs.dataset_inputs
    assert str(tmp_path) not in logged.dataset.source and "reviews.csv" in logged.dataset.source
