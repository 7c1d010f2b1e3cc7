"""Decoding as users expect it, on the source and the exported variants of tiny GPT-2, Llama, Mixtral, T5 and BART.

Greedy and beam search give the source's tokens on ONNX (transformers' ``generate`` against the numpy loop of
``serving/decoding.py``); several prompts decode together and each row equals its single-prompt result;
sampling is reproducible with a seed; stop strings end the output; ``predict_stream`` yields chunks whose
concatenation is ``predict``'s answer; the params are in the signature and out-of-range values are a 4xx.
Each model is exported once per module.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, List, Tuple

import mlflow
import numpy as np
import pytest
import requests

sys.path.insert(0, os.path.dirname(__file__))

from servers import models_serve  # noqa: E402
from test_architectures import BY_NAME, T2T, TG, build  # noqa: E402

from mlflow_tfexport.errors import BadInputError  # noqa: E402
from mlflow_tfexport.serving import decoding  # noqa: E402
from mlflow_tfexport.serving.decoding import DecodeConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

PROMPTS = ["I loved this film, the plot was", "Paris is", "it was not good and the end was not what"]


def _decoder_only(kind: str, **overrides: Any) -> Tuple[Any, Any]:
    """A tiny Llama-style decoder (``kind``: Llama, Mixtral with 4 experts, 2 per token, Mistral, Qwen2, Phi3)
    with the tests' byte-level tokenizer; ``overrides`` go to its config."""
    import torch
    import transformers
    from tiny import gpt2_tokenizer

    torch.manual_seed(0)
    tok = gpt2_tokenizer(model_max_length=64)
    eos = tok.eos_token_id
    kwargs: Dict[str, Any] = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=eos, bos_token_id=eos, eos_token_id=eos)
    if kind == "Mixtral":
        kwargs.update(num_local_experts=4, num_experts_per_tok=2)
    kwargs.update(overrides)
    config = getattr(transformers, f"{kind}Config")(**kwargs)
    return getattr(transformers, f"{kind}ForCausalLM")(config).eval(), tok


def _build(arch: str) -> Tuple[Any, Any, str]:
    if arch in ("Llama", "Mixtral"):
        return (*_decoder_only(arch), TG)
    task = TG if arch == "GPT-2" else T2T
    model, tok = build(BY_NAME[arch], task)
    if task == T2T:  # a rare eos: decoding runs to max_new_tokens, the texts are not empty
        model.config.eos_token_id = model.generation_config.eos_token_id = len(tok) - 1
        model.generation_config.forced_eos_token_id = None
    return model, tok, task


