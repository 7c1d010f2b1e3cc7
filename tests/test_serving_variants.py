"""Every variant behind one alias: moving ``@production`` changes the runtime, not the client.

One registry per module: a tiny text-classification source, its ONNX and
TorchScript variants. For each, a real ``mlflow models serve -m
models:/<name>@production`` process answers ``inputs``, ``dataframe_split``
and ``dataframe_records`` payloads (with and without params) exactly like the
in-process pyfunc of that version; bad payloads get a 4xx with a message; and
8 concurrent clients get an answer to every request.

A model carries its serving code (``code/mlflow_tfexport``): in fresh
interpreters, that copy serves alone (no installed package on ``sys.path``),
and a process where MLflow loaded a model from a temporary copy that it then
deleted (``validate_serving_input``) keeps loading and exporting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from typing import Any, Dict, Iterator, List

import mlflow
import pytest
import requests
from helpers import sqlite_registry
from mlflow import MlflowClient
from servers import ScoringServer, models_serve
from tiny import tiny

import mlflow_tfexport
from mlflow_tfexport.registry import promote

pytestmark = pytest.mark.slow

NAME = "sentiment"
TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city."]
PAYLOADS: Dict[str, Dict[str, Any]] = {
    "inputs": {"inputs": TEXTS},
    "inputs+params": {"inputs": TEXTS, "params": {"batch_size": 1, "truncation": True}},
    "dataframe_split": {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
    "dataframe_records": {"dataframe_records": [{"text": t} for t in TEXTS]},
    "dataframe_records+params": {"dataframe_records": [{"text": t} for t in TEXTS], "params": {"batch_size": 2}},
}
VARIANTS = ("transformers", "onnx", "torchscript")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: str) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("variants")
    with sqlite_registry(root, _empty_mlflow_db) as uri:
        model, tok = tiny("text-classification")
        with mlflow.start_run():
            mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name=NAME)
        versions = {
            "transformers": "1",
            "onnx": str(mlflow_tfexport.export(f"models:/{NAME}/1", format="onnx").model_version.version),
            "torchscript": str(
                mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape=["2x16", "2x32"])
                .model_version.version
            ),
        }
        yield {"uri": uri, "root": str(root), "versions": versions}


def _expected(version: str) -> List[Dict[str, Any]]:
    frame = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(TEXTS)
    return [dict(r) for r in frame.to_dict(orient="records")]


def _assert_client_error(response: requests.Response, server: ScoringServer, mentions: str) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text}\n{server.log()}"
    assert mentions.lower() in response.json()["message"].lower(), response.json()


def _hammer(url: str, clients: int, seconds: float) -> Dict[str, Any]:
    counts = {"ok": 0, "bad": 0, "errors": 0}
    latencies: List[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    r = session.post(f"{url}/invocations", json={"inputs": TEXTS[:1]}, timeout=30)
                    key = "ok" if r.status_code == 200 else "bad"
                except requests.RequestException:
                    key = "errors"
                with lock:
                    counts[key] += 1
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**counts, "sent": len(latencies)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_production_alias_serves_every_variant_with_one_contract(registry: Dict[str, Any], variant: str) -> None:
    version = registry["versions"][variant]
    promote(NAME, version, "production")
    expected = _expected(version)
    baseline = _expected("1")
    assert [r["label"] for r in expected] == [r["label"] for r in baseline]
    with models_serve(f"models:/{NAME}@production", registry["uri"], registry["root"]) as server:
        for kind, payload in PAYLOADS.items():
            response = server.invoke(payload)
            assert response.status_code == 200, f"{variant} {kind}: {response.text}\n{server.log()}"
            served = response.json()["predictions"]
            assert [r["label"] for r in served] == [r["label"] for r in expected], (variant, kind)
            for got, want in zip(served, expected, strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        # The default signature (one string column): MLflow casts "inputs" values to strings and keeps a
        # request's first column; a DataFrame payload's non-text values reach the model's own check.
        _assert_client_error(server.invoke({"dataframe_records": [{"text": "ok"}, {"text": 2}]}), server,
                             "expected text")
        _assert_client_error(server.invoke({"dataframe_split": {"columns": ["text"], "data": [["ok"], [2.5]]}}),
                             server, "expected text")
        _assert_client_error(server.invoke({"inputs": ["a"], "params": {"batch_size": "many"}}), server, "batch_size")
        assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200
        load = _hammer(server.url, clients=8, seconds=5.0)
        assert load["sent"] > 0 and load["ok"] == load["sent"], load
    assert MlflowClient().get_model_version_by_alias(NAME, "production").version == int(version)


def test_onnx_variant_serves_from_its_own_virtualenv(registry: Dict[str, Any]) -> None:
    """The variant's python_env.yaml + requirements.txt alone build a working serving environment."""
    version = registry["versions"]["onnx"]
    expected = _expected(version)
    with models_serve(
        f"models:/{NAME}/{version}", registry["uri"], registry["root"], env_manager="virtualenv", timeout=900,
        extra_env={"MLFLOW_TFEXPORT_NO_HOOK": "1"},
    ) as server:
        response = server.invoke({"inputs": TEXTS})
        assert response.status_code == 200, f"{response.text}\n{server.log()}"
        assert [r["label"] for r in response.json()["predictions"]] == [r["label"] for r in expected]


