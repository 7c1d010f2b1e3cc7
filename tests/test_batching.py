"""Concurrent calls share model runs, and every caller gets exactly the answer it gets alone.

In-process: many threads send a mix of requests (different params, different
tasks' columns, rows that are refused, several rows per request) to pyfuncs of
tiny random models (the source and ONNX and TorchScript variants of a
classifier; token classification, question answering, fill-mask and feature
extraction sources); every answer is compared with the same request's answer
alone, and the batchers must have merged calls. Then the settings: defaults
written into the MLmodel per format and task, ``model_config`` overrides,
bad values refused, generation never batched. Last, a real ``mlflow models
serve`` with concurrent clients.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from helpers import run_interleaved
from mlflow.exceptions import MlflowException
from servers import models_serve

import mlflow_tfexport
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.serving.batching import Batcher
from mlflow_tfexport.serving.runtimes.lanes import CPU_WATCH_INTERVAL_S, NARROW, SPLIT, WIDE, CpuWatch, Lanes

LONG = " ".join(["film"] * 200)  # over the tiny models' 64 tokens
TEXTS = ["a great film", "dull", "the plot was slow but the actors were wonderful and the music too", "ok"]
CONTEXT = "paris is the capital of france . " * 3
THREADS = 16
PER_THREAD = 30


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # the outcome is compared, whatever it is
        return exc


def _same(got: Any, want: Any) -> None:
    if isinstance(want, Exception):
        assert isinstance(got, MlflowException), f"expected {type(want).__name__}, got {got!r:.200}"
        assert got.message == want.message  # type: ignore[attr-defined]
    elif isinstance(want, pd.DataFrame):
        assert isinstance(got, pd.DataFrame), f"expected a frame, got {got!r:.200}"
        pd.testing.assert_frame_equal(got, want, atol=1e-5)
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.shape == want.shape, f"got {got!r:.200}"
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:
        assert isinstance(got, list) and len(got) == len(want), f"got {got!r:.200}"
        for g, w in zip(got, want, strict=True):
            if isinstance(w, list):  # entities
                assert [e["entity"] for e in g] == [e["entity"] for e in w]
                assert [e["start"] for e in g] == [e["start"] for e in w]
                np.testing.assert_allclose([e["score"] for e in g], [e["score"] for e in w], atol=1e-5)
            else:
                assert g == w


def _batcher(pyfunc: Any) -> Batcher:
    batcher = pyfunc._model_impl.batcher
    assert isinstance(batcher, Batcher), f"not batched: {batcher!r}"
    return batcher


def _mlmodel_config(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, "MLmodel")) as f:
        config: Dict[str, Any] = yaml.safe_load(f)["flavors"]["python_function"]["config"]
    return config


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, module_registry: str, tiny_model: Any) -> Dict[str, str]:
    """Model directories: the classifier's source, ONNX and TorchScript variants; four other tasks' sources."""
    paths: Dict[str, str] = {}
    model, tok = tiny_model("text-classification", "bert")
    with mlflow.start_run():
        # Named columns (text, optional text_pair): the pair case reaches every variant (the unnamed default
        # keeps only a request's first column).
        mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="cls", input_schema=True)
    paths["cls-source"] = mlflow.artifacts.download_artifacts("models:/cls/1")
    onnx = mlflow_tfexport.export("models:/cls/1", format="onnx")
    paths["cls-onnx"] = mlflow.artifacts.download_artifacts(f"models:/cls/{onnx.model_version.version}")
    traced = mlflow_tfexport.export("models:/cls/1", format="torchscript", trace_shape="1x16,8x64")
    paths["cls-torchscript"] = mlflow.artifacts.download_artifacts(f"models:/cls/{traced.model_version.version}")
    for task in ("token-classification", "question-answering", "fill-mask", "feature-extraction",
                 "text-generation"):
        model, tok = tiny_model(task, "gpt2" if task == "text-generation" else "bert")
        path = str(tmp_path_factory.mktemp(task) / "model")
        mlflow_tfexport.save_model(model, path, tokenizer=tok)
        paths[task] = path
    return paths


@pytest.fixture(scope="module")
def pyfuncs(models: Dict[str, str]) -> Dict[str, Any]:
    """Every model as logged; the TorchScript variant (not batched by default) with batching turned on."""
    return {name: mlflow.pyfunc.load_model(path, model_config={"batching": True} if "torchscript" in name else None)
            for name, path in models.items()}


def _t(texts: List[str]) -> Any:
    """Texts as the named ``text`` column the classifier's schema asks for."""
    return pd.DataFrame({"text": list(texts)})


