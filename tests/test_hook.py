"""``mlflow.tfexport`` in fresh interpreters, and a serving path free of torch and transformers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import mlflow_tfexport

#: Every test here exports a model or starts a process: not in the fast tier (make test-fast).
pytestmark = pytest.mark.integration

PACKAGE_DIR = os.path.dirname(os.path.abspath(mlflow_tfexport.__file__))


def run_fresh(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter (site hooks included) and return its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TFEXPORT_NO_HOOK"}
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_hook_imports_nothing_at_interpreter_start() -> None:
    out = run_fresh(
        """
        import sys
        print(sorted(m for m in ("mlflow", "mlflow_tfexport", "torch", "transformers") if m in sys.modules))
        print("_mlflow_tfexport_hook" in sys.modules)
        """
    )
    assert out.splitlines() == ["[]", "True"]


def test_mlflow_tfexport_resolves_without_importing_the_package() -> None:
    out = run_fresh(
        """
        import sys
        import mlflow
        print("mlflow_tfexport" in sys.modules)
        log_model = mlflow.tfexport.log_model
        print(log_model.__module__)
        import mlflow_tfexport
        print(mlflow.tfexport is mlflow_tfexport, sys.modules["mlflow.tfexport"] is mlflow_tfexport)
        print(log_model is mlflow_tfexport.log_model)
        """
    )
    assert out.splitlines() == ["False", "mlflow_tfexport.flavor.api", "True True", "True"]


def test_import_mlflow_tfexport_statement() -> None:
    out = run_fresh(
        """
        import mlflow.tfexport
        import mlflow
        import mlflow_tfexport
        from mlflow.tfexport import save_model
        print(mlflow.tfexport is mlflow_tfexport, save_model is mlflow_tfexport.save_model)
        """
    )
    assert out == "True True"


def test_package_first_then_mlflow() -> None:
    out = run_fresh(
        """
        import mlflow_tfexport
        import mlflow
        print(mlflow.tfexport is mlflow_tfexport)
        """
    )
    assert out == "True"


def test_hook_can_be_turned_off_and_the_package_still_attaches() -> None:
    out = run_fresh(
        """
        import sys
        import mlflow
        print(hasattr(mlflow, "tfexport"), "_mlflow_tfexport_hook" in sys.modules)
        import mlflow_tfexport
        print(mlflow.tfexport is mlflow_tfexport)
        """,
        MLFLOW_TFEXPORT_NO_HOOK="1",
    )
    assert out.splitlines() == ["False True", "True"]


def test_serving_module_does_not_import_torch_or_transformers() -> None:
    out = run_fresh(
        """
        import sys
        import mlflow_tfexport.serving.pyfunc
        from mlflow_tfexport.serving.runtimes import load_runner
        import mlflow_tfexport.serving.runtimes.onnx
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    assert out == "[]"


@pytest.mark.slow
def test_reading_a_saved_model_and_tokenizing_needs_no_torch(tmp_path: Any, tiny_model: Any) -> None:
    """The flavor block and the tokenizer of a saved model load without torch or transformers."""
    model, tok = tiny_model("text-classification")
    path = os.path.join(str(tmp_path), "model")
    mlflow_tfexport.save_model(model, path, tokenizer=tok)
    out = run_fresh(
        f"""
        import sys
        from mlflow_tfexport.serving.conf import read_flavor_conf
        from mlflow_tfexport.serving.text import make_encoder
        from mlflow_tfexport.tasks import get_task
        conf = read_flavor_conf({path!r})
        encoder = make_encoder({path!r}, conf, get_task(conf["task"]))
        print(encoder.encode(["great film"]).feeds["input_ids"].shape[0])
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    assert out.splitlines() == ["1", "[]"]
