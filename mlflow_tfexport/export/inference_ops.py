"""Inference-only twins of modules that ``torch.jit`` cannot save, swapped in on the copy that is traced.

Some architectures compute an activation through a custom ``torch.autograd.Function`` (for a hand-written
backward). ``torch.jit.trace`` records such a call as a Python op, which ``torch.jit.save`` cannot serialise.
An exported variant never runs a backward pass, so the module is replaced by one that computes the same
forward in plain tensor operations. The table names each module class and the plain function of its own
modeling module that computes its forward (transformers ships both).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List

from mlflow_tfexport._lazy import require

#: module class name -> the name of the plain-math forward in the same modeling module.
PLAIN_TWINS: Dict[str, str] = {
    "BloomGelu": "bloom_gelu_forward",  # GeLUFunction (custom backward) -> its tanh-approximation forward
}


def _plain_module(forward: Callable[[Any], Any]) -> Any:
    torch = require("torch")

    class PlainForward(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, x: Any) -> Any:
            return forward(x)

    return PlainForward()


def swap_autograd_functions(model: Any) -> List[str]:
    """Replace, in ``model`` (a copy that is only traced), every module of ``PLAIN_TWINS`` by its plain-math
    twin; returns the names of the module classes swapped."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            twin = PLAIN_TWINS.get(type(child).__name__)
            if twin is None:
                continue
            forward = getattr(importlib.import_module(type(child).__module__), twin, None)
            if forward is None:
                continue
            setattr(parent, name, _plain_module(forward))
            swapped.append(type(child).__name__)
    return sorted(set(swapped))
