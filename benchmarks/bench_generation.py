"""Generation speed: the source variant, the ONNX variant (with past, numpy loop) and ``mlflow.transformers``;
for an encoder-decoder (``--models bart``) also the static TorchScript variant (encoder per bucket, cache-free
decoder re-run per token: ``docs/static-seq2seq.md``).

For a GPT-2-small-sized model (hidden 768, 12 layers, 12 heads, 50257 vocabulary: 124M parameters) and a
Llama-style model of similar size (hidden 768, 12 layers, 12 heads, 4 key/value heads, MLP 2048, 32000
vocabulary), with random weights and the tests' byte-level tokenizer (output rows of ids it lacks are zero, so
generated ids have text): each variant is loaded with
``mlflow.pyfunc.load_model`` and generates ``--new`` tokens greedily after a ``--prompt``-token prompt, for
``--batches`` prompts per request. ``mlflow.transformers`` serves a pipeline of the same model (its pyfunc
with ``max_new_tokens`` in its signature). Time to first token is measured with ``predict_stream`` (the first
chunk after the prompt's text). Everything runs side by side in one process: ratios matter, the machine may be
shared.

    python benchmarks/bench_generation.py [--new 128] [--prompt 32] [--batches 1,8] [--models gpt2,llama]
        [--hidden 768] [--layers 12] [--repeats 1]
    python benchmarks/bench_generation.py --models bart --new 24 --prompt 24 --hidden 512 --layers 6 --heads 8

``bart``: a BART of ``--hidden``/``--layers`` (encoder and decoder each)/``--heads`` with a 32000 vocabulary;
its TorchScript variant is traced at ``1xS,8xS`` with ``S`` the smallest power of two above prompt and new
tokens (so one decoder length ``S``); the ratios are to the source variant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from harness import best_of, prompt_text, random_decoder  # noqa: E402


def tokens_per_second(kind: str, variants: Dict[str, Any], prompt: str, params: Dict[str, Any],
                      args: argparse.Namespace, base: str, base_label: str) -> List[Tuple[str, int, float]]:
    """For each batch of ``args.batches`` copies of ``prompt``: every variant's new tokens per second (best of
    ``args.repeats`` after a short warm-up), printed with the ratio to the variant named ``base``."""
    results = []
    width = max(len(name) for name in variants)
    for batch in args.batches:
        prompts = [prompt] * batch
        rates: Dict[str, float] = {}
        for name, pyfunc in variants.items():
            pyfunc.predict(prompts[:1], params={**params, "max_new_tokens": 4})  # warm-up
            seconds = best_of(lambda p=pyfunc, rows=prompts: p.predict(rows, params=params), args.repeats,
                              warm_up=False)
            rates[name] = batch * args.new / seconds
            results.append((f"{kind} {name}", batch, rates[name]))
        print(f"  batch {batch}:")
        for name, rate in rates.items():
            print(f"    {name:{width}s} {rate:8.1f} tokens/s  ({rate / rates[base]:.2f}x {base_label})")
    return results

def _ttft(pyfunc: Any, prompt: str, params: Dict[str, Any]) -> float:
    started = time.perf_counter()
    stream = pyfunc.predict_stream(prompt, params=params)
    first = next(stream)
    if first == prompt:  # the prompt's text comes first, then the generated text
        next(stream)
    elapsed = time.perf_counter() - started
    stream.close()  # stops the decoding
    return elapsed


def bench(kind: str, args: argparse.Namespace, root: str) -> List[Tuple[str, int, float]]:
    import mlflow
    import torch
    from tiny import gpt2_tokenizer

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    tok = gpt2_tokenizer(model_max_length=1024)
    if kind == "bart":
        return bench_seq2seq(args, root, tok)
    model = random_decoder(kind, tok, args.hidden, args.layers, args.heads)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    source, onnx, hf = (os.path.join(root, kind, n) for n in ("source", "onnx", "transformers"))
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task="text-generation")
    started = time.perf_counter()
    export_to_directory(source, onnx, "onnx")
    export_s = time.perf_counter() - started
    params = {"max_new_tokens": args.new, "do_sample": False}  # mlflow.transformers samples unless told not to
    signature = mlflow.models.infer_signature(["a prompt"], ["a text"], params=params)
    mlflow.transformers.save_model({"model": model, "tokenizer": tok}, hf, task="text-generation",
                                   signature=signature, pip_requirements=["mlflow", "torch", "transformers"])
    variants = {"source (tfexport, transformers generate)": mlflow.pyfunc.load_model(source),
                "onnx (tfexport, with past, numpy loop)": mlflow.pyfunc.load_model(onnx),
                "mlflow.transformers (pipeline)": mlflow.pyfunc.load_model(hf)}
    prompt = prompt_text(tok, args.prompt)
    print(f"\n{kind}: {params_m:.0f}M parameters, prompt {args.prompt} tokens, {args.new} new tokens (greedy), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; ONNX export {export_s:.0f} s")
    results = tokens_per_second(kind, variants, prompt, params, args, "mlflow.transformers (pipeline)",
                                "mlflow.transformers")
    for name, pyfunc in list(variants.items())[:2]:
        ttft = min(_ttft(pyfunc, prompt, params) for _ in range(max(1, args.repeats)))
        print(f"  time to first token, predict_stream, {name:42s} {ttft * 1000:7.1f} ms")
    return results


def _bart(args: argparse.Namespace, tok: Any) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = transformers.BartConfig(vocab_size=32000, d_model=args.hidden, encoder_layers=args.layers,
                                     decoder_layers=args.layers, encoder_attention_heads=args.heads,
                                     decoder_attention_heads=args.heads, encoder_ffn_dim=4 * args.hidden,
                                     decoder_ffn_dim=4 * args.hidden, max_position_embeddings=1024,
                                     pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
                                     forced_eos_token_id=None, forced_bos_token_id=None)
    model = transformers.BartForConditionalGeneration(config)
    with torch.no_grad():  # only ids the tokenizer knows win (their text is stable); the vocabulary's cost stays
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.lm_head.weight[len(tok):] = 0.0
        model.lm_head.weight[eos] = 0.0  # no early end: every row generates --new tokens
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    model.generation_config.forced_eos_token_id = None
    return model.eval()


def bench_seq2seq(args: argparse.Namespace, root: str, tok: Any) -> List[Tuple[str, int, float]]:
    """Source, ONNX (encoder + decoder with past) and static TorchScript (cache-free decoder) of one BART."""
    import mlflow
    import torch

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    model = _bart(args, tok)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    source, onnx, ts = (os.path.join(root, "bart", n) for n in ("source", "onnx", "torchscript"))
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task="text2text-generation")
    bucket = 1 << max(args.prompt, args.new + 1).bit_length()
    seconds = {}
    for path, fmt, options in ((onnx, "onnx", {}), (ts, "torchscript", {"trace_shape": f"1x{bucket},8x{bucket}"})):
        started = time.perf_counter()
        export_to_directory(source, path, fmt, **options)
        seconds[fmt] = time.perf_counter() - started
    variants = {"source (tfexport, transformers generate)": mlflow.pyfunc.load_model(source),
                "onnx (tfexport, encoder + decoder with past)": mlflow.pyfunc.load_model(onnx),
                f"torchscript (static, 1x{bucket},8x{bucket}, no cache)": mlflow.pyfunc.load_model(ts)}
    prompt = prompt_text(tok, args.prompt)
    params = {"max_new_tokens": args.new}
    print(f"\nbart: {params_m:.0f}M parameters, prompt {args.prompt} tokens, {args.new} new tokens (greedy), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; export ONNX {seconds['onnx']:.0f} s, "
          f"TorchScript {seconds['torchscript']:.0f} s (with validation)")
    results = tokens_per_second("bart", variants, prompt, params, args, "source (tfexport, transformers generate)",
                                "source")
    return results


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["gpt2", "llama"])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as root:
        for kind in args.models:
            bench(kind, args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
