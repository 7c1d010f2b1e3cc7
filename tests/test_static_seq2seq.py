"""text2text-generation on static shapes: an encoder per bucket, a cache-free decoder per decoder length.

A tiny BART is exported once to TorchScript at two buckets (1x16, 2x32: decoder lengths 16 and 32) and once to
ONNX. Greedy and beam search equal the source's ``generate`` token for token; every generation param the ONNX
encoder-decoder honours (sampling with a seed, top-k/top-p, repetition penalty, several sequences, stop strings,
streaming) gives the ONNX variant's answer (same numpy loop, logits within 1e-6); a source longer than the largest
bucket is truncated or a 4xx; the Neuron backend exports the same modules through its compile seam (a CPU stand-in
compiler here: no Neuron SDK or hardware).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Dict, Iterator, List

import mlflow
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from test_architectures import BY_NAME, T2T, build  # noqa: E402

from mlflow_tfexport.constants import FlavorKey, Generation  # noqa: E402
from mlflow_tfexport.errors import BadInputError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

TEXTS = ["I loved this film, the plot was great.", "Paris is", "it was not good and the end was not what I hoped"]
LONG_TEXT = " ".join(["the plot was great and the end was not"] * 8)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    root = str(tmp_path_factory.mktemp("static-seq2seq"))
    model, tok = build(BY_NAME["BART"], T2T)
    # A rare eos: decoding runs to max_new_tokens, so the longer decoder lengths are used.
    model.config.eos_token_id = model.generation_config.eos_token_id = len(tok) - 1
    model.generation_config.forced_eos_token_id = None
    source = os.path.join(root, "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task=T2T)
    ts_conf, report = export_to_directory(source, os.path.join(root, "ts"), "torchscript", trace_shape="1x16,2x32")
    export_to_directory(source, os.path.join(root, "onnx"), "onnx")
    return {"root": root, "source": source, "ts": os.path.join(root, "ts"), "onnx": os.path.join(root, "onnx"),
            "conf": ts_conf, "report": report, "model": model}


def _load(path: str) -> Any:
    return mlflow.pyfunc.load_model(path)


def test_static_seq2seq_layout_and_validation(variants: Dict[str, Any]) -> None:
    conf, report = variants["conf"], variants["report"]
    assert conf[FlavorKey.GENERATION] == Generation.STATIC_ENCODER_DECODER
    assert conf[FlavorKey.DECODER_LENGTHS] == [16, 32] and conf[FlavorKey.MAX_LENGTH] == 32
    files = sorted(os.listdir(os.path.join(variants["ts"], "torchscript")))
    assert files == ["1x16.pt", "2x32.pt", "decoder-1x16x16.pt", "decoder-1x16x32.pt", "decoder-2x32x16.pt",
                     "decoder-2x32x32.pt"]
    names = {c.name for c in report.checks}
    assert {"last_hidden_state", "greedy tokens", "beam search (2 beams) tokens"} <= names
    assert report.passed and all(c.passed for c in report.checks)


def test_greedy_and_beams_equal_the_source_over_both_decoder_lengths(variants: Dict[str, Any]) -> None:
    source, variant = _load(variants["source"]), _load(variants["ts"])
    runner = variant.get_raw_model()
    for params in ({"max_new_tokens": 8}, {"max_new_tokens": 20}, {"max_new_tokens": 6, "num_beams": 3},
                   {"max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2}):
        assert variant.predict(TEXTS, params=params) == source.predict(TEXTS, params=params), params
    used = set(runner.calls)
    assert {"decoder 1x16x16", "decoder 1x16x32", "encoder 1x16"} <= used or \
        {"decoder 2x32x16", "decoder 2x32x32"} <= used, used
    assert any(k.endswith("x32") and k.startswith("decoder") for k in used)  # 20 new tokens: the 32 decoder


@pytest.mark.parametrize("params", [
    {"do_sample": True, "seed": 5},
    {"do_sample": True, "seed": 7, "temperature": 1.5, "top_k": 50, "top_p": 0.9},
    {"do_sample": True, "seed": 3, "num_return_sequences": 2},
    {"repetition_penalty": 1.3},
], ids=["sample", "top-k-top-p", "n-sequences", "repetition-penalty"])
def test_generation_params_answer_like_the_onnx_variant(variants: Dict[str, Any], params: Dict[str, Any]) -> None:
    params = {"max_new_tokens": 10, **params}
    assert _load(variants["ts"]).predict(TEXTS, params=params) == _load(variants["onnx"]).predict(TEXTS, params=params)


def test_stop_strings_and_streaming(variants: Dict[str, Any]) -> None:
    variant, onnx = _load(variants["ts"]), _load(variants["onnx"])
    base = {"max_new_tokens": 10}
    full = variant.predict(TEXTS[:1], params=base)[0]
    stop = full[4:7] or "x"
    for params in (base, {**base, "do_sample": True, "seed": 4}, {**base, "stop": [stop]}):
        want = variant.predict(TEXTS[:1], params=params)
        assert want == onnx.predict(TEXTS[:1], params=params), params
        chunks: List[str] = list(variant.predict_stream(TEXTS[0], params=params))
        assert "".join(chunks) == want[0], params
    assert stop not in variant.predict(TEXTS[:1], params={**base, "stop": [stop]})[0]


def test_longer_than_the_largest_bucket_is_truncated_or_4xx(variants: Dict[str, Any]) -> None:
    variant = _load(variants["ts"])
    assert len(variant.predict([LONG_TEXT], params={"max_new_tokens": 4})) == 1  # truncated to 32 tokens
    with pytest.raises(BadInputError, match="maximum of 32 tokens"):
        variant.predict([LONG_TEXT], params={"truncation": False, "max_new_tokens": 4})
    with pytest.raises(BadInputError, match="max_new_tokens=32 is out of range for this model: expected an integer "
                       "from 0 to 31"):
        variant.predict(TEXTS[:1], params={"max_new_tokens": 32})



@pytest.mark.integration
def test_models_serve_answers_generation_params_and_a_4xx_past_the_largest_bucket(variants: Dict[str, Any],
                                                                                  tmp_path: Any) -> None:
    """A real ``mlflow models serve`` of the static variant answers /invocations with every generation param as
    the in-process pyfunc does, and a source or generated length past the largest bucket with the static
    variants' 400 and message."""
    import json

    from servers import models_serve

    variant = _load(variants["ts"])
    stop = variant.predict(TEXTS[:1], params={"max_new_tokens": 10})[0][4:7] or "x"
    cases: List[Dict[str, Any]] = [
        {"max_new_tokens": 8}, {"max_new_tokens": 6, "num_beams": 3},
        {"max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2},
        {"max_new_tokens": 10, "do_sample": True, "seed": 5, "top_k": 50, "top_p": 0.9},
        {"max_new_tokens": 10, "do_sample": True, "seed": 3, "num_return_sequences": 2},
        {"max_new_tokens": 10, "stop": [stop]},
    ]
    want = [json.loads(json.dumps(variant.predict(TEXTS, params=p))) for p in cases]
    refusals = []
    for params in ({"truncation": False, "max_new_tokens": 4}, {"max_new_tokens": 32}):
        with pytest.raises(BadInputError) as raised:
            variant.predict([LONG_TEXT if "truncation" in params else TEXTS[0]], params=params)
        refusals.append((params, str(raised.value)))
    with models_serve(variants["ts"], f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path)) as server:
        for params, expected in zip(cases, want, strict=True):
            answer = server.invoke({"inputs": TEXTS, "params": params})
            assert answer.status_code == 200, f"{params}: {answer.text}\n{server.log()}"
            assert answer.json()["predictions"] == expected, params
        for params, message in refusals:
            text = LONG_TEXT if "truncation" in params else TEXTS[0]
            answer = server.invoke({"inputs": [text], "params": params})
            assert answer.status_code == 400, f"{params}: {answer.status_code} {answer.text}"
            assert message in answer.json()["message"], (params, answer.json())
        assert "maximum of 32 tokens" in refusals[0][1] and "max_new_tokens=32 is out of range" in refusals[1][1]


