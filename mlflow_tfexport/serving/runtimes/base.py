"""The runner interface every format implements."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

try:  # Python 3.8+: typing.Protocol; kept in a try for old Neuron stacks.
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


class Runner(Protocol):
    """Runs a model on numpy feeds."""

    input_names: Tuple[str, ...]
    output_names: Tuple[str, ...]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one batch; every output keeps the batch and sequence of the feeds."""
        ...

    def describe(self) -> Dict[str, Any]:
        """Facts worth recording (providers, device, buckets)."""
        ...


def greedy_generate(
    runner: Runner,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_token_id: Optional[int],
) -> list:
    """Greedy decoding on any runner that returns ``logits`` (no past key values).

    Each step re-runs the whole sequence, so this is quadratic in length; runners
    with a native ``generate`` (the eager one) use theirs instead.
    """
    ids = np.asarray(list(prompt_ids), dtype=np.int64)[None, :]
    generated: list = []
    for _ in range(int(max_new_tokens)):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in runner.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        logits = runner.run({k: feeds[k] for k in runner.input_names})["logits"]
        next_id = int(np.argmax(logits[0, -1]))
        generated.append(next_id)
        if eos_token_id is not None and next_id == eos_token_id:
            break
        ids = np.concatenate([ids, np.array([[next_id]], dtype=np.int64)], axis=1)
    return generated
