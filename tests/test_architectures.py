"""The architecture matrix: every text architecture users expect to export, on tiny random configs.

One table (``ARCHITECTURES``) says, per architecture, how to build a tiny model
(config class + kwargs, tokenizer kind) and which tasks to export. Each cell
saves the tiny model as a tfexport source, exports it to ONNX and validates it
against the eager model at a shape other than the export shape, with padded
rows (``export_to_directory``, the registry-free half of ``export()``). A few
cells go through the full ``mlflow_tfexport.export("models:/...")`` registry
path, a few also with the dynamo exporter, and every text-classification cell
compares the exported variant's pyfunc predictions with the source's.

Cells that cannot work list the error they must raise (``unsupported``): the
export must fail with that precise message, never produce a wrong model.
``benchmarks/support_table.py`` runs the same cells and writes
``docs/support-table.md``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

FE, TC, TG = "feature-extraction", "text-classification", "text-generation"
T2T = "text2text-generation"
LEGACY, DYNAMO = "legacy", "dynamo"

# Tiny shapes shared by every config (each architecture names them its own way).
_BERTLIKE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                 max_position_embeddings=64)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64)
_T5 = dict(d_model=32, d_kv=16, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=2)
_XLM = dict(emb_dim=32, n_layers=2, n_heads=2, max_position_embeddings=64)
_GPT = dict(n_embd=32, n_layer=2, n_head=2, n_positions=64)

_T5_FE = "T5Model's forward needs decoder inputs"
_BLOCK_SPARSE = "cannot be exported with dynamic sequence length: it uses full attention up to 704 tokens"
_FUNNEL_TOKENS = "FunnelModel (feature-extraction) cannot be exported to onnx: Funnel pools the sequence into blocks"
TS = "torchscript"
#: The bucket of a TorchScript cell (default 2x32).
TS_SHAPES: Mapping[str, str] = {TG: "1x64"}
#: Cells also exported to TorchScript (one bucket): those made to work or refused precisely on static shapes.
TS_CELLS: Tuple[Tuple[str, str], ...] = (
    ("BERT", FE), ("DeBERTa", FE), ("DeBERTa-v2", FE), ("BLOOM", TC), ("Longformer", FE),
    ("Longformer", TC), ("ConvBERT", FE), ("Funnel", FE), ("Funnel", TC),
    # Encoder per bucket, cache-free decoder per decoder length (export/static_seq2seq.py).
    *((name, T2T) for name in ("T5", "MT5", "LongT5", "BART", "mBART", "PLBart", "Marian", "M2M100", "Blenderbot",
                                "BlenderbotSmall", "BigBird-Pegasus")),
)
#: TorchScript cells that must fail, with the start of their message.
TS_UNSUPPORTED: Mapping[Tuple[str, str], str] = {
    ("ConvBERT", FE): "ConvBertModel (feature-extraction) cannot be exported to torchscript: ConvBERT's span-based",
    ("Funnel", FE): "FunnelModel (feature-extraction) cannot be exported to torchscript: Funnel pools",
    # The eager Funnel itself fails below 3 tokens (the 1-token validation input of a static variant).
    ("Funnel", TC): "failed: running the source model at input 3x1: RuntimeError: index 4 is out of bounds",
}


@dataclass(frozen=True)
class Arch:
    """One row of the matrix."""

    name: str  # as the Transformers export docs list it
    config: str  # transformers config class
    kwargs: Mapping[str, Any]
    tokenizer: str  # "wordpiece" (encoders, encoder-decoders) or "bytelevel" (GPT-style)
    tasks: Tuple[str, ...]
    #: task -> the start of the ExportError message the export must raise.
    unsupported: Mapping[str, str] = field(default_factory=dict)
    registry: Tuple[str, ...] = ()  # tasks also exported through export("models:/...")
    dynamo: Tuple[str, ...] = ()  # tasks also exported with exporter="dynamo"
    model_max_length: int = 64  # the tokenizer's

    @property
    def kind(self) -> str:
        if self.tokenizer == "bytelevel":
            return "decoder"
        return "encoder-decoder" if self.config in _ENCODER_DECODERS else "encoder"


_ENCODER_DECODERS = {"BartConfig", "MBartConfig", "PLBartConfig", "T5Config", "MT5Config", "MarianConfig",
                     "M2M100Config", "BlenderbotConfig", "BlenderbotSmallConfig", "LongT5Config",
                     "BigBirdPegasusConfig"}

ARCHITECTURES: Tuple[Arch, ...] = (
    Arch("ALBERT", "AlbertConfig", {**_BERTLIKE, "embedding_size": 16}, "wordpiece", (FE, TC)),
    Arch("BERT", "BertConfig", _BERTLIKE, "wordpiece", (FE, TC), registry=(TC,), dynamo=(TC,)),
    Arch("BigBird", "BigBirdConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("BigBird (block-sparse, 1024 tokens)", "BigBirdConfig", {**_BERTLIKE, "max_position_embeddings": 1024},
         "wordpiece", (FE, TC), model_max_length=1024, unsupported={FE: _BLOCK_SPARSE, TC: _BLOCK_SPARSE}),
    Arch("CamemBERT", "CamembertConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("ConvBERT", "ConvBertConfig", {**_BERTLIKE, "embedding_size": 32}, "wordpiece", (FE, TC)),
    Arch("Data2VecText", "Data2VecTextConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("DeBERTa", "DebertaConfig", _BERTLIKE, "wordpiece", (FE, TC), dynamo=(TC,)),
    Arch("DeBERTa-v2", "DebertaV2Config", _BERTLIKE, "wordpiece", (FE, TC), registry=(FE,)),
    Arch("DistilBERT", "DistilBertConfig",
         dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64), "wordpiece", (FE, TC),
         registry=(TC,)),
    Arch("ELECTRA", "ElectraConfig", {**_BERTLIKE, "embedding_size": 32}, "wordpiece", (FE, TC)),
    Arch("FlauBERT", "FlaubertConfig", _XLM, "wordpiece", (FE, TC)),
    Arch("I-BERT", "IBertConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("LayoutLM", "LayoutLMConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    # Longformer pads to a multiple of its attention window (4 here: every prompt crosses it): ONNX is traced at
    # the maximum length and every request padded to it, with its export-safe chunking (config.onnx_export).
    Arch("Longformer", "LongformerConfig", {**_BERTLIKE, "attention_window": 4, "max_position_embeddings": 66},
         "wordpiece", (FE, TC)),
    Arch("Funnel", "FunnelConfig",
         dict(d_model=32, n_head=2, d_head=16, d_inner=37, block_sizes=[1, 1], num_decoder_layers=1,
              architectures=["FunnelModel"]), "wordpiece", (FE, TC), unsupported={FE: _FUNNEL_TOKENS}),
    Arch("MobileBERT", "MobileBertConfig",
         {**_BERTLIKE, "embedding_size": 16, "intra_bottleneck_size": 16, "true_hidden_size": 16,
          "num_feedforward_networks": 2}, "wordpiece", (FE, TC)),
    Arch("RoBERTa", "RobertaConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("RoFormer", "RoFormerConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("SqueezeBERT", "SqueezeBertConfig",
         {**_BERTLIKE, "embedding_size": 32, "q_groups": 2, "k_groups": 2, "v_groups": 2,
          "post_attention_groups": 2, "intermediate_groups": 1, "output_groups": 1}, "wordpiece", (FE, TC)),
    Arch("XLM", "XLMConfig", _XLM, "wordpiece", (FE, TC)),
    Arch("XLM-RoBERTa", "XLMRobertaConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("XLM-RoBERTa-XL", "XLMRobertaXLConfig", _BERTLIKE, "wordpiece", (FE, TC)),
    Arch("GPT-2", "GPT2Config", _GPT, "bytelevel", (TG, TC), registry=(TG,), dynamo=(TG,)),
    Arch("GPT Neo", "GPTNeoConfig",
         dict(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64, window_size=8,
              attention_types=[[["global", "local"], 1]]), "bytelevel", (TG, TC)),
    Arch("GPT-J", "GPTJConfig", {**_GPT, "rotary_dim": 8}, "bytelevel", (TG, TC)),
    Arch("CodeGen", "CodeGenConfig", {**_GPT, "n_head": 4, "n_ctx": 64, "rotary_dim": 4}, "bytelevel", (TG,)),
    Arch("BLOOM", "BloomConfig", dict(hidden_size=32, n_layer=2, n_head=2), "bytelevel", (TG, TC)),
    # OPT and BioGPT derive positions from the attention mask (a left-padded row counts from its first token).
    Arch("OPT", "OPTConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=37,
                                  word_embed_proj_dim=32, max_position_embeddings=64), "bytelevel", (TG, TC)),
    Arch("BioGPT", "BioGptConfig", {**_BERTLIKE, "max_position_embeddings": 64}, "bytelevel", (TG, TC)),
    Arch("BART", "BartConfig", _SEQ2SEQ, "wordpiece", (TC, FE, T2T), registry=(TC,), dynamo=(TC,)),
    Arch("mBART", "MBartConfig", _SEQ2SEQ, "wordpiece", (TC, FE, T2T)),
    Arch("PLBart", "PLBartConfig", _SEQ2SEQ, "wordpiece", (TC, FE, T2T)),
    Arch("T5", "T5Config", _T5, "wordpiece", (TC, FE, T2T), unsupported={FE: _T5_FE}),
    Arch("MT5", "MT5Config", _T5, "wordpiece", (TC, FE, T2T),
         unsupported={FE: _T5_FE.replace("T5Model", "MT5Model")}),
    Arch("LongT5", "LongT5Config", _T5, "wordpiece", (T2T,)),
    Arch("Marian", "MarianConfig", _SEQ2SEQ, "wordpiece", (T2T,)),
    Arch("M2M100", "M2M100Config", _SEQ2SEQ, "wordpiece", (T2T,)),
    Arch("Blenderbot", "BlenderbotConfig", _SEQ2SEQ, "wordpiece", (T2T,)),
    Arch("BlenderbotSmall", "BlenderbotSmallConfig", _SEQ2SEQ, "wordpiece", (T2T,)),
    Arch("BigBird-Pegasus", "BigBirdPegasusConfig", {**_SEQ2SEQ, "attention_type": "original_full"}, "wordpiece",
         (T2T,)),
)

BY_NAME: Dict[str, Arch] = {a.name: a for a in ARCHITECTURES}
#: Every (architecture, task, exporter) cell of the matrix.
CELLS: List[Tuple[str, str, str]] = [
    (a.name, task, exporter)
    for a in ARCHITECTURES
    for task in a.tasks
    for exporter in ((LEGACY,) + ((DYNAMO,) if task in a.dynamo else ()))
]
TEXTS = [
    "I loved this film, the plot was great.",
    "It was not good.",
    "Paris is the capital of France and Berlin is the capital city of Germany.",
]


def build(arch: Arch, task: str, seed: int = 0) -> Tuple[Any, Any]:
    """A tiny random ``(model, tokenizer)`` of ``arch`` with the head of ``task``."""
    import torch
    import transformers
    from tiny import AUTO, TEXT_LABELS, bert_tokenizer, gpt2_tokenizer

    torch.manual_seed(seed)
    make_tokenizer = gpt2_tokenizer if arch.tokenizer == "bytelevel" else bert_tokenizer
    tok = make_tokenizer(model_max_length=arch.model_max_length)
    config = getattr(transformers, arch.config)(vocab_size=len(tok), **arch.kwargs)
    if arch.tokenizer == "bytelevel":
        config.pad_token_id = config.bos_token_id = config.eos_token_id = tok.eos_token_id
    else:
        config.pad_token_id = tok.pad_token_id
        config.bos_token_id = tok.cls_token_id
        # Encoder-decoders classify at the end-of-sequence token: the tokenizer's [SEP].
        config.eos_token_id = tok.sep_token_id
        if arch.kind == "encoder-decoder":
            config.decoder_start_token_id = tok.pad_token_id if "T5" in arch.config else tok.sep_token_id
    if task == TC:
        config.num_labels = len(TEXT_LABELS)
        config.id2label = dict(TEXT_LABELS)
        config.label2id = {v: k for k, v in TEXT_LABELS.items()}
    return AUTO[task].from_config(config).eval(), tok


@dataclass
class CellResult:
    arch: str
    task: str
    exporter: str
    passed: bool
    detail: str  # max abs diff / atol when passed, the error otherwise
    seconds: float
    expected_error: Optional[str] = None

    @property
    def as_expected(self) -> bool:
        if self.expected_error is None:
            return self.passed
        return not self.passed and self.expected_error in self.detail


def save_source(arch: Arch, task: str, root: str) -> Tuple[str, Any]:
    import mlflow_tfexport

    model, tok = build(arch, task)
    path = os.path.join(root, "source")
    mlflow_tfexport.save_model(model, path, tokenizer=tok, task=task)
    return path, model


def validate_at_max_length(model: Any, source_dir: str, exported_dir: str, atol: float) -> None:
    """The flavor's ``max_length`` is usable (position-offset architectures) and the export holds there."""
    from mlflow_tfexport.export.options import SourceModel
    from mlflow_tfexport.serving.conf import read_flavor_conf
    from mlflow_tfexport.tasks import get_task
    from mlflow_tfexport.validation.report import raise_for_failures
    from mlflow_tfexport.validation.run import run_validation

    conf = read_flavor_conf(source_dir)
    source = SourceModel(model, get_task(conf["task"]), conf, source_dir)
    report = run_validation(source, exported_dir, read_flavor_conf(exported_dir), [(2, source.max_length)], atol)
    raise_for_failures(report, f"the export at max_length {source.max_length}")


