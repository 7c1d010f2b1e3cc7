"""Make ``mlflow.tfexport`` resolve without an explicit ``import mlflow_tfexport``.

The ``mlflow_tfexport.pth`` file installed next to the package runs
``install()`` at interpreter start. It only adds a tiny import hook: when (and
if) ``mlflow`` is imported, ``mlflow.tfexport`` is attached as a lazy module,
the way MLflow attaches its own flavors (``mlflow.sklearn``...). Nothing of
this package is imported until ``mlflow.tfexport`` is first used.
Set ``MLFLOW_TFEXPORT_NO_HOOK=1`` to turn it off; ``import mlflow_tfexport``
always works and attaches the module too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
from typing import Any, Optional, Sequence

ALIAS = "mlflow.tfexport"
TARGET = "mlflow_tfexport"


class _LazyModule(types.ModuleType):
    def __getattr__(self, item: str) -> Any:
        module = attach()
        return getattr(module, item)

    def __dir__(self) -> list:
        return dir(attach())


def attach() -> types.ModuleType:
    """Import the package and bind it as ``mlflow.tfexport``."""
    module = importlib.import_module(TARGET)
    sys.modules[ALIAS] = module
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.tfexport = module  # type: ignore[attr-defined]
    return module


class _Finder(importlib.abc.MetaPathFinder):
    """Resolves ``import mlflow.tfexport`` and patches ``mlflow`` once it is imported."""

    _busy = False

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname == ALIAS:
            return importlib.util.spec_from_loader(ALIAS, _AliasLoader())
        if fullname != "mlflow" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec("mlflow")
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: Any) -> types.ModuleType:
        return attach()

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        if not hasattr(module, "tfexport"):
            module.tfexport = _LazyModule(ALIAS)  # type: ignore[attr-defined]

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


def install() -> None:
    if os.environ.get("MLFLOW_TFEXPORT_NO_HOOK"):
        return
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and not hasattr(mlflow, "tfexport"):
        mlflow.tfexport = _LazyModule(ALIAS)  # type: ignore[attr-defined]
    sys.meta_path.insert(0, _Finder())



