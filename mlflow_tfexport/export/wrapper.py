"""A thin module around a transformers model: positional tensors in, a tuple out.

Both ``torch.onnx.export`` and ``torch.jit.trace`` trace this wrapper, the way
the removed ``torchscript=True`` config flag used to prepare models.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import ExportError, cause
from mlflow_tfexport.export.custom import dummy_feeds
from mlflow_tfexport.export.options import SourceModel
from mlflow_tfexport.tasks import IMAGE, IMAGE_INPUTS, IMAGE_TEXT, dummy_inputs, image_inputs


def untie_weights(model: Any) -> None:
    """Give the LM head its own copy of tied embedding weights (what ``torchscript=True`` did)."""
    torch = require("torch")
    out, inp = _embeddings(model, "get_output_embeddings"), _embeddings(model, "get_input_embeddings")
    if out is not None and inp is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())


def _embeddings(model: Any, getter: str) -> Any:
    """``model.<getter>()``, or None for a model without embeddings (vision backbones raise NotImplementedError)."""
    get = getattr(model, getter, None)
    try:
        return get() if get else None
    except NotImplementedError:
        return None


def make_wrapper(model: Any, input_names: Sequence[str], output_names: Sequence[str], *, custom: bool = False) -> Any:
    """Wrap ``model``; ``input_names`` must be a prefix-ordered subset of
    ``(input_ids, attention_mask, token_type_ids)`` or of ``(pixel_values, pixel_mask)`` (image
    models) and is passed positionally; with ``custom`` (a user's export config) any names, in their order."""
    torch = require("torch")

    class ExportWrapper(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tuple[Any, ...]:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.run({name: given[name] for name in input_names})

        def run(self, kwargs: Dict[str, Any]) -> Tuple[Any, ...]:
            if "use_cache" in model.forward.__code__.co_varnames:
                kwargs["use_cache"] = False
            out = self.model(**kwargs, return_dict=True)
            return tuple(out[name] for name in output_names)

    class ImageExportWrapper(ExportWrapper):
        def forward(self, pixel_values: Any, pixel_mask: Any = None) -> Tuple[Any, ...]:  # type: ignore[override]
            given = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
            return self.run({name: given[name] for name in input_names})

    class ConfigExportWrapper(ExportWrapper):  # a user's export config: its inputs, in its order
        def forward(self, *args: Any) -> Tuple[Any, ...]:  # type: ignore[override]
            return self.run(dict(zip(input_names, args, strict=True)))

    class ImageTextExportWrapper(ExportWrapper):
        def forward(self, input_ids: Any, attention_mask: Any = None,  # type: ignore[override]
                    pixel_values: Any = None) -> Tuple[Any, ...]:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
            return self.run({name: given[name] for name in input_names})

    if custom:
        return ConfigExportWrapper().eval()
    if "pixel_values" in input_names and "input_ids" in input_names:  # texts and images (CLIP zero-shot)
        return ImageTextExportWrapper().eval()
    image = bool(input_names) and input_names[0] == "pixel_values"
    return (ImageExportWrapper() if image else ExportWrapper()).eval()


def source_inputs(source: SourceModel, batch: int, sequence: int, *, seed: int = 0) -> Dict[str, np.ndarray]:
    """Dummy inputs for ``source`` as its tokenizer would shape them: padded rows, and for an
    encoder-decoder each row ended by the end-of-sequence token (its tokenizer always appends it,
    and its classification head pools at it)."""
    conf = source.flavor_conf
    if source.spec.custom is not None:  # a user's export config says what each input is fed from
        return dummy_feeds(source.spec.custom, batch, min(sequence, source.max_length), vocab_size=source.vocab_size,
                           pad_token_id=conf.get(FlavorKey.PAD_TOKEN_ID), seed=seed)
    if source.spec.input_kind == IMAGE:
        return source_image_inputs(source, batch, sequence, seed=seed)
    if source.spec.input_kind == IMAGE_TEXT:  # ``batch + 1`` candidate texts (padded rows), ``batch`` images
        names = tuple(source.input_names)
        text = dummy_inputs(tuple(n for n in names if n not in IMAGE_INPUTS), batch + 1,
                            min(sequence, source.max_length), vocab_size=source.vocab_size,
                            pad_token_id=conf.get(FlavorKey.PAD_TOKEN_ID), seed=seed)
        height, width = (int(v) for v in conf[FlavorKey.IMAGE_SIZE])
        pixels = image_inputs(("pixel_values",), batch, height, width,
                              num_channels=int(conf.get(FlavorKey.NUM_CHANNELS) or 3), seed=seed)
        return {**text, **pixels}
    eos = conf.get(FlavorKey.EOS_TOKEN_ID) if getattr(source.model.config, "is_encoder_decoder", False) else None
    return dummy_inputs(
        tuple(source.input_names), batch, min(sequence, source.max_length),
        vocab_size=source.vocab_size, pad_token_id=conf.get(FlavorKey.PAD_TOKEN_ID), seed=seed,
        eos_token_id=None if eos is None else int(eos),
    )


def source_image_inputs(source: SourceModel, batch: int, sequence: int, *, seed: int = 0) -> Dict[str, np.ndarray]:
    """Pixels for an image model: its image size (from the flavor block) when that is fixed; for a
    task with dynamic image size (object detection) ``2 * sequence`` by ``2 * sequence + 8``, so that
    every shape the backend asks for gives another height and width, with a padded last row."""
    conf = source.flavor_conf
    if source.spec.dynamic_image_size:
        height, width = 2 * sequence, 2 * sequence + 8
    else:
        height, width = (int(v) for v in conf[FlavorKey.IMAGE_SIZE])
    return image_inputs(tuple(source.input_names), batch, height, width,
                        num_channels=int(conf.get(FlavorKey.NUM_CHANNELS) or 3), seed=seed)


#: Self-attention modules that chunk their sliding window with ``torch.as_strided`` (Longformer, LED): the legacy
#: ONNX exporter writes that view as a gather that does not match it (3e-3 in one self-attention layer, 3e-4 at the
#: last hidden state of a tiny Longformer), and transformers' own switch (``config.onnx_export``) uses ``Unfold``,
#: which does not export with a dynamic batch. ``onnx_safe_paths`` gives them ``chunk_by_slices``: the same
#: overlapping chunks, stacked from slices (2e-8).
STRIDED_CHUNK_MODULES: Tuple[str, ...] = ("LongformerSelfAttention", "LEDEncoderSelfAttention")


def chunk_by_slices(hidden_states: Any, window_overlap: int, onnx_export: bool = False) -> Any:
    """Longformer's ``_chunk``: ``[B, L, D]`` into ``L / w - 1`` chunks of ``2w`` overlapping by ``w``
    (``[B, L / w - 1, 2w, D]``); ``L`` is a multiple of ``2w`` (the model pads to its attention window)."""
    torch = require("torch")
    length = int(hidden_states.shape[1])
    count = length // window_overlap - 1
    return torch.stack([hidden_states[:, i * window_overlap:i * window_overlap + 2 * window_overlap]
                        for i in range(count)], dim=1)


def onnx_safe_paths(model: Any) -> None:
    """Give the modules of ``STRIDED_CHUNK_MODULES`` the export-safe ``chunk_by_slices`` (the same values)."""
    for module in model.modules():
        if type(module).__name__ in STRIDED_CHUNK_MODULES and hasattr(module, "_chunk"):
            module._chunk = chunk_by_slices


def fixed_length_reason(config: Any) -> Optional[str]:
    """Why a dynamic-axes export of this model is right only at the length it was traced at, or None:
    such a model is exported at its maximum length and every request is padded to it (masked)."""
    if getattr(config, "attention_window", None) is not None and getattr(config, "attention_type", None) is None:
        return "it pads to a multiple of its attention window and chunks its attention by it, with sizes a trace fixes"
    if getattr(config, "model_type", None) == "funnel":
        return "it pools the sequence into blocks, with sizes a trace fixes"
    return None


def length_dependent_path(source: SourceModel) -> Optional[str]:
    """Why a trace of ``source`` at a short length would not compute what the model computes at
    longer ones (the forward picks its code path by sequence length), or None."""
    config = source.model.config
    if getattr(config, "attention_type", None) == "block_sparse":  # BigBird
        full_up_to = (5 + 2 * int(config.num_random_blocks)) * int(config.block_size)
        if source.max_length > full_up_to:
            return (
                f"it uses full attention up to {full_up_to} tokens and block-sparse attention above, and a "
                f"traced export keeps only the full-attention path, so inputs over {full_up_to} tokens would "
                "not match the model. Set model.config.attention_type = 'original_full' before logging "
                f"(exact at every length), or log it with a tokenizer whose model_max_length <= {full_up_to}"
            )
    return None


def check_exportable(source: SourceModel, wrapper: Any, args: Tuple[Any, ...]) -> None:
    """Refuse, with a precise ``ExportError``, a model a trace cannot represent: one whose code path
    depends on the sequence length, or one that cannot run its task from the text inputs alone (run
    eagerly once on the export inputs, instead of failing deep in a tracer)."""
    arch = source.flavor_conf.get(FlavorKey.ARCHITECTURE) or type(source.model).__name__
    why = length_dependent_path(source)
    if why:
        raise ExportError(f"{arch} cannot be exported with dynamic sequence length: {why}.")
    check_runs(source, wrapper, args)


def check_runs(source: SourceModel, wrapper: Any, args: Tuple[Any, ...]) -> None:
    """Run the wrapper eagerly once on the export inputs: a model that cannot run its task from the request's
    inputs alone (an encoder-decoder without decoder inputs) is refused precisely, before any tracing."""
    torch = require("torch")
    arch = source.flavor_conf.get(FlavorKey.ARCHITECTURE) or type(source.model).__name__
    try:
        with torch.no_grad():
            wrapper(*args)
    except Exception as exc:
        reason = cause(exc)
        if getattr(source.model.config, "is_encoder_decoder", False):
            raise ExportError(
                f"{arch}'s forward needs decoder inputs (decoder_input_ids) that a {source.spec.name} request "
                f"does not carry; it fails on {', '.join(source.input_names)} alone ({reason}). "
                "Encoder-decoder models export for text-classification, whose head derives its decoder "
                "inputs from input_ids."
            ) from exc
        raise ExportError(
            f"{arch} cannot run {source.spec.name} from the inputs {', '.join(source.input_names)} alone "
            f"({reason}); it cannot be exported for this task."
        ) from exc