def _fresh(code: str, *, env: Dict[str, str], cwd: str, isolated: bool = False) -> str:
    """Run ``code`` in a new interpreter (``-S``: no site-packages hooks, when ``isolated``); its stdout."""
    command = [sys.executable, *(["-S"] if isolated else []), "-c", textwrap.dedent(code)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_the_package_keeps_working_after_mlflow_loads_a_model_from_a_deleted_copy(registry: Dict[str, Any]) -> None:
    """``validate_serving_input`` loads the model from a temporary copy (its ``code/`` on ``sys.path``) and
    deletes it; loading the other variants and exporting in that process must still work."""
    versions = registry["versions"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=registry["uri"], MLFLOW_REGISTRY_URI=registry["uri"])
    out = _fresh(
        f"""
        import json, os, sys
        import mlflow
        from mlflow.models import validate_serving_input

        assert "mlflow_tfexport" not in sys.modules
        served = validate_serving_input("models:/{NAME}/{versions["transformers"]}", {json.dumps({"inputs": TEXTS})!r})
        package = sys.modules["mlflow_tfexport"]
        print("validated", len(served), os.path.exists(package.__file__))
        for version in ({versions["onnx"]!r}, {versions["torchscript"]!r}):
            frame = mlflow.pyfunc.load_model(f"models:/{NAME}/{{version}}").predict({TEXTS!r})
            print("loaded", version, list(frame["label"]))
        import mlflow_tfexport
        source = mlflow_tfexport.load_model("models:/{NAME}/{versions["transformers"]}")
        result = mlflow_tfexport.export("models:/{NAME}/{versions["transformers"]}", format="torchscript",
                                        trace_shape="1x8")
        print("exported", result.model_version.version)
        print("reloaded", list(mlflow.pyfunc.load_model(result.model_uri).predict({TEXTS[:1]!r})["label"]))
        """,
        env=env, cwd=registry["root"],
    )
    lines = out.strip().splitlines()[-5:]
    expected = [r["label"] for r in _expected(versions["transformers"])]
    assert lines[0] == f"validated {len(TEXTS)} True", out
    assert lines[1] == f"loaded {versions['onnx']} {expected}", out
    assert lines[2] == f"loaded {versions['torchscript']} {expected}", out
    assert lines[3].startswith("exported "), out
    assert lines[4] == f"reloaded {expected[:1]}", out


def test_a_models_code_copy_serves_alone(registry: Dict[str, Any], tmp_path: Any) -> None:
    """With no mlflow-tfexport on ``sys.path`` (``-S``: no site hooks, no editable install; ``PYTHONPATH``: only
    the site-packages that hold MLflow, numpy, tokenizers and onnxruntime), the ONNX variant serves from the
    ``code/`` copy it carries, without torch."""
    version = registry["versions"]["onnx"]
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path / "onnx"))
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join(site)
    out = _fresh(
        f"""
        import sys
        import mlflow
        try:
            import mlflow_tfexport
            print("installed", mlflow_tfexport.__file__)
        except ImportError:
            print("not installed")
        frame = mlflow.pyfunc.load_model({local!r}).predict({TEXTS!r})
        import mlflow_tfexport
        print("from", mlflow_tfexport.__file__)
        print("labels", list(frame["label"]))
        print("torch", "torch" in sys.modules)
        """,
        env=env, cwd=str(tmp_path), isolated=True,
    )
    lines = out.strip().splitlines()[-4:]
    assert lines[0] == "not installed", out
    assert lines[1] == f"from {os.path.join(os.path.realpath(local), 'code', 'mlflow_tfexport', '__init__.py')}" \
        or lines[1] == f"from {os.path.join(local, 'code', 'mlflow_tfexport', '__init__.py')}", out
    assert lines[2] == f"labels {[r['label'] for r in _expected(version)]}", out
    assert lines[3] == "torch False", out
