"""The pyfunc loader of every tfexport model (the MLmodel's ``loader_module``).

``mlflow.pyfunc.load_model`` calls ``_load_pyfunc``: it reads the flavor
block, loads the format's runner once and returns the text or image pyfunc
around it. Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from mlflow_tfexport.serving.conf import read_flavor_conf
from mlflow_tfexport.serving.custom import CustomPyfunc
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.image import ImagePyfunc
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.serving.text import TfexportPyfunc
from mlflow_tfexport.serving.zero_shot import ZeroShotImagePyfunc
from mlflow_tfexport.tasks import IMAGE, IMAGE_TEXT, TaskSpec

#: The pyfunc of each input kind (text: ``TfexportPyfunc``).
PYFUNCS: Dict[str, Any] = {IMAGE: ImagePyfunc, IMAGE_TEXT: ZeroShotImagePyfunc}


def pyfunc_class(spec: TaskSpec) -> Any:
    """The pyfunc class serving a task: a user's export config's, else the one of its input kind."""
    return CustomPyfunc if spec.custom is not None else PYFUNCS.get(spec.input_kind, TfexportPyfunc)


def _load_pyfunc(path: str, model_config: Optional[Dict[str, Any]] = None) -> Any:
    """Entry point named by ``loader_module`` in every tfexport MLmodel."""
    conf = read_flavor_conf(path)
    config = dict(model_config or {})
    spec = task_of(conf)
    runner = load_runner(path, conf, config)
    return pyfunc_class(spec)(path, conf, runner, config)
