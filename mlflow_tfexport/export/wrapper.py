"""A thin module around a transformers model: positional tensors in, a tuple out.

Both ``torch.onnx.export`` and ``torch.jit.trace`` trace this wrapper, the way
the removed ``torchscript=True`` config flag used to prepare models.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from mlflow_tfexport._lazy import require


def untie_weights(model: Any) -> None:
    """Give the LM head its own copy of tied embedding weights (what ``torchscript=True`` did)."""
    torch = require("torch")
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    out = get_out() if get_out else None
    inp = get_in() if get_in else None
    if out is not None and inp is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())


def make_wrapper(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
    """Wrap ``model``; ``input_names`` must be a prefix-ordered subset of
    ``(input_ids, attention_mask, token_type_ids)`` and is passed positionally."""
    torch = require("torch")

    class ExportWrapper(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tuple[Any, ...]:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            kwargs: Dict[str, Any] = {name: given[name] for name in input_names}
            if "use_cache" in model.forward.__code__.co_varnames:
                kwargs["use_cache"] = False
            out = self.model(**kwargs, return_dict=True)
            return tuple(out[name] for name in output_names)

    return ExportWrapper().eval()
