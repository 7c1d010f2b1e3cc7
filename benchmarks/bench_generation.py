"""Greedy generation speed: source (eager ``generate``) vs ONNX with past key values vs quadratic ONNX.

A random GPT-2 (hidden 256, 4 layers, 4 heads, 512 positions) with the tests' byte-level tokenizer is
saved as a tfexport source and exported to ONNX (one graph with past key values). Each variant
generates ``--new`` tokens greedily after a ``--prompt``-token prompt; the quadratic path is the same
graph run on the whole sequence at every step with an empty past (how a logits-only export decodes).
Tokens per second are measured in one run (ratios matter: the machine is shared).

    python benchmarks/bench_generation.py [--new 128] [--prompt 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _rate(fn: Callable[[], List[int]], repeats: int) -> tuple:
    fn()  # warm-up
    best, tokens = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = fn()
        best = min(best, time.perf_counter() - started)
    return len(tokens) / best, tokens


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import transformers
    from tiny import gpt2_tokenizer

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory
    from mlflow_tfexport.serving.conf import read_flavor_conf
    from mlflow_tfexport.serving.runtimes import load_runner
    from mlflow_tfexport.serving.runtimes.base import greedy_generate

    torch.manual_seed(0)
    tok = gpt2_tokenizer(model_max_length=512)
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=4, n_head=4, n_positions=512)
    model: Any = transformers.GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None  # run to --new tokens
    prompt = list(range(10, 10 + args.prompt))
    with tempfile.TemporaryDirectory() as root:
        source, exported = os.path.join(root, "source"), os.path.join(root, "onnx")
        mlflow_tfexport.save_model(model, source, tokenizer=tok, task="text-generation")
        export_to_directory(source, exported, "onnx")
        eager: Any = load_runner(source, read_flavor_conf(source))
        onnx: Any = load_runner(exported, read_flavor_conf(exported))
        rates = {}
        rates["source (eager generate, DynamicCache)"], want = _rate(
            lambda: eager.generate(prompt, max_new_tokens=args.new, eos_token_id=None), args.repeats)
        rates["onnx with past (numpy loop)"], got = _rate(
            lambda: onnx.generate(prompt, max_new_tokens=args.new, eos_token_id=None), args.repeats)
        rates["onnx quadratic (whole sequence per token)"], slow = _rate(
            lambda: greedy_generate(onnx, prompt, max_new_tokens=args.new, eos_token_id=None), args.repeats)
    print(f"GPT-2 hidden 256, 4 layers; prompt {args.prompt} tokens, {args.new} new tokens, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs; same tokens: {want == got == slow}")
    base = rates["source (eager generate, DynamicCache)"]
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:8.1f} tokens/s  ({rate / base:.2f}x source)")
    return 0 if want == got == slow else 1


if __name__ == "__main__":
    sys.exit(main())
