"""Architectures the task table does not know, exported through a user-written export config
(``mlflow_tfexport.ExportConfig``): the Transformers export guide's ``OnnxConfig`` idea, as data.

The custom model of these tests lives in a module written to a temporary folder that only this process has
on ``sys.path``: subprocesses (the CLI, ``mlflow models serve``) cannot import it, so what they do, they do
without the user's code (the source through its ``code_paths`` copy, the variants with nothing of it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from typing import Any, Dict, Iterator, List, Tuple

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import yaml
from helpers import read
from mlflow import MlflowClient
from servers import models_serve
from tiny import TEXT_LABELS, bert_tokenizer

import mlflow_tfexport
from mlflow_tfexport import ExportConfig, ExportConfigError, Feed, InputSpec, OutputSpec
from mlflow_tfexport.constants import CODE_DIR, FlavorKey, Tag
from mlflow_tfexport.errors import FlavorConfError
from mlflow_tfexport.export.api import export_to_directory
from mlflow_tfexport.export.neuron import NeuronCompiler, set_compiler
from mlflow_tfexport.serving.conf import check_flavor_conf, read_flavor_conf
from mlflow_tfexport.worker import ExportWorker, Job

MODULE = "tfx_price_model"
MODEL_TYPE = "tfx-price-test"
MODEL_SOURCE = textwrap.dedent('''
    """A model of one's own: its PretrainedConfig and PreTrainedModel, registered under a new model_type."""
    from dataclasses import dataclass
    from typing import Optional

    import torch
    from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
    from transformers.utils import ModelOutput


    class PriceConfig(PretrainedConfig):
        model_type = "tfx-price-test"

        def __init__(self, vocab_size=128, hidden_size=16, num_labels=3, max_position_embeddings=64, **kwargs):
            super().__init__(**kwargs)
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.num_labels = num_labels
            self.max_position_embeddings = max_position_embeddings


    @dataclass
    class PriceOutput(ModelOutput):
        logits: Optional[torch.FloatTensor] = None
        price_score: Optional[torch.FloatTensor] = None
        token_states: Optional[torch.FloatTensor] = None


    class PriceModel(PreTrainedModel):
        """Token ids, a mask and a price in; class logits and a price score out."""

        config_class = PriceConfig
        base_model_prefix = "price"

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.pos = torch.nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.proj = torch.nn.Linear(config.hidden_size + 1, config.hidden_size)
            self.head = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.score = torch.nn.Linear(config.hidden_size, 1)
            self.post_init()

        def forward(self, token_ids, mask, price, return_dict=None):
            positions = torch.arange(token_ids.shape[1], device=token_ids.device)
            hidden = self.embed(token_ids) + self.pos(positions)[None]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            x = torch.tanh(self.proj(torch.cat([pooled, price.unsqueeze(-1).to(hidden.dtype)], dim=-1)))
            return PriceOutput(logits=self.head(x), price_score=self.score(x).squeeze(-1),
                               token_states=torch.tanh(hidden[..., :4] + x[:, None, :4]))


    AutoConfig.register("tfx-price-test", PriceConfig)
    AutoModel.register(PriceConfig, PriceModel)
