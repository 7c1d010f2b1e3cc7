"""Requirements and environment files for each variant, written without private MLflow helpers.

A variant's ``requirements.txt`` lists what that variant needs to *serve*:
the runner's packages, ``tokenizers``, ``numpy`` and MLflow. This package's
own runtime code travels inside the model (``code/``), so the serving
environment does not need ``mlflow-tfexport`` installed.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import List, Optional, Sequence

import yaml

from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.formats import FORMATS


def pinned(package: str) -> str:
    """``package==<installed version>``; local build tags (``+cpu``) dropped.

    The one rule for every pin the package writes (``requirements.txt``, ``conda.yaml`` and the
    ``tfexport.versions`` tag): the public version, which pip resolves from PyPI (``torch==2.13.0``);
    ``torch==2.13.0+cpu`` resolves only from PyTorch's own index. The exact build (``2.13.0+cpu``)
    is recorded once, as ``torch_version`` in the flavor block.
    """
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        return package
    return f"{package}=={version.split('+')[0]}"


def default_requirements(fmt: str) -> List[str]:
    return [pinned("mlflow")] + [pinned(p) for p in (FORMATS[fmt].serving_packages if fmt in FORMATS else ())]


def resolve_requirements(
    defaults: Sequence[str],
    pip_requirements: Optional[Sequence[str]],
    extra_pip_requirements: Optional[Sequence[str]],
) -> List[str]:
    if pip_requirements is not None and extra_pip_requirements is not None:
        raise TfexportError(
            "Pass pip_requirements (replaces the defaults) or extra_pip_requirements "
            "(added to the defaults), not both."
        )
    if pip_requirements is not None:
        return list(pip_requirements)
    return list(defaults) + list(extra_pip_requirements or [])


def write_environment(
    path: str,
    requirements: Sequence[str],
    *,
    python_version: Optional[str] = None,
    extra_index_urls: Sequence[str] = (),
) -> None:
    """Write ``requirements.txt``, ``python_env.yaml`` and ``conda.yaml`` into ``path``."""
    python = python_version or "{}.{}.{}".format(*sys.version_info[:3])
    lines = [f"--extra-index-url {url}" for url in extra_index_urls] + list(requirements)
    with open(os.path.join(path, "requirements.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    python_env = {
        "python": python,
        "build_dependencies": ["pip", "setuptools", "wheel"],
        "dependencies": ["-r requirements.txt"],
    }
    with open(os.path.join(path, "python_env.yaml"), "w") as f:
        yaml.safe_dump(python_env, f, sort_keys=False)
    conda = {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": lines}],
    }
    with open(os.path.join(path, "conda.yaml"), "w") as f:
        yaml.safe_dump(conda, f, sort_keys=False)
