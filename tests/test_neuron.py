"""Neuron variants. No Neuron SDK or hardware here: the compile call is replaced by a CPU stand-in
(``torch.jit.trace``, same contract: static-shape tensors in, a TorchScript module out) in the tests
whose names say ``stand_in``. Everything around it is real: buckets, padding, artifacts, the Inf1
serving environment, tags, registration, the missing-SDK error and the runtime's import order."""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Dict, Iterator, List

import mlflow
import numpy as np
import pytest
import yaml
from helpers import read, versions
from mlflow import MlflowClient
from tiny import CORPUS, tiny

import mlflow_tfexport
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import ExportError, MissingDependencyError
from mlflow_tfexport.export import api as exporting
from mlflow_tfexport.export import neuron as neuron_backend
from mlflow_tfexport.export.neuron import NeuronCompiler, serving_requirements, set_compiler
from mlflow_tfexport.serving.runtimes import neuron as neuron_runtime

NAME = "nrn-sentiment"
SDK_MISSING = all(
    __import__("importlib").util.find_spec(m) is None for m in ("torch_neuron", "torch_neuronx")
)


class CpuStandIn:
    """Honours the Neuron compile contract on CPU and records every call."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, module: Any, example_inputs: Any, compiler_args: Any) -> Any:
        import torch

        shapes = {tuple(t.shape) for t in example_inputs}
        assert len(shapes) == 1 and all(t.dtype == torch.int64 for t in example_inputs)  # static shape, int64
        self.calls.append({"shape": shapes.pop(), "args": list(compiler_args)})
        traced = torch.jit.trace(module, example_inputs, check_trace=False)
        assert isinstance(traced, torch.jit.ScriptModule)
        return traced


@pytest.fixture
def fake_torch_neuron(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The runtime imports torch_neuron before torch.jit.load; a no-op module stands in for it here."""
    fake = types.ModuleType("torch_neuron")
    fake.__version__ = "0.0-test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_neuron", fake)
    return fake


@pytest.fixture(scope="module")
def registry(module_registry: str) -> Iterator[Dict[str, Any]]:
    model, tok = tiny("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name=NAME)
    try:
        yield {"root": os.getcwd(), "model": model}
    finally:
        set_compiler(None)


@pytest.fixture
def stand_in() -> Iterator[CpuStandIn]:
    fn = CpuStandIn()
    previous = set_compiler(NeuronCompiler(target="inf1", version="cpu-stand-in (torch.jit.trace)", compile=fn))
    try:
        yield fn
    finally:
        set_compiler(previous)


@pytest.fixture(scope="module")
def exported(registry: Dict[str, Any]) -> Dict[str, Any]:
    """Exported once with the stand-in; validation loads it with the real Neuron runner, whose
    ``import torch_neuron`` finds a no-op module (compiled modules here are plain TorchScript)."""
    fn = CpuStandIn()
    previous = set_compiler(NeuronCompiler(target="inf1", version="cpu-stand-in (torch.jit.trace)", compile=fn))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch_neuron", types.ModuleType("torch_neuron"))
        try:
            result = mlflow_tfexport.export(f"models:/{NAME}/1", format="neuron", trace_shape=["1x8", "1x32"])
        finally:
            set_compiler(previous)
    return {"result": result, "calls": fn.calls}


@pytest.mark.integration
def test_neuron_export_with_cpu_stand_in_compiler(exported: Dict[str, Any]) -> None:
    result = exported["result"]
    assert result.created
    # one compile per bucket, at exactly the bucket's shape, with the default fp32-keeping args
    assert [c["shape"] for c in exported["calls"]] == [(1, 8), (1, 32)]
    assert all(c["args"] == ["--fast-math", "none"] for c in exported["calls"])
    tags = MlflowClient().get_model_version(NAME, str(result.model_version.version)).tags
    assert tags[Tag.FORMAT] == "neuron"
    assert tags[Tag.TRACE_SHAPE] == "1x8,1x32"
    assert tags[Tag.NEURON_TARGET] == "inf1"
    assert tags[Tag.COMPILER_ARGS] == "--fast-math none"
    assert tags[Tag.COMPILER_VERSION] == "cpu-stand-in (torch.jit.trace)"
    assert tags[Tag.VALIDATION] == "passed"
    assert {"1x8", "1x32", "3x21"} <= set(tags[Tag.VALIDATED_SHAPE].split(","))


@pytest.mark.integration
def test_neuron_stand_in_variant_describes_the_inf1_serving_stack(exported: Dict[str, Any], tmp_path: Any) -> None:
    version = exported["result"].model_version.version
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path))
    conf = mlflow_tfexport.serving.conf.read_flavor_conf(local)
    assert conf[FlavorKey.FORMAT] == "neuron" and conf[FlavorKey.NEURON_TARGET] == "inf1"
    assert conf[FlavorKey.MAX_LENGTH] == 32
    assert sorted(os.listdir(os.path.join(local, conf[FlavorKey.MODEL_FILE]))) == ["1x32.pt", "1x8.pt"]
    lines = read(os.path.join(local, "requirements.txt")).splitlines()
    assert lines[0] == "--extra-index-url https://pip.repos.neuron.amazonaws.com"
    names = [line.split("=")[0].split("<")[0] for line in lines[1:]]
    assert names == ["mlflow", "torch-neuron", "neuron-cc", "tokenizers", "numpy"]
    assert "numpy<2" in lines and not any(line.startswith(("transformers", "torch==")) for line in lines)
    env = yaml.safe_load(read(os.path.join(local, "python_env.yaml")))
    assert str(env["python"]) == "3.10" and env["dependencies"] == ["-r requirements.txt"]
    conda = yaml.safe_load(read(os.path.join(local, "conda.yaml")))
    assert "python=3.10" in conda["dependencies"]


