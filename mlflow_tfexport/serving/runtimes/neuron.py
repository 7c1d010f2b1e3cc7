"""Neuron runner: import the Neuron package, then ``torch.jit.load`` each bucket + the static runner.

A Neuron-compiled TorchScript module only loads after its SDK has registered
its custom ops, so ``import_neuron`` runs first. Inf1 variants import
``torch_neuron`` (torch 1.13, Python 3.10), Inf2/Trn1 variants ``torch_neuronx``.
No transformers import; Python 3.10-compatible.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, Mapping

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import MissingDependencyError
from mlflow_tfexport.serving.runtimes.torchscript import make_runner

NEURON_INDEX_URL = "https://pip.repos.neuron.amazonaws.com"


@dataclass(frozen=True)
class NeuronTarget:
    """One Neuron SDK flavour: which package compiles and serves, for which instances."""

    name: str  # "inf1" | "inf2"
    module: str  # import name
    package: str  # pip name
    compiler_package: str  # the compiler it drives
    instances: str  # instance families
    python: str  # Python of the serving stack
    install_packages: str  # what to pip install

    @property
    def install_command(self) -> str:
        return f"python -m pip install {self.install_packages} --extra-index-url {NEURON_INDEX_URL}"


TARGETS: Dict[str, NeuronTarget] = {
    "inf1": NeuronTarget(
        "inf1", "torch_neuron", "torch-neuron", "neuron-cc", "Inf1", "3.10",
        "torch-neuron 'neuron-cc[tensorflow]' protobuf",
    ),
    "inf2": NeuronTarget(
        "inf2", "torch_neuronx", "torch-neuronx", "neuronx-cc", "Inf2/Trn1", "3.11",
        "torch-neuronx 'neuronx-cc==2.*'",
    ),
}


def missing_sdk_message(target: NeuronTarget, detail: str = "") -> str:
    return (
        f"The AWS Neuron SDK package {target.package!r} (import {target.module}, for {target.instances} "
        f"instances) is not installed{f' ({detail})' if detail else ''}. It is not on PyPI (the PyPI entry is a "
        f"placeholder); install it from AWS's Neuron repository: {target.install_command}"
    )


def import_neuron(target_name: str) -> ModuleType:
    """Import the Neuron package of ``target_name``; registers its ops so ``torch.jit.load`` works."""
    target = TARGETS.get(target_name)
    if target is None:
        raise MissingDependencyError(
            f"Unknown Neuron target {target_name!r} in the model's MLmodel; known targets: {', '.join(TARGETS)}."
        )
    try:
        return importlib.import_module(target.module)
    except Exception as exc:  # the PyPI placeholder raises on import; a broken SDK raises anything
        raise MissingDependencyError(missing_sdk_message(target, f"{type(exc).__name__}: {exc}")) from exc


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> Any:
    neuron = import_neuron(str(flavor_conf.get(FlavorKey.NEURON_TARGET) or "inf1"))
    version = getattr(neuron, "__version__", "unknown")
    return make_runner(
        model_dir, flavor_conf, config,
        extra={"neuron_target": flavor_conf.get(FlavorKey.NEURON_TARGET), "neuron": f"{neuron.__name__} {version}"},
    )
