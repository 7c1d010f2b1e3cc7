"""Static seq2seq decoding: the cache-free decoder the product traces vs a fixed-size masked cache (a prototype).

Both are traced with ``torch.jit.trace`` at static shapes for one BART (random weights,
``--hidden``/``--layers``/``--heads``, 32000 vocabulary) and decode ``--new`` tokens greedily
after a ``--prompt``-token source, at every batch of ``--batches``, with numpy between calls
as the serving runner has it (tensors in, arrays out, nothing held by a module across calls):

- **no cache** (``export/static_seq2seq.py``, what the product exports): per token, the
  decoder re-runs on the decoder sequence so far right-padded to ``T`` (the bucket's
  length), cross-attention keys/values recomputed from the encoder states, the LM head on
  the one gathered position;
- **no cache, LM head at every position**: the same decoder traced without
  ``logits_at_position`` (what the product exported before: ``[B, T, V]`` logits per call);
- **fixed cache** (this file only): per token, a decoder *step* on one token that takes the
  self-attention cache ``[layers, B, heads, T, head_dim]`` (keys and values) and the
  position, writes the new key/value into slot ``position`` with a one-hot mask (no
  scatter: ``cache * (1 - slot) + new * slot``), attends over the ``T`` slots under a mask
  of the positions written so far, and returns logits and both caches; the
  cross-attention keys/values are computed once per request by a second traced module.

Both must give the source's ``generate`` tokens (checked before timing). Everything runs
side by side in one process: ratios matter, the machine may be shared.

    python benchmarks/bench_seq2seq_cache.py [--new 24] [--prompt 24] [--hidden 512] [--layers 6] [--heads 8]
        [--batches 1,8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from harness import best_of  # noqa: E402


def cache_modules(model: Any) -> Tuple[Any, Any]:
    """``(cross_kv, step)``: the cross-attention keys/values of every layer, and one decoder step over a fixed cache."""
    import torch

    decoder, heads = model.get_decoder(), model.config.decoder_attention_heads
    layers = list(decoder.layers)
    scale = float(getattr(decoder, "embed_scale", 1.0) or 1.0)

    def split(x: Any) -> Any:  # [B, L, H] -> [B, heads, L, D]
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def merge(x: Any) -> Any:  # [B, heads, L, D] -> [B, L, H]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    class CrossKV(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, states: Any) -> Tuple[Any, Any]:
            keys = [split(layer.encoder_attn.k_proj(states)) for layer in self.decoder.layers]
            values = [split(layer.encoder_attn.v_proj(states)) for layer in self.decoder.layers]
            return torch.stack(keys), torch.stack(values)

    class Step(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, token: Any, position: Any, self_k: Any, self_v: Any, cross_k: Any, cross_v: Any,
                    encoder_mask: Any) -> Tuple[Any, Any, Any]:
            slots = self_k.shape[3]
            x = decoder.embed_tokens(token) * scale + decoder.embed_positions.weight[position + 2][:, None]
            x = decoder.layernorm_embedding(x)
            index = torch.arange(slots)
            slot = (index == position).to(x.dtype)[None, None, :, None]  # [1, 1, T, 1]
            self_bias = torch.where(index <= position, 0.0, torch.finfo(x.dtype).min).to(x.dtype)[None, None, None]
            cross_bias = ((1.0 - encoder_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min)
            new_k, new_v = [], []
            for i, layer in enumerate(layers):
                attn = layer.self_attn
                q = split(attn.q_proj(x)) * attn.scaling
                k = self_k[i] * (1.0 - slot) + split(attn.k_proj(x)) * slot
                v = self_v[i] * (1.0 - slot) + split(attn.v_proj(x)) * slot
                new_k.append(k)
                new_v.append(v)
                weights = torch.softmax(q @ k.transpose(-1, -2) + self_bias, dim=-1)
                x = layer.self_attn_layer_norm(x + attn.out_proj(merge(weights @ v)))
                cross = layer.encoder_attn
                q = split(cross.q_proj(x)) * cross.scaling
                weights = torch.softmax(q @ cross_k[i].transpose(-1, -2) + cross_bias, dim=-1)
                x = layer.encoder_attn_layer_norm(x + cross.out_proj(merge(weights @ cross_v[i])))
                x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
            logits = model.lm_head(x) + model.final_logits_bias
            return logits, torch.stack(new_k), torch.stack(new_v)

    return CrossKV().eval(), Step().eval()


def _arrays(out: Any) -> List[np.ndarray]:
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _run(module: Any, *arrays: np.ndarray) -> List[np.ndarray]:
    import torch

    with torch.no_grad():
        return _arrays(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]))


def build(args: argparse.Namespace, batch: int, slots: int) -> Dict[str, Any]:
    """The encoder, the cache-free decoder (product code) and the fixed-cache modules traced at ``batch x slots``."""
    import torch
    from bench_generation import _bart
    from tiny import gpt2_tokenizer

    from mlflow_tfexport.export.static_seq2seq import decoder_module, encoder_module, logits_at_position
    from mlflow_tfexport.export.tracing import traceable_masks

    tok = gpt2_tokenizer(model_max_length=1024)
    model = _bart(args, tok)
    hidden, heads, layers = model.config.d_model, model.config.decoder_attention_heads, model.config.decoder_layers
    ids = torch.randint(40, 200, (batch, slots))
    mask = torch.ones(batch, slots, dtype=torch.int64)
    dec = torch.randint(40, 200, (batch, slots))
    cache = torch.zeros(layers, batch, heads, slots, hidden // heads)
    with torch.no_grad(), warnings.catch_warnings(), traceable_masks():
        warnings.simplefilter("ignore")
        encoder = torch.jit.trace(encoder_module(model), (ids, mask), check_trace=False)
        states = encoder(ids, mask)[0]
        every = torch.jit.trace(decoder_module(model), (dec, states, mask, torch.full((batch,), slots - 1)),
                                check_trace=False)
        no_cache = decoder_module(model)
        with logits_at_position(no_cache):
            no_cache = torch.jit.trace(no_cache, (dec, states, mask, torch.full((batch,), slots - 1)),
                                       check_trace=False)
        cross, step = cache_modules(model)
        cross = torch.jit.trace(cross, (states,), check_trace=False)
        ck, cv = cross(states)
        step = torch.jit.trace(step, (dec[:, :1], torch.tensor([3]), cache, cache, ck, cv, mask), check_trace=False)
    return {"model": model, "tok": tok, "encoder": encoder, "no_cache": no_cache, "every": every, "cross": cross,
            "step": step,
            "cache_shape": tuple(cache.shape)}


def greedy_no_cache(m: Dict[str, Any], ids: np.ndarray, mask: np.ndarray, new: int, start: int,
                    module: str = "no_cache") -> np.ndarray:
    (states,) = _run(m["encoder"], ids, mask)
    batch, slots = ids.shape
    dec = np.full((batch, slots), start, dtype=np.int64)
    for t in range(new):
        (logits,) = _run(m[module], dec, states, mask, np.full((batch,), t, dtype=np.int64))
        dec[:, t + 1] = logits[:, 0 if module == "no_cache" else t].argmax(-1)
    return dec[:, 1:new + 1]


def greedy_fixed_cache(m: Dict[str, Any], ids: np.ndarray, mask: np.ndarray, new: int, start: int) -> np.ndarray:
    (states,) = _run(m["encoder"], ids, mask)
    ck, cv = _run(m["cross"], states)
    k = np.zeros(m["cache_shape"], dtype=np.float32)
    v = np.zeros(m["cache_shape"], dtype=np.float32)
    token = np.full((ids.shape[0], 1), start, dtype=np.int64)
    out = []
    for t in range(new):
        logits, k, v = _run(m["step"], token, np.array([t], dtype=np.int64), k, v, ck, cv, mask)
        token = logits[:, 0].argmax(-1)[:, None].astype(np.int64)
        out.append(token[:, 0])
    return np.stack(out, axis=1)


def per_call(m: Dict[str, Any], ids: np.ndarray, mask: np.ndarray, start: int, calls: int) -> Dict[str, float]:
    """The least time of one call of each decoder module (the step at position ``T // 2``), interleaved."""
    (states,) = _run(m["encoder"], ids, mask)
    ck, cv = _run(m["cross"], states)
    batch, slots = ids.shape
    dec = np.full((batch, slots), start, dtype=np.int64)
    cache = np.zeros(m["cache_shape"], dtype=np.float32)
    position = np.full((batch,), slots // 2, dtype=np.int64)
    runs = {"no cache, logits at 1 position": lambda: _run(m["no_cache"], dec, states, mask, position),
            "no cache, LM head at all T (before)": lambda: _run(m["every"], dec, states, mask, position),
            "fixed cache step": lambda: _run(m["step"], dec[:, :1], position[:1], cache, cache, ck, cv, mask)}
    best = {name: float("inf") for name in runs}
    for _ in range(calls):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best




def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--prompt", type=int, default=24)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10,
                        help="also time single decoder calls: the least of this many, interleaved (robust to load)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    slots = 1 << max(args.prompt, args.new + 1).bit_length()  # the bucket bench_generation.py traces
    print(f"BART hidden {args.hidden}, {args.layers}+{args.layers} layers, {args.heads} heads, 32000 vocabulary; "
          f"source {args.prompt} tokens padded to {slots}, {args.new} new tokens (greedy), decoder length T={slots}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    for batch in args.batches:
        m = build(args, batch, slots)
        model = m["model"]
        start = int(model.config.decoder_start_token_id)
        ids = np.tile(np.arange(40, 40 + slots, dtype=np.int64), (batch, 1))
        mask = np.zeros((batch, slots), dtype=np.int64)
        mask[:, :args.prompt] = 1
        ids[:, args.prompt:] = model.config.pad_token_id
        with torch.no_grad():
            want = model.generate(input_ids=torch.from_numpy(ids[:, :args.prompt]),
                                  attention_mask=torch.from_numpy(mask[:, :args.prompt]), max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=False, num_beams=1).numpy()[:, 1:]
        runs = {"no cache (re-run at T, logits at 1 position)": functools.partial(greedy_no_cache, m, ids, mask,
                                                                                   args.new, start),
                "no cache, LM head at all T positions (before)": functools.partial(greedy_no_cache, m, ids, mask,
                                                                                    args.new, start, "every"),
                "fixed-size masked cache (prototype)": functools.partial(greedy_fixed_cache, m, ids, mask, args.new,
                                                                         start)}
        same = {name: bool((run() == want).all()) for name, run in runs.items()}  # also the warm-up
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):  # interleaved: a load spike on a shared machine hits both
            for name, run in runs.items():
                best[name] = min(best[name], best_of(run, 1, warm_up=False))
        rates = {name: (batch * args.new / best[name], same[name]) for name in runs}
        print(f"  batch {batch}:")
        calls = per_call(m, ids, mask, start, args.calls)
        print(f"    one decoder call, least of {args.calls}: "
              + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in calls.items()))
        base = next(iter(rates.values()))[0]
        for name, (rate, same) in rates.items():
            print(f"    {name:48s} {rate:8.1f} tokens/s  ({rate / base:.2f}x no cache)  "
                  f"tokens equal generate: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
