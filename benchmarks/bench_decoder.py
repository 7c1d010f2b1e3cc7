"""Decoder speed side by side: our ONNX generation variant, torch ``generate``, onnxruntime-genai and optimum.

One run builds a random-weight GPT-2 and a Llama-style decoder (``--size tiny``, the default: hidden 256, 4
layers, 4 heads; ``--size 124m``: GPT-2-small's hidden 768, 12 layers, 12 heads, the size of issue 30), with
the tests' byte-level tokenizer (output rows of ids it lacks are zero, so every generated id has text). Every
system gets these very weights and the same ``--prompt``-token prompt, ``--batches`` copies of it per call,
and generates ``--new`` tokens greedily; the table is new tokens per second (best of ``--repeats``) and the
ratio to torch. Systems:

- ``onnx``: our variant (``export_to_directory(..., "onnx")``: for the Llama family the fused graph of
  ``exporter='fused'``, GPT-2 the traced one) through ``mlflow.pyfunc.load_model`` with the model_config it
  was written with; ``onnx0``: with ``intra_op_num_threads: 0`` (onnxruntime's default, a thread per core);
  ``onnxlegacy``: the traced graph (``exporter='legacy'``), threads 0; ``onnxopt``: the traced graph with
  ``optimize=True``, threads 0.
- ``torch generate``: ``model.generate`` (torch's default threads).
- ``onnxruntime-genai`` (its model builder, fp32, CPU) and ``optimum`` (``ORTModelForCausalLM``), each run by
  ``decoder_others.py`` in its own virtualenv made by ``.ci/bench-venvs.sh`` (``--genai-python`` /
  ``--optimum-python``, default ``/tmp/genai-venv/bin/python`` / ``/tmp/optimum-venv/bin/python``); a
  missing venv or a refused model is a row that says why.

Every row's tokens are checked against torch's: ``tokens`` is ``equal`` or says where they differ.

    python benchmarks/bench_decoder.py [--size tiny|124m] [--new 32] [--prompt 32] [--batches 1,8]
        [--models gpt2,llama] [--repeats 1] [--systems onnx,onnx0,onnxlegacy,onnxopt,torch,genai,optimum] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

import harness  # noqa: E402

SIZES = {"tiny": (256, 4, 4), "124m": (768, 12, 12)}  # hidden, layers, heads
SYSTEMS = ("onnx", "onnx0", "onnxlegacy", "onnxopt", "torch", "genai", "optimum")
LABELS = {"onnx": "our ONNX variant, as written", "onnx0": "our ONNX variant, intra_op_num_threads 0",
          "onnxlegacy": "our ONNX variant, exporter='legacy' (traced graph), threads 0",
          "onnxopt": "our ONNX variant, optimize=True, threads 0", "torch": "torch generate",
          "genai": "onnxruntime-genai", "optimum": "optimum ORTModelForCausalLM"}
VENVS = {"genai": "/tmp/genai-venv/bin/python", "optimum": "/tmp/optimum-venv/bin/python"}


def build(kind: str, size: str, tok: Any) -> Any:
    """The random-weight decoder every system gets (seed 0)."""
    return harness.random_decoder(kind, tok, *SIZES[size])



def check(tokens: List[int], reference: List[int]) -> str:
    if tokens == reference:
        return "equal"
    common = min(len(tokens), len(reference))
    at = next((i for i in range(common) if tokens[i] != reference[i]), common)
    return f"DIFFER at new token {at} ({len(tokens)} vs {len(reference)} tokens)"


def _other(system: str, python: str, hf: str, work: str, prompt_ids: List[int], args: argparse.Namespace
           ) -> Dict[str, Any]:
    if not os.path.exists(python):
        return {"error": f"no venv at {python}: run `bash .ci/bench-venvs.sh {system}` (or pass --{system}-python)"}
    proc = subprocess.run(
        [python, os.path.join(HERE, "decoder_others.py"), system, "--hf", hf, "--work", work,
         "--prompt-ids", ",".join(map(str, prompt_ids)), "--new", str(args.new),
         "--batches", ",".join(map(str, args.batches)), "--repeats", str(args.repeats)],
        capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"error": f"{system} exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}


def bench(kind: str, args: argparse.Namespace, root: str) -> List[Dict[str, Any]]:
    import mlflow
    import torch
    from tiny import gpt2_tokenizer

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    tok = gpt2_tokenizer(model_max_length=1024)
    model = build(kind, args.size, tok)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    text = harness.prompt_text(tok, args.prompt)
    prompt_ids = tok(text)["input_ids"]
    work = os.path.join(root, kind)
    hf = os.path.join(work, "hf")
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    source = os.path.join(work, "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task="text-generation")
    harness.log(f"\n{kind}: {params_m:.0f}M parameters, prompt {args.prompt} tokens, {args.new} new tokens "
                f"(greedy), batches {args.batches}")

    # torch: the reference tokens
    def torch_generate(batch: int) -> List[List[int]]:
        ids = torch.tensor([prompt_ids] * batch)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                 do_sample=False)
        return [r[len(prompt_ids):].tolist() for r in out]

    reference = torch_generate(1)[0]
    reference_text = tok.decode(reference)
    runs: Dict[str, Callable[[int], List[Any]]] = {}
    if "torch" in args.systems:
        runs["torch"] = torch_generate
    params = {"max_new_tokens": args.new, "do_sample": False}
    threads0 = {"intra_op_num_threads": 0}
    ours: Dict[str, Any] = {"onnx": ("onnx", {}, None), "onnx0": ("onnx", {}, threads0),
                            "onnxlegacy": ("onnx-legacy", {"exporter": "legacy"}, threads0),
                            "onnxopt": ("onnx-opt", {"optimize": True}, threads0)}
    exported: Dict[str, str] = {}
    for system, (folder, options, config) in ours.items():
        if system not in args.systems:
            continue
        path = os.path.join(work, folder)
        if folder not in exported:
            started = time.perf_counter()
            export_to_directory(source, path, "onnx", **options)
            exported[folder] = path
            harness.log(f"  export {folder}: {time.perf_counter() - started:.0f} s")
        pyfunc = mlflow.pyfunc.load_model(path, model_config=config) if config else mlflow.pyfunc.load_model(path)

        def ours_generate(batch: int, p: Any = pyfunc) -> List[Any]:
            """The new text of each row (the pyfunc answers text; re-encoding it need not give the ids back)."""
            out = p.predict([text] * batch, params=params)
            texts = list(out) if not hasattr(out, "tolist") else out.tolist()
            return [t[len(text):] if t.startswith(text) else t for t in texts]

        runs[system] = ours_generate

    rows: List[Dict[str, Any]] = []
    for system, generate in runs.items():
        time.sleep(harness.PAUSE_S)  # the previous runtime's spinning worker threads go idle
        generate(1)  # warm-up
        for batch in args.batches:
            seconds, out = float("inf"), []
            for _ in range(args.repeats):
                started = time.perf_counter()
                out = generate(batch)
                seconds = min(seconds, time.perf_counter() - started)
            if isinstance(out[0], str):  # our pyfunc: its text against the text of torch's ids
                tokens = "equal" if out[0] == reference_text else f"DIFFER (text {out[0][:20]!r}...)"
                new = len(reference)
            else:
                tokens, new = check(out[0], reference), len(out[0])
            tokens = tokens if all(r == out[0] for r in out) else "rows differ"
            rows.append({"model": kind, "system": system, "batch": batch, "new": new,
                         "tokens_per_s": batch * new / seconds, "tokens": tokens})
    for system in ("genai", "optimum"):
        if system not in args.systems:
            continue
        python = getattr(args, f"{system}_python")
        result = _other(system, python, hf, work, prompt_ids, args)
        if "error" in result:
            rows += [{"model": kind, "system": system, "batch": b, "tokens_per_s": None, "tokens": result["error"]}
                     for b in args.batches]
            continue
        for r in result["rows"]:
            ok = check(r["tokens"], reference) if r.get("rows_equal", True) else "rows differ"
            rows.append({"model": kind, "system": system, "version": result["version"], "batch": r["batch"],
                         "new": len(r["tokens"]), "tokens_per_s": r["batch"] * len(r["tokens"]) / r["seconds"],
                         "tokens": ok})
    return rows


def table(rows: List[Dict[str, Any]], batches: List[int], models: List[str]) -> str:
    cols = [(m, b) for m in models for b in batches]
    lines = ["| system | " + " | ".join(f"{m} b{b}" for m, b in cols) + " | tokens vs torch |",
             "|---" * (len(cols) + 2) + "|"]
    torch_rate = {(r["model"], r["batch"]): r["tokens_per_s"] for r in rows if r["system"] == "torch"}
    for system in SYSTEMS:
        mine = {(r["model"], r["batch"]): r for r in rows if r["system"] == system}
        if not mine:
            continue
        cells, notes = [], set()
        for col in cols:
            r = mine.get(col)
            rate = r["tokens_per_s"] if r else None
            base = torch_rate.get(col)
            cells.append("—" if rate is None else f"{rate:.1f}" + (f" ({rate / base:.2f}x)" if base else ""))
            if r:
                notes.add(r["tokens"])
        lines.append(f"| {LABELS[system]} | " + " | ".join(cells) + " | " + "; ".join(sorted(notes)) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["gpt2", "llama"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS))
    parser.add_argument("--genai-python", default=VENVS["genai"])
    parser.add_argument("--optimum-python", default=VENVS["optimum"])
    parser.add_argument("--out", default=None, help="write bench_decoder.json/.md here")
    args = parser.parse_args(argv)
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; expected some of {','.join(SYSTEMS)}")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    machine = harness.machine()
    harness.log(machine)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        for kind in args.models:
            rows += bench(kind, args, root)
    md = (f"New tokens/s, {args.size} models, prompt {args.prompt}, {args.new} new tokens, greedy; "
          f"best of {args.repeats}. {machine}\n\n" + table(rows, args.batches, args.models) + "\n")
    harness.log("\n" + md)
    if args.out:
        harness.write_results(args.out, "bench_decoder", {"machine": machine, "args": vars(args), "rows": rows}, md)
    bad = [r for r in rows if r["tokens_per_s"] is not None and r["tokens"] != "equal"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
