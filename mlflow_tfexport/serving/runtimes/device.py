"""Which torch device a torch-based runner (source, TorchScript) uses: the ``device`` model_config key.

``"auto"`` (the default) takes the first CUDA GPU when torch sees one, else the
CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` pin it. A TorchScript trace keeps
the device type it was traced on (tensors created inside the model are
recorded with their device), so for a traced variant ``"auto"`` means that
device and any other is refused with the way out. Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from mlflow_tfexport.errors import TfexportError

DEFAULT_DEVICE = "auto"
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N'"


def check_device_name(name: str) -> str:
    """``name`` lower-cased if it is one of ``cpu``, ``cuda``, ``cuda:N`` (or ``auto``), else a clear error."""
    wanted = str(name).strip().lower()
    index = wanted[len("cuda:"):] if wanted.startswith("cuda:") else "0"
    if wanted not in ("auto", "cpu", "cuda") and not (wanted.startswith("cuda:") and index.isdigit()):
        raise TfexportError(
            f"device={name!r} is not one of {DEVICES}. Pass model_config={{'device': 'cpu'}} (or 'cuda') to "
            "mlflow.pyfunc.load_model."
        )
    return wanted


def resolve_device(torch: Any, config: Mapping[str, Any], traced: Optional[str] = None) -> Any:
    """The ``torch.device`` named by ``config["device"]``; ``traced``: the device type a trace was recorded on."""
    wanted = check_device_name(str(config.get("device") or DEFAULT_DEVICE))
    if wanted == "auto":
        wanted = traced or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = wanted.split(":")[0]
    if traced is not None and kind != traced:
        raise TfexportError(
            f"This TorchScript variant was traced on {traced} and a trace runs only on the device type it was traced "
            f"on; model_config asked for device={wanted!r}. Load it with device='auto' (or {traced!r}), or export "
            f"a variant for {kind} with `mlflow-tfexport export ... --format torchscript --device {kind}` on a "
            f"machine that has one."
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise TfexportError(
            f"device={wanted!r} but torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)"
            + (". This variant was traced on CUDA: serve it on a GPU machine, or export a CPU variant "
               "(--device cpu)." if traced == "cuda" else
               ". Use device='cpu' or 'auto', or install a CUDA build of torch.")
        )
    return torch.device(wanted)