class Seq2SeqCpuStandIn:
    """The Neuron compile contract on CPU (static-shape tensors in, a TorchScript module out), recording every
    call's input shapes: int64 token tensors, and the float encoder states a decoder module takes."""

    def __init__(self) -> None:
        self.calls: List[List[tuple]] = []

    def __call__(self, module: Any, example_inputs: Any, compiler_args: Any) -> Any:
        import torch

        assert all(isinstance(t, torch.Tensor) for t in example_inputs)
        self.calls.append([tuple(t.shape) for t in example_inputs])
        traced = torch.jit.trace(module, example_inputs, check_trace=False)
        assert isinstance(traced, torch.jit.ScriptModule)
        return traced


@pytest.fixture
def fake_torch_neuron(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The runtime imports torch_neuron before torch.jit.load; a no-op module stands in for it here."""
    fake = types.ModuleType("torch_neuron")
    fake.__version__ = "0.0-test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_neuron", fake)
    yield fake


def test_neuron_stand_in_exports_encoder_and_decoder_modules(variants: Dict[str, Any], tmp_path: Any,
                                                             fake_torch_neuron: types.ModuleType) -> None:
    from mlflow_tfexport.export.api import export_to_directory
    from mlflow_tfexport.export.neuron import NeuronCompiler, set_compiler

    fn = Seq2SeqCpuStandIn()
    previous = set_compiler(NeuronCompiler(target="inf1", version="cpu-stand-in (torch.jit.trace)", compile=fn))
    try:
        conf, report = export_to_directory(variants["source"], str(tmp_path / "nrn"), "neuron", trace_shape="1x16")
    finally:
        set_compiler(previous)
    assert report.passed and conf[FlavorKey.NEURON_TARGET] == "inf1"
    hidden = variants["model"].config.d_model
    assert fn.calls == [[(1, 16), (1, 16)], [(1, 16), (1, 16, hidden), (1, 16), (1,)]]  # encoder, decoder at T=16
    assert sorted(os.listdir(tmp_path / "nrn" / "neuron")) == ["1x16.pt", "decoder-1x16x16.pt"]
    params = {"max_new_tokens": 8}
    assert _load(str(tmp_path / "nrn")).predict(TEXTS, params=params) == _load(variants["source"]).predict(
        TEXTS, params=params)


def test_decoder_computes_the_logits_of_the_asked_position_only(variants: Dict[str, Any]) -> None:
    """The traced decoder gathers each row's hidden state at ``decoder_position`` before the LM head: it returns
    ``[B, 1, V]``, the eager model's logits at that position, whatever the other rows ask."""
    import torch

    model = variants["model"]
    decoder = torch.jit.load(os.path.join(variants["ts"], "torchscript", "decoder-2x32x16.pt"))
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.int64)
    mask[1, 20:] = 0
    dec = torch.randint(5, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
        for positions in ([15, 15], [0, 9], [6, 2]):
            got = decoder(dec, out.encoder_last_hidden_state, mask, torch.tensor(positions))[0]
            assert tuple(got.shape) == (2, 1, model.config.vocab_size)
            want = out.logits[torch.arange(2), torch.tensor(positions)]
            assert torch.allclose(got[:, 0], want, atol=1e-4), positions


def test_a_decoder_traced_before_decoder_position_still_serves(variants: Dict[str, Any], tmp_path: Any) -> None:
    """Variants exported before the ``decoder_position`` input have three-input decoders returning logits at
    every position: the runtime gathers the asked position itself, and the answers equal today's decoder's."""
    import glob
    import re
    import shutil

    import torch

    model = variants["model"]

    class OldDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, dec: Any, states: Any, mask: Any) -> Any:
            return self.model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=dec,
                              use_cache=False, return_dict=True).logits

    old = str(tmp_path / "old")
    shutil.copytree(variants["ts"], old)
    files = glob.glob(os.path.join(old, "torchscript", "decoder-*.pt"))
    assert files
    with torch.no_grad():
        for path in files:
            batch, seq, length = (int(x) for x in re.findall(r"decoder-(\d+)x(\d+)x(\d+)\.pt", path)[0])
            example = (torch.ones(batch, length, dtype=torch.int64),
                       torch.zeros(batch, seq, model.config.d_model), torch.ones(batch, seq, dtype=torch.int64))
            torch.jit.save(torch.jit.trace(OldDecoder().eval(), example, check_trace=False), path)
    params = {"max_new_tokens": 6}
    assert _load(old).predict(TEXTS, params=params) == _load(variants["ts"]).predict(TEXTS, params=params)
