"""The multi-user deployment, with real processes: PostgreSQL + S3 (moto) + ``mlflow server``.

The test starts, in temporary directories, everything a team's set-up has:

- a PostgreSQL server (the tracking and registry database),
- an S3 endpoint (moto's server mode) with a bucket for artifacts,
- ``mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...
  --serve-artifacts``, the only process that holds S3 credentials,

then runs the loop a user runs against it over HTTP: log and register a model,
export it to ONNX, promote the ONNX version with ``mlflow-tfexport promote``,
and serve ``models:/<name>@production`` with ``mlflow models serve``. The
clients (this test process, the CLI, the scoring server) get only
``MLFLOW_TRACKING_URI``: artifacts go through the tracking server's proxy.

PostgreSQL's binaries must be installed (Debian: ``postgresql``; ``.ci/apt-packages.sh``
installs them). Without them the test fails under ``CI=true`` and is skipped elsewhere.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import mlflow
import pytest
import requests
from helpers import TEXTS
from mlflow import MlflowClient
from servers import free_port, tail
from tiny import tiny

import mlflow_tfexport
from mlflow_tfexport.constants import Tag

pytestmark = pytest.mark.slow

MODEL_NAME = "team-sentiment"
BUCKET = "tfexport-artifacts"
ARTIFACT_PREFIX = "mlartifacts"
# Only the tracking server and the test's own boto3 client know these; moto accepts any values.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
STARTUP_TIMEOUT_S = 120.0
# Variables that would let a client reach S3 directly or point it at another tracking server.
CLIENT_ENV_DROP = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(found: bool, reason: str) -> None:
    """A missing system program fails the test in CI (a skip would hide a missing feature), else skips."""
    if found:
        return
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: install it with .ci/apt-packages.sh)")
    pytest.skip(reason)


def postgres_bindir() -> Optional[str]:
    """The directory holding initdb, pg_ctl and postgres; Debian keeps them off PATH."""
    candidates: List[str] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(out.stdout.strip())
        except (subprocess.SubprocessError, OSError):
            pass

    def version(path: str) -> float:
        try:
            return float(os.path.basename(os.path.dirname(path)))
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process started with ``start_new_session=True`` and everything it started."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            # The leader is gone; workers left in the group still get the next signal.
            if sig == signal.SIGTERM:
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def start_process(cmd: Sequence[str], log_path: str, env: Dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up in {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log_path)}")
        time.sleep(0.3)


def client_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env.update(extra)
    return env


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class Postgres:
    uri: str
    port: int


def _pg_user() -> Optional[pwd.struct_passwd]:
    """initdb and postgres refuse to run as root: as root, run them as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


def _run_as(cmd: Sequence[str], user: Optional[pwd.struct_passwd], log_path: str, also: str = "") -> None:
    kwargs: Dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    with open(log_path, "ab") as log:
        done = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/",
            timeout=120, **kwargs,
        )
    if done.returncode != 0:
        logs = tail(log_path) + (f"\n--- {also}:\n{tail(also)}" if also else "")
        pytest.fail(f"{os.path.basename(cmd[0])} failed with {done.returncode}:\n{logs}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = postgres_bindir()
    require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) not found; Debian package: postgresql")
    assert bindir is not None
    user = _pg_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as another user.
    base = tempfile.mkdtemp(prefix="tfexport-pg-")
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    os.chmod(base, 0o700)
    data, sockets = os.path.join(base, "data"), os.path.join(base, "sock")
    # The server writes its own log (as its user); initdb/pg_ctl output is captured here by this process.
    server_log, log_path = os.path.join(base, "postgres.log"), os.path.join(base, "pg_ctl.log")
    port = free_port()
    pg_ctl = os.path.join(bindir, "pg_ctl")
    started = False
    try:
        _run_as([os.path.join(bindir, "initdb"), "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions"], user, log_path)
        os.mkdir(sockets)
        if user is not None:
            os.chown(sockets, user.pw_uid, user.pw_gid)
        server_opts = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
        _run_as([pg_ctl, "-D", data, "-l", server_log, "-o", server_opts, "-w", "-t", "60", "start"], user, log_path,
                also=server_log)
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the driver that is installed (psycopg2).
        yield Postgres(f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", port)
    finally:
        if started:
            _run_as([pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop"], user, log_path)
        shutil.rmtree(base, ignore_errors=True)


# --- S3 (moto's server mode) --------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> List[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    log_path = str(workdir / "moto.log")
    proc = start_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path,
                         client_env(), str(workdir))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{endpoint}/moto-api/", timeout=2).status_code == 200, proc,
                   "moto_server", log_path)
        store = S3(endpoint)
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        stop_group(proc)


# --- mlflow server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_server(postgres: Postgres, s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log_path = str(workdir / "server.log")
    # MLflow's background job workers (7 huey consumers, ~21 CPU-s to start) serve MLflow features the team's
    # export path does not use.
    env = client_env(MLFLOW_S3_ENDPOINT_URL=s3.endpoint, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **S3_CREDENTIALS)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", postgres.uri,
        "--artifacts-destination", f"s3://{BUCKET}/{ARTIFACT_PREFIX}",
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
    ]
    proc = start_process(cmd, log_path, env, str(workdir))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, proc, "mlflow server",
                   log_path)
        yield url
    finally:
        stop_group(proc)


