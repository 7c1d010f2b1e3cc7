"""Task specs as data, behaviour included.

One row per task: the auto-model class, the text columns a request carries,
the model outputs with their dynamic axes, the default ONNX opset and
validation tolerance, the ``params`` it accepts, and what the rest of the
package does with it: the post-processing (or generation) function, the
shape of the response, how text pairs are truncated, whether labels are kept,
which agreement rule quantised validation uses, and the agreement metric (and
thresholds) of validation on real data. Code asks the spec; it
never compares task names. The old ``transformers.onnx`` feature names are
accepted as aliases. Adding a task is one row here (plus its post-processing
function).

This module is imported by the serving path: it must not import torch or
transformers, and must run on Python 3.10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from mlflow_tfexport.errors import UnknownTaskError

BATCH = "batch"
SEQUENCE = "sequence"
HEIGHT = "height"
WIDTH = "width"
TEXT = "text"
IMAGE = "image"
#: Images with text candidates (CLIP zero-shot): a tokenizer and an image processor.
IMAGE_TEXT = "image-text"
#: The axis of the candidate labels (zero-shot image classification).
LABELS = "labels"

#: Inputs a text model may take, in the order a traced module receives them.
TEXT_INPUTS: Tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
INPUT_AXES: Dict[int, str] = {0: BATCH, 1: SEQUENCE}
#: Inputs an image model may take (``pixel_mask``: DETR-style detectors over padded batches).
IMAGE_INPUTS: Tuple[str, ...] = ("pixel_values", "pixel_mask")


@dataclass(frozen=True)
class OutputSpec:
    """One model output and its dynamic axes (axis index -> name)."""

    name: str
    axes: Mapping[int, str]


#: The most rows one model call takes (``batch_size`` param and ``model_config``): a bound on the memory
#: one request can ask for.
MAX_BATCH_SIZE = 1024
#: The most tokens any length param may name: more positions than any model served here has.
MAX_TOKENS = 1 << 20
#: The most candidates a ``top_k`` param may ask for (ImageNet's 1000 classes fit).
MAX_TOP_K = 1000
#: The most beams of a beam search (each beam is one more sequence in the batch).
MAX_BEAMS = 32
#: The most sequences one prompt may ask for (``num_return_sequences``).
MAX_RETURN_SEQUENCES = 32
#: The largest ``seed`` (numpy's and torch's generators take 64-bit seeds; JSON numbers stay exact below 2**53).
MAX_SEED = (1 << 53) - 1


@dataclass(frozen=True)
class ParamSpec:
    """One inference ``params`` entry: MLflow data type, default and the values it accepts.

    ``minimum``/``maximum`` bound a number (inclusive), ``choices`` lists the values a string may take;
    ``note`` says what a special value means. The serving pyfunc checks every request's params against
    these before any work (``serving.base.PyfuncBase._params``).
    """

    name: str
    dtype: str
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    note: str = ""
    #: ``None`` for one value, ``(-1,)`` for a list of values of ``dtype`` (MLflow's 1-D array param).
    shape: Optional[Tuple[int, ...]] = None

    def accepted(self) -> str:
        """The accepted values in words, e.g. ``"an integer from 0 to 1024"``."""
        kind = {"long": "an integer", "double": "a number", "boolean": "true or false", "string": "a string"}
        if self.shape is not None:
            return f"a list of {self.dtype} values" + (f" ({self.note})" if self.note else "")
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = kind.get(self.dtype, self.dtype)
        if self.minimum is not None and self.maximum is not None:
            text += f" from {_number(self.minimum)} to {_number(self.maximum)}"
        elif self.minimum is not None:
            text += f" >= {_number(self.minimum)}"
        elif self.maximum is not None:
            text += f" <= {_number(self.maximum)}"
        return text + (f" ({self.note})" if self.note else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class OutputKind:
    """Values of ``TaskSpec.output_kind``: the shape of the pyfunc's response."""

    FRAME = "frame"  # a DataFrame with the task's output_columns
    ARRAY = "array"  # a float32 array, one row per input (embeddings)
    ROWS = "rows"  # a list with one entry per input (token lists, detections)
    TEXTS = "texts"  # a list of strings (generation)