def _cases(pyfuncs: Dict[str, Any], tokenizer_mask: str) -> List[Tuple[str, Any, Callable[[], Any]]]:
    cases: List[Tuple[str, Any, Callable[[], Any]]] = []
    for variant in ("cls-source", "cls-onnx", "cls-torchscript"):
        m = pyfuncs[variant]
        cases += [
            (f"{variant}-one", m, lambda m=m: m.predict(_t(TEXTS[:1]))),
            (f"{variant}-all", m, lambda m=m: m.predict(_t(TEXTS))),
            (f"{variant}-batch-size-1", m, lambda m=m: m.predict(_t(TEXTS), params={"batch_size": 1})),
            (f"{variant}-long-truncated", m, lambda m=m: m.predict(_t([LONG, "dull"]))),
            (f"{variant}-long-refused", m, lambda m=m: m.predict(_t([LONG, "dull"]), params={"truncation": False})),
            (f"{variant}-short-not-truncated", m, lambda m=m: m.predict(_t(TEXTS[1:]), params={"truncation": False})),
            (f"{variant}-pair", m, lambda m=m: m.predict(pd.DataFrame({"text": TEXTS[:2],
                                                                        "text_pair": TEXTS[2:]}))),
            (f"{variant}-numbers", m, lambda m=m: m.predict(pd.DataFrame({"text": [1, 2]}))),
            (f"{variant}-empty-text", m, lambda m=m: m.predict(_t(["", "dull"]))),
            (f"{variant}-lone-surrogate", m, lambda m=m: m.predict({"text": ["\ud800"]})),
            (f"{variant}-bad-param", m, lambda m=m: m.predict(_t(TEXTS[:1]), params={"batch_size": -1})),
        ]
    tc, qa, fm, fe = (pyfuncs[t] for t in ("token-classification", "question-answering", "fill-mask",
                                             "feature-extraction"))
    cases += [
        ("tokens-labels", tc, lambda: tc.predict(TEXTS)),
        ("tokens-entities", tc, lambda: tc.predict(TEXTS[2:], params={"output": "entities"})),
        ("qa", qa, lambda: qa.predict(pd.DataFrame({"question": ["what is the capital?"], "context": [CONTEXT]}))),
        ("qa-short", qa, lambda: qa.predict(pd.DataFrame({"question": ["capital?", "which?"],
                                                          "context": [CONTEXT, LONG]}),
                                            params={"max_answer_len": 1})),
        ("qa-refused", qa, lambda: qa.predict(pd.DataFrame({"question": ["q"], "context": [LONG]}),
                                              params={"truncation": False})),
        ("fill-mask", fm, lambda: fm.predict([f"the film was {tokenizer_mask} ."])),
        ("fill-mask-top-2", fm, lambda: fm.predict([f"a {tokenizer_mask} plot", f"so {tokenizer_mask}"],
                                                   params={"top_k": 2})),
        ("fill-mask-no-mask", fm, lambda: fm.predict(["no mask here"])),
        ("embed-mean", fe, lambda: fe.predict(TEXTS)),
        ("embed-cls-normalized", fe, lambda: fe.predict(TEXTS[:2], params={"pooling": "cls", "normalize": True})),
        ("embed-long", fe, lambda: fe.predict([LONG])),
    ]
    return cases


@pytest.mark.integration
def test_concurrent_mixed_requests_each_get_their_solo_answer(pyfuncs: Dict[str, Any], tiny_model: Any) -> None:
    mask = tiny_model("fill-mask", "bert")[1].mask_token
    cases = _cases(pyfuncs, mask)
    expected = {name: _outcome(call) for name, _, call in cases}  # one at a time: the reference answers
    refused = [n for n, v in expected.items() if isinstance(v, Exception)]
    assert sorted(refused) == sorted(n for n, _, _ in cases if n.endswith(
        ("-refused", "-numbers", "-lone-surrogate", "-bad-param", "-no-mask"))), refused
    batchers = {id(m): _batcher(m) for _, m, _ in cases}
    before = {k: (b.runs, b.merged_calls) for k, b in batchers.items()}
    failures: List[str] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(PER_THREAD):
            name, _, call = cases[rng.randrange(len(cases))]
            try:
                _same(_outcome(call), expected[name])
            except AssertionError as exc:
                with lock:
                    failures.append(f"{name}: {exc}")

    run_interleaved([threading.Thread(target=client, args=(i,)) for i in range(THREADS)])
    assert not failures, f"{len(failures)} wrong answers, e.g. {failures[:5]}"
    merged = {k: (b.merged_calls - before[k][1]) - (b.runs - before[k][0]) for k, b in batchers.items()}
    assert sum(merged.values()) > 0, "no two calls ever shared a run"  # calls saved by sharing runs


