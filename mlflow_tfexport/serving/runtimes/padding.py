"""Pad the sequence of every batch to what the exported model needs, and strip it from the outputs.

Longformer pads its input to a multiple of its attention window inside its forward; an export records that
padding for the export length only, so the variant's flavor block says ``pad_to_multiple_of`` and this
wrapper pads each batch (pad id for ``input_ids``, 0 for the masks and type ids: padded positions are
masked) before the format's runner sees it, then cuts every output's sequence axis back to the request's
length. numpy only; Python 3.10.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.runtimes.base import Runner
from mlflow_tfexport.tasks import SEQUENCE, TEXT_INPUTS, OutputSpec


class SequencePadding:
    """A runner whose feeds are padded to a multiple of ``multiple`` along the sequence axis."""

    def __init__(self, runner: Runner, multiple: int, pad_token_id: int, outputs: Sequence[OutputSpec]) -> None:
        self.runner = runner
        self.multiple = int(multiple)
        self.pad_token_id = int(pad_token_id)
        self.input_names: Tuple[str, ...] = tuple(runner.input_names)
        self.output_names: Tuple[str, ...] = tuple(runner.output_names)
        self._axes = {o.name: [int(a) for a, n in o.axes.items() if n == SEQUENCE] for o in outputs}

    def __getattr__(self, name: str) -> Any:  # .session, .modules, .calls... of the wrapped runner
        if name == "runner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.runner, name)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        text = [n for n in self.input_names if n in TEXT_INPUTS and n in feeds]
        if not text:
            return self.runner.run(feeds)
        length = int(np.shape(feeds[text[0]])[1])
        extra = -length % self.multiple
        if extra == 0 or length == 0:
            return self.runner.run(feeds)
        padded = dict(feeds)
        for name in text:
            value = self.pad_token_id if name == "input_ids" else 0
            padded[name] = np.pad(np.asarray(feeds[name]), ((0, 0), (0, extra)), constant_values=value)
        out = self.runner.run(padded)
        return {name: self._cut(name, value, length) for name, value in out.items()}

    def _cut(self, name: str, value: np.ndarray, length: int) -> np.ndarray:
        for axis in self._axes.get(name, ()):
            if axis < value.ndim:
                value = np.take(value, np.arange(length), axis=axis)
        return value

    def describe(self) -> Dict[str, Any]:
        return {**self.runner.describe(), FlavorKey.PAD_TO_MULTIPLE_OF: self.multiple}


def with_sequence_padding(runner: Runner, flavor_conf: Mapping[str, Any]) -> Runner:
    """``runner`` wrapped in ``SequencePadding`` when the flavor block asks for it (``pad_to_multiple_of``)."""
    multiple = flavor_conf.get(FlavorKey.PAD_TO_MULTIPLE_OF)
    if not multiple or int(multiple) <= 1:
        return runner
    outputs = task_of(flavor_conf).outputs
    padded: Runner = SequencePadding(runner, int(multiple), int(flavor_conf.get(FlavorKey.PAD_TOKEN_ID) or 0),
                                     outputs)
    return padded


def right_padded(prompts: Sequence[Sequence[int]], pad_token_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)``: token rows of different lengths right-padded to the longest, as int64 arrays (the
    encoder inputs of a sequence-to-sequence batch)."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
        mask[row, :len(prompt)] = 1
    return ids, mask
