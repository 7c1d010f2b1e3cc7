"""mlflow-tfexport's serving code, as a saved model carries it (``code/mlflow_tfexport/__init__.py``).

A model directory holds only the serving tree, so serving needs no install of
mlflow-tfexport. When the process can import an installed mlflow-tfexport as
well, that package is used instead of this copy, so that one process never
mixes the two: loading a model, then exporting or loading another, keeps
working after MLflow deletes a temporary copy of the model (as
``mlflow.models.validate_serving_input`` does). In the package itself this
file is only a template.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import module_from_spec
from typing import Optional

COPY_MARKER = "_code_init.py"  # present in the package, absent from a model's copy


def _installed_package() -> Optional[ModuleSpec]:
    """The spec of an installed mlflow-tfexport elsewhere on ``sys.path``, if there is one."""
    code_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != code_dir]
    spec = PathFinder.find_spec(__name__, others)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not os.path.exists(os.path.join(locations[0], "serving", COPY_MARKER)):
        return None
    return spec


if __name__ == "mlflow_tfexport" and not os.path.exists(os.path.join(os.path.dirname(__file__), "serving",
                                                                       COPY_MARKER)):
    _spec = _installed_package()
    if _spec is not None and _spec.loader is not None:
        _module = module_from_spec(_spec)
        sys.modules[__name__] = _module  # the import statement returns what sys.modules holds
        _spec.loader.exec_module(_module)
