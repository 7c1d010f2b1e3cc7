"""The runner interface every format implements."""

from __future__ import annotations

from typing import Any, Dict, Tuple

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