@pytest.mark.parametrize("model", ["cls-source", "cls-onnx", "cls-torchscript", "token-classification",
                                   "question-answering", "fill-mask", "feature-extraction"])
@pytest.mark.integration
def test_calls_waiting_behind_a_run_share_the_next_one_and_get_their_solo_answers(
        pyfuncs: Dict[str, Any], tiny_model: Any, model: str) -> None:
    """Leader/follower, made deterministic: the first call runs alone and is held there; every case of the
    model (other lengths, params, columns, refused rows) is sent meanwhile; released, the waiting calls run
    in shared runs, and each answer equals the answer alone."""
    pyfunc = pyfuncs[model]
    batcher = _batcher(pyfunc)
    cases = [(name, call) for name, m, call in _cases(pyfuncs, tiny_model("fill-mask", "bert")[1].mask_token)
             if m is pyfunc]
    expected = {name: _outcome(call) for name, call in cases}
    release, entered = threading.Event(), threading.Event()
    real_run = batcher._run
    sizes: List[int] = []

    def held(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:  # holds the first run until released
        sizes.append(len(feeds["input_ids"]))
        if len(sizes) == 1:
            entered.set()
            assert release.wait(60)
        return real_run(feeds)

    results: Dict[str, Any] = {}
    runs, calls = batcher.runs, batcher.merged_calls
    batcher._run, max_runs, batcher.max_runs = held, batcher.max_runs, 1  # one run at a time: all others queue
    run_lone, batcher._run_lone = batcher._run_lone, None  # the first call is held like any other
    try:
        lead = next(call for name, call in cases if not isinstance(expected[name], Exception))
        first = threading.Thread(target=lambda: results.__setitem__("first", lead()))
        first.start()
        assert entered.wait(60)
        waiting = [threading.Thread(target=lambda n=n, c=c: results.__setitem__(n, _outcome(c))) for n, c in cases]
        for t in waiting:
            t.start()
        for _ in range(3000):  # every call is answered (refused before the model) or queued behind the first
            with batcher._lock:
                if len(batcher._queue) + len(results) - ("first" in results) == len(cases):
                    break
            threading.Event().wait(0.01)
        release.set()
        for t in [first, *waiting]:
            t.join()
    finally:
        batcher._run, batcher.max_runs, batcher._run_lone = real_run, max_runs, run_lone
    assert batcher.merged_calls - calls > batcher.runs - runs, sizes  # some runs were shared
    for name, _ in cases:
        _same(results[name], expected[name])


def test_concurrent_runs_each_start_at_once_and_the_next_calls_share_a_run() -> None:
    """concurrent_runs=2: two calls run at the same time (neither waits for the other); calls arriving
    while both run wait, then share the run of whichever ends first; every caller gets its own rows."""
    release, both = threading.Event(), threading.Barrier(3, timeout=60)
    seen: List[int] = []

    def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        seen.append(len(feeds["input_ids"]))
        if len(seen) <= 2:  # the first two runs wait for each other: they must be going together
            both.wait()
            assert release.wait(60)
        return {"logits": feeds["input_ids"].sum(axis=1, keepdims=True)}  # padding (0) adds nothing

    batcher = Batcher(run, outputs=(), pad_token_id=0, max_batch_rows=64, max_batch_tokens=4096, max_runs=2)
    results: Dict[int, Any] = {}

    def call(i: int) -> None:
        results[i] = batcher.run({"input_ids": np.full((1, 3 + i), i + 1, dtype=np.int64)})["logits"]

    first = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in first:
        t.start()
    both.wait()  # both runs are going at once
    later = [threading.Thread(target=call, args=(i,)) for i in range(2, 6)]
    for t in later:
        t.start()
    for _ in range(3000):
        with batcher._lock:
            if len(batcher._queue) == 4:
                break
        threading.Event().wait(0.01)
    assert len(batcher._queue) == 4, "calls beyond two runs must wait"
    release.set()
    for t in first + later:
        t.join()
    assert seen[:2] == [1, 1] and sum(seen) == 6 and max(seen[2:]) > 1, seen  # the waiting four shared runs
    for i in range(6):
        np.testing.assert_array_equal(results[i], [[(i + 1) * (3 + i)]])
    assert batcher._running == 0


def _answer(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {"logits": feeds["input_ids"].sum(axis=1, keepdims=True)}  # padding (0) adds nothing


def test_a_lone_call_gets_every_core_and_concurrent_calls_one_thread_each() -> None:
    """Lanes: with no other call in flight a call runs wide (one row) or as one slice per core (a row per core
    or more, answers joined in order); a call starting while another is in flight runs narrow."""
    threads: List[Tuple[str, int, str]] = []
    release, entered = threading.Event(), threading.Event()

    def lane(name: str) -> Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
        def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            threads.append((name, len(feeds["input_ids"]), threading.current_thread().name))
            if int(feeds["input_ids"][0, 0]) == 99:  # the held call
                entered.set()
                assert release.wait(60)
            return _answer(feeds)
        return run

    lanes = Lanes(lane(NARROW), lane(WIDE), cores=2, batch_axes={"logits": 0}, spare=lambda cores: True)
    one = {"input_ids": np.full((1, 4), 2, dtype=np.int64)}
    np.testing.assert_array_equal(lanes.run(one)["logits"], [[8]])
    assert [t[0] for t in threads] == [WIDE]
    rows = {"input_ids": np.arange(15, dtype=np.int64).reshape(5, 3)}
    np.testing.assert_array_equal(lanes.run(rows)["logits"], rows["input_ids"].sum(axis=1, keepdims=True))
    split = threads[1:]
    assert sorted(t[1] for t in split) == [2, 3] and {t[0] for t in split} == {NARROW}
    assert len({t[2] for t in split}) == 2, "the slices run on two threads at once"
    threads.clear()
    held = threading.Thread(target=lanes.run, args=({"input_ids": np.full((1, 2), 99, dtype=np.int64)},))
    held.start()
    assert entered.wait(60)
    np.testing.assert_array_equal(lanes.run(rows)["logits"][:, 0], [3, 12, 21, 30, 39])  # company: one thread
    release.set()
    held.join()
    assert [(t[0], t[1]) for t in threads] == [(WIDE, 1), (NARROW, 5)]
    assert lanes.taken == {WIDE: 2, NARROW: 1, SPLIT: 1}
    lone = Lanes(lane(NARROW), lane(WIDE), cores=2, batch_axes=None, spare=lambda cores: True)
    lone.run(rows)  # outputs that cannot be joined: wide
    assert lone.taken[WIDE] == 1 and lone.taken[SPLIT] == 0
    busy = Lanes(lane(NARROW), lane(WIDE), cores=2, batch_axes={"logits": 0}, spare=lambda cores: False)
    busy.run(rows)  # a saturated machine: one thread, even alone
    busy.run(one)
    assert busy.taken == {WIDE: 0, NARROW: 2, SPLIT: 0}


def test_the_callers_own_cpu_never_makes_the_cores_look_busy() -> None:
    """CpuWatch judges other processes' use of the CPUs: this process keeping both CPUs busy (a batch job
    calling predict in a loop) leaves them spare; others keeping one of two busy does not; readings closer
    than CPU_WATCH_INTERVAL_S reuse the answer; no /proc/stat: the load average decides."""
    readings: List[Tuple[float, float, int]] = []
    now = [100.0]
    watch = CpuWatch(read=lambda: readings.pop(0), clock=lambda: now[0])

    def at(t: float, busy: float, own: float) -> bool:
        now[0] = t
        readings.append((busy, own, 2))
        return watch.spare(2)

    at(100.0, 1000.0, 10.0)  # the first reading: the load average decides
    assert at(101.0, 1002.0, 12.0)  # both CPUs busy for a second, all of it this process: spare
    assert not at(102.0, 1004.0, 13.0)  # one CPU-second of it from another process: not spare
    assert at(103.0, 1004.5, 13.5)
    now[0] = 103.0 + CPU_WATCH_INTERVAL_S / 2
    assert watch.spare(2) and readings == []  # too soon: the last answer, nothing read
    unreadable = CpuWatch(read=lambda: None)  # the load average decides: never as high as 10**6, never below 0
    assert unreadable.spare(10**6) and not CpuWatch(read=lambda: None).spare(0)


@pytest.mark.integration
def test_a_busy_process_beside_makes_a_lone_call_run_on_one_thread() -> None:
    """Real /proc/stat: while another process keeps both CPUs busy, a watch says they are not spare."""
    import subprocess
    import sys

    cpus = len(os.sched_getaffinity(0))
    watch = CpuWatch()
    burn = "import multiprocessing as m, time\n" \
           "def spin():\n    t = time.time() + 3\n    while time.time() < t: pass\n" \
           f"ps = [m.Process(target=spin) for _ in range({cpus})]\n[p.start() for p in ps]\n[p.join() for p in ps]\n"
    with subprocess.Popen([sys.executable, "-c", burn]) as proc:
        watch.spare(cpus)
        time.sleep(1.5)
        assert not watch.spare(cpus), "another process kept every CPU busy"
        proc.wait(30)


def test_a_lone_call_holds_every_run_and_calls_arriving_meanwhile_share_the_next_runs() -> None:
    """Batcher with a lone run: a call arriving to an idle model runs on run_lone and holds every slot, so the
    calls arriving meanwhile wait (none runs beside it on one thread); released, they are handed out as one
    batch per slot, and each caller gets its own rows."""
    release, entered = threading.Event(), threading.Event()
    shared: List[int] = []

    def lone(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        entered.set()
        assert release.wait(60)
        return _answer(feeds)

    def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        shared.append(len(feeds["input_ids"]))
        return _answer(feeds)

    batcher = Batcher(run, outputs=(), pad_token_id=0, max_batch_rows=64, max_batch_tokens=4096, max_runs=2,
                      run_lone=lone)
    results: Dict[int, Any] = {}

    def call(i: int) -> None:
        results[i] = batcher.run({"input_ids": np.full((1, 3 + i), i + 1, dtype=np.int64)})["logits"]

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(60)
    later = [threading.Thread(target=call, args=(i,)) for i in range(1, 7)]
    for t in later:
        t.start()
    for _ in range(3000):
        with batcher._lock:
            if len(batcher._queue) == 6:
                break
        threading.Event().wait(0.01)
    assert len(batcher._queue) == 6 and not shared, "calls beside a lone run must wait"
    release.set()
    for t in [first, *later]:
        t.join()
    assert shared == [3, 3], shared  # six waiting calls, one run of three rows per slot
    assert batcher.lone_runs == 1 and batcher.rows == 7 and batcher._running == 0
    for i in range(7):
        np.testing.assert_array_equal(results[i], [[(i + 1) * (3 + i)]])


def test_a_call_is_lone_only_after_a_quiet_second() -> None:
    """Between the requests of concurrent clients the model is idle for moments: a call arriving in such a
    moment is not lone (it would hold every slot for one request's rows) until no call has found company for
    LONE_AFTER_QUIET_S; a caller alone (a loop of predict calls) is lone every time."""
    from mlflow_tfexport.constants import LONE_AFTER_QUIET_S

    now = [0.0]
    release, entered = threading.Event(), threading.Event()
    lone_rows: List[int] = []

    def lone(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        lone_rows.append(int(feeds["input_ids"][0, 0]))
        if lone_rows[-1] == 9:
            entered.set()
            assert release.wait(60)
        return _answer(feeds)

    batcher = Batcher(_answer, outputs=(), pad_token_id=0, max_batch_rows=64, max_batch_tokens=4096, max_runs=2,
                      run_lone=lone, clock=lambda: now[0])

    def call(value: int) -> None:
        batcher.run({"input_ids": np.full((1, 3), value, dtype=np.int64)})

    for value in (1, 2, 3):  # one caller, call after call: lone each time
        call(value)
    held = threading.Thread(target=call, args=(9,))
    held.start()
    assert entered.wait(60)
    company = threading.Thread(target=call, args=(5,))  # arrives while the lone run goes: company
    company.start()
    for _ in range(3000):
        with batcher._lock:
            if batcher._queue:
                break
        threading.Event().wait(0.01)
    release.set()
    held.join()
    company.join()
    now[0] += LONE_AFTER_QUIET_S / 2
    call(6)  # the model is idle, but a call had company half a quiet period ago: a shared run
    now[0] += LONE_AFTER_QUIET_S
    call(7)  # a quiet period since: lone again
    assert lone_rows == [1, 2, 3, 9, 7], lone_rows
    assert batcher.lone_runs == 5 and batcher.runs == 7


@pytest.mark.integration
def test_onnx_variants_are_written_with_threads_chosen_by_the_workload(
        models: Dict[str, str], pyfuncs: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX variant's MLmodel says intra_op_num_threads: auto; loaded, it has a one-thread session and a
    session with a thread per core; a lone predict runs on every core (on a machine with spare cores: the
    check says so here, as this machine is shared) and answers as one thread does; a number in model_config
    gives one session of that many threads."""
    from mlflow_tfexport.serving.runtimes import lanes

    monkeypatch.setattr(lanes, "spare_cores", lambda cores: True)
    assert _mlmodel_config(models["cls-onnx"])["intra_op_num_threads"] == "auto"
    cores = len(os.sched_getaffinity(0))
    fresh = mlflow.pyfunc.load_model(models["cls-onnx"])
    runner = fresh._model_impl.runner
    assert runner.session.get_session_options().intra_op_num_threads == 1
    fixed = mlflow.pyfunc.load_model(models["cls-onnx"], model_config={"intra_op_num_threads": 1})
    assert fixed._model_impl.runner.lanes is None and fixed._model_impl.runner.wide_session is None
    if cores == 1:
        assert runner.lanes is None
        return
    assert runner.wide_session.get_session_options().intra_op_num_threads == cores
    texts = TEXTS * 8
    pd.testing.assert_frame_equal(fresh.predict(_t(texts)), fixed.predict(_t(texts)), atol=1e-5)
    assert runner.lanes.taken[SPLIT] == 1 and fresh._model_impl.batcher.lone_runs == 1
    pd.testing.assert_frame_equal(fresh.predict(_t(TEXTS[:1])), fixed.predict(_t(TEXTS[:1])), atol=1e-5)
    assert runner.lanes.taken[WIDE] == 1
    for bad in ("most", -2, 1.5):
        with pytest.raises(TfexportError, match="intra_op_num_threads"):
            mlflow.pyfunc.load_model(models["cls-onnx"], model_config={"intra_op_num_threads": bad})


@pytest.mark.integration
def test_a_spark_worker_given_one_core_runs_on_one(models: Dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """PySpark gives each Python worker OMP_NUM_THREADS = its task's cores: "every core" is those."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    impl = mlflow.pyfunc.load_model(models["cls-onnx"])._model_impl
    assert impl.runner.lanes is None and impl.runner.wide_session is None and impl.batcher.max_runs == 1


@pytest.mark.integration
@pytest.mark.parametrize("model", ["cls-onnx", "cls-source"])
def test_in_the_serving_environment_predict_gives_the_json_records_of_its_frame(
        pyfuncs: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    """Where MLflow only writes the answer as JSON (its serving environment, which the scoring server and
    `mlflow models predict` set), predict returns the records, and MLflow writes the same JSON as for the
    DataFrame it returns elsewhere."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    texts = TEXTS + ["", "x" * 30]
    frame = pyfuncs[model].predict(_t(texts), params={"batch_size": 2})
    assert isinstance(frame, pd.DataFrame)
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # what MLflow's scoring server sets
    served = pyfuncs[model].predict(_t(texts), params={"batch_size": 2})
    assert isinstance(served, list) and all(isinstance(r, dict) for r in served), served
    as_frame, as_records = io.StringIO(), io.StringIO()
    predictions_to_json(frame, as_frame)
    predictions_to_json(served, as_records)
    assert as_records.getvalue() == as_frame.getvalue()


@pytest.mark.integration
def test_settings_in_the_mlmodel_and_model_config(models: Dict[str, str], pyfuncs: Dict[str, Any]) -> None:
    cores = len(os.sched_getaffinity(0))
    for name in ("cls-source", "cls-onnx", "cls-torchscript", "feature-extraction"):
        config = _mlmodel_config(models[name])
        assert config["batching"] is (name != "cls-torchscript") and config["max_batch_rows"] == 64
        assert config["max_batch_tokens"] == 8192
        # ONNX: one single-threaded run per core; torch: one run, which uses every core
        assert config["concurrent_runs"] == (0 if name == "cls-onnx" else 1)
        assert _batcher(pyfuncs[name]).max_runs == (cores if name == "cls-onnx" else 1)
    assert mlflow.pyfunc.load_model(models["cls-torchscript"])._model_impl.batcher is None  # static buckets
    assert _mlmodel_config(models["text-generation"])["batching"] is False  # generation is not batched
    assert pyfuncs["text-generation"]._model_impl.batcher is None
    assert mlflow.pyfunc.load_model(models["cls-onnx"], model_config={"batching": False})._model_impl.batcher is None
    small = mlflow.pyfunc.load_model(models["cls-onnx"], model_config={"max_batch_rows": 4, "max_batch_tokens": 99,
                                                                       "concurrent_runs": 3})
    assert (_batcher(small).max_batch_rows, _batcher(small).max_batch_tokens) == (4, 99)
    assert _batcher(small).max_runs == 3
    for bad in ({"batching": "sometimes"}, {"max_batch_rows": 0}, {"max_batch_tokens": -5},
                {"concurrent_runs": -1}, {"concurrent_runs": "two"}):
        with pytest.raises(TfexportError, match=str(next(iter(bad)))):
            mlflow.pyfunc.load_model(models["cls-onnx"], model_config=bad)


@pytest.mark.integration
def test_the_budget_keeps_calls_apart(pyfuncs: Dict[str, Any]) -> None:
    """Waiting calls are taken while they fit in max_batch_rows and max_batch_tokens (rows x padded length)."""
    batcher = Batcher(lambda feeds: feeds, outputs=(), pad_token_id=0, max_batch_rows=4, max_batch_tokens=40)

    def call(rows: int, length: int) -> Any:
        feeds = {"input_ids": np.ones((rows, length), dtype=np.int64)}
        return type("Call", (), {"feeds": feeds, "key": (("input_ids", "int64"),), "rows": rows,
                                 "length": length})()

    batcher._queue.extend([call(2, 5), call(2, 30), call(2, 5), call(1, 8), call(1, 5)])
    first = batcher._take()
    assert [(c.rows, c.length) for c in first] == [(2, 5), (2, 5)]  # (2, 30) would make 4 x 30 > 40 tokens
    second = batcher._take()
    assert [(c.rows, c.length) for c in second] == [(2, 30)]
    assert [(c.rows, c.length) for c in batcher._take()] == [(1, 8), (1, 5)]
    assert batcher._take() == []


@pytest.mark.slow
def test_concurrent_clients_of_a_real_scoring_server(tracking_uri: str, tmp_path: Any, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification", "bert")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="served")
    payloads: Dict[str, Dict[str, Any]] = {
        "one": {"inputs": TEXTS[:1]},
        "all": {"inputs": TEXTS},
        "batch-size-1": {"inputs": TEXTS, "params": {"batch_size": 1}},
        "long": {"inputs": [LONG, "dull"]},
        "long-refused": {"inputs": [LONG], "params": {"truncation": False}},
        # MLflow's parser casts "inputs" values to the schema's string type; a dataframe_split int column it refuses.
        "numbers": {"dataframe_split": {"columns": ["text"], "data": [[1], [2]]}},
    }
    with models_serve("models:/served/1", tracking_uri, str(tmp_path)) as server:
        def post(payload: Dict[str, Any]) -> Tuple[int, Any]:
            response = requests.post(f"{server.url}/invocations", json=payload, timeout=60)
            return response.status_code, response.json()

        expected = {name: post(p) for name, p in payloads.items()}
        assert {n: s for n, (s, _) in expected.items()} == {
            "one": 200, "all": 200, "batch-size-1": 200, "long": 200, "long-refused": 400, "numbers": 400}
        failures: List[str] = []
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(25):
                name = rng.choice(list(payloads))
                status, body = post(payloads[name])
                want_status, want = expected[name]
                ok = status == want_status and (
                    body.get("message") == want.get("message") if status != 200 else
                    [r["label"] for r in body["predictions"]] == [r["label"] for r in want["predictions"]]
                    and np.allclose([r["score"] for r in body["predictions"]],
                                    [r["score"] for r in want["predictions"]], atol=1e-5))
                if not ok:
                    with lock:
                        failures.append(f"{name}: {status} {str(body)[:200]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:5]
