"""TorchScript runner: ``torch.jit.load`` of one traced module per bucket + the static runner.

Imports torch and numpy only, never transformers. Runs on Python 3.10 and
torch 1.13 as well (the Neuron runner reuses it).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey, Generation
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes.device import resolve_device
from mlflow_tfexport.serving.runtimes.static import (
    CPU_RUN_COST_ROWS,
    BucketFn,
    Shape,
    StaticRunner,
    bucket_paths,
    decoder_file,
    shape_name,
    static_runner,
)
from mlflow_tfexport.serving.runtimes.static_seq2seq import DecoderFn, StaticSeq2SeqRunner


def load_modules(model_dir: str, flavor_conf: Mapping[str, Any], torch: Any, device: Any = "cpu") -> Dict[Shape, Any]:
    """``torch.jit.load`` every bucket's module onto ``device`` (Neuron modules load on CPU and place themselves)."""
    modules = {}
    for shape, path in bucket_paths(model_dir, flavor_conf).items():
        module = torch.jit.load(path, map_location=device)
        module.eval()
        modules[shape] = module
    return modules


def bucket_fn(modules: Mapping[Shape, Any], torch: Any, device: Any = "cpu") -> BucketFn:
    def run(shape: Shape, arrays: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        with torch.no_grad():
            out = modules[shape](*[torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays])
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return [o.detach().float().cpu().numpy() for o in out]

    return run


def decoder_fn(decoders: Mapping[Tuple[Shape, int], Any], torch: Any, device: Any = "cpu") -> DecoderFn:
    """Runs the decoder module of ``(bucket, T)`` on ``(ids, states, mask, decoder_position)``: logits
    ``[B, 1, V]``. A decoder traced before the ``decoder_position`` input (three inputs, logits at every
    position ``[B, T, V]``) still serves: its logits are gathered at ``decoder_position`` here."""
    arity = {key: len(module.forward.schema.arguments) - 1 for key, module in decoders.items()}
    runs = {key: bucket_fn({key[0]: module}, torch, device) for key, module in decoders.items()}

    def run(shape: Shape, length: int, arrays: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        key = (shape, length)
        if arity[key] == len(arrays):
            return runs[key](shape, arrays)
        position = np.asarray(arrays[-1])
        logits = runs[key](shape, arrays[:-1])[0]
        return [logits[np.arange(len(position)), position][:, None]]

    return run


class TorchScriptRunner(StaticRunner):
    """A ``StaticRunner`` over ``torch.jit`` modules; ``modules`` maps ``"1x128"`` to each module."""

    modules: Dict[str, Any]

    @property
    def module(self) -> Any:
        """The traced module when there is one bucket, else the ``{"BxS": module}`` dict."""
        if len(self.modules) == 1:
            return next(iter(self.modules.values()))
        return self.modules


def seq2seq_runner(model_dir: str, flavor_conf: Mapping[str, Any], torch: Any, device: Any,
                   facts: Mapping[str, Any]) -> Any:
    """A static encoder-decoder: the encoder modules (one per bucket) and the decoder modules (per bucket and
    decoder length) behind ``StaticSeq2SeqRunner``."""
    encoders = load_modules(model_dir, flavor_conf, torch, device)
    lengths = [int(t) for t in flavor_conf.get(FlavorKey.DECODER_LENGTHS) or []]
    decoders = {}
    for shape in encoders:
        for length in lengths:
            path = artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE, decoder_file(shape, length))
            decoders[(shape, length)] = torch.jit.load(path, map_location=device).eval()
    runner = StaticSeq2SeqRunner(list(encoders), lengths, bucket_fn(encoders, torch, device),
                                 decoder_fn(decoders, torch, device), flavor_conf, facts)
    if str(device) == "cpu":
        runner.run_cost_rows = CPU_RUN_COST_ROWS
    return runner


def make_runner(
    model_dir: str,
    flavor_conf: Mapping[str, Any],
    config: Mapping[str, Any],
    extra: Optional[Dict[str, Any]] = None,
    device: Any = "cpu",
) -> Any:
    """A ``TorchScriptRunner`` (a ``StaticSeq2SeqRunner`` for a static encoder-decoder)."""
    torch = require("torch")
    if config.get("torch_num_threads") is not None:
        torch.set_num_threads(int(config["torch_num_threads"]))
    facts = {"torch": str(torch.__version__), "device": str(device), **(extra or {})}
    if flavor_conf.get(FlavorKey.GENERATION) == Generation.STATIC_ENCODER_DECODER:
        return seq2seq_runner(model_dir, flavor_conf, torch, device, facts)
    modules = load_modules(model_dir, flavor_conf, torch, device)
    runner = static_runner(flavor_conf, bucket_fn(modules, torch, device), facts, TorchScriptRunner)
    runner.modules = {shape_name(s): m for s, m in modules.items()}
    if str(device) == "cpu":
        runner.run_cost_rows = CPU_RUN_COST_ROWS
    return runner


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> Any:
    traced = str(flavor_conf.get(FlavorKey.TRACE_DEVICE) or "cpu")
    return make_runner(model_dir, flavor_conf, config, device=resolve_device(require("torch"), config, traced))
