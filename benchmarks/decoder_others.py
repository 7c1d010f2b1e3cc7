"""The other decoders of ``bench_decoder.py``, run inside their own virtualenv (``.ci/bench-venvs.sh``).

    <venv>/bin/python benchmarks/decoder_others.py genai|optimum --hf DIR --work DIR --prompt-ids 1,2,3 \
        --new 128 --batches 1,8 --repeats 1

``DIR`` is a Hugging Face folder (``save_pretrained``) of the very weights the benchmark built. Prints one JSON
object on its last line: ``{"version": ..., "build_s": ..., "rows": [{"batch", "seconds", "tokens"}]}`` where
``tokens`` are the new ids of the first row, or ``{"error": ...}`` when the system refuses the model. Imports
nothing of this project, so it runs with whatever the venv pins.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple


def _genai(args: argparse.Namespace) -> Tuple[str, float, Callable[[int], List[List[int]]]]:
    import numpy as np
    import onnxruntime_genai as og

    out = os.path.join(args.work, "genai")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", args.hf, "-i", args.hf, "-o", out,
         "-p", "fp32", "-e", "cpu", "-c", os.path.join(args.work, "genai-cache")],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("model builder refused: " + (proc.stderr or proc.stdout).strip().splitlines()[-1][:300])
    build_s = time.perf_counter() - started
    model = og.Model(out)
    prompt = [int(t) for t in args.prompt_ids.split(",")]

    def generate(batch: int) -> List[List[int]]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + args.new, do_sample=False, batch_size=batch)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([prompt] * batch, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        return [list(gen.get_sequence(i))[len(prompt):] for i in range(batch)]

    return og.__version__, build_s, generate


def _optimum(args: argparse.Namespace) -> Tuple[str, float, Callable[[int], List[List[int]]]]:
    import optimum.version
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    started = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(args.hf, export=True, use_cache=True)
    build_s = time.perf_counter() - started
    prompt = [int(t) for t in args.prompt_ids.split(",")]

    def generate(batch: int) -> List[List[int]]:
        ids = torch.tensor([prompt] * batch)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                             do_sample=False)
        return [row[len(prompt):].tolist() for row in out]

    return optimum.version.__version__, build_s, generate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["genai", "optimum"])
    parser.add_argument("--hf", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--prompt-ids", required=True)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    result: Dict[str, Any]
    try:
        version, build_s, generate = (_genai if args.system == "genai" else _optimum)(args)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            generate(1)  # warm-up
            best, tokens = float("inf"), []
            for _ in range(max(1, args.repeats)):
                started = time.perf_counter()
                out = generate(batch)
                best = min(best, time.perf_counter() - started)
                tokens = out[0]
            rows.append({"batch": batch, "seconds": best, "tokens": [int(t) for t in tokens],
                         "rows_equal": all(list(r) == list(out[0]) for r in out)})
        result = {"version": version, "build_s": build_s, "rows": rows}
    except Exception as exc:  # reported in the table, not a crash of the whole benchmark
        result = {"error": f"{type(exc).__name__}: {str(exc).strip()[:400]}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