class Agreement:
    """Values of ``TaskSpec.agreement``: how quantised validation compares answers."""

    LABEL = "label"  # argmax over the last axis of the first output (per row or per real token)
    COSINE = "cosine"  # cosine similarity of pooled embeddings
    SPAN = "span"  # argmax of start and end logits over real tokens


class AgreementMetric:
    """Values of ``TaskSpec.agreement_metric``: how validation on real data compares the served answers of a
    variant with the source's (the functions are ``validation.agreement.METRICS``). Each is a value in [0, 1]
    that a variant must reach: the task's ``fp32_agreement``, or ``min_agreement`` for a quantised one."""

    LABEL = "label_agreement"  # share of rows with the same label (the max score difference is recorded)
    TOKEN_LABEL = "token_agreement"  # share of tokens labelled alike, over the tokens either side labels
    SPAN = "span_agreement"  # share of rows with the same answer text and offsets
    TOP1 = "top1_agreement"  # share of rows whose best token for the mask is the same
    COSINE = "min_cosine"  # the lowest cosine similarity of a row's embeddings (the mean is recorded)
    EXACT_MATCH = "exact_match"  # share of rows whose greedy output is the same text
    DETECTION = "detection_agreement"  # share of detections with the same label and a box IoU >= 0.5
    OUTPUTS = "output_agreement"  # share of rows whose every raw output is within the tolerance (custom configs)


#: fp32 variants compute what the source computes: every answer the same (1.0), embeddings at cosine >= this.
FP32_MIN_COSINE = 1.0 - 1e-5
#: The default ``min_agreement`` of a quantised variant (``export(quantize=..., min_agreement=None)``).
QUANTIZED_MIN_AGREEMENT = 0.99


#: The decoding params of every generation task (``serving/decoding.py`` reads them; the source variant passes them
#: to ``generate``). Defaults follow transformers' ``GenerationConfig`` (``top_k`` 50 when sampling).
_GENERATION_PARAMS = (
    ParamSpec("max_new_tokens", "long", 20, minimum=0, maximum=MAX_TOKENS,
              note="and fewer than the model's positions"),
    ParamSpec("do_sample", "boolean", False),
    ParamSpec("temperature", "double", 1.0, minimum=1e-3, maximum=100.0, note="sampling only"),
    ParamSpec("top_k", "long", 50, minimum=0, maximum=MAX_TOKENS, note="sampling only; 0: no limit"),
    ParamSpec("top_p", "double", 1.0, minimum=1e-3, maximum=1.0, note="sampling only; 1.0: no limit"),
    ParamSpec("repetition_penalty", "double", 1.0, minimum=1e-3, maximum=100.0, note="1.0: none"),
    ParamSpec("num_beams", "long", 1, minimum=1, maximum=MAX_BEAMS),
    ParamSpec("num_return_sequences", "long", 1, minimum=1, maximum=MAX_RETURN_SEQUENCES,
              note="at most num_beams with beam search; more than 1 needs do_sample or beams"),
    ParamSpec("stop", "string", [], shape=(-1,), note="strings that end the output, not included"),
    ParamSpec("seed", "long", -1, minimum=-1, maximum=MAX_SEED,
              note="the same seed and input give the same sampled output; -1: a fresh seed per request"),
)

