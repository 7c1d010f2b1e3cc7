"""Per-format runners behind one interface.

A runner takes int64 numpy feeds keyed by input name and returns float numpy
outputs keyed by the task spec's output names. Each runner module is imported
only when its format is loaded, so serving an ONNX variant never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import UnknownFormatError
from mlflow_tfexport.formats import FORMATS
from mlflow_tfexport.serving.runtimes.base import Runner


def load_runner(
    model_dir: str, flavor_conf: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
) -> Runner:
    """Load the runner for the saved model's format (``flavor_conf['format']``)."""
    fmt = flavor_conf["format"]
    if fmt not in FORMATS:
        raise UnknownFormatError(
            f"Saved model has format {fmt!r}; this version of mlflow-tfexport can run "
            f"{', '.join(FORMATS)}. Upgrade mlflow-tfexport to serve it."
        )
    module = importlib.import_module(FORMATS[fmt].runtime)
    runner: Runner = module.load(model_dir, flavor_conf, dict(model_config or {}))
    if flavor_conf.get(FlavorKey.PAD_TO_MULTIPLE_OF):  # imported by name, as the runtimes: it reads the task table
        runner = importlib.import_module(f"{__name__}.padding").with_sequence_padding(runner, flavor_conf)
    return runner


__all__ = ["Runner", "load_runner"]