@pytest.mark.integration
def test_neuron_stand_in_variant_serves_like_the_source(exported: Dict[str, Any],
                                                        fake_torch_neuron: types.ModuleType) -> None:
    version = exported["result"].model_version.version
    source = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    variant = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    texts = list(CORPUS[:7]) + ["ok"]
    expected, got = source.predict(texts), variant.predict(texts)
    assert list(got["label"]) == list(expected["label"])
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)


@pytest.mark.integration
def test_neuron_runtime_imports_sdk_before_jit_load(exported: Dict[str, Any], tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    version = exported["result"].model_version.version
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path))
    conf = mlflow_tfexport.serving.conf.read_flavor_conf(local)
    order: List[str] = []
    real_import, real_load = neuron_runtime.import_neuron, torch.jit.load

    def record_import(target: str) -> Any:
        order.append(f"import {target}")
        return types.ModuleType("torch_neuron")

    def record_load(path: str, *args: Any, **kwargs: Any) -> Any:
        order.append(f"load {os.path.basename(path)}")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(neuron_runtime, "import_neuron", record_import)
    monkeypatch.setattr(torch.jit, "load", record_load)
    runner = neuron_runtime.load(local, conf, {})
    assert order == ["import inf1", "load 1x8.pt", "load 1x32.pt"]
    assert real_import is not record_import and runner.describe()["buckets"] == ["1x8", "1x32"]


def test_import_neuron_names_the_package_and_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_neuron", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError) as err:
        neuron_runtime.import_neuron("inf1")
    message = str(err.value)
    assert "torch-neuron" in message and "Inf1" in message
    assert "--extra-index-url https://pip.repos.neuron.amazonaws.com" in message
    fake = types.ModuleType("torch_neuron")
    monkeypatch.setitem(sys.modules, "torch_neuron", fake)
    assert neuron_runtime.import_neuron("inf1") is fake


@pytest.mark.skipif(not SDK_MISSING, reason="a Neuron SDK is installed")
@pytest.mark.parametrize(
    ("target", "package", "family"),
    [(None, "torch-neuron", "Inf1"), ("inf1", "torch-neuron", "Inf1"), ("inf2", "torch-neuronx", "Inf2/Trn1")],
)
def test_neuron_without_sdk_fails_before_any_work(registry: Dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                  target: Any, package: str, family: str) -> None:
    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the source model was loaded although the export could not succeed")

    monkeypatch.setattr(exporting, "load_source_model", no_work)
    before = versions(NAME)
    with pytest.raises(ExportError) as err:
        mlflow_tfexport.export(f"models:/{NAME}/1", format="neuron", trace_shape="1x8", neuron_target=target)
    message = str(err.value)
    assert package in message and family in message and "not on PyPI" in message
    assert "pip install" in message and "--extra-index-url https://pip.repos.neuron.amazonaws.com" in message
    assert versions(NAME) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"neuron_target": "inf3"}, "neuron_target 'inf3' is not known"),
        ({"neuron_target": "inf2"}, "configured Neuron compiler targets 'inf1'"),
        ({"trace_shape": None}, "needs trace_shape"),
        ({"trace_shape": "1x65"}, "longer than the model's maximum"),
        ({"trace_shape": "1x0"}, "must be positive"),
    ],
)
def test_bad_neuron_options_register_nothing(registry: Dict[str, Any], stand_in: CpuStandIn,
                                             kwargs: Dict[str, Any], match: str) -> None:
    options = {"trace_shape": "1x8", **kwargs}
    before = versions(NAME)
    with pytest.raises(ExportError, match=match):
        mlflow_tfexport.export(f"models:/{NAME}/1", format="neuron", force=True, **options)
    assert versions(NAME) == before and stand_in.calls == []


def test_neuron_sdk_without_neuroncore_refuses_unvalidated_export(registry: Dict[str, Any]) -> None:
    previous = set_compiler(NeuronCompiler(target="inf1", version="x", compile=CpuStandIn(), runnable=False))
    try:
        before = versions(NAME)
        with pytest.raises(ExportError, match="No NeuronCore is visible"):
            mlflow_tfexport.export(f"models:/{NAME}/1", format="neuron", trace_shape="1x8")
        assert versions(NAME) == before
    finally:
        set_compiler(previous)