def compare_predictions(source_dir: str, exported_dir: str, task: str) -> None:
    """The exported variant's pyfunc answers like the source's (labels equal, scores within 1e-4)."""
    import numpy as np
    from mlflow.pyfunc import load_model

    # Generation runs once per model, at 8 new tokens: greedy decoding, the same text token for token.
    params = {"max_new_tokens": 8} if task in (TG, T2T) else None
    src: Any = load_model(source_dir).predict(TEXTS, params=params)
    got: Any = load_model(exported_dir).predict(TEXTS, params=params)
    if task == TC:
        assert list(got["label"]) == list(src["label"])
        np.testing.assert_allclose(np.asarray(got["score"]), np.asarray(src["score"]), atol=1e-4, rtol=0)
    elif task == FE:
        np.testing.assert_allclose(np.asarray(got), np.asarray(src), atol=1e-4, rtol=0)
    elif task in (TG, T2T):
        assert got == src
    else:
        raise AssertionError(f"compare_predictions has no comparison for the task {task!r}")


def run_cell(arch_name: str, task: str, exporter: str = LEGACY, *, predictions: bool = True) -> CellResult:
    """Save, export (no registry) and validate one cell; errors become a failed result. ``exporter`` ``TS``
    exports to TorchScript at one bucket (``TS_SHAPES``) instead of ONNX."""
    from mlflow_tfexport.export.api import export_to_directory

    arch = BY_NAME[arch_name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfexport-arch-") as root:
        try:
            source, model = save_source(arch, task, root)
            exported = os.path.join(root, "exported")
            if exporter == TS:  # a bucket that holds TEXTS (and, for generation, the default 20 new tokens)
                _, report = export_to_directory(source, exported, TS, trace_shape=TS_SHAPES.get(task, "2x32"))
            else:
                _, report = export_to_directory(source, exported, "onnx", exporter=exporter)
                validate_at_max_length(model, source, exported, report.atol)
            if predictions and task in (TC, TG, T2T):
                compare_predictions(source, exported, task)
            passed, detail = True, f"max abs diff {report.max_abs_diff:.1e} (atol {report.atol:g})"
        except Exception as exc:  # noqa: BLE001 - a cell records whatever went wrong
            passed, detail = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return CellResult(arch_name, task, exporter, passed, detail, time.perf_counter() - started,
                      expected_error(arch_name, task, exporter))


def expected_error(arch_name: str, task: str, exporter: str) -> Optional[str]:
    """The start of the error a cell must fail with, or None when it must pass."""
    expected = BY_NAME[arch_name].unsupported.get(task)
    if exporter == TS:
        # A forward that needs other inputs is refused alike; ONNX's length-dependent refusals do not apply.
        same = expected if expected and "forward needs decoder inputs" in expected else None
        expected = TS_UNSUPPORTED.get((arch_name, task)) or same
    return expected


# --------------------------------------------------------------------------- tests

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
#: Every cell builds its own model: ``make test`` spreads the cells over its workers (tests/conftest.py).
SPREAD_OVER_WORKERS = True


def _cell_id(cell: Tuple[str, str, str]) -> str:
    return f"{cell[0]}-{cell[1]}" + ("-dynamo" if cell[2] == DYNAMO else "")


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_export_validates(cell: Tuple[str, str, str]) -> None:
    result = run_cell(*cell)
    if result.expected_error is not None:
        assert not result.passed, f"{cell} was expected to fail with {result.expected_error!r}"
        assert result.expected_error in result.detail, result.detail
        assert result.detail.startswith(("ExportError", "ValidationFailedError")), result.detail
    else:
        assert result.passed, result.detail


@pytest.mark.parametrize("cell", TS_CELLS, ids=lambda c: f"{c[0]}-{c[1]}-torchscript")
def test_torchscript_export_validates(cell: Tuple[str, str]) -> None:
    """Static-shape cells: compared at real positions, BLOOM through its plain GELU, refusals precise."""
    result = run_cell(*cell, exporter=TS)
    if result.expected_error is not None:
        assert not result.passed and result.expected_error in result.detail, result.detail
        assert "opset" not in result.detail, result.detail
    else:
        assert result.passed, result.detail


@pytest.fixture(scope="module")
def registry(module_registry: str) -> str:
    """One SQLite registry for the module's registry cells (the working directory moves there)."""
    return module_registry


REGISTRY_CELLS = [(a.name, task) for a in ARCHITECTURES for task in a.registry]


@pytest.mark.parametrize("cell", REGISTRY_CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_registry_export(cell: Tuple[str, str], registry: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    import mlflow_tfexport
    from mlflow_tfexport.constants import Format, Tag

    arch, task = BY_NAME[cell[0]], cell[1]
    model, tok = build(arch, task)
    name = f"arch-{arch.name}-{task}".replace(" ", "-")
    with mlflow.start_run():
        info = mlflow_tfexport.log_model(model, tokenizer=tok, task=task, registered_model_name=name)
    result = mlflow_tfexport.export(f"models:/{name}/{info.registered_model_version}", format="onnx")
    assert result.created and result.report is not None and result.report.passed
    tags = MlflowClient().get_model_version(name, result.model_version.version).tags
    assert tags[Tag.FORMAT] == Format.ONNX and tags[Tag.VALIDATION] == "passed"
    with tempfile.TemporaryDirectory() as root:
        source = mlflow.artifacts.download_artifacts(f"models:/{name}/{info.registered_model_version}",
                                                     dst_path=os.path.join(root, "s"))
        exported = mlflow.artifacts.download_artifacts(result.model_uri, dst_path=os.path.join(root, "e"))
        compare_predictions(source, exported, task)


def test_fixed_length_onnx_records_its_padding(tmp_path: Any) -> None:
    """Funnel's ONNX graph is right at its traced length only: it is traced at the maximum length, the flavor block
    records the padding, and every request (here of 3 to 17 tokens) is padded (masked) to it before it runs."""
    from mlflow.pyfunc import load_model

    from mlflow_tfexport.constants import FlavorKey
    from mlflow_tfexport.export.api import export_to_directory

    source, _ = save_source(BY_NAME["Funnel"], TC, str(tmp_path))
    conf, report = export_to_directory(source, str(tmp_path / "onnx"), "onnx")
    assert report.passed and conf[FlavorKey.PAD_TO_MULTIPLE_OF] == conf[FlavorKey.MAX_LENGTH] == 64
    variant = load_model(str(tmp_path / "onnx"))
    assert variant.get_raw_model().describe()[FlavorKey.PAD_TO_MULTIPLE_OF] == 64
    for texts in (TEXTS, TEXTS[1:2], ["ok"]):
        expected = load_model(source).predict(texts)
        got = variant.predict(texts)
        assert list(got["label"]) == list(expected["label"])
        np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
