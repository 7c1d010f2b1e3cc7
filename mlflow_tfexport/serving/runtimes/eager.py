"""Eager transformers runner for the source variant (imports torch and transformers)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes.device import resolve_device
from mlflow_tfexport.tasks import IMAGE, get_task


class EagerRunner:
    def __init__(
        self, model: Any, input_names: Sequence[str], output_names: Sequence[str], device: Any = None
    ) -> None:
        self.torch = require("torch")
        self.device = device if device is not None else self.torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.input_names: Tuple[str, ...] = tuple(input_names)
        self.output_names: Tuple[str, ...] = tuple(output_names)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(
                **{k: torch.from_numpy(np.ascontiguousarray(feeds[k])).to(self.device) for k in self.input_names}
            )
        return {name: out[name].float().cpu().numpy() for name in self.output_names}

    def generate(
        self, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_token_id: Optional[int], num_beams: int = 1
    ) -> List[int]:
        torch = self.torch
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        if getattr(self.model.config, "is_encoder_decoder", False):
            return self._generate_seq2seq(ids, int(max_new_tokens), eos_token_id, int(num_beams))
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=int(max_new_tokens),
                min_new_tokens=0,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos_token_id,
                pad_token_id=eos_token_id if eos_token_id is not None else 0,
            )
        return [int(t) for t in out[0, ids.shape[1]:].tolist()]

    def _generate_seq2seq(
        self, ids: Any, max_new_tokens: int, eos_token_id: Optional[int], num_beams: int
    ) -> List[int]:
        """An encoder-decoder's new tokens (after the decoder start token). Greedy (or beam) search on the
        logits alone, with the generation config's forced first/last tokens; its other logits processors
        (min_length, no_repeat_ngram_size, repetition_penalty, bad_words_ids) are off, as in the exported
        variants' decoding loop."""
        torch = self.torch
        pad = getattr(self.model.generation_config, "pad_token_id", None)
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, min_new_tokens=0,
                min_length=0, do_sample=False, num_beams=num_beams, eos_token_id=eos_token_id,
                pad_token_id=pad if pad is not None else eos_token_id, no_repeat_ngram_size=0,
                repetition_penalty=1.0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
            )
        return [int(t) for t in out[0, 1:].tolist()]

    def describe(self) -> Dict[str, Any]:
        return {"device": str(self.device), "torch": self.torch.__version__}


def load_transformers_model(model_dir: str, flavor_conf: Mapping[str, Any]) -> Any:
    """Load the saved transformers model (safetensors) with the task's auto class."""
    transformers = require("transformers")
    spec = get_task(flavor_conf[FlavorKey.TASK])
    auto_cls = getattr(transformers, spec.auto_model)
    path = artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE)
    model = auto_cls.from_pretrained(path).eval()
    pad = flavor_conf.get(FlavorKey.PAD_TOKEN_ID)
    if getattr(model.config, "pad_token_id", 0) is None and pad is not None:
        # Batches are padded with this id (GPT-2 has none of its own: its eos is used), and
        # sequence classification needs it to find each row's last real token.
        model.config.pad_token_id = int(pad)
    return model


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> EagerRunner:
    model = load_transformers_model(model_dir, flavor_conf)
    spec = get_task(flavor_conf[FlavorKey.TASK])
    # An image model records the outputs it has (a backbone may lack pooler_output).
    outputs = flavor_conf.get(FlavorKey.OUTPUT_NAMES) if spec.input_kind == IMAGE else None
    device = resolve_device(require("torch"), config)
    return EagerRunner(model, flavor_conf[FlavorKey.INPUT_NAMES], outputs or spec.output_names, device)
