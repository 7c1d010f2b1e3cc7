"""The tfexport flavor: log -> registry -> pyfunc -> predict, compared with the transformers pipelines."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

import mlflow_tfexport
from mlflow_tfexport.constants import CODE_DIR, FLAVOR_NAME, MODEL_DIR, SERVING_MODULE, TOKENIZER_DIR, FlavorKey, Tag
from mlflow_tfexport.errors import TfexportError, UnknownTaskError
from mlflow_tfexport.tasks import TASKS, get_task

TEXTS = [
    "I loved this film, the plot was great.",
    "Paris is the capital of France.",
    "dull",
    "The actors were really very good and the end was the best scene \u2603!",  # the snowman is [UNK] in BERT
]
MASKED = ["Paris is the [MASK] of France.", "I [MASK] this film.", "[MASK]"]
SCORE_ATOL = 1e-5


def log_and_load(model: Any, name: str, **kwargs: Any) -> Tuple[Any, Any]:
    """Log in a run, register as ``name`` and load ``models:/name/1`` as a pyfunc."""
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, name="model", registered_model_name=name, **kwargs)
    return info, mlflow.pyfunc.load_model(f"models:/{name}/1")


def pipe(task: str, model: Any, tok: Any) -> Any:
    return transformers.pipeline(task, model=model, tokenizer=tok, device="cpu")


def mean_pooled(model: Any, tok: Any, text: str) -> np.ndarray:
    """Mean of the eager model's last_hidden_state over the attention mask (one text, no padding)."""
    enc = tok(text, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state[0].numpy()
    mask = enc["attention_mask"][0].numpy()[:, None]
    return (hidden * mask).sum(axis=0) / mask.sum()


# --------------------------------------------------------------------------- round trips per task


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_feature_extraction_round_trip(tracking_uri: str, tiny_model: Any, arch: str) -> None:
    model, tok = tiny_model("feature-extraction", arch)
    info, pf = log_and_load(model, f"fe-{arch}", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "feature-extraction"  # inferred from BertModel/GPT2Model
    got = pf.predict(TEXTS)
    assert isinstance(got, np.ndarray) and got.shape == (len(TEXTS), model.config.hidden_size)
    assert got.dtype == np.float32
    extractor = pipe("feature-extraction", model, tok)
    for row, text in zip(got, TEXTS, strict=True):
        from_pipeline = np.asarray(extractor(text))[0].mean(axis=0)  # one text: every token is real
        np.testing.assert_allclose(row, from_pipeline, atol=SCORE_ATOL)
        np.testing.assert_allclose(row, mean_pooled(model, tok, text), atol=SCORE_ATOL)
    cls = pf.predict(TEXTS[:1], params={"pooling": "cls"})
    with torch.inference_mode():
        first = model(**tok(TEXTS[0], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(cls[0], first, atol=SCORE_ATOL)
    unit = pf.predict(TEXTS, params={"normalize": True})
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_text_classification_round_trip(tracking_uri: str, tiny_model: Any, arch: str) -> None:
    model, tok = tiny_model("text-classification", arch)
    info, pf = log_and_load(model, f"tc-{arch}", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "text-classification"
    got = pf.predict(TEXTS)  # one padded batch
    assert isinstance(got, pd.DataFrame) and list(got.columns[:2]) == ["label", "score"]
    expected = pipe("text-classification", model, tok)(TEXTS)
    assert got["label"].tolist() == [e["label"] for e in expected]
    np.testing.assert_allclose(got["score"], [e["score"] for e in expected], atol=SCORE_ATOL)


def test_text_classification_pairs_match_pipeline(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    pairs = pd.DataFrame({"text": TEXTS[:3], "text_pair": ["what is it?", "capital city", "the end"]})
    # Logged for pairs: a text_pair example makes the default schema name text and text_pair.
    _, pf = log_and_load(model, "tc-pairs", tokenizer=tok, input_example=pairs.iloc[:1])
    got = pf.predict(pairs)
    classifier = pipe("text-classification", model, tok)
    rows = zip(pairs["text"], pairs["text_pair"], strict=True)
    expected = [classifier({"text": t, "text_pair": p}) for t, p in rows]
    expected = [e[0] if isinstance(e, list) else e for e in expected]
    assert got["label"].tolist() == [e["label"] for e in expected]
    np.testing.assert_allclose(got["score"], [e["score"] for e in expected], atol=SCORE_ATOL)
    alone = mlflow.pyfunc.load_model(log_and_load(model, "tc-single", tokenizer=tok)[0].model_uri).predict(TEXTS[:3])
    assert not np.allclose(alone["score"], got["score"]), "text_pair must reach the model"


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_token_classification_round_trip(tracking_uri: str, tiny_model: Any, arch: str) -> None:
    model, tok = tiny_model("token-classification", arch)
    info, pf = log_and_load(model, f"ner-{arch}", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "token-classification"
    tagger = pipe("token-classification", model, tok)
    expected = [tagger(text, aggregation_strategy="none") for text in TEXTS]
    rows = pf.predict(TEXTS, params={"output": "entities"})
    assert len(rows) == len(TEXTS)
    keys = ("entity", "index", "word", "start", "end")
    for got_row, exp_row in zip(rows, expected, strict=True):
        assert [tuple(g[k] for k in keys) for g in got_row] == [tuple(e[k] for k in keys) for e in exp_row]
        np.testing.assert_allclose([g["score"] for g in got_row], [e["score"] for e in exp_row], atol=SCORE_ATOL)
    if arch == "bert":
        assert tok.unk_token_id in tok(TEXTS[3])["input_ids"]  # rows with [UNK] show the original text
    labels = pf.predict(TEXTS)  # default: the entity labels joined by commas, like mlflow.transformers
    assert labels == [",".join(e["entity"] for e in row) for row in expected]


def test_fill_mask_round_trip(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("fill-mask")
    info, pf = log_and_load(model, "fm", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "fill-mask"
    got = pf.predict(MASKED)
    assert list(got.columns[:2]) == ["token_str", "score"]
    filler = pipe("fill-mask", model, tok)
    for (_, row), text in zip(got.iterrows(), MASKED, strict=True):
        expected = filler(text, top_k=5)
        assert row["token_str"] == expected[0]["token_str"]
        assert row["score"] == pytest.approx(expected[0]["score"], abs=SCORE_ATOL)
        assert row["token"] == expected[0]["token"]
        assert row["sequence"] == expected[0]["sequence"]
        assert row["top_k_tokens"] == [e["token_str"] for e in expected]
        np.testing.assert_allclose(row["top_k_scores"], [e["score"] for e in expected], atol=SCORE_ATOL)
    assert len(pf.predict(MASKED[:1], params={"top_k": 2})["top_k_tokens"][0]) == 2


def test_text_generation_round_trip(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-generation", "gpt2")
    info, pf = log_and_load(model, "gen", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "text-generation"  # GPT2LMHeadModel
    prompts = TEXTS[:2] + ["the"]
    got = pf.predict(prompts, params={"max_new_tokens": 5})
    generator = pipe("text-generation", model, tok)
    expected = [generator(p, max_new_tokens=5, do_sample=False)[0]["generated_text"] for p in prompts]
    assert got == expected
    assert pf.predict(prompts[:1], params={"max_new_tokens": 0}) == prompts[:1]


def test_text2text_generation_round_trip(tracking_uri: str) -> None:
    from test_architectures import BY_NAME, build

    model, tok = build(BY_NAME["T5"], "text2text-generation")
    info, pf = log_and_load(model, "t2t", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "text2text-generation"  # T5ForConditionalGeneration
    prompts = TEXTS[:2] + ["the"]
    got = pf.predict(prompts, params={"max_new_tokens": 5})
    expected = []
    for p in prompts:
        with torch.inference_mode():
            enc = tok(p, return_tensors="pt")
            out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=5,
                                 do_sample=False)
        expected.append(tok.decode(out[0], skip_special_tokens=True))
    assert got == expected
    assert pf.predict(prompts[:1], params={"max_new_tokens": 0}) == [""]


def qa_reference(model: Any, tok: Any, question: str, context: str, max_answer_len: int = 15) -> Dict[str, Any]:
    """Brute force over every span in the context, scored as the former transformers QA pipeline did.

    Logits outside the context (except [CLS]) are masked to -10000, start and end
    probabilities are softmaxes over the masked logits, [CLS] is then zeroed, and
    the best span ``start <= end < start + max_answer_len`` inside the context wins.
    """
    enc = tok(question, context, truncation="only_second", return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    seq_ids = enc.sequence_ids(0)
    with torch.inference_mode():
        out = model(**enc)
    start_logits = out.start_logits[0].double().numpy()
    end_logits = out.end_logits[0].double().numpy()
    in_context = np.array([s == 1 for s in seq_ids])
    keep = in_context.copy()
    keep[0] = True  # [CLS]
    start_logits = np.where(keep, start_logits, -10000.0)
    end_logits = np.where(keep, end_logits, -10000.0)
    p_start = np.exp(start_logits - start_logits.max())
    p_start /= p_start.sum()
    p_end = np.exp(end_logits - end_logits.max())
    p_end /= p_end.sum()
    p_start[0] = p_end[0] = 0.0
    best = (-1.0, 0, 0)
    for s in np.flatnonzero(in_context):
        for e in np.flatnonzero(in_context):
            if s <= e < s + max_answer_len and p_start[s] * p_end[e] > best[0]:
                best = (p_start[s] * p_end[e], int(s), int(e))
    score, s, e = best
    start, end = offsets[s][0], offsets[e][1]
    return {"answer": context[start:end], "score": score, "start": start, "end": end}


def test_question_answering_round_trip(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("question-answering")
    info, pf = log_and_load(model, "qa", tokenizer=tok)
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "question-answering"
    questions = ["What is the capital of France?", "who loved the film?", "where?"]
    contexts = [
        "Paris is the capital of France. Berlin is the capital city of Germany.",
        "I loved this film, the plot was great and the actors were very good.",
        "in paris",
    ]
    got = pf.predict(pd.DataFrame({"question": questions, "context": contexts}))
    assert list(got.columns) == ["answer", "score", "start", "end"]
    for (_, row), q, c in zip(got.iterrows(), questions, contexts, strict=True):
        expected = qa_reference(model, tok, q, c)
        assert row["answer"] == expected["answer"]
        assert (row["start"], row["end"]) == (expected["start"], expected["end"])
        assert row["score"] == pytest.approx(expected["score"], abs=SCORE_ATOL)
        assert c[row["start"] : row["end"]] == row["answer"]
    short = pf.predict({"question": questions[0], "context": contexts[0]}, params={"max_answer_len": 1})
    expected = qa_reference(model, tok, questions[0], contexts[0], max_answer_len=1)
    assert short["answer"][0] == expected["answer"]
    assert short["score"][0] == pytest.approx(expected["score"], abs=SCORE_ATOL)


def test_every_task_has_a_round_trip_test() -> None:
    tested = {
        "feature-extraction": test_feature_extraction_round_trip,
        "text-classification": test_text_classification_round_trip,
        "token-classification": test_token_classification_round_trip,
        "question-answering": test_question_answering_round_trip,
        "fill-mask": test_fill_mask_round_trip,
        "text-generation": test_text_generation_round_trip,
        "text2text-generation": test_text2text_generation_round_trip,
    }
    import test_vision  # image tasks: registry round trip (ViT) and the matrix's save -> export -> pyfunc cells

    tested.update({
        "image-classification": test_vision.test_registry_round_trip,
        "image-feature-extraction": test_vision.test_vision_export_validates,
        "object-detection": test_vision.test_vision_export_validates,
    })
    import test_zero_shot  # CLIP: log_model -> export("models:/...") -> the ONNX version's pyfunc

    tested["zero-shot-image-classification"] = test_zero_shot.test_registry_round_trip
    assert set(tested) == set(TASKS)


# --------------------------------------------------------------------------- logging API


def test_pipeline_object_can_be_logged(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    classifier = pipe("text-classification", model, tok)
    info, pf = log_and_load(classifier, "from-pipeline")  # no tokenizer=: the pipeline's is used
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "text-classification"
    got = pf.predict(TEXTS[:2])
    expected = classifier(TEXTS[:2])
    assert got["label"].tolist() == [e["label"] for e in expected]
    np.testing.assert_allclose(got["score"], [e["score"] for e in expected], atol=SCORE_ATOL)


def test_explicit_task_and_old_feature_alias(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, tokenizer=tok, task="sequence-classification", name="model")
    assert info.flavors[FLAVOR_NAME][FlavorKey.TASK] == "text-classification"
    assert get_task("causal-lm").name == "text-generation"
    assert get_task("masked-lm").name == "fill-mask"


def test_unknown_task_is_rejected_with_the_known_ones(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run(), pytest.raises(UnknownTaskError) as err:
        mlflow.tfexport.log_model(model, tokenizer=tok, task="summarization", name="model")
    message = str(err.value)
    assert "summarization" in message
    for task in TASKS:
        assert task in message


def test_task_cannot_be_inferred_from_an_unsupported_class(tmp_path: Any, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    config = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    other = transformers.BertForNextSentencePrediction(config)
    with pytest.raises(UnknownTaskError, match="Pass task="):
        mlflow_tfexport.save_model(other, str(tmp_path / "m"), tokenizer=tok)


def test_tokenizer_is_required_for_a_bare_model(tmp_path: Any, tiny_model: Any) -> None:
    model, _ = tiny_model("text-classification")
    with pytest.raises(TfexportError, match="tokenizer= is required"):
        mlflow_tfexport.save_model(model, str(tmp_path / "m"))
    with pytest.raises(TfexportError, match="received str"):
        mlflow_tfexport.save_model("bert-base-uncased", str(tmp_path / "m2"), tokenizer=object())


def test_registered_version_tags_and_model_info(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("token-classification")
    with mlflow.start_run() as run:
        info = mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="ner")
    assert isinstance(info, mlflow.models.model.ModelInfo)
    assert info.registered_model_version == 1
    assert info.run_id == run.info.run_id
    version = MlflowClient().get_model_version("ner", "1")
    assert version.tags[Tag.FORMAT] == "transformers"
    assert version.tags[Tag.TASK] == "token-classification"
    assert version.source == info.model_uri
    with mlflow.start_run():
        again = mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="ner")
    assert again.registered_model_version == 2


def test_not_registered_without_a_name(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("fill-mask")
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, tokenizer=tok, name="model")
    assert info.registered_model_version is None
    assert MlflowClient().search_registered_models() == []
    assert mlflow.pyfunc.load_model(info.model_uri).predict(MASKED[:1])["token_str"].size == 1


# --------------------------------------------------------------------------- what is saved


@pytest.fixture
def saved(tracking_uri: str, tiny_model: Any, tmp_path: Any) -> Tuple[Any, str]:
    """A logged text-classification model with metadata and an input example, and its local copy."""
    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(
            model,
            tokenizer=tok,
            name="model",
            registered_model_name="sentiment",
            input_example=["great film"],
            metadata={"owner": "team-a"},
            extra_pip_requirements=["boto3"],
        )
    return info, download_artifacts(artifact_uri="models:/sentiment/1", dst_path=str(tmp_path / "dl"))


def test_mlmodel_flavor_block_and_loader_module(saved: Tuple[Any, str]) -> None:
    info, path = saved
    with open(os.path.join(path, "MLmodel")) as f:
        mlmodel = yaml.safe_load(f)
    block = mlmodel["flavors"][FLAVOR_NAME]
    expected_keys = {
        FlavorKey.FORMAT,
        FlavorKey.TASK,
        FlavorKey.MODEL_FILE,
        FlavorKey.TOKENIZER_DIR,
        FlavorKey.INPUT_NAMES,
        FlavorKey.OUTPUT_NAMES,
        FlavorKey.ID2LABEL,
        FlavorKey.MAX_LENGTH,
        FlavorKey.PAD_TOKEN_ID,
        FlavorKey.EOS_TOKEN_ID,
        FlavorKey.MASK_TOKEN_ID,
        FlavorKey.MODEL_TYPE,
        FlavorKey.ARCHITECTURE,
        FlavorKey.PROBLEM_TYPE,
        FlavorKey.TRANSFORMERS_VERSION,
        FlavorKey.TORCH_VERSION,
    }
    assert expected_keys <= set(block)
    assert block[FlavorKey.FORMAT] == "transformers"
    assert block[FlavorKey.TASK] == "text-classification"
    assert block[FlavorKey.MODEL_FILE] == MODEL_DIR
    assert block[FlavorKey.TOKENIZER_DIR] == TOKENIZER_DIR
    assert block[FlavorKey.INPUT_NAMES] == ["input_ids", "attention_mask", "token_type_ids"]
    assert block[FlavorKey.OUTPUT_NAMES] == ["logits"]
    assert block[FlavorKey.ID2LABEL] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    assert block[FlavorKey.MAX_LENGTH] == 64
    assert block[FlavorKey.ARCHITECTURE] == "BertForSequenceClassification"
    assert block[FlavorKey.TRANSFORMERS_VERSION] == transformers.__version__
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == SERVING_MODULE == "mlflow_tfexport.serving.pyfunc"
    assert pyfunc["code"] == CODE_DIR
    assert os.path.isfile(os.path.join(path, CODE_DIR, "mlflow_tfexport", "serving", "pyfunc.py"))
    # Only the serving tree travels with the model: nothing of export, validation, registry, CLI or worker.
    for absent in ("export", "validation", "registry.py", "cli", "worker", "flavor"):
        assert not os.path.exists(os.path.join(path, CODE_DIR, "mlflow_tfexport", absent)), absent
    assert mlmodel["metadata"] == {"owner": "team-a"}
    assert os.path.exists(os.path.join(path, mlmodel["saved_input_example_info"]["artifact_path"]))


def test_weights_are_safetensors_only(saved: Tuple[Any, str]) -> None:
    _, path = saved
    files = [os.path.relpath(os.path.join(root, f), path) for root, _, names in os.walk(path) for f in names]
    pickles = [f for f in files if f.endswith((".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt"))]
    assert pickles == []
    assert os.path.isfile(os.path.join(path, MODEL_DIR, "model.safetensors"))
    assert os.path.isfile(os.path.join(path, TOKENIZER_DIR, "tokenizer.json"))
    assert os.path.isfile(os.path.join(path, TOKENIZER_DIR, "tokenizer_config.json"))


def test_requirements_are_what_the_source_variant_serves_with(saved: Tuple[Any, str]) -> None:
    _, path = saved
    with open(os.path.join(path, "requirements.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    names = [line.split("==")[0] for line in lines]
    assert names == ["mlflow", "torch", "transformers", "safetensors", "tokenizers", "numpy", "boto3"]
    assert f"mlflow=={mlflow.__version__}" in lines
    assert f"transformers=={transformers.__version__}" in lines
    assert all("+" not in line for line in lines)  # no local build tags such as +cpu
    with open(os.path.join(path, "python_env.yaml")) as f:
        assert yaml.safe_load(f)["dependencies"] == ["-r requirements.txt"]


def test_pip_requirements_replace_the_defaults(tmp_path: Any, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    path = str(tmp_path / "m")
    mlflow_tfexport.save_model(model, path, tokenizer=tok, pip_requirements=["mlflow", "torch"])
    with open(os.path.join(path, "requirements.txt")) as f:
        assert f.read().split() == ["mlflow", "torch"]
    with pytest.raises(TfexportError, match="not both"):
        mlflow_tfexport.save_model(
            model, str(tmp_path / "m2"), tokenizer=tok, pip_requirements=["a"], extra_pip_requirements=["b"]
        )
    with pytest.raises(TfexportError, match="not empty"):
        mlflow_tfexport.save_model(model, path, tokenizer=tok)


def test_signature_has_outputs_and_params(saved: Tuple[Any, str]) -> None:
    info, _ = saved
    signature = info.signature
    assert signature.outputs.input_names() == ["label", "score"]
    params = {p.name: p for p in signature.params.params}
    assert set(params) == {"truncation", "batch_size"}
    assert params["truncation"].default is True
    # The default inputs: one unnamed string column (see signatures.default_inputs).
    assert signature.inputs.to_dict() == [{"type": "string", "required": True}]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_default_signature_params_per_task(task: str) -> None:
    from mlflow_tfexport.flavor.signatures import task_signature

    spec = get_task(task)
    signature = task_signature(spec, hidden_size=32)
    assert {p.name for p in signature.params.params} == {p.name for p in spec.all_params}
    assert signature.outputs is not None


def test_user_signature_is_kept(tmp_path: Any, tiny_model: Any) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model, tok = tiny_model("text-classification")
    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema([ColSpec("string")]))
    path = str(tmp_path / "m")
    mlflow_tfexport.save_model(model, path, tokenizer=tok, signature=signature)
    assert mlflow.models.Model.load(path).signature == signature


def test_load_model_returns_model_and_tokenizer(saved: Tuple[Any, str], tiny_model: Any) -> None:
    loaded = mlflow_tfexport.load_model("models:/sentiment/1")
    assert isinstance(loaded, mlflow_tfexport.LoadedModel)
    assert isinstance(loaded.model, transformers.BertForSequenceClassification)
    assert isinstance(loaded.tokenizer, transformers.PreTrainedTokenizerFast)
    assert (loaded.task, loaded.format) == ("text-classification", "transformers")
    original, tok = tiny_model("text-classification")
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    assert loaded.tokenizer(TEXTS[:2], padding=True)["input_ids"] == enc["input_ids"].tolist()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(**enc).logits, original(**enc).logits)


def test_gpt2_without_pad_token_serves_batches(tmp_path: Any) -> None:
    from tiny import tiny

    model, tok = tiny("text-classification", "gpt2", seed=1)
    model.config.pad_token_id = None  # as a stock GPT-2 config has it
    path = str(tmp_path / "m")
    mlflow_tfexport.save_model(model, path, tokenizer=tok)
    got = mlflow.pyfunc.load_model(path).predict(TEXTS)
    model.config.pad_token_id = tok.eos_token_id  # the pipeline runs one text at a time; any pad id works
    expected = pipe("text-classification", model, tok)(TEXTS)
    assert got["label"].tolist() == [e["label"] for e in expected]
    np.testing.assert_allclose(got["score"], [e["score"] for e in expected], atol=SCORE_ATOL)


@pytest.mark.parametrize(
    "rows",
    [
        [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.25}],
        [{"answer": "Paris", "score": 0.5, "start": 0, "end": 5}],
        [{"label": "POSITIVE", "score": 1}],  # an int score still becomes a float column
    ],
)
def test_fast_output_frame_equals_the_pandas_constructor(rows: List[Dict[str, Any]]) -> None:
    """The predict path builds its DataFrame column by column; it must equal ``pd.DataFrame(rows)``."""
    import pandas as pd

    from mlflow_tfexport.serving.frames import frame
    from mlflow_tfexport.tasks import TASKS

    columns = next(s.output_columns for s in TASKS.values() if [c for c, _ in s.output_columns] == list(rows[0]))
    fast = frame(rows, columns)
    pd.testing.assert_frame_equal(fast, pd.DataFrame(rows), check_dtype=rows[0]["score"] != 1)
    assert list(fast.dtypes.astype(str))[1] == "float64"


def test_output_frames_do_not_share_what_a_caller_changes() -> None:
    """Small batches reuse cached label arrays: changing one returned frame must not change the next."""
    import pandas as pd

    from mlflow_tfexport.serving.frames import frame
    from mlflow_tfexport.tasks import get_task

    columns = get_task("text-classification").output_columns
    rows = [{"label": "POSITIVE", "score": 0.75}]
    first = frame(rows, columns)
    first.loc[0, "label"] = "CHANGED"
    first["label"] = first["label"].str.lower()
    first.index.name = "row"
    for _ in range(2):
        again = frame(rows, columns)
        pd.testing.assert_frame_equal(again, pd.DataFrame(rows))
    assert first.loc[0, "label"] == "changed" and first.index.name == "row"
