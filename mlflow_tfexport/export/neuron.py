"""AWS Neuron backend: the TorchScript backend's buckets, compiled by the Neuron SDK.

* Inf1 (``neuron_target="inf1"``): ``torch-neuron``,
  ``torch.neuron.trace(module, example_inputs, compiler_args=[...], dynamic_batch_size=True)``.
* Inf2/Trn1 (``neuron_target="inf2"``): ``torch-neuronx``,
  ``torch_neuronx.trace(module, example_inputs, compiler_args=[...])``.

Without ``neuron_target`` the installed SDK decides. Neither SDK is on PyPI:
when it is missing, ``check`` fails before any work with the install command.

The compile call sits behind one seam, ``set_compiler``: a ``NeuronCompiler``
whose ``compile(module, example_inputs, compiler_args)`` takes static-shape
tensors and returns a TorchScript module. By default it is built from the
installed SDK; tests install a CPU stand-in (``torch.jit.trace``) that honours
the same contract. Everything else (buckets, padding, artifacts, the Inf1
serving environment, tags, registration, validation through the real runner)
is the same code either way.

A compiled Neuron module runs only on a NeuronCore, and every export is
validated by running it, so the export itself runs on an instance of the
target family (compiling elsewhere would give an unvalidated version).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mlflow_tfexport.constants import FlavorKey, Format, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export.options import ExportedArtifact, ExportOptions, SourceModel
from mlflow_tfexport.export.torchscript import StaticBackend
from mlflow_tfexport.flavor.environment import pinned
from mlflow_tfexport.serving.runtimes.neuron import NEURON_INDEX_URL, TARGETS, NeuronTarget, missing_sdk_message
from mlflow_tfexport.serving.runtimes.static import NEURON_DIR

CompileFn = Callable[[Any, Tuple[Any, ...], Sequence[str]], Any]

#: Keep fp32 numerics by default so that validation at the task's atol is meaningful.
DEFAULT_COMPILER_ARGS: Dict[str, Tuple[str, ...]] = {
    "inf1": ("--fast-math", "none"),
    "inf2": ("--auto-cast", "none"),
}


@dataclass(frozen=True)
class NeuronCompiler:
    """The seam around the Neuron compile call."""

    target: str  # "inf1" | "inf2"
    version: str  # recorded in the tfexport.compiler_version tag
    compile: CompileFn  # (module, static-shape example inputs, compiler args) -> TorchScript module
    runnable: bool = True  # can compiled modules run here (a NeuronCore, or a CPU stand-in)?
    sdk: bool = False  # the real SDK (pins its version in the variant's requirements)


_override: Optional[NeuronCompiler] = None


def set_compiler(compiler: Optional[NeuronCompiler]) -> Optional[NeuronCompiler]:
    """Use ``compiler`` instead of the installed SDK (``None`` restores the SDK); returns the previous one."""
    global _override
    previous, _override = _override, compiler
    return previous


def neuron_device_present() -> bool:
    return bool(glob.glob("/dev/neuron*"))


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _import_sdk(target: NeuronTarget) -> Any:
    try:
        return importlib.import_module(target.module)
    except Exception as exc:  # not installed, or the PyPI placeholder that raises on import
        detail = "" if isinstance(exc, ModuleNotFoundError) else f"importing it failed: {type(exc).__name__}: {exc}"
        raise ExportError(
            f"format='neuron' for {target.instances} ({target.name}) needs the Neuron SDK. "
            + missing_sdk_message(target, detail)
        ) from exc


def _inf1_compile(module: Any, example_inputs: Tuple[Any, ...], compiler_args: Sequence[str]) -> Any:
    import torch
    import torch_neuron  # noqa: F401  (registers torch.neuron)

    return torch.neuron.trace(  # type: ignore[attr-defined]
        module, example_inputs, compiler_args=list(compiler_args), dynamic_batch_size=True)


def _inf2_compile(module: Any, example_inputs: Tuple[Any, ...], compiler_args: Sequence[str]) -> Any:
    import torch_neuronx

    return torch_neuronx.trace(module, example_inputs, compiler_args=list(compiler_args))


def sdk_compiler(target_name: Optional[str]) -> NeuronCompiler:
    """The compiler of the installed SDK for ``target_name`` (or whichever SDK is installed)."""
    if target_name is None:
        for name in ("inf2", "inf1"):
            if importlib.util.find_spec(TARGETS[name].module) is not None:
                target_name = name
                break
        else:
            raise ExportError(
                "format='neuron' needs the AWS Neuron SDK, which is not installed (it is not on PyPI). "
                f"For Inf1: {TARGETS['inf1'].install_command} (torch 1.13, Python 3.10). "
                f"For Inf2/Trn1: {TARGETS['inf2'].install_command}. "
                "Or pass neuron_target='inf1'|'inf2' (CLI: --neuron-target) to say which one you mean."
            )
    target = TARGETS[target_name]
    _import_sdk(target)
    versions = [f"{p}=={v}" for p in (target.package, target.compiler_package) if (v := _version(p))]
    return NeuronCompiler(
        target=target_name,
        version=",".join(versions) or target.package,
        compile=_inf1_compile if target_name == "inf1" else _inf2_compile,
        runnable=neuron_device_present(),
        sdk=True,
    )


def serving_requirements(target: NeuronTarget, compiler: NeuronCompiler) -> List[str]:
    """What the variant needs on the instance: the Neuron package, its compiler, tokenizers, numpy, MLflow."""
    if compiler.sdk:
        neuron = [pinned(target.package), pinned(target.compiler_package)]
    elif target.name == "inf1":
        neuron = ["torch-neuron==1.13.1.*", "neuron-cc"]
    else:
        neuron = [target.package, f"{target.compiler_package}==2.*"]
    # torch 1.13 (Inf1) is built against numpy 1.x.
    numpy = "numpy<2" if target.name == "inf1" else pinned("numpy")
    return [pinned("mlflow"), *neuron, pinned("tokenizers"), numpy]


class NeuronBackend(StaticBackend):
    name = Format.NEURON
    folder = NEURON_DIR

    def compiler(self, target_name: Optional[str]) -> NeuronCompiler:
        if target_name is not None and target_name not in TARGETS:
            raise ExportError(
                f"neuron_target {target_name!r} is not known; use one of {', '.join(TARGETS)} "
                "(inf1: torch-neuron for Inf1; inf2: torch-neuronx for Inf2/Trn1)."
            )
        if _override is not None:
            if target_name is not None and target_name != _override.target:
                raise ExportError(
                    f"neuron_target {target_name!r} was asked for, but the configured Neuron compiler targets "
                    f"{_override.target!r}."
                )
            return _override
        return sdk_compiler(target_name)

    def check_target(self, options: ExportOptions) -> ExportOptions:
        """The Neuron compiler of ``neuron_target`` (or of the installed SDK), runnable here, and its
        default compiler arguments when none are given."""
        compiler = self.compiler(options.neuron_target)
        if not compiler.runnable:
            target = TARGETS[compiler.target]
            raise ExportError(
                f"No NeuronCore is visible on this machine (no /dev/neuron*): the {target.package} module can be "
                f"compiled here but not run, and every export is validated by running it. Run the export on an "
                f"{target.instances} instance (e.g. `mlflow run . -e export-neuron` there)."
            )
        args = tuple(options.compiler_args) or DEFAULT_COMPILER_ARGS[compiler.target]
        return replace(options, neuron_target=compiler.target, compiler_args=args)

    def compile(self, module: Any, example_inputs: Tuple[Any, ...], options: ExportOptions) -> Any:
        compiler = self.compiler(options.neuron_target)
        return compiler.compile(module, example_inputs, list(options.compiler_args))

    def artifact(
        self, source: SourceModel, options: ExportOptions, conf: Dict[str, Any], tags: Dict[str, str]
    ) -> ExportedArtifact:
        compiler = self.compiler(options.neuron_target)
        target = TARGETS[compiler.target]
        conf[FlavorKey.NEURON_TARGET] = compiler.target
        tags.update(
            {
                Tag.COMPILER_VERSION: compiler.version,
                Tag.COMPILER_ARGS: " ".join(options.compiler_args),
                Tag.NEURON_TARGET: compiler.target,
            }
        )
        python = target.python if target.name == "inf1" else "{}.{}".format(*sys.version_info[:2])
        return ExportedArtifact(
            model_file=self.folder,
            flavor_conf=conf,
            tags=tags,
            requirements=serving_requirements(target, compiler),
            python_version=python,
            extra_index_urls=(NEURON_INDEX_URL,),
        )


BACKEND = NeuronBackend()
