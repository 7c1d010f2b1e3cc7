"""Generation with past key values: causal LMs (one with-past graph) and encoder-decoders (encoder + decoder).

Every architecture that exports is checked token for token: the ONNX variant's
numpy decoding loop against the source model's ``generate``. GPT-2, T5 and BART
also go through the registry (log -> export -> pyfunc of both versions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import mlflow
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from test_architectures import BY_NAME, T2T, TG, build  # noqa: E402

from mlflow_tfexport.constants import ONNX_DECODER_FILE, ONNX_ENCODER_FILE, FlavorKey, Generation, Tag  # noqa: E402
from mlflow_tfexport.errors import BadInputError, ExportError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
#: No module-scoped fixture (every test exports its own model): ``make test`` spreads the tests over its workers.
SPREAD_OVER_WORKERS = True

CAUSAL = ["GPT-2", "GPT Neo", "GPT-J", "CodeGen", "BLOOM", "OPT", "BioGPT"]
SEQ2SEQ = ["T5", "MT5", "BART", "mBART", "PLBart"]  # LongT5, Marian, M2M100, Blenderbot(Small), BigBird-Pegasus:
# test_architectures.py (export, validation and pyfunc equality)
PROMPTS = ["I loved this film, the plot was", "Paris is the capital of", "it was not good and the end was"]


def _export(arch: str, task: str, root: str, *, rare_eos: bool = False) -> Tuple[Any, Any, str, str]:
    """Save a tiny ``arch`` source in ``root`` and export it to ONNX; ``rare_eos`` makes the last vocabulary
    id the end-of-sequence token (and drops a forced one), so decoding runs to ``max_new_tokens``."""
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    model, tok = build(BY_NAME[arch], task)
    if rare_eos:
        model.config.eos_token_id = model.generation_config.eos_token_id = len(tok) - 1
        model.generation_config.forced_eos_token_id = None
    source = os.path.join(root, "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task=task)
    exported = os.path.join(root, "onnx")
    export_to_directory(source, exported, "onnx")
    return model, tok, source, exported


def _runners(source: str, exported: str) -> Tuple[Any, Any, Dict[str, Any]]:
    from mlflow_tfexport.serving.conf import read_flavor_conf
    from mlflow_tfexport.serving.runtimes import load_runner

    conf = read_flavor_conf(exported)
    return load_runner(source, read_flavor_conf(source)), load_runner(exported, conf), conf


def _same_tokens(tok: Any, source: str, exported: str, lengths: Tuple[int, ...] = (1, 4, 12)) -> List[List[int]]:
    eager, onnx, conf = _runners(source, exported)
    eos = conf[FlavorKey.EOS_TOKEN_ID]
    outputs = []
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        for n in lengths:
            want = eager.generate(ids, max_new_tokens=n, eos_token_id=eos)
            got = onnx.generate(ids, max_new_tokens=n, eos_token_id=eos)
            assert got == want, (prompt, n)
            outputs.append(got)
    return outputs


@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_lm_with_past_equals_source_generation(arch: str, tmp_path: Any) -> None:
    _, tok, source, exported = _export(arch, TG, str(tmp_path))
    conf = _runners(source, exported)[2]
    assert conf[FlavorKey.GENERATION] == Generation.DECODER_WITH_PAST
    outputs = _same_tokens(tok, source, exported)
    assert any(len(o) == 12 for o in outputs)  # decoding ran to the limit, not just to an early eos


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_encoder_decoder_equals_source_generation(arch: str, tmp_path: Any) -> None:
    _, tok, source, exported = _export(arch, T2T, str(tmp_path / "default"))
    assert sorted(f for f in os.listdir(exported) if f.endswith(".onnx")) == [ONNX_DECODER_FILE, ONNX_ENCODER_FILE]
    _same_tokens(tok, source, exported)  # the model's own eos and forced eos
    _, tok, source, exported = _export(arch, T2T, str(tmp_path / "long"), rare_eos=True)
    assert all(len(o) in (1, 4, 12) for o in _same_tokens(tok, source, exported))


def test_decoding_runs_one_new_position_per_token(tmp_path: Any) -> None:
    """Linear decoding: after the prompt, every step feeds one token and the previous presents."""
    _, tok, source, exported = _export("GPT-2", TG, str(tmp_path))
    runner = _runners(source, exported)[1]
    seen: List[Tuple[int, int]] = []
    real = runner.session.run

    def counting(names: Any, feeds: Dict[str, np.ndarray]) -> Any:
        seen.append((feeds["input_ids"].shape[1], feeds["past_key_values.0.key"].shape[2]))
        return real(names, feeds)

    runner.session.run = counting
    prompt = tok(PROMPTS[0])["input_ids"]
    runner.generate(prompt, max_new_tokens=6, eos_token_id=None)
    n = len(prompt)
    assert seen == [(n, 0)] + [(1, n + i) for i in range(5)]


@pytest.mark.parametrize("arch", ["OPT", "GPT-2"])
def test_left_padded_prompts_decode_together_like_the_source(arch: str, tmp_path: Any) -> None:
    """Prompts of different lengths in one request are left-padded into one batch: OPT derives positions from the
    attention mask, GPT-2 gets position_ids; either way every row's greedy tokens are the source's."""
    from mlflow.pyfunc import load_model

    _, _, source, exported = _export(arch, TG, str(tmp_path), rare_eos=True)
    runner = _runners(source, exported)[1]
    assert runner.has_positions and runner.steps().batches
    params = {"max_new_tokens": 6}
    assert load_model(exported).predict(PROMPTS + ["a"], params=params) == load_model(source).predict(
        PROMPTS + ["a"], params=params)


def test_validation_left_pads_causal_rows(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A causal graph that counts positions from its past length (GPT-2 exported without position_ids) is right
    for right-padded rows only; validation pads rows on the left, as serving batches prompts, and refuses it."""
    import mlflow_tfexport
    from mlflow_tfexport.errors import ValidationFailedError
    from mlflow_tfexport.export.api import export_to_directory
    from mlflow_tfexport.export.onnx import generation

    model, tok = build(BY_NAME["GPT-2"], TG)
    source = str(tmp_path / "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task=TG)
    monkeypatch.setattr(generation, "takes_positions", lambda model: False)
    with pytest.raises(ValidationFailedError, match=r"logits \(past 0\) at 3x11: max abs diff"):
        export_to_directory(source, str(tmp_path / "onnx"), "onnx")


def test_num_beams(tmp_path: Any) -> None:
    from mlflow.pyfunc import load_model

    _, _, source, exported = _export("T5", T2T, str(tmp_path), rare_eos=True)
    beams = load_model(source).predict(PROMPTS[:1], params={"max_new_tokens": 4, "num_beams": 2})
    assert isinstance(beams, list) and len(beams) == 1
    assert load_model(exported).predict(PROMPTS[:1], params={"max_new_tokens": 4, "num_beams": 2}) == beams
    with pytest.raises(BadInputError, match="max_new_tokens=64 is out of range for this model: expected an integer "
                       "from 0 to 63"):
        load_model(exported).predict(PROMPTS[:1], params={"max_new_tokens": 64})
    assert load_model(exported).predict(PROMPTS[:2], params={"max_new_tokens": 0}) == ["", ""]


def test_unsupported_generation_exports_raise_precise_errors(tmp_path: Any) -> None:
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    model, tok = build(BY_NAME["T5"], T2T)
    source = str(tmp_path / "source")
    mlflow_tfexport.save_model(model, source, tokenizer=tok, task="seq2seq-lm-with-past")
    with pytest.raises(ExportError, match="exporter='dynamo' does not export text2text-generation"):
        export_to_directory(source, str(tmp_path / "dynamo"), "onnx", exporter="dynamo")
    from mlflow_tfexport.export.formats import get_backend
    from mlflow_tfexport.export.options import ExportOptions
    from mlflow_tfexport.serving.conf import read_flavor_conf
    from mlflow_tfexport.tasks import get_task

    for task in (TG, T2T):
        with pytest.raises(ExportError, match="quantize='int8-static' calibrates on the inputs of one graph"):
            get_backend("onnx").check(ExportOptions(format="onnx", quantize="int8-static"), read_flavor_conf(source),
                                      get_task(task))


def test_onnx_generation_serves_without_torch(tmp_path: Any) -> None:
    """The encoder-decoder ONNX variant decodes in numpy: no torch, no transformers imported."""
    _, _, _, exported = _export("BART", T2T, str(tmp_path))
    code = (
        "import sys, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({exported!r})\n"
        "out = m.predict(['I loved this film'], params={'max_new_tokens': 3})\n"
        "assert isinstance(out, list) and isinstance(out[0], str), out\n"
        "bad = [n for n in ('torch', 'transformers') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- registry round trips


@pytest.fixture
def registry(tracking_uri: str) -> Iterator[str]:
    yield tracking_uri


@pytest.mark.parametrize("arch,task", [("GPT-2", TG), ("T5", T2T), ("BART", T2T)])
def test_registry_round_trip(arch: str, task: str, registry: str) -> None:
    import mlflow_tfexport

    model, tok = build(BY_NAME[arch], task)
    if task == T2T:  # a rare eos: the generated texts are not empty
        model.config.eos_token_id = model.generation_config.eos_token_id = len(tok) - 1
        model.generation_config.forced_eos_token_id = None
    name = f"gen-{arch}"
    with mlflow.start_run():
        info = mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name=name)
    assert info.flavors["tfexport"][FlavorKey.TASK] == task  # inferred from the model class
    result = mlflow_tfexport.export(f"models:/{name}/1", format="onnx")
    assert result.report is not None and result.report.passed
    tags = mlflow.MlflowClient().get_model_version(name, result.model_version.version).tags
    assert tags[Tag.FORMAT] == "onnx" and tags[Tag.TASK] == task and tags[Tag.VALIDATION] == "passed"
    source = mlflow.pyfunc.load_model(f"models:/{name}/1")
    exported = mlflow.pyfunc.load_model(result.model_uri)
    for n in (1, 7):
        want = source.predict(PROMPTS, params={"max_new_tokens": n})
        assert exported.predict(PROMPTS, params={"max_new_tokens": n}) == want
        assert all(isinstance(t, str) for t in want)
    if arch == "T5":  # tiny BART repeats its [SEP], a special token: its texts are empty
        assert any(want)
    with tempfile.TemporaryDirectory() as root:
        local = mlflow.artifacts.download_artifacts(result.model_uri, dst_path=root)
        conf = mlflow_tfexport.load_model(result.model_uri, dst_path=os.path.join(root, "native")).flavor_conf
        assert conf[FlavorKey.GENERATION] in (Generation.DECODER_WITH_PAST, Generation.ENCODER_DECODER)
        assert os.path.exists(os.path.join(local, conf[FlavorKey.MODEL_FILE]))
