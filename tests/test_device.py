"""The ``device`` model_config key of the torch-based variants (source, TorchScript), and the registry-free
export of optimised/quantised ONNX variants that the GPU benchmark uses."""

from __future__ import annotations

import json
import os
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from helpers import TEXTS

import mlflow_tfexport
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.export.api import export_to_directory
from mlflow_tfexport.serving.runtimes.device import resolve_device


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> dict:
    root = tmp_path_factory.mktemp("device")
    model, tok = tiny_model("text-classification")
    source = str(root / "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok)
    export_to_directory(source, str(root / "ts"), "torchscript", trace_shape="1x16,2x32")
    return {"source": source, "torchscript": str(root / "ts")}


def test_auto_picks_cuda_only_when_torch_sees_it() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(torch, {}).type == expected
    assert resolve_device(torch, {"device": "auto"}).type == expected
    assert resolve_device(torch, {"device": "CPU"}).type == "cpu"


def test_unknown_or_unavailable_device_is_a_clear_error() -> None:
    with pytest.raises(TfexportError, match=r"device='tpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device(torch, {"device": "tpu"})
    if torch.cuda.is_available():
        assert resolve_device(torch, {"device": "cuda:0"}).type == "cuda"
    else:
        with pytest.raises(TfexportError, match="sees no CUDA GPU.*device='cpu'"):
            resolve_device(torch, {"device": "cuda"})


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["source", "torchscript"])
def test_device_is_a_model_config_key(variants: dict, variant: str) -> None:
    with open(os.path.join(variants[variant], "MLmodel")) as f:
        pyfunc_conf = yaml.safe_load(f)["flavors"]["python_function"]
    assert pyfunc_conf["config"]["device"] == "auto"
    auto = mlflow.pyfunc.load_model(variants[variant])
    cpu = mlflow.pyfunc.load_model(variants[variant], model_config={"device": "cpu"})
    assert cpu._model_impl.runner.describe()["device"] == "cpu"
    # A trace runs on the device type it was traced on (here the CPU); the source follows the machine.
    expected = "cuda" if torch.cuda.is_available() and variant == "source" else "cpu"
    assert auto._model_impl.runner.describe()["device"].startswith(expected)
    a, c = auto.predict(TEXTS), cpu.predict(TEXTS)
    assert list(a["label"]) == list(c["label"])
    np.testing.assert_allclose(a["score"], c["score"], atol=1e-4)
    if variant == "torchscript":
        with pytest.raises(TfexportError, match="traced on cpu.*--format torchscript --device cuda"):
            mlflow.pyfunc.load_model(variants[variant], model_config={"device": "cuda"})
    elif not torch.cuda.is_available():
        with pytest.raises(TfexportError, match="sees no CUDA GPU"):
            mlflow.pyfunc.load_model(variants[variant], model_config={"device": "cuda"})


@pytest.mark.integration
def test_torchscript_trace_device_is_recorded(variants: dict) -> None:
    with open(os.path.join(variants["torchscript"], "MLmodel")) as f:
        assert yaml.safe_load(f)["flavors"]["tfexport"]["trace_device"] == "cpu"


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the CUDA trace test runs instead")
def test_torchscript_on_cuda_is_refused_without_a_gpu(variants: dict, tmp_path: Any) -> None:
    """Without a GPU, a CUDA trace is refused before any work, naming the way out."""
    path = str(tmp_path / "ts-cuda")
    with pytest.raises(ExportError, match="sees no CUDA GPU on this machine.*drop device= for a CPU trace"):
        export_to_directory(variants["source"], path, "torchscript", trace_shape="1x16,2x32", device="cuda")
    assert not os.path.exists(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torchscript_traced_on_cuda(variants: dict, tmp_path: Any) -> None:
    """On a GPU machine: a CUDA trace validates, serves on CUDA and predicts like the CPU source."""
    path = str(tmp_path / "ts-cuda")
    conf, report = export_to_directory(variants["source"], path, "torchscript", trace_shape="1x16,2x32",
                                       device="cuda")
    assert report.passed and conf["trace_device"] == "cuda"
    model = mlflow.pyfunc.load_model(path)
    assert model._model_impl.runner.describe()["device"].startswith("cuda")
    ref = mlflow.pyfunc.load_model(variants["source"], model_config={"device": "cpu"}).predict(TEXTS)
    got = model.predict(TEXTS)
    assert list(got["label"]) == list(ref["label"])
    np.testing.assert_allclose(got["score"], ref["score"], atol=1e-4)
    with pytest.raises(TfexportError, match="traced on cuda"):
        mlflow.pyfunc.load_model(path, model_config={"device": "cpu"})


@pytest.mark.parametrize(
    ("fmt", "kwargs", "match"),
    [
        ("onnx", {"device": "cuda"}, "applies to format='torchscript' only: an ONNX model chooses its device"),
        ("neuron", {"device": "cuda", "trace_shape": "1x16"}, "applies to format='torchscript' only: a Neuron"),
        ("torchscript", {"device": "tpu", "trace_shape": "1x16"}, "device='tpu' is not one of"),
        ("torchscript", {"device": "auto", "trace_shape": "1x16"}, "say where to trace"),
    ],
)
@pytest.mark.integration
def test_device_option_is_checked_before_any_work(variants: dict, tmp_path: Any, fmt: str, kwargs: dict,
                                                  match: str) -> None:
    with pytest.raises(ExportError, match=match):
        export_to_directory(variants["source"], str(tmp_path / "x"), fmt, **kwargs)
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.integration
def test_export_to_directory_takes_optimize_and_quantize(variants: dict, tmp_path: Any) -> None:
    conf, report = export_to_directory(variants["source"], str(tmp_path / "int8"), "onnx", optimize=True,
                                       quantize="int8", min_agreement=0.5)
    assert report.passed
    assert conf["quantized"] == "int8" and conf["optimized"].startswith("ort-transformers:")
    with open(tmp_path / "int8" / "validation.json") as f:
        assert "label_agreement" in json.dumps(json.load(f))
    model = mlflow.pyfunc.load_model(str(tmp_path / "int8"))
    assert len(model.predict(TEXTS)) == len(TEXTS)