class Exported:
    def __init__(self, arch: str, root: str) -> None:
        import mlflow_tfexport
        from mlflow_tfexport.export.api import export_to_directory
        from mlflow_tfexport.serving.conf import read_flavor_conf
        from mlflow_tfexport.serving.runtimes import load_runner

        model, self.tok, self.task = _build(arch)
        self.source = os.path.join(root, arch, "source")
        self.onnx = os.path.join(root, arch, "onnx")
        mlflow_tfexport.save_model(model, self.source, tokenizer=self.tok, task=self.task)
        export_to_directory(self.source, self.onnx, "onnx")
        self.conf = read_flavor_conf(self.onnx)
        self.eos = self.conf["eos_token_id"]
        self.runners = {"source": load_runner(self.source, read_flavor_conf(self.source)),
                        "onnx": load_runner(self.onnx, self.conf)}
        self.prompts = [self.tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def models(tmp_path_factory: Any) -> Dict[str, Exported]:
    root = str(tmp_path_factory.mktemp("decoding"))
    return {arch: Exported(arch, root) for arch in ("GPT-2", "Llama", "T5", "BART")}


ARCHS = ["GPT-2", "Llama", "T5", "BART"]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_and_beam_equal_the_source_and_batch_rows_equal_single_prompts(arch: str,
                                                                              models: Dict[str, Exported]) -> None:
    m = models[arch]
    configs = [DecodeConfig(10, m.eos), DecodeConfig(10, m.eos, repetition_penalty=1.5),
               DecodeConfig(10, m.eos, num_beams=3, num_return_sequences=2)]
    for cfg in configs:
        want = m.runners["source"].decode(m.prompts, cfg)
        got = m.runners["onnx"].decode(m.prompts, cfg)
        assert got == want, cfg
        assert [m.runners["onnx"].decode([p], cfg)[0] for p in m.prompts] == got  # batched rows = single prompts
        assert all(len(seqs) == cfg.num_return_sequences for seqs in got)
    assert any(len(s) == 10 for seqs in got for s in seqs)  # decoding ran to the limit
    # the two beams returned differ, and beam search found another answer than greedy for some prompt
    assert any(seqs[0] != seqs[1] for seqs in got)


@pytest.mark.parametrize("arch", ["GPT-2", "T5"])
def test_sampling_is_reproducible_with_a_seed_per_variant(arch: str, models: Dict[str, Exported]) -> None:
    m = models[arch]
    cfg = DecodeConfig(12, m.eos, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7,
                       num_return_sequences=2)
    for name, runner in m.runners.items():
        first = runner.decode(m.prompts, cfg)
        assert runner.decode(m.prompts, cfg) == first, name
        other = runner.decode(m.prompts, DecodeConfig(12, m.eos, do_sample=True, temperature=1.5, seed=8,
                                                      num_return_sequences=2))
        assert other != first, name
        greedy = runner.decode(m.prompts, DecodeConfig(12, m.eos))
        assert [seqs[0] for seqs in first] != [seqs[0] for seqs in greedy], name
        assert all(seqs[0] != seqs[1] for seqs in first), name  # each returned sequence has its own draws
    onnx = m.runners["onnx"]
    assert [onnx.decode([p], cfg)[0] for p in m.prompts] == onnx.decode(m.prompts, cfg)  # rows = single prompts


def test_seeded_sampling_from_concurrent_requests(models: Dict[str, Exported]) -> None:
    m = models["GPT-2"]
    cfg = DecodeConfig(12, m.eos, do_sample=True, seed=3)
    for runner in m.runners.values():
        want = runner.decode(m.prompts, cfg)
        results: List[Any] = []

        def work(runner: Any = runner, results: List[Any] = results) -> None:
            for _ in range(3):
                results.append(runner.decode(m.prompts, cfg))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 12 and all(r == want for r in results)


def test_mixtral_exports_to_onnx_and_decodes_as_the_source(tmp_path: Any) -> None:
    """Its experts are traced through transformers' ``batched_mm`` implementation (no ``aten::histc``)."""
    m = Exported("Mixtral", str(tmp_path))
    for cfg in (DecodeConfig(8, m.eos), DecodeConfig(8, m.eos, num_beams=2)):
        assert m.runners["onnx"].decode(m.prompts, cfg) == m.runners["source"].decode(m.prompts, cfg)


# --------------------------------------------------------------------------- through the pyfunc


@pytest.mark.parametrize("arch", ["GPT-2", "T5"])
def test_pyfunc_params_stop_and_stream(arch: str, models: Dict[str, Exported]) -> None:
    m = models[arch]
    pyfuncs = {name: mlflow.pyfunc.load_model(path) for name, path in (("source", m.source), ("onnx", m.onnx))}
    base = {"max_new_tokens": 12}
    plain = pyfuncs["source"].predict(PROMPTS, params=base)
    assert pyfuncs["onnx"].predict(PROMPTS, params=base) == plain
    sampled = {**base, "do_sample": True, "seed": 5}
    for name, pyfunc in pyfuncs.items():
        # a stop string first found in the middle of a generated text: the output ends just before it
        texts = pyfunc.predict(PROMPTS, params=sampled)
        bodies = [t[len(p):] if m.task == TG else t for t, p in zip(texts, PROMPTS, strict=True)]
        row, cut, stop = next((r, k, b[k:k + 2]) for r, b in enumerate(bodies) for k in range(2, len(b) - 2)
                              if b.find(b[k:k + 2]) == k and b[k:k + 2].strip())
        stopped = pyfunc.predict(PROMPTS, params={**sampled, "stop": [stop, "never-generated"]})
        assert stopped[row] == texts[row][:len(texts[row]) - len(bodies[row]) + cut], name
        assert all(stop not in (t[len(p):] if m.task == TG else t) for t, p in zip(stopped, PROMPTS, strict=True))
        beams = pyfunc.predict(PROMPTS, params={**base, "num_beams": 3, "num_return_sequences": 2})
        assert all(isinstance(b, list) and len(b) == 2 for b in beams), name
        # streaming: the chunks join into predict's answer, for greedy, sampled and stopped output
        for params in (base, sampled, {**sampled, "stop": [stop]}):
            chunks = list(pyfunc.predict_stream(PROMPTS[row], params=params))
            assert "".join(chunks) == pyfunc.predict([PROMPTS[row]], params=params)[0], name
            assert len(chunks) >= (3 if params is sampled else 0), (name, chunks)  # chunks as tokens come
    # stop strings end greedy and beam search alike on both variants (a stopped beam is finished, as at eos)
    for params in (base, {**base, "num_beams": 3, "num_return_sequences": 2}):
        full = pyfuncs["source"].predict(PROMPTS, params=params)
        first = full[0][0] if isinstance(full[0], list) else full[0]
        body = first[len(PROMPTS[0]):] if m.task == TG else first
        stop_params = {**params, "stop": [body[3:5] or "x"]}
        assert pyfuncs["onnx"].predict(PROMPTS, params=stop_params) == \
            pyfuncs["source"].predict(PROMPTS, params=stop_params)
    assert pyfuncs["onnx"].predict(PROMPTS, params={**base, "num_beams": 3}) == \
        pyfuncs["source"].predict(PROMPTS, params={**base, "num_beams": 3})


def test_out_of_range_params_are_refused_with_the_range(models: Dict[str, Exported]) -> None:
    from mlflow.exceptions import MlflowException

    pyfunc = mlflow.pyfunc.load_model(models["GPT-2"].onnx)
    schema = {p.name: p for p in pyfunc.metadata.get_params_schema().params}
    assert {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams", "num_return_sequences",
            "stop", "seed", "max_new_tokens"} <= set(schema)
    assert schema["stop"].shape == (-1,) and schema["stop"].dtype.name == "string"
    cases = [({"temperature": 0.0}, "temperature=0.0 .* expected a number from 0.001 to 100"),
             ({"top_p": 1.5}, "top_p=1.5 .* expected a number from 0.001 to 1"),
             ({"top_k": -1}, "top_k=-1 .* from 0 to"),
             ({"num_beams": 0}, "num_beams=0 .* from 1 to 32"),
             ({"num_return_sequences": 2}, "num_return_sequences=2 with num_beams=1 and do_sample=false"),
             ({"do_sample": True, "num_beams": 2}, "beam sampling is not offered"),
             ({"seed": -2}, "seed=-2 .* from -1 to")]
    for params, message in cases:
        with pytest.raises(MlflowException, match=message):
            pyfunc.predict(PROMPTS[:1], params=params)
    with pytest.raises(MlflowException, match="stop"):
        pyfunc.predict(PROMPTS[:1], params={"stop": "x"})
    with pytest.raises(MlflowException, match="requires single input"):  # MLflow's own check
        list(pyfunc.predict_stream(PROMPTS, params={}))
    with pytest.raises(BadInputError, match="predict_stream yields one sequence"):
        list(pyfunc.predict_stream(PROMPTS[0], params={"num_beams": 2}))


def test_models_serve_takes_the_generation_params(models: Dict[str, Exported], tmp_path: Any) -> None:
    m = models["GPT-2"]
    want = mlflow.pyfunc.load_model(m.onnx).predict(PROMPTS, params={"max_new_tokens": 8, "do_sample": True,
                                                                     "seed": 11, "stop": ["zz"]})
    with models_serve(m.onnx, f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path)) as server:
        payload = {"inputs": PROMPTS, "params": {"max_new_tokens": 8, "do_sample": True, "seed": 11, "stop": ["zz"]}}
        answer = server.invoke(payload)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == want
        bad = server.invoke({"inputs": PROMPTS, "params": {"top_p": 2.0}})
        assert bad.status_code == 400 and "from 0.001 to 1" in bad.json()["message"], bad.text
        assert isinstance(requests.get(f"{server.url}/ping", timeout=10).status_code, int)


