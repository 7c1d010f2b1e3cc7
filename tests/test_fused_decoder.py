"""The fused with-past graph of the Llama family (``export/onnx/fused_decoder.py``), the default ONNX export of
Llama, Mistral, Qwen2 and Phi3 text generation.

Each tiny model is exported with the default options (validated step by step by the export, on left-padded
rows), and its variant must decode as the source: greedy, repetition penalty and beam search token for token,
prompts of different lengths batched together (left-padded) as each alone, a seeded sampling request
reproducible, a stop string honoured and ``predict_stream`` joining into ``predict``. Mistral's sliding window is
4 tokens (Phi3's 5), shorter than the prompts plus new tokens, so the kernel's window is checked against the
model's. GPT-2 keeps the traced graph (``tests/test_decoding.py``), and ``exporter='legacy'`` still writes it
for the family.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import mlflow
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from test_architectures import BY_NAME, TG, build  # noqa: E402
from test_decoding import PROMPTS, _decoder_only  # noqa: E402

from mlflow_tfexport.errors import ExportError  # noqa: E402
from mlflow_tfexport.serving.decoding import DecodeConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

FAMILY = ["Llama", "Mistral", "Qwen2", "Phi3"]
OVERRIDES: Dict[str, Dict[str, Any]] = {"Mistral": {"sliding_window": 4}, "Phi3": {"sliding_window": 5},
                                      "Qwen2": {"tie_word_embeddings": True}}
FUSED_OPS = {"GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization"}


def _op_types(folder: str) -> List[str]:
    import onnx

    return [n.op_type for n in onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False).graph.node]


class Variant:
    def __init__(self, kind: str, root: str, overrides: Optional[Dict[str, Any]] = None, **options: Any) -> None:
        import mlflow_tfexport
        from mlflow_tfexport.export.api import export_to_directory
        from mlflow_tfexport.serving.conf import read_flavor_conf
        from mlflow_tfexport.serving.runtimes import load_runner

        model, self.tok = _decoder_only(kind, **(OVERRIDES.get(kind, {}) if overrides is None else overrides))
        self.source, self.onnx = os.path.join(root, kind, "source"), os.path.join(root, kind, "onnx")
        mlflow_tfexport.save_model(model, self.source, tokenizer=self.tok, task=TG)
        self.conf, self.report = export_to_directory(self.source, self.onnx, "onnx", **options)
        conf = read_flavor_conf(self.onnx)
        self.eos = conf["eos_token_id"]
        self.runners = {"source": load_runner(self.source, read_flavor_conf(self.source)),
                        "onnx": load_runner(self.onnx, conf)}
        self.prompts = [self.tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def variants(tmp_path_factory: Any) -> Dict[str, Variant]:
    root = str(tmp_path_factory.mktemp("fused"))
    return {kind: Variant(kind, root) for kind in FAMILY}


@pytest.mark.parametrize("kind", FAMILY)
def test_the_family_exports_the_fused_graph_by_default(kind: str, variants: Dict[str, Variant]) -> None:
    v = variants[kind]
    assert v.report.passed
    ops = _op_types(v.onnx)
    assert set(ops) >= FUSED_OPS and ops.count("GroupQueryAttention") == 2  # one per layer
    assert not {"Softmax", "Pow", "ReduceMean"} & set(ops)  # no unfused attention or RMSNorm left
    names = [c.name for c in v.report.checks]
    assert any("(past 0)" in n for n in names) and any("(past" in n and "(past 0)" not in n for n in names)


@pytest.mark.parametrize("kind", FAMILY)
def test_greedy_beam_and_left_padded_batches_equal_the_source(kind: str, variants: Dict[str, Variant]) -> None:
    v = variants[kind]
    assert "GroupQueryAttention" in _op_types(v.onnx)  # the fused graph is what decodes here
    assert len({len(p) for p in v.prompts}) == len(v.prompts)  # prompts of different lengths: left padding
    if kind == "Mistral":
        assert max(len(p) for p in v.prompts) > 4  # longer than the sliding window (and 10 new tokens more)
    for cfg in (DecodeConfig(10, v.eos), DecodeConfig(10, v.eos, repetition_penalty=1.5),
                DecodeConfig(10, v.eos, num_beams=3, num_return_sequences=2)):
        want = v.runners["source"].decode(v.prompts, cfg)
        got = v.runners["onnx"].decode(v.prompts, cfg)
        assert got == want, cfg
        assert [v.runners["onnx"].decode([p], cfg)[0] for p in v.prompts] == got  # batched rows = single prompts
    assert any(len(s) == 10 for seqs in got for s in seqs)


@pytest.mark.parametrize("kind", ["Llama", "Phi3"])
def test_sampling_seed_stop_beams_and_stream_through_the_pyfunc(kind: str, variants: Dict[str, Variant]) -> None:
    v = variants[kind]
    assert "GroupQueryAttention" in _op_types(v.onnx)
    source, onnx = (mlflow.pyfunc.load_model(p) for p in (v.source, v.onnx))
    base = {"max_new_tokens": 12}
    assert onnx.predict(PROMPTS, params=base) == source.predict(PROMPTS, params=base)
    sampled = {**base, "do_sample": True, "temperature": 1.5, "top_k": 50, "seed": 5}
    first = onnx.predict(PROMPTS, params=sampled)
    assert onnx.predict(PROMPTS, params=sampled) == first
    assert onnx.predict(PROMPTS, params={**sampled, "seed": 6}) != first
    assert first != onnx.predict(PROMPTS, params=base)
    beams = {**base, "num_beams": 3, "num_return_sequences": 2}
    assert onnx.predict(PROMPTS, params=beams) == source.predict(PROMPTS, params=beams)
    body = first[0][len(PROMPTS[0]):]
    stop = body[2:4]
    stopped = onnx.predict(PROMPTS[:1], params={**sampled, "stop": [stop]})[0]
    assert stopped == first[0][:len(PROMPTS[0]) + body.find(stop)]
    chunks = list(onnx.predict_stream(PROMPTS[0], params=sampled))
    assert len(chunks) >= 3 and "".join(chunks) == first[0]


def test_legacy_exporter_and_unsupported_configs_keep_the_traced_graph(tmp_path: Any) -> None:
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    legacy = Variant("Llama", str(tmp_path / "legacy"), exporter="legacy")
    assert not FUSED_OPS & set(_op_types(legacy.onnx))
    cfg = DecodeConfig(8, legacy.eos)
    assert legacy.runners["onnx"].decode(legacy.prompts, cfg) == legacy.runners["source"].decode(legacy.prompts, cfg)
    # a rotary scaling whose frequencies change with the length (the writer lacks it): the traced graph, by default
    dynamic = Variant("Llama", str(tmp_path / "dynamic"), {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                               "rope_theta": 10000.0}})
    assert not FUSED_OPS & set(_op_types(dynamic.onnx))
    assert dynamic.runners["onnx"].decode(dynamic.prompts, cfg) == dynamic.runners["source"].decode(dynamic.prompts,
                                                                                                     cfg)
    model, tok = build(BY_NAME["GPT-2"], TG)
    source = str(tmp_path / "gpt2")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task=TG)
    with pytest.raises(ExportError, match="exporter='fused' writes text-generation graphs of model types llama, "
                       "mistral, qwen2, phi3; received task 'text-generation', model type 'gpt2'"):
        export_to_directory(source, str(tmp_path / "gpt2-fused"), "onnx", exporter="fused")
    export_to_directory(source, str(tmp_path / "gpt2-onnx"), "onnx")  # the default for GPT-2: the traced graph
    assert "GroupQueryAttention" not in _op_types(str(tmp_path / "gpt2-onnx"))


def test_fused_variant_serves_without_torch(variants: Dict[str, Variant]) -> None:
    assert "GroupQueryAttention" in _op_types(variants["Qwen2"].onnx)
    code = (
        "import sys, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({variants['Qwen2'].onnx!r})\n"
        "out = m.predict(['I loved this film', 'a'], params={'max_new_tokens': 3})\n"
        "assert isinstance(out, list) and isinstance(out[0], str), out\n"
        "bad = [n for n in ('torch', 'transformers') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_lone_decode_gets_every_core_given(variants: Dict[str, Variant], monkeypatch: pytest.MonkeyPatch) -> None:
    """Written with ``intra_op_num_threads: auto``, the generation session has an intra-op thread per core given
    (``OMP_NUM_THREADS`` lowers it, as Spark sets it), not one; a number in ``model_config`` is kept."""
    import yaml

    from mlflow_tfexport.serving.batching import given_cores

    path = variants["Llama"].onnx
    with open(os.path.join(path, "MLmodel")) as f:
        assert yaml.safe_load(f)["flavors"]["python_function"]["config"]["intra_op_num_threads"] == "auto"

    def threads(**config: Any) -> int:
        runner = mlflow.pyfunc.load_model(path, model_config=config or None)._model_impl.runner
        return int(runner.session.get_session_options().intra_op_num_threads)

    assert threads() == given_cores()
    assert threads(intra_op_num_threads=1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads() == 1
