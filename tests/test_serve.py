"""A real ``mlflow models serve`` process answers like the in-process pyfunc.

Logs a tiny text-classification model to a fresh SQLite registry, starts
``mlflow models serve -m models:/<name>/1 --env-manager local`` as a
subprocess and talks HTTP to it: ``inputs``, ``dataframe_split`` and
``dataframe_records`` payloads, params, and a bad payload that must be a 4xx
with a message (and must not take the server down). Hostile requests (an
empty batch, a lone surrogate, out-of-range params) get what they should over
HTTP, and a request past ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (answered
504) stops using the server's CPU.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Iterator, List

import mlflow
import pytest
import requests
from servers import ScoringServer, models_serve
from tiny import tiny

pytestmark = pytest.mark.slow

MODEL_NAME = "served-sentiment"
TEXTS = [
    "I loved this film, the plot was great.",
    "I hated this movie, the story was dull.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def registered(module_registry: str) -> str:
    """One logged version for the module: the tests only read it (through servers and the in-process pyfunc)."""
    model, tok = tiny("text-classification")
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(  # type: ignore[attr-defined]
            model, tokenizer=tok, name="model", registered_model_name=MODEL_NAME
        )
    assert info.registered_model_version == 1
    return f"models:/{MODEL_NAME}/1"


@pytest.fixture(scope="module")
def server(registered: str, module_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringServer]:
    """One server for the tests that only send it requests."""
    with models_serve(registered, module_registry, str(tmp_path_factory.mktemp("serve"))) as srv:
        yield srv


def _records(frame: Any) -> List[Dict[str, Any]]:
    return [dict(r) for r in frame.to_dict(orient="records")]


def _assert_same(served: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> None:
    assert [r["label"] for r in served] == [r["label"] for r in expected]
    for got, want in zip(served, expected, strict=True):
        assert set(got) == {"label", "score"}
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)


def test_served_predictions_match_in_process_pyfunc(server: ScoringServer, registered: str) -> None:
    expected = _records(mlflow.pyfunc.load_model(registered).predict(TEXTS))
    assert len(expected) == len(TEXTS)

    payloads: Dict[str, Dict[str, Any]] = {
        "inputs": {"inputs": TEXTS},
        "dataframe_split": {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
        "dataframe_records": {"dataframe_records": [{"text": t} for t in TEXTS]},
        "inputs+params": {"inputs": TEXTS, "params": {"batch_size": 1}},
    }
    for kind, payload in payloads.items():
        response = server.invoke(payload)
        assert response.status_code == 200, f"{kind}: {response.status_code} {response.text}\n{server.log()}"
        body = response.json()
        assert "predictions" in body, f"{kind}: {body}"
        _assert_same(body["predictions"], expected)


def _assert_client_error(response: requests.Response, server: ScoringServer, *, mentions: str = "") -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text}\n{server.log()}"
    body = response.json()
    assert body.get("message"), body
    assert mentions.lower() in body["message"].lower(), body["message"]


def test_bad_payload_is_a_client_error_and_server_keeps_serving(server: ScoringServer) -> None:
    # The default signature's string column: MLflow's parser casts "inputs" values to strings (answered as the
    # texts "1" and "2"); DataFrame payloads reach the model's own check, with its message.
    assert server.invoke({"inputs": [1, 2]}).status_code == 200
    _assert_client_error(
        server.invoke({"dataframe_split": {"columns": ["text"], "data": [[1], [2]]}}), server, mentions="expected text"
    )
    _assert_client_error(server.invoke({"dataframe_records": [{"text": 1}, {"text": 2}]}), server, mentions="text")
    _assert_client_error(server.invoke({"dataframe_records": [{"text": "ok"}, {"text": 2}]}), server,
                         mentions="expected text")
    # Structurally wrong payloads are client errors too, not server errors.
    _assert_client_error(server.invoke({"inputs": {"text": [1, 2]}}), server)
    _assert_client_error(server.invoke({"inputs": [{"a": 1}]}), server)
    _assert_client_error(server.invoke({"inputs": ["a"], "params": {"truncation": "not-a-bool"}}), server)

    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200
    response = server.invoke({"inputs": TEXTS[:1]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_hostile_requests_get_what_they_should_over_http(server: ScoringServer) -> None:
    # Under the default signature MLflow refuses an empty batch (no column) and a lone surrogate itself, with 400s.
    _assert_client_error(server.invoke({"dataframe_records": []}), server, mentions="missing inputs")
    surrogate = requests.post(f"{server.url}/invocations", data=b'{"inputs": ["\\ud800"]}',
                              headers={"Content-Type": "application/json"}, timeout=60)
    _assert_client_error(surrogate, server, mentions="surrogates not allowed")
    _assert_client_error(server.invoke({"inputs": TEXTS, "params": {"batch_size": -1}}), server,
                         mentions="batch_size=-1 is not accepted")
    _assert_client_error(server.invoke({"inputs": TEXTS, "params": {"batch_size": 10**12}}), server,
                         mentions="batch_size")
    long_text = " ".join(["film"] * 200)
    _assert_client_error(server.invoke({"inputs": [long_text], "params": {"truncation": False}}), server,
                         mentions="64 tokens")
    assert server.invoke({"inputs": [long_text]}).status_code == 200
    assert server.invoke({"inputs": TEXTS, "params": {"batch_size": 0}}).status_code == 200


@pytest.fixture
def impatient_server(registered: str, module_registry: str, tmp_path: Any) -> Iterator[ScoringServer]:
    with models_serve(registered, module_registry, str(tmp_path),
                      extra_env={"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "3"}) as srv:
        yield srv


def test_a_request_past_the_timeout_stops_using_the_server(impatient_server: ScoringServer) -> None:
    """The scoring server answers 504 after its timeout but its predict thread goes on: the pyfunc stops at
    its next chunk, so the server is idle again instead of working for a client that has gone."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from soak import cpu_seconds, server_pids

    pids = server_pids(impatient_server.url)
    assert pids, "the server's processes"
    rows = [f"the film was long and the plot went on, row {i}" for i in range(8000)]
    response = impatient_server.invoke({"inputs": rows, "params": {"batch_size": 1}})
    assert response.status_code == 504, response.text[:300]
    time.sleep(1.5)  # the next chunk boundary comes within milliseconds
    before = cpu_seconds(pids)
    time.sleep(3.0)
    busy = cpu_seconds(pids) - before
    assert busy < 0.6, f"the server used {busy:.1f} CPU s in the 3 s after answering 504"
    assert impatient_server.invoke({"inputs": TEXTS[:1]}).status_code == 200