@pytest.fixture
def as_client_of(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process as one more user of the server: tracking URI only, no S3 credentials."""
    for var in CLIENT_ENV_DROP:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    previous_tracking, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_server)
    mlflow.set_registry_uri(tracking_server)
    try:
        yield tracking_server
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)


def _cli(*args: str, tracking: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_tfexport", *args], env=client_env(MLFLOW_TRACKING_URI=tracking),
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, f"mlflow-tfexport {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def scoring_server(as_client_of: str, tmp_path: Any) -> Iterator[Callable[[], str]]:
    """``mlflow models serve -m models:/<name>@production``, started once the alias exists (see the test)."""
    port = free_port()
    log_path = str(tmp_path / "serve.log")
    procs: List[subprocess.Popen[bytes]] = []

    def start() -> str:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@production",
               "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "--workers", "1"]
        proc = start_process(cmd, log_path, client_env(MLFLOW_TRACKING_URI=as_client_of), str(tmp_path))
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/ping", timeout=2).status_code == 200, proc, "mlflow models serve",
                   log_path)
        return url

    try:
        yield start
    finally:
        for proc in procs:
            stop_group(proc)


def test_log_export_promote_serve_against_postgres_and_s3(
    as_client_of: str, s3: S3, scoring_server: Callable[[], str]
) -> None:
    client = MlflowClient()
    # 1. A user logs and registers a model (over HTTP; artifacts through the server's proxy).
    model, tok = tiny("text-classification")
    with mlflow.start_run() as run:
        info = mlflow.tfexport.log_model(  # type: ignore[attr-defined]
            model, tokenizer=tok, name="model", registered_model_name=MODEL_NAME
        )
    assert info.registered_model_version == 1
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    assert client.get_model_version(MODEL_NAME, "1").tags[Tag.FORMAT] == "transformers"

    # 2. Export to ONNX: a new, validated and tagged version of the same registered model.
    result = mlflow_tfexport.export(f"models:/{MODEL_NAME}/1", format="onnx")
    assert result.created and str(result.model_version.version) == "2"
    mv = client.get_model_version(MODEL_NAME, "2")
    assert mv.tags[Tag.FORMAT] == "onnx"
    assert mv.tags[Tag.VALIDATION] == "passed"
    assert mv.tags[Tag.SOURCE] == f"models:/{MODEL_NAME}/1"
    assert mv.tags[Tag.TRACE_SHAPE] == "dynamic"
    assert float(mv.tags[Tag.MAX_ABS_DIFF]) <= float(mv.tags[Tag.ATOL])
    assert mv.description and "| `logits`" in mv.description
    # Asking again returns the same version (the export key lookup works on PostgreSQL too).
    again = mlflow_tfexport.export(f"models:/{MODEL_NAME}/1", format="onnx")
    assert not again.created and str(again.model_version.version) == "2"

    # 3. Promote with the CLI, as a user would; `list` shows the alias.
    out = _cli("promote", MODEL_NAME, "2", "--alias", "production", tracking=as_client_of)
    assert f"models:/{MODEL_NAME}@production -> version 2" in out
    assert client.get_model_version_by_alias(MODEL_NAME, "production").version == "2"
    table = _cli("list", MODEL_NAME, tracking=as_client_of)
    onnx_row = next(line for line in table.splitlines() if line.startswith("2 "))
    assert "onnx" in onnx_row and "production" in onnx_row, table

    # 4. The artifacts really are in the bucket: both versions' model files and the export's report.
    keys = s3.keys(f"{ARTIFACT_PREFIX}/")
    assert any(k.endswith("/model.safetensors") for k in keys), keys
    assert any(k.endswith("/model.onnx") for k in keys), keys
    assert any(k.endswith(f"/{result.run_id}/artifacts/validation.json") for k in keys), keys
    assert all(k.startswith(f"{ARTIFACT_PREFIX}/{run.info.experiment_id}/") for k in keys), keys

    # 5. Serve the alias with a real scoring server: same predictions as the in-process pyfunc.
    url = scoring_server()
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@production").predict(TEXTS)
    expected_rows = [dict(r) for r in expected.to_dict(orient="records")]
    response = requests.post(f"{url}/invocations", json={"inputs": TEXTS}, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert [r["label"] for r in served] == [r["label"] for r in expected_rows]
    for got, want in zip(served, expected_rows, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