''')

#: What the user writes: the model's inputs (two fed from the tokenizer, one from the request's price column),
#: its two named outputs with their dynamic axes, the opset and the tolerance.
PRICE_CONFIG = ExportConfig(
    inputs=(
        InputSpec("token_ids", key="input_ids"),
        InputSpec("mask", key="attention_mask"),
        InputSpec("price", feed=Feed.COLUMN, dtype="float32"),
    ),
    outputs=(OutputSpec("logits", {0: "batch"}), OutputSpec("price_score", {0: "batch"})),
    opset=17,
    atol=1e-4,
    model_type=MODEL_TYPE,
)
REQUEST = pd.DataFrame({
    "text": ["I loved this film, the plot was great.", "dull plot", "Paris is the capital of France.",
             "It was not good, it was the worst film. The actors were really very bad and the end was dull."],
    "price": [1.5, -2.0, 0.25, 7.0],
})
NAME = "price-model"


@pytest.fixture(scope="module")
def user_code(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[types.ModuleType, str]]:
    """The user's module, importable in this process only (its folder is on sys.path here, not in subprocesses)."""
    folder = tmp_path_factory.mktemp("user_code")
    path = folder / f"{MODULE}.py"
    path.write_text(MODEL_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        module = sys.modules.get(MODULE) or __import__(MODULE)
        yield module, str(path)
    finally:
        sys.path.remove(str(folder))


def price_model(module: types.ModuleType, tok: Any) -> Any:
    torch.manual_seed(3)
    model = module.PriceModel(module.PriceConfig(vocab_size=len(tok)))
    with torch.no_grad():  # weights far from the tiny initial ones, so outputs differ visibly between rows
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model.eval()


def no_user_code_env(tracking_uri: str) -> Dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
    env.pop("MLFLOW_RUN_ID", None)
    return env


def assert_cannot_import_user_code(env: Dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", f"import {MODULE}"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr


def assert_same_answers(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == ["logits", "price_score"]
    np.testing.assert_allclose(np.array(got["logits"].tolist()), np.array(expected["logits"].tolist()), atol=1e-5)
    np.testing.assert_allclose(got["price_score"].to_numpy(float), expected["price_score"].to_numpy(float), atol=1e-5)


# --------------------------------------------------------------------------- 1. the guide's own example


def distilbert_classifier() -> Tuple[Any, Any]:
    tok = bert_tokenizer()
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
        num_labels=len(TEXT_LABELS), id2label=dict(TEXT_LABELS), label2id={v: k for k, v in TEXT_LABELS.items()},
        pad_token_id=tok.pad_token_id,
    )
    return transformers.DistilBertForSequenceClassification(config).eval(), tok


#: ``DistilBertOnnxConfig(config, task="sequence-classification")`` of the old guide, written as data.
DISTILBERT_CONFIG = ExportConfig(
    inputs=(InputSpec("input_ids"), InputSpec("attention_mask")),
    outputs=(OutputSpec("logits", {0: "batch"}),),
    postprocess="text-classification",
    opset=17,
    atol=1e-4,
)


def _graph_io(model_dir: str) -> Tuple[List[Any], List[Any]]:
    import onnx

    graph = onnx.load(os.path.join(model_dir, "model.onnx")).graph

    def dims(value: Any) -> List[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ([(i.name, i.type.tensor_type.elem_type, dims(i)) for i in graph.input],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in graph.output])


@pytest.mark.slow
def test_guide_example_distilbert_through_a_user_config_matches_the_builtin_path(tmp_path: Any) -> None:
    model, tok = distilbert_classifier()
    mlflow_tfexport.save_model(model, str(tmp_path / "builtin-src"), tokenizer=tok)
    mlflow_tfexport.save_model(model, str(tmp_path / "config-src"), tokenizer=tok, export_config=DISTILBERT_CONFIG)
    conf = read_flavor_conf(str(tmp_path / "config-src"))
    assert conf[FlavorKey.TASK] == "text-classification"
    assert ExportConfig.from_dict(conf[FlavorKey.EXPORT_CONFIG]) == DISTILBERT_CONFIG  # data, round-tripped
    texts = ["I loved this film, the plot was great.", "dull", "What is the capital of France? Paris is."]
    answers = {}
    for kind in ("builtin", "config"):
        for fmt, options in (("onnx", {}), ("torchscript", {"trace_shape": "2x16"})):
            out = str(tmp_path / f"{kind}-{fmt}")
            _, report = export_to_directory(str(tmp_path / f"{kind}-src"), out, fmt, **options)
            assert report.passed
            answers[kind, fmt] = mlflow.pyfunc.load_model(out).predict(texts)
    assert _graph_io(str(tmp_path / "config-onnx")) == _graph_io(str(tmp_path / "builtin-onnx"))
    inputs, outputs = _graph_io(str(tmp_path / "config-onnx"))
    assert [i[0] for i in inputs] == ["input_ids", "attention_mask"] and [o[0] for o in outputs] == ["logits"]
    assert inputs[0][2] == ["batch", "sequence"] and outputs[0][2] == ["batch", 3]
    for fmt in ("onnx", "torchscript"):
        builtin, custom = answers["builtin", fmt], answers["config", fmt]
        assert custom["label"].tolist() == builtin["label"].tolist()
        np.testing.assert_allclose(custom["score"], builtin["score"], atol=1e-6)


# --------------------------------------------------------------------------- 2. a custom PreTrainedModel


@pytest.fixture(scope="module")
def logged(user_code: Tuple[types.ModuleType, str], module_registry: str) -> Dict[str, Any]:
    module, path = user_code
    tok = bert_tokenizer()
    model = price_model(module, tok)
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, tokenizer=tok, export_config=PRICE_CONFIG, code_paths=[path],
                                         input_example=REQUEST, registered_model_name=NAME)
    source = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(REQUEST)  # the user's module imported here
    return {"info": info, "model": model, "source": source, "root": os.getcwd(), "uri": module_registry}


@pytest.mark.slow
def test_custom_model_exports_to_onnx_and_torchscript_and_serves_without_its_code(
        logged: Dict[str, Any], tmp_path: Any) -> None:
    client = MlflowClient()
    env = no_user_code_env(logged["uri"])
    assert_cannot_import_user_code(env)
    # The CLI, in a process without the user's module: the saved config and the source's code/ copy suffice.
    cli = subprocess.run([sys.executable, "-m", "mlflow_tfexport", "export", f"models:/{NAME}/1", "--format", "onnx"],
                         env=env, capture_output=True, text=True, cwd=logged["root"], timeout=600)
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-4000:]
    assert f"Registered models:/{NAME}/2" in cli.stdout
    torchscript = mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape=["2x8", "4x32"])
    assert torchscript.model_uri == f"models:/{NAME}/3"
    source = logged["source"]
    assert source["logits"].map(len).tolist() == [3] * len(REQUEST)
    for version, fmt in (("2", "onnx"), ("3", "torchscript")):
        tags = client.get_model_version(NAME, version).tags
        assert tags[Tag.FORMAT] == fmt and tags[Tag.TASK] == "custom" and tags[Tag.VALIDATION] == "passed"
        assert tags[Tag.SOURCE] == f"models:/{NAME}/1"
        assert tags[Tag.AGREEMENT_METRIC] == "output_agreement" and float(tags[Tag.AGREEMENT]) == 1.0
        assert tags[Tag.DATA_ROWS] == str(len(REQUEST))  # validated on real rows: the logged input example
        local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path / version))
        conf = read_flavor_conf(local)
        assert conf[FlavorKey.EXPORT_CONFIG] == PRICE_CONFIG.to_dict()
        assert conf[FlavorKey.INPUT_NAMES] == ["token_ids", "mask", "price"]
        assert not os.path.exists(os.path.join(local, CODE_DIR, f"{MODULE}.py"))  # the variant does not carry it
        requirements = read(os.path.join(local, "requirements.txt"))
        assert MODULE not in requirements and "transformers" not in requirements
        with models_serve(f"models:/{NAME}/{version}", logged["uri"], str(tmp_path)) as server:
            response = server.invoke({"dataframe_records": REQUEST.to_dict("records")})
            assert response.status_code == 200, server.log()
            served = pd.DataFrame(response.json()["predictions"])
            bad = server.invoke({"dataframe_records": [{"text": "ok", "price": "cheap"}]})
            missing = server.invoke({"inputs": ["no price column"]})
        assert_same_answers(served, source)
        # The default schema names the config's columns, so MLflow checks them first: a 400 naming the column.
        assert bad.status_code == 400 and "price" in bad.json()["message"], bad.json()
        assert missing.status_code == 400 and "price" in missing.json()["message"], missing.json()


@pytest.mark.slow
def test_a_worker_request_tag_exports_a_custom_model_with_its_saved_config(logged: Dict[str, Any]) -> None:
    """A ``tfexport.request`` tag (set in the UI) -> the worker's export, from the config saved with the source."""
    client = MlflowClient()
    client.set_model_version_tag(NAME, "1", Tag.REQUEST, "torchscript:1x16")
    outcome = ExportWorker(client).process(Job(NAME, "1", "torchscript:1x16"))
    assert outcome.status is not None and outcome.status.startswith("done"), outcome.status
    version = outcome.status.rsplit("/", 1)[1]
    tags = client.get_model_version(NAME, version).tags
    assert tags[Tag.FORMAT] == "torchscript" and tags[Tag.TASK] == "custom" and tags[Tag.TRACE_SHAPE] == "1x16"
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(REQUEST.iloc[:3])  # rows within 16 tokens
    assert_same_answers(served, logged["source"].iloc[:3])


@pytest.mark.slow
def test_custom_source_loads_in_a_fresh_process_from_its_code_paths(logged: Dict[str, Any]) -> None:
    """The source variant needs the user's model class: log_model(code_paths=...) carries it in code/."""
    env = no_user_code_env(logged["uri"])
    assert_cannot_import_user_code(env)
    script = (
        "import json, mlflow, pandas as pd\n"
        f"frame = pd.DataFrame({json.dumps(REQUEST.to_dict('list'))})\n"
        f"out = mlflow.pyfunc.load_model('models:/{NAME}/1').predict(frame)\n"
        "print(json.dumps(out['price_score'].tolist()))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=logged["root"], timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, logged["source"]["price_score"].to_numpy(float), atol=1e-6)


@pytest.mark.slow
def test_custom_model_neuron_export_through_the_trace_path_with_a_cpu_stand_in_compiler(
        logged: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Tuple[Tuple[int, ...], ...]] = []

    def cpu_stand_in(module: Any, example_inputs: Any, compiler_args: Any) -> Any:
        calls.append(tuple(tuple(t.shape) for t in example_inputs))  # static shapes, one compile per bucket
        return torch.jit.trace(module, example_inputs, check_trace=False)

    previous = set_compiler(NeuronCompiler(target="inf1", version="cpu-stand-in", compile=cpu_stand_in))
    monkeypatch.setitem(sys.modules, "torch_neuron", types.ModuleType("torch_neuron"))
    try:
        result = mlflow_tfexport.export(f"models:/{NAME}/1", format="neuron", trace_shape=["1x32"])
    finally:
        set_compiler(previous)
    assert calls == [((1, 32), (1, 32), (1,))]  # token_ids, mask, price
    tags = MlflowClient().get_model_version(NAME, str(result.model_version.version)).tags
    assert tags[Tag.FORMAT] == "neuron" and tags[Tag.TASK] == "custom" and tags[Tag.VALIDATION] == "passed"
    served = mlflow.pyfunc.load_model(result.model_uri).predict(REQUEST)
    np.testing.assert_allclose(served["price_score"].to_numpy(float),
                               logged["source"]["price_score"].to_numpy(float), atol=1e-5)


@pytest.mark.slow
def test_a_per_token_output_is_served_cut_to_each_rows_tokens(user_code: Any, tmp_path: Any) -> None:
    """An output with a sequence axis: dynamic in ONNX, un-padded from TorchScript buckets, and each row's
    value cut to its own tokens in the response (as the source serves it)."""
    config = _config(outputs=(OutputSpec("token_states", {0: "batch", 1: "sequence"}), PRICE_CONFIG.outputs[1]))
    tok = bert_tokenizer()
    mlflow_tfexport.save_model(price_model(user_code[0], tok), str(tmp_path / "src"), tokenizer=tok,
                               export_config=config)
    expected = mlflow.pyfunc.load_model(str(tmp_path / "src")).predict(REQUEST)
    lengths = [len(tok(text)["input_ids"]) for text in REQUEST["text"]]
    assert [len(rows) for rows in expected["token_states"]] == lengths  # one 4-vector per real token of the row
    for fmt, options in (("onnx", {}), ("torchscript", {"trace_shape": "2x32"})):
        _, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / fmt), fmt, **options)
        assert report.passed
        got = mlflow.pyfunc.load_model(str(tmp_path / fmt)).predict(REQUEST)
        for a, b in zip(got["token_states"], expected["token_states"], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)


# --------------------------------------------------------------------------- 3. configs that do not fit


def _config(**changes: Any) -> ExportConfig:
    fields = {"inputs": PRICE_CONFIG.inputs, "outputs": PRICE_CONFIG.outputs}
    fields.update(changes)
    return ExportConfig(**fields)


MISFITS = {
    "missing input": (
        _config(inputs=PRICE_CONFIG.inputs[:2] + (InputSpec("prices", feed=Feed.COLUMN),)),
        ["inputs[2].name 'prices'", "PriceModel.forward takes no argument 'prices'",
         "PriceModel.forward(token_ids, mask, price, return_dict)"],
    ),
    "wrong output name": (
        _config(outputs=(OutputSpec("logits", {0: "batch"}), OutputSpec("scores", {0: "batch"}))),
        ["outputs[1].name 'scores'", "returns no output of that name", "-> logits [2, 3], price_score [2]"],
    ),
    "axis that is not dynamic": (
        _config(outputs=(OutputSpec("logits", {0: "batch", 1: "sequence"}), PRICE_CONFIG.outputs[1])),
        ["outputs[0] (logits).axes declares axis 1 'sequence'", "not dynamic", "it is 3 and 3",
         "-> logits [2, 3], price_score [2]"],
    ),
}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_config_that_does_not_fit_is_refused_before_export(
        case: str, user_code: Tuple[types.ModuleType, str], tmp_path: Any) -> None:
    config, fragments = MISFITS[case]
    tok = bert_tokenizer()
    model = price_model(user_code[0], tok)
    with pytest.raises(ExportConfigError) as logged_err:  # at log time: nothing is written
        mlflow_tfexport.save_model(model, str(tmp_path / "refused"), tokenizer=tok, export_config=config)
    assert not (tmp_path / "refused").exists()
    mlflow_tfexport.save_model(model, str(tmp_path / "src"), tokenizer=tok, export_config=PRICE_CONFIG)
    with pytest.raises(ExportConfigError) as export_err:  # as an override of export(): before any export
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "out"), "onnx", config=config)
    assert not (tmp_path / "out").exists()
    for message in (logged_err.value.message, export_err.value.message):
        for fragment in fragments:
            assert fragment in message, message


def test_malformed_configs_name_the_field() -> None:
    cases = [
        (lambda: _config(inputs=(InputSpec("input_ids", axes={0: "batch"}),)), "inputs[0] (input_ids).axes"),
        (lambda: _config(outputs=(OutputSpec("logits", {1: "batch"}),)), "outputs[0] (logits).axes"),
        (lambda: _config(postprocess="summarization"), "Unknown task 'summarization'"),
        (lambda: _config(postprocess="text-classification", outputs=(PRICE_CONFIG.outputs[1],)), "missing logits"),
        (lambda: _config(inputs=(InputSpec("price", feed=Feed.COLUMN),)), "at least one tokenizer input"),
        (lambda: _config(inputs=PRICE_CONFIG.inputs + (InputSpec("k", feed="magic"),)), "inputs[3] (k).feed"),
        (lambda: ExportConfig.from_dict({"inputs": [{"name": "x"}] * 100, "outputs": []}), "at most 32 entries"),
    ]
    for build, fragment in cases:
        with pytest.raises(mlflow_tfexport.TfexportError) as err:
            build()
        assert fragment in err.value.message, err.value.message


def test_a_changed_export_config_in_an_mlmodel_is_refused_at_load(user_code: Any, tmp_path: Any) -> None:
    tok = bert_tokenizer()
    mlflow_tfexport.save_model(price_model(user_code[0], tok), str(tmp_path), tokenizer=tok,
                               export_config=PRICE_CONFIG)
    conf = read_flavor_conf(str(tmp_path))
    hostile = json.loads(json.dumps(conf))
    hostile[FlavorKey.EXPORT_CONFIG]["outputs"][0]["axes"] = {"0": "batch; rm -rf /"}
    with pytest.raises(FlavorConfError, match="'export_config'"):
        check_flavor_conf(hostile)
    renamed = dict(conf, **{FlavorKey.INPUT_NAMES: ["token_ids", "mask", "other"]})
    with pytest.raises(FlavorConfError, match="'input_names'"):
        check_flavor_conf(renamed)
    with pytest.raises(FlavorConfError, match="'task'"):
        check_flavor_conf(dict(conf, **{FlavorKey.TASK: "text-classification"}))
    with pytest.raises(FlavorConfError, match="'export_config'"):
        check_flavor_conf({k: v for k, v in conf.items() if k != FlavorKey.EXPORT_CONFIG})


# --------------------------------------------------------------------------- given once, used everywhere


@pytest.mark.slow
def test_a_package_registers_a_config_for_its_model_type_through_an_entry_point(
        user_code: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    dist = site / "tfx_price_configs-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tfx-price-configs\nVersion: 0.1\n")
    entry = f"[mlflow_tfexport.export_configs]\n{MODEL_TYPE} = tfx_price_configs:config\n"
    (dist / "entry_points.txt").write_text(entry)
    (site / "tfx_price_configs.py").write_text(textwrap.dedent(f"""
        from mlflow_tfexport import ExportConfig

        def config():
            return ExportConfig.from_dict({PRICE_CONFIG.to_dict()!r})
    """))
    monkeypatch.syspath_prepend(str(site))
    tok = bert_tokenizer()
    mlflow_tfexport.save_model(price_model(user_code[0], tok), str(tmp_path / "src"), tokenizer=tok)  # no config
    conf = read_flavor_conf(str(tmp_path / "src"))
    assert conf[FlavorKey.EXPORT_CONFIG] == PRICE_CONFIG.to_dict() and conf[FlavorKey.TASK] == "custom"
    # export(config=...) overrides the saved config: only the price score, at another tolerance
    only_score = _config(outputs=(PRICE_CONFIG.outputs[1],), atol=1e-3)
    variant, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "onnx"), "onnx",
                                          config=only_score.to_dict())
    assert variant[FlavorKey.OUTPUT_NAMES] == ["price_score"] and report.atol == 1e-3
    served = mlflow.pyfunc.load_model(str(tmp_path / "onnx")).predict(REQUEST)
    assert list(served.columns) == ["price_score"]


def test_export_config_json_file_is_read_for_the_cli_override(user_code: Any, tmp_path: Any) -> None:
    from mlflow_tfexport.export.custom import load_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(PRICE_CONFIG.to_dict()))
    assert load_config(str(path)) == PRICE_CONFIG
    assert yaml.safe_load(yaml.safe_dump(PRICE_CONFIG.to_dict())) == PRICE_CONFIG.to_dict()  # MLmodel-safe
    from mlflow_tfexport.cli.main import build_parser

    args = build_parser().parse_args(["export", "models:/m/1", "--export-config", str(path)])
    assert args.export_config == str(path)