# --------------------------------------------------------------------------- TorchScript and the processors


def test_torchscript_variant_decodes_with_the_same_loop(models: Dict[str, Exported], tmp_path: Any) -> None:
    from mlflow_tfexport.export.api import export_to_directory

    m = models["GPT-2"]
    path = str(tmp_path / "ts")
    export_to_directory(m.source, path, "torchscript", trace_shape="1x32")
    ts = mlflow.pyfunc.load_model(path)
    source = mlflow.pyfunc.load_model(m.source)
    for params in ({"max_new_tokens": 8}, {"max_new_tokens": 8, "num_beams": 2}):
        assert ts.predict(PROMPTS, params=params) == source.predict(PROMPTS, params=params)
    sampled = {"max_new_tokens": 8, "do_sample": True, "seed": 4}
    assert ts.predict(PROMPTS, params=sampled) == ts.predict(PROMPTS, params=sampled)
    assert "".join(ts.predict_stream(PROMPTS[0], params=sampled)) == ts.predict(PROMPTS[:1], params=sampled)[0]


def test_processors_equal_transformers_warpers() -> None:
    import torch
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32) * 3
    ids = rng.integers(0, 50, size=(3, 6))
    t = torch.from_numpy(logits)
    seen = np.zeros_like(logits, dtype=bool)
    np.put_along_axis(seen, ids, True, axis=1)
    pairs = [
        (decoding.repetition_penalty(logits, seen, 1.3),
         RepetitionPenaltyLogitsProcessor(1.3)(torch.from_numpy(ids), t.clone())),
        (decoding.temperature(logits, 0.7), TemperatureLogitsWarper(0.7)(None, t.clone())),
        (decoding.top_k(logits, 5), TopKLogitsWarper(5)(None, t.clone())),
        (decoding.top_p(logits, 0.8), TopPLogitsWarper(0.8)(None, t.clone())),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    draws = decoding.draw(decoding.top_k(logits, 1), [np.random.default_rng(i) for i in range(3)])
    assert draws.tolist() == np.argmax(logits, axis=-1).tolist()  # one token left: every draw takes it


@pytest.mark.parametrize("arch", ["GPT-2", "BART"])
def test_optimized_and_int8_generation_exports_keep_the_greedy_text(arch: str, models: Dict[str, Exported],
                                                                    tmp_path: Any) -> None:
    from mlflow_tfexport.constants import FlavorKey
    from mlflow_tfexport.export.api import export_to_directory

    m = models[arch]
    texts = PROMPTS + ["the food was", "we went to the sea and"]
    want = mlflow.pyfunc.load_model(m.source).predict(texts, params={"max_new_tokens": 10})
    for options in ({"optimize": True}, {"quantize": "int8"}):
        path = str(tmp_path / next(iter(options)))
        conf, report = export_to_directory(m.source, path, "onnx", validation_data=texts, **options)
        assert report.passed and report.agreement is not None and report.agreement.value == 1.0, report.to_text()
        assert (conf.get(FlavorKey.QUANTIZED) == "int8") == ("quantize" in options)
        assert bool(conf.get(FlavorKey.OPTIMIZED)) == ("optimize" in options)
        assert mlflow.pyfunc.load_model(path).predict(texts, params={"max_new_tokens": 10}) == want