_COMMON_PARAMS = (
    ParamSpec("truncation", "boolean", True),
    ParamSpec("batch_size", "long", 0, minimum=0, maximum=MAX_BATCH_SIZE,
              note="rows per model call; 0: the model's default, model_config batch_size"),
)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the export, validation and serving code needs about a task."""

    name: str
    auto_model: str
    text_columns: Tuple[str, ...]
    outputs: Tuple[OutputSpec, ...]
    default_opset: int = 17
    atol: float = 1e-4
    aliases: Tuple[str, ...] = ()
    class_suffixes: Tuple[str, ...] = ()
    params: Tuple[ParamSpec, ...] = ()
    optional_columns: Tuple[str, ...] = ()
    generative: bool = False
    output_columns: Tuple[Tuple[str, str], ...] = field(default=())
    #: What a request carries: ``"text"`` (tokenized) or ``"image"`` (pixels from an image processor).
    input_kind: str = TEXT
    #: Image tasks only: whether height and width are dynamic axes (detectors see aspect-preserving sizes).
    dynamic_image_size: bool = False
    #: The name of the rule that turns one chunk's outputs into its response rows (``None`` for generation
    #: tasks); ``serving.rules`` resolves it. The table names behaviour, serving holds it.
    postprocess: Optional[str] = None
    #: Generation tasks: the name of the decoding rule (``"causal"`` or ``"text2text"``), resolved by
    #: ``serving.rules`` to a ``predict`` and a ``predict_stream`` function. Every generation task streams.
    generate: Optional[str] = None
    output_kind: str = OutputKind.ROWS
    #: How the tokenizer truncates a pair (QA keeps the whole question and cuts the context).
    pair_strategy: str = "longest_first"
    #: Whether the model's ``id2label`` is kept in the flavor block and used in responses.
    keeps_labels: bool = False
    agreement: str = Agreement.LABEL
    #: Generation tasks: an encoder-decoder (encoder graph + decoder graph) rather than one causal decoder.
    encoder_decoder: bool = False
    #: Validation on real data: the metric comparing the served answers (an ``AgreementMetric`` value) ...
    agreement_metric: str = AgreementMetric.LABEL
    #: ... the value an fp32 variant must reach (every answer the same; ``FP32_MIN_COSINE`` for embeddings) ...
    fp32_agreement: float = 1.0
    #: ... and the default a quantised variant must reach (``min_agreement`` overrides it).
    quantized_min_agreement: float = QUANTIZED_MIN_AGREEMENT
    #: Request columns of numbers fed to the model as they are (a user's export config, ``column`` feeds).
    numeric_columns: Tuple[str, ...] = ()
    #: The user's export config (``serving.export_config.ExportConfig``) this spec was derived from, or None.
    custom: Optional[Any] = None
    #: The recipe of ``quantize="int8"`` when ``optimize`` is not given: fuse the graph first (attention,
    #: LayerNorm, GELU) where that measured faster at the same agreement (``benchmarks/quantization.py``).
    int8_optimize: bool = False
    #: ... and the mode ``quantize="int8"`` becomes on that fused graph when no quantize_* refinement is given
    #: (None: dynamic int8 per channel), where another mode measured closer to the source at the speed bar.
    int8_mode: Optional[str] = None

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def causal(self) -> bool:
        """A decoder-only generation task."""
        return self.generative and not self.encoder_decoder

    @property
    def all_params(self) -> Tuple[ParamSpec, ...]:
        return _COMMON_PARAMS + self.params

    def param_defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.all_params}


_SEQ = {0: BATCH, 1: SEQUENCE}
_ROW = {0: BATCH}

TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="feature-extraction",
            auto_model="AutoModel",
            aliases=("default",),
            class_suffixes=("Model",),
            text_columns=("text",),
            outputs=(OutputSpec("last_hidden_state", {0: BATCH, 1: SEQUENCE}),),
            params=(
                ParamSpec("pooling", "string", "mean", choices=("mean", "cls")),
                ParamSpec("normalize", "boolean", False),
            ),
            postprocess="feature_extraction",
            output_kind=OutputKind.ARRAY,
            agreement=Agreement.COSINE,
            agreement_metric=AgreementMetric.COSINE,
            fp32_agreement=FP32_MIN_COSINE,
            # Min cosine over the rows, measured on the MiniLM-L6 embedder and 332 real sentences
            # (benchmarks/quantization.py): int8 (per channel) 0.983, int8-per-tensor 0.886, int8-static 0.848,
            # int8-blockwise 0.996, optimize + int8-mixed 0.992. 0.95 leaves room for larger data (the minimum
            # falls as rows are added) and refuses the modes that bend embeddings.
            quantized_min_agreement=0.95,
            # optimize + int8 (per channel) bends embeddings: min cosine 0.979, top-10 neighbours 0.90. Every
            # MatMul with one activation scale per batch is what costs it (excluding single nodes, the first or
            # last layer, or the embeddings gained < 0.01); per-block activation scales (MatMulNBits) for the
            # MatMuls and dynamic int8 for the fused attention's QKV projection keep 0.992 / top-10 0.95 at
            # 2.20x fp32 on one sentence (pyfunc), 1.25x at 32x128 (blockwise alone 0.998 at 1.09x).
            int8_optimize=True,
            int8_mode="int8-mixed",
        ),
        TaskSpec(
            name="text-classification",
            auto_model="AutoModelForSequenceClassification",
            aliases=("sequence-classification", "sentiment-analysis"),
            class_suffixes=("ForSequenceClassification",),
            text_columns=("text",),
            optional_columns=("text_pair",),
            outputs=(OutputSpec("logits", _ROW),),
            output_columns=(("label", "string"), ("score", "double")),
            postprocess="text_classification",
            output_kind=OutputKind.FRAME,
            keeps_labels=True,
            # Label agreement measured on the fine-tuned MiniLM-L6 classifier and 332 real reviews
            # (benchmarks/quantization.py): int8 (per channel) 0.994 (0.988 with optimize=True), int8-per-tensor
            # 0.973, int8-static 0.952, int8-blockwise 1.0. 0.98 (at most 1 label in 50 changed) passes the
            # default int8; per-tensor falls just below it, static well below.
            quantized_min_agreement=0.98,
            # optimize + int8 (per channel): labels 0.988 at 2.61x / 1.71x fp32 (1x16 / 32x128), against 0.994
            # at 2.20x / 1.78x unfused (benchmarks/results/quantization.md); an earlier run gave 0.991
            # fused, 0.988 unfused: the same within 1-2 of 332 labels. Fused is
            # faster on one sentence, the served case.
            int8_optimize=True,
        ),
        TaskSpec(
            name="token-classification",
            auto_model="AutoModelForTokenClassification",
            aliases=("ner",),
            class_suffixes=("ForTokenClassification",),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            params=(ParamSpec("output", "string", "labels", choices=("labels", "entities")),),
            postprocess="token_classification",
            keeps_labels=True,
            agreement_metric=AgreementMetric.TOKEN_LABEL,
        ),
        TaskSpec(
            name="question-answering",
            auto_model="AutoModelForQuestionAnswering",
            class_suffixes=("ForQuestionAnswering",),
            text_columns=("question", "context"),
            outputs=(OutputSpec("start_logits", _SEQ), OutputSpec("end_logits", _SEQ)),
            params=(ParamSpec("max_answer_len", "long", 15, minimum=1, maximum=MAX_TOKENS, note="tokens"),),
            output_columns=(("answer", "string"), ("score", "double"), ("start", "long"), ("end", "long")),
            postprocess="question_answering",
            output_kind=OutputKind.FRAME,
            pair_strategy="only_second",
            agreement=Agreement.SPAN,
            agreement_metric=AgreementMetric.SPAN,
        ),
        TaskSpec(
            name="fill-mask",
            auto_model="AutoModelForMaskedLM",
            aliases=("masked-lm",),
            class_suffixes=("ForMaskedLM",),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            params=(ParamSpec("top_k", "long", 5, minimum=1, maximum=MAX_TOP_K),),
            output_columns=(("token_str", "string"), ("score", "double")),
            postprocess="fill_mask",
            output_kind=OutputKind.FRAME,
            agreement_metric=AgreementMetric.TOP1,
        ),
        TaskSpec(
            name="text-generation",
            auto_model="AutoModelForCausalLM",
            aliases=("causal-lm", "causal-lm-with-past"),
            class_suffixes=("ForCausalLM", "LMHeadModel"),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            atol=1e-4,
            generative=True,
            params=_GENERATION_PARAMS,
            generate="causal",
            output_kind=OutputKind.TEXTS,
            agreement_metric=AgreementMetric.EXACT_MATCH,
        ),
        TaskSpec(
            name="text2text-generation",
            auto_model="AutoModelForSeq2SeqLM",
            aliases=("seq2seq-lm", "seq2seq-lm-with-past"),
            class_suffixes=("ForConditionalGeneration", "MTModel"),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            atol=1e-4,
            generative=True,
            params=_GENERATION_PARAMS,
            generate="text2text",
            output_kind=OutputKind.TEXTS,
            agreement_metric=AgreementMetric.EXACT_MATCH,
            encoder_decoder=True,
        ),
        TaskSpec(
            name="image-classification",
            auto_model="AutoModelForImageClassification",
            class_suffixes=("ForImageClassification", "ForImageClassificationWithTeacher"),
            text_columns=(IMAGE,),
            input_kind=IMAGE,
            outputs=(OutputSpec("logits", _ROW),),
            params=(ParamSpec("top_k", "long", 1, minimum=1, maximum=MAX_TOP_K),),
            output_columns=(("label", "string"), ("score", "double")),
            postprocess="image_classification",
            output_kind=OutputKind.FRAME,
            keeps_labels=True,
        ),
        TaskSpec(
            # Vision backbones (``ViTModel``, ``ConvNextModel``...): the pooled output when the model
            # has one (else the mean of ``last_hidden_state`` over tokens or spatial positions).
            name="image-feature-extraction",
            auto_model="AutoModel",
            text_columns=(IMAGE,),
            input_kind=IMAGE,
            outputs=(OutputSpec("last_hidden_state", _ROW), OutputSpec("pooler_output", _ROW)),
            params=(
                ParamSpec("pooling", "string", "pooler", choices=("pooler", "mean", "cls")),
                ParamSpec("normalize", "boolean", False),
            ),
            postprocess="image_feature_extraction",
            output_kind=OutputKind.ARRAY,
            agreement=Agreement.COSINE,
            agreement_metric=AgreementMetric.COSINE,
            fp32_agreement=FP32_MIN_COSINE,
        ),
        TaskSpec(
            name="object-detection",
            auto_model="AutoModelForObjectDetection",
            class_suffixes=("ForObjectDetection",),
            text_columns=(IMAGE,),
            input_kind=IMAGE,
            dynamic_image_size=True,
            outputs=(OutputSpec("logits", _ROW), OutputSpec("pred_boxes", _ROW)),
            params=(ParamSpec("threshold", "double", 0.5, minimum=0.0, maximum=1.0),),
            postprocess="object_detection",
            keeps_labels=True,
            agreement_metric=AgreementMetric.DETECTION,
        ),
        TaskSpec(
            # CLIPModel: images scored against candidate labels, as the transformers pipeline.
            name="zero-shot-image-classification",
            auto_model="AutoModel",
            text_columns=(IMAGE,),
            optional_columns=("candidate_labels",),
            input_kind=IMAGE_TEXT,
            outputs=(OutputSpec("logits_per_image", {0: BATCH, 1: LABELS}),),
            params=(
                ParamSpec("candidate_labels", "string", "", note="comma-separated, or a candidate_labels column"),
                ParamSpec("hypothesis_template", "string", "This is a photo of {}."),
            ),
            postprocess="zero_shot_image_classification",
        ),
    )
}

#: The task of a user's export config with raw outputs (``postprocess="raw"``): not a row of the table (no model
#: class maps to it); its outputs, opset and tolerance come from the config (``ExportConfig.task_spec``).
CUSTOM = TaskSpec(
    name="custom",
    auto_model="AutoModel",
    text_columns=("text",),
    outputs=(),
    postprocess="raw_outputs",
    output_kind=OutputKind.FRAME,
    agreement_metric=AgreementMetric.OUTPUTS,
)

_ALIASES: Dict[str, str] = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}


def get_task(name: str) -> TaskSpec:
    """Return the spec for ``name`` (a task or an old feature alias)."""
    if name == CUSTOM.name:
        return CUSTOM
    key = _ALIASES.get(name, name)
    if key not in TASKS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(_ALIASES.items()))
        raise UnknownTaskError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)} "
            f"(old feature names also accepted: {aliases})."
        )
    return TASKS[key]


def for_input_kind(spec: TaskSpec, input_kind: str) -> TaskSpec:
    """The task of ``spec`` for a model whose inputs are ``input_kind`` (``feature-extraction`` of a
    vision backbone is ``image-feature-extraction``: same auto-model class, image inputs)."""
    if spec.input_kind == input_kind:
        return spec
    for other in TASKS.values():
        if other.input_kind == input_kind and other.auto_model == spec.auto_model:
            return other
    raise UnknownTaskError(
        f"Task {spec.name!r} takes {spec.input_kind} inputs and this model takes {input_kind} inputs; "
        f"tasks for {input_kind} models: {', '.join(t.name for t in TASKS.values() if t.input_kind == input_kind)}."
    )


def input_axes(spec: TaskSpec, name: str) -> Dict[int, str]:
    """The dynamic axes of model input ``name`` for ``spec`` (batch always; sequence or image size)."""
    if spec.custom is not None:
        axes: Dict[int, str] = spec.custom.input(name).dynamic_axes
        return axes
    if spec.input_kind == IMAGE_TEXT:  # candidate labels x tokens, images
        return {0: BATCH} if name in IMAGE_INPUTS else {0: LABELS, 1: SEQUENCE}
    if spec.input_kind != IMAGE:
        return dict(INPUT_AXES)
    spatial = spec.dynamic_image_size
    if name == "pixel_mask":
        return {0: BATCH, 1: HEIGHT, 2: WIDTH} if spatial else {0: BATCH}
    return {0: BATCH, 2: HEIGHT, 3: WIDTH} if spatial else {0: BATCH}


def infer_task(model_class_name: str) -> TaskSpec:
    """Infer the task from a transformers model class name (e.g. ``BertForMaskedLM``)."""
    # Longest suffix first so that "ForCausalLM" wins over "Model".
    candidates = sorted(
        ((suffix, spec) for spec in TASKS.values() for suffix in spec.class_suffixes),
        key=lambda item: -len(item[0]),
    )
    for suffix, spec in candidates:
        if model_class_name.endswith(suffix):
            return spec
    raise UnknownTaskError(
        f"Cannot infer a task from model class {model_class_name!r}. Pass task= explicitly; "
        f"known tasks: {', '.join(TASKS)}."
    )


def dummy_inputs(
    input_names: Tuple[str, ...],
    batch: int,
    sequence: int,
    *,
    vocab_size: int,
    pad_token_id: Optional[int],
    seed: int = 0,
    padded_rows: bool = True,
    eos_token_id: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """Make int64 model inputs of one shape, with padded rows when ``padded_rows``.

    Row ``i`` of a padded batch keeps ``sequence - i * step`` real tokens (at
    least one), so every batch of two or more rows has padding in it. With
    ``eos_token_id`` each row's last real token is that id, as the tokenizers
    of encoder-decoder models write it (their classifiers pool at it).
    """
    rng = np.random.default_rng(seed)
    low = min(5, max(vocab_size - 1, 0))
    ids = rng.integers(low, max(vocab_size, low + 1), size=(batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    if padded_rows and batch > 1:
        step = max(1, sequence // (2 * batch))
        for row in range(1, batch):
            keep = max(1, sequence - row * step)
            mask[row, keep:] = 0
    if eos_token_id is not None:
        ids[np.arange(batch), mask.sum(axis=1) - 1] = eos_token_id
    pad = 0 if pad_token_id is None else pad_token_id
    ids = np.where(mask == 1, ids, pad).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in input_names}


def image_inputs(
    input_names: Tuple[str, ...],
    batch: int,
    height: int,
    width: int,
    *,
    num_channels: int = 3,
    seed: int = 0,
    padded_rows: bool = True,
) -> Dict[str, np.ndarray]:
    """Make float32 ``pixel_values`` (normalised-image range) and, when asked, a ``pixel_mask``
    whose last row covers only the left part of the image, as a padded batch of a DETR-style
    processor does."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, num_channels, height, width)).astype(np.float32)
    mask = np.ones((batch, height, width), dtype=np.int64)
    if padded_rows and batch > 1:
        mask[-1, :, max(1, width // 2):] = 0
        pixels[-1, :, :, max(1, width // 2):] = 0.0
    feeds: Dict[str, np.ndarray] = {"pixel_values": pixels, "pixel_mask": mask}
    return {name: feeds[name] for name in input_names}
