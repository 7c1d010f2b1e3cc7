"""The one place that builds a ``tfexport`` flavor block and writes a model directory's MLmodel.

Every saved model, source or exported variant, goes through here: its flavor
block (keys in ``FlavorKey``, checked), the pyfunc block naming the serving
loader, the serving code copied into ``code/`` and the environment files.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Mapping, Optional, Sequence

from mlflow import pyfunc
from mlflow.models import Model, ModelInputExample, ModelSignature

from mlflow_tfexport._compat import save_input_example
from mlflow_tfexport.constants import (
    CODE_DIR,
    FLAVOR_NAME,
    MLMODEL_FILE,
    PACKAGE,
    SERVING_COPY,
    SERVING_MODULE,
    FlavorKey,
)
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.flavor.environment import pinned, write_environment
from mlflow_tfexport.formats import default_model_config
from mlflow_tfexport.serving.batching import batchable
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.limits import default_limits
from mlflow_tfexport.tasks import IMAGE, IMAGE_TEXT

#: Every key a flavor block may hold (``FlavorKey``'s values).
KNOWN_KEYS = frozenset(v for k, v in vars(FlavorKey).items() if k.isupper() and isinstance(v, str))
#: Keys a variant does not inherit from its source.
_NOT_INHERITED = (FlavorKey.CODE,)
#: The template of the copy's ``__init__`` (kept out of the copy: its absence marks a copy).
_CODE_INIT = "_code_init.py"


def _checked(block: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(block) - KNOWN_KEYS)
    if unknown:
        raise TfexportError(f"Flavor block keys {unknown} are not FlavorKey values; known keys: {sorted(KNOWN_KEYS)}.")
    for key in (FlavorKey.FORMAT, FlavorKey.TASK, FlavorKey.MODEL_FILE):
        if not block.get(key):
            raise TfexportError(f"A {FLAVOR_NAME} flavor block needs {key!r}; received keys {sorted(block)}.")
    return block


def source_block(facts: Mapping[str, Any], *, fmt: str, model_file: str, assets: Mapping[str, str]) -> Dict[str, Any]:
    """The block of a source model: the model/tokenizer facts, its format, weights folder and asset folders."""
    return _checked({**facts, FlavorKey.FORMAT: fmt, FlavorKey.MODEL_FILE: model_file, **assets})


def variant_block(source_conf: Mapping[str, Any], *, fmt: str, model_file: str,
                  entries: Mapping[str, Any]) -> Dict[str, Any]:
    """The block of an exported variant: the source's, with the variant's format, model file and the
    entries its backend adds (opset, trace shapes, generation layout...)."""
    block = {k: v for k, v in source_conf.items() if k not in _NOT_INHERITED}
    block.update({FlavorKey.FORMAT: fmt, FlavorKey.MODEL_FILE: model_file, **entries})
    return _checked(block)


def serving_files(package_dir: str) -> Sequence[str]:
    """The package files a saved model carries (relative to the package): the serving tree and the
    shared modules it imports (``constants.SERVING_COPY``)."""
    files = []
    for entry in SERVING_COPY:
        full = os.path.join(package_dir, entry)
        if os.path.isdir(full):
            for root, dirs, names in os.walk(full):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                files += [os.path.relpath(os.path.join(root, n), package_dir) for n in sorted(names)
                          if n.endswith(".py") and n != _CODE_INIT]
        else:
            files.append(entry)
    return files


def copy_serving_code(path: str) -> None:
    """Put the serving code in the model (``code/mlflow_tfexport``) so serving needs no install of the package.

    The copy's ``__init__`` is ``serving/_code_init.py``: it hands over to an installed
    mlflow-tfexport when the process has one, so that one process never mixes the two.
    """
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(path, CODE_DIR, PACKAGE)
    for rel in serving_files(package_dir):
        os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
        shutil.copy2(os.path.join(package_dir, rel), os.path.join(target, rel))
    shutil.copy2(os.path.join(package_dir, "serving", _CODE_INIT), os.path.join(target, "__init__.py"))


def write_model(
    path: str,
    flavor_conf: Mapping[str, Any],
    *,
    requirements: Sequence[str],
    signature: Optional[ModelSignature],
    input_example: Optional[ModelInputExample] = None,
    metadata: Optional[Dict[str, Any]] = None,
    mlflow_model: Optional[Model] = None,
    python_version: Optional[str] = None,
    extra_index_urls: Sequence[str] = (),
) -> Model:
    """Write MLmodel (flavor + pyfunc), the serving code and the environment into ``path``."""
    block = _checked(dict(flavor_conf))
    mlflow_model = mlflow_model or Model()
    if block.get(FlavorKey.IMAGE_PROCESSOR_DIR) and not any(r.lower().startswith("pillow") for r in requirements):
        requirements = [*requirements, pinned("pillow")]  # image variants decode and resize with Pillow
    if signature is not None:
        mlflow_model.signature = signature
    if metadata is not None:
        mlflow_model.metadata = metadata
    if input_example is not None:
        save_input_example(mlflow_model, input_example, path)
    copy_serving_code(path)
    spec = task_of(block)
    mlflow_model.add_flavor(FLAVOR_NAME, code=CODE_DIR, **block)
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=SERVING_MODULE,
        code=CODE_DIR,
        python_env="python_env.yaml",
        conda_env="conda.yaml",
        # The serving settings and the request limits of this task (``serving/limits.py``): MLflow only lets
        # MLFLOW_PYFUNC_INFERENCE_CONFIG or load_model(model_config=...) set keys written here.
        model_config={**default_model_config(block[FlavorKey.FORMAT], batching=batchable(spec)),
                      **default_limits(images=spec.input_kind in (IMAGE, IMAGE_TEXT),
                                        generation=spec.generate is not None)},
        # Generation tasks stream (``PyFuncModel.predict_stream`` calls the pyfunc's ``predict_stream``).
        **({"streamable": True} if spec.generate is not None else {}),
    )
    write_environment(path, requirements, python_version=python_version, extra_index_urls=extra_index_urls)
    mlflow_model.save(os.path.join(path, MLMODEL_FILE))
    return mlflow_model