def test_custom_compiler_args_are_passed_and_part_of_the_options() -> None:
    fn = CpuStandIn()
    previous = set_compiler(NeuronCompiler(target="inf1", version="x", compile=fn))
    try:
        options = neuron_backend.BACKEND.check_target(
            exporting.ExportOptions(format="neuron", compiler_args=("--neuroncore-pipeline-cores", "4"))
        )
    finally:
        set_compiler(previous)
    assert options.neuron_target == "inf1"
    assert options.compiler_args == ("--neuroncore-pipeline-cores", "4")


def test_inf2_serving_requirements() -> None:
    fake = NeuronCompiler(target="inf2", version="x", compile=CpuStandIn())
    reqs = serving_requirements(neuron_runtime.TARGETS["inf2"], fake)
    assert [r.split("=")[0] for r in reqs] == ["mlflow", "torch-neuronx", "neuronx-cc", "tokenizers", "numpy"]


@pytest.mark.integration
def test_neuron_stand_in_variant_through_mlflow_models_serve(exported: Dict[str, Any], tmp_path: Any) -> None:
    """`mlflow models serve` of the Neuron variant, up to the compile seam: the server process finds a
    no-op stand-in ``torch_neuron`` package (the one import the Inf1 SDK provides at serve time)."""
    from servers import models_serve

    stub = tmp_path / "stand-in-sdk" / "torch_neuron"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""CPU stand-in for the Inf1 SDK import."""\n__version__ = "0.0-stand-in"\n')
    version = exported["result"].model_version.version
    uri = mlflow.get_tracking_uri()
    texts = ["I loved this film, the plot was great.", "dull"]
    expected = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(texts)
    pythonpath = os.pathsep.join(p for p in (str(stub.parent), os.environ.get("PYTHONPATH", "")) if p)
    with models_serve(f"models:/{NAME}/{version}", uri, str(tmp_path), extra_env={"PYTHONPATH": pythonpath}) as srv:
        response = srv.invoke({"inputs": texts})
        assert response.status_code == 200, f"{response.text}\n{srv.log()}"
        served = response.json()["predictions"]
    assert [r["label"] for r in served] == list(expected["label"])
    assert [r["score"] for r in served] == pytest.approx(list(expected["score"]), abs=1e-4)


class ImageCpuStandIn(CpuStandIn):
    """The CPU stand-in for an image model: static-shape float pixels in, a TorchScript module out."""

    def __call__(self, module: Any, example_inputs: Any, compiler_args: Any) -> Any:
        import torch

        (pixels,) = example_inputs
        assert pixels.dtype == torch.float32 and pixels.dim() == 4  # one static NxCxHxW tensor
        self.calls.append({"shape": tuple(pixels.shape), "args": list(compiler_args)})
        return torch.jit.trace(module, example_inputs, check_trace=False)


@pytest.mark.integration
def test_neuron_stand_in_vision_variant_buckets_over_batch(tmp_path: Any, fake_torch_neuron: types.ModuleType) -> None:
    """A ViT classifier through the Neuron backend (CPU stand-in compiler): one module per batch bucket at the
    processor's image size, validated, and its pyfunc answers real images like the source's."""
    from test_vision import IC, VISION_BY_NAME, build, png_bytes, sample_images

    fn = ImageCpuStandIn()
    previous = set_compiler(NeuronCompiler(target="inf1", version="cpu-stand-in (torch.jit.trace)", compile=fn))
    try:
        model, processor = build(VISION_BY_NAME["ViT"], IC)
        mlflow_tfexport.save_model(model, str(tmp_path / "src"), image_processor=processor)
        conf, report = exporting.export_to_directory(str(tmp_path / "src"), str(tmp_path / "nrn"), "neuron",
                                                     trace_shape=["1x32", "4x32"])
    finally:
        set_compiler(previous)
    assert report.passed and [c["shape"] for c in fn.calls] == [(1, 3, 32, 32), (4, 3, 32, 32)]
    assert conf[FlavorKey.TRACE_SHAPES] == [[1, 32], [4, 32]] and FlavorKey.MAX_LENGTH not in conf
    images = [png_bytes(im) for im in sample_images(7)]  # the default schema takes encoded images
    expected = mlflow.pyfunc.load_model(str(tmp_path / "src")).predict(images, params={"top_k": 2})
    variant = mlflow.pyfunc.load_model(str(tmp_path / "nrn"))
    got = variant.predict(images, params={"top_k": 2})
    assert list(got["label"]) == list(expected["label"])
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
    calls = variant.get_raw_model().calls
    assert calls[(4, 32)] == 2 and calls[(1, 32)] == 0  # 7 images: two chunks of the 4-image bucket
