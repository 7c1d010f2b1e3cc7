"""Requests never share mutable state: the same request gets the same answer whatever runs beside it.

MLflow's scoring server runs ``predict`` in several threads at once (and the
classifier's concurrent calls share model runs: ``serving/batching.py``). A request
with ``{"truncation": false}`` beside default ones, or generation requests
with different ``max_new_tokens`` (each truncates its prompt at a different
length, from the left), must each get exactly the answer they get alone.
In-process first (threads on one pyfunc), then through real ``mlflow models
serve`` processes (classification, question answering, a tiny GPT-2) with
mixed traffic. Every single answer is checked; loops are bounded in count and
seconds; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import mlflow
import pandas as pd
import pytest
import requests
from helpers import run_interleaved
from mlflow.exceptions import MlflowException
from servers import ScoringServer, models_serve

import mlflow_tfexport

LONG = " ".join(["film"] * 200)  # far over the tiny models' 64 tokens
PROMPT = " ".join(["the plot was great and"] * 30)  # a generation prompt over 64 tokens: cut from the left
CONTEXT = " ".join(["paris is the capital of france ."] * 20)
#: Rows that take the tokenizer a while: the longer a request tokenizes, the likelier a shared setting changes
#: under it.
HUGE = [" ".join(["film"] * 3000)] * 4
CLIENTS = 8
PER_CLIENT = 40  # requests per client at most
SECONDS = 40.0  # and at most this long


def _run_clients(cases: List[Tuple[str, Callable[[], Any]]], check: Callable[[str, Any], None],
                 clients: int = CLIENTS, per_client: int = PER_CLIENT, seconds: float = SECONDS) -> Dict[str, int]:
    """``clients`` threads each run up to ``per_client`` randomly chosen cases (all stop after ``seconds``);
    every outcome goes through ``check``. Returns how many requests ran per case and the failures."""
    counts: Dict[str, int] = {name: 0 for name, _ in cases}
    failures: List[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    start = threading.Barrier(clients)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(per_client):
            if time.monotonic() > deadline:
                return
            name, call = cases[rng.randrange(len(cases))]
            try:
                outcome = call()
            except Exception as exc:  # the outcome is checked, whatever it is
                outcome = exc
            try:
                check(name, outcome)
            except AssertionError as exc:
                with lock:
                    failures.append(f"{name}: {exc}")
            with lock:
                counts[name] += 1

    run_interleaved([threading.Thread(target=client, args=(i,)) for i in range(clients)])
    assert not failures, f"{len(failures)} wrong answers of {sum(counts.values())}, e.g. {failures[:5]}"
    return counts


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def pyfuncs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Dict[str, Any]:
    loaded = {}
    for task, arch in [("text-classification", "bert"), ("text-generation", "gpt2")]:
        model, tok = tiny_model(task, arch)
        path = str(tmp_path_factory.mktemp(task) / "model")
        mlflow_tfexport.save_model(model, path, tokenizer=tok)
        loaded[task] = mlflow.pyfunc.load_model(path)
    return loaded


def _same_outcome(got: Any, want: Any) -> None:
    if isinstance(want, Exception):
        assert isinstance(got, MlflowException), f"expected {type(want).__name__}, got {got!r:.200}"
        assert got.message == want.message, got.message  # type: ignore[attr-defined]
    elif isinstance(want, pd.DataFrame):
        assert isinstance(got, pd.DataFrame), f"expected a frame, got {got!r:.200}"
        pd.testing.assert_frame_equal(got, want, atol=1e-6)
    else:
        assert got == want, f"expected {want!r:.200}, got {got!r:.200}"


def test_truncation_and_generation_lengths_do_not_leak_between_threads(pyfuncs: Dict[str, Any]) -> None:
    classifier, generator = pyfuncs["text-classification"], pyfuncs["text-generation"]
    # The classifier's calls share model runs (batching, on by default); the generator's never do.
    assert classifier._model_impl.batcher is not None and generator._model_impl.batcher is None
    cases: List[Tuple[str, Callable[[], Any]]] = [
        ("truncated", lambda: classifier.predict([LONG, "dull"])),
        ("not-truncated", lambda: classifier.predict([LONG, "dull"], params={"truncation": False})),
        ("short-fits", lambda: classifier.predict(["dull"], params={"truncation": False})),
        *[(f"generate-{n}", lambda n=n: generator.predict([PROMPT], params={"max_new_tokens": n}))  # type: ignore[misc]
          for n in (1, 7, 30)],
        ("generate-not-truncated", lambda: generator.predict([PROMPT], params={"truncation": False})),
    ]
    expected = {name: _outcome(call) for name, call in cases}  # one at a time: the reference answers
    assert isinstance(expected["not-truncated"], MlflowException)
    assert "64 tokens" in expected["not-truncated"].message
    assert isinstance(expected["truncated"], pd.DataFrame) and len(expected["truncated"]) == 2
    assert isinstance(expected["generate-not-truncated"], MlflowException)
    assert len({expected[f"generate-{n}"][0] for n in (1, 7, 30)}) == 3  # type: ignore[index]
    counts = _run_clients(cases, lambda name, got: _same_outcome(got, expected[name]))
    assert all(n > 0 for n in counts.values()), counts


def test_extra_tokenizers_are_built_once_and_bounded_in_bytes(pyfuncs: Dict[str, Any]) -> None:
    """Per-request truncation lengths use tokenizers built once and held in a cache bounded in bytes."""
    encoder = pyfuncs["text-generation"]._model_impl.encoder  # the TextEncoder behind the pyfunc
    default = encoder.tokenizer
    first = encoder.tokenizer_for((40, "left"))
    assert encoder.tokenizer_for((40, "left")) is first  # built once
    assert encoder.tokenizer is default and default.truncation["max_length"] == encoder.max_length
    budget = encoder.cache_bytes
    try:
        encoder.cache_bytes = 3 * encoder.tokenizer_bytes
        for n in range(1, 20):
            encoder.tokenizer_for((n, "left"))
        assert len(encoder.cached_settings) == 3
        assert encoder.cached_settings == [(17, "left"), (18, "left"), (19, "left")]  # least recently used go
    finally:
        encoder.cache_bytes = budget
    assert first.truncation["max_length"] == 40 and first.truncation["direction"] == "left"  # never changed


# --------------------------------------------------------------------------- real scoring servers


@pytest.fixture
def servers(tracking_uri: str, tmp_path: Any, tiny_model: Any) -> Iterator[Dict[str, ScoringServer]]:
    """Three ``mlflow models serve`` processes (classification, QA, GPT-2 generation), started together."""
    names = {"text-classification": ("bert", "cls"), "question-answering": ("bert", "qa"),
             "text-generation": ("gpt2", "gen")}
    uris = {}
    for task, (arch, name) in names.items():
        model, tok = tiny_model(task, arch)
        with mlflow.start_run():
            mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name=name)
        uris[task] = f"models:/{name}/1"
    with contextlib.ExitStack() as stack:
        yield {task: stack.enter_context(models_serve(uri, tracking_uri, str(tmp_path))) for task, uri in uris.items()}


def _post(server: ScoringServer, payload: Dict[str, Any]) -> Tuple[int, Any]:
    response = requests.post(f"{server.url}/invocations", json=payload, timeout=60)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body


def _same_response(got: Any, want: Tuple[int, Any]) -> None:
    assert not isinstance(got, Exception), f"request failed: {got!r}"
    status, body = got
    assert status == want[0], f"status {status} (expected {want[0]}): {json.dumps(body)[:300]}"
    if status != 200:
        assert body.get("message") == want[1].get("message"), body
        return
    got_rows, want_rows = body["predictions"], want[1]["predictions"]
    assert len(got_rows) == len(want_rows)
    for g, w in zip(got_rows, want_rows, strict=True):
        if isinstance(w, dict):
            assert set(g) == set(w)
            for key, value in w.items():
                if isinstance(value, float):
                    assert g[key] == pytest.approx(value, abs=1e-6), (key, g, w)
                else:
                    assert g[key] == value, (key, g, w)
        else:
            assert g == w


@pytest.mark.slow
def test_mixed_concurrent_requests_on_real_scoring_servers(servers: Dict[str, ScoringServer]) -> None:
    cls, qa, gen = servers["text-classification"], servers["question-answering"], servers["text-generation"]
    qa_rows = {"question": ["what is the capital of france?"], "context": [CONTEXT]}
    payloads: Dict[str, Tuple[ScoringServer, Dict[str, Any]]] = {
        "cls-truncated": (cls, {"inputs": [*HUGE, "dull"]}),
        "cls-truncated-explicit": (cls, {"inputs": [LONG], "params": {"truncation": True, "batch_size": 1}}),
        "cls-not-truncated": (cls, {"inputs": HUGE, "params": {"truncation": False}}),
        "cls-short-fits": (cls, {"inputs": ["dull", "great film"], "params": {"truncation": False}}),
        "qa-truncated": (qa, {"inputs": qa_rows}),
        "qa-short-answers": (qa, {"inputs": qa_rows, "params": {"max_answer_len": 1}}),
        "qa-not-truncated": (qa, {"inputs": qa_rows, "params": {"truncation": False}}),
        "gen-1": (gen, {"inputs": [PROMPT], "params": {"max_new_tokens": 1}}),
        "gen-7": (gen, {"inputs": [PROMPT], "params": {"max_new_tokens": 7}}),
        "gen-30": (gen, {"inputs": [PROMPT], "params": {"max_new_tokens": 30}}),
        "gen-not-truncated": (gen, {"inputs": [PROMPT], "params": {"truncation": False}}),
    }
    cases = [(name, (lambda s=server, p=payload: _post(s, p))) for name, (server, payload) in payloads.items()]
    expected = {name: call() for name, call in cases}  # one at a time: the reference answers
    for name, (status, body) in expected.items():
        assert status == (400 if name.endswith("-not-truncated") else 200), (name, status, body)
    assert len({expected[f"gen-{n}"][1]["predictions"][0] for n in (1, 7, 30)}) == 3
    counts = _run_clients(cases, lambda name, got: _same_response(got, expected[name]), per_client=60, seconds=90)
    assert all(n > 0 for n in counts.values()), counts
    for server in servers.values():  # and every server still answers
        assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200


def test_models_loaded_in_threads_at_once_leave_transformers_intact(tmp_path: Any, tiny_model: Any) -> None:
    """transformers 5's ``from_pretrained`` swaps process-wide functions while it loads (``tie_weights`` and the
    ``torch.nn.init`` functions become no-ops, then are put back): two loads in threads at once (two exports of a
    worker with ``--threads 2``, two ``load_model`` calls) could put a no-op back for good, and every later load
    of the process would leave a tied LM head on the meta device. Loads take turns."""
    import torch
    import transformers

    from mlflow_tfexport.serving.conf import read_flavor_conf
    from mlflow_tfexport.serving.runtimes.eager import load_transformers_model

    model, tok = tiny_model("fill-mask")
    path = str(tmp_path / "fill-mask")
    mlflow_tfexport.save_model(model, path, tokenizer=tok)
    conf = read_flavor_conf(path)
    originals = (transformers.PreTrainedModel.tie_weights, transformers.PreTrainedModel.init_weights,
                 torch.nn.init.normal_)
    barrier = threading.Barrier(8)
    errors: List[BaseException] = []

    def load() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                load_transformers_model(path, conf)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert (transformers.PreTrainedModel.tie_weights, transformers.PreTrainedModel.init_weights,
            torch.nn.init.normal_) == originals, "a load in a thread left a transformers patch in place"
    again = load_transformers_model(path, conf)
    head = again.get_output_embeddings().weight
    assert head.device.type == "cpu" and head is again.get_input_embeddings().weight
