"""What every static-shape trace needs: inputs of one bucket's shape with a padded row, and masks the tracer
can record (shared by ``export/torchscript.py`` and ``export/static_seq2seq.py``)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Dict, Iterator

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.export.options import Shape, SourceModel
from mlflow_tfexport.export.wrapper import source_inputs


@contextlib.contextmanager
def traceable_masks() -> Iterator[None]:
    """Let ``torch.jit.trace`` record attention masks on transformers 4.5x.

    With torch >= 2.6, transformers 4.5x builds 4D masks with ``torch.vmap``, which
    the tracer cannot record ("unordered_map::at"); its own vmap-free builder
    (``sdpa_mask_older_torch``) is swapped in while tracing. transformers 5 has no
    such builder and needs nothing: this is then a no-op.
    """
    try:
        mu = importlib.import_module("transformers.masking_utils")
    except ImportError:
        yield
        return
    older = getattr(mu, "sdpa_mask_older_torch", None)
    current = getattr(mu, "sdpa_mask", None)
    if older is None or current is None or current is older:
        yield
        return
    mapping = getattr(getattr(mu, "ALL_MASK_ATTENTION_FUNCTIONS", None), "_global_mapping", None)
    swap_mapping = isinstance(mapping, dict) and mapping.get("sdpa") is current
    setattr(mu, "sdpa_mask", older)  # noqa: B010
    if swap_mapping:
        mapping["sdpa"] = older  # type: ignore[index]
    try:
        yield
    finally:
        setattr(mu, "sdpa_mask", current)  # noqa: B010
        if swap_mapping:
            mapping["sdpa"] = current  # type: ignore[index]


def trace_inputs(source: SourceModel, shape: Shape, seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of exactly ``shape`` whose last row is padded, so the attention-mask path is traced
    (a trace on an all-ones mask may drop the mask computation)."""
    batch, seq = shape
    pad = source.flavor_conf.get(FlavorKey.PAD_TOKEN_ID)
    feeds = source_inputs(source, batch, seq, seed=seed)
    if "attention_mask" in feeds and seq > 1 and feeds["attention_mask"][-1].all():
        keep = max(1, seq - max(1, seq // 4))
        ended = feeds["input_ids"][-1, seq - 1]
        feeds["attention_mask"][-1, keep:] = 0
        feeds["input_ids"][-1, keep:] = 0 if pad is None else int(pad)
        if getattr(source.model.config, "is_encoder_decoder", False):
            feeds["input_ids"][-1, keep - 1] = ended  # keep the end-of-sequence token its head pools at
    return feeds
