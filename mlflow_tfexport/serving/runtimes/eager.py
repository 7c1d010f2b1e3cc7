"""Eager transformers runner for the source variant (imports torch and transformers).

Generation is transformers' ``generate`` with the request's params (batched, prompts left-padded for a
decoder); the exported variants decode the same way in numpy (``serving/decoding.py``), token for token
for greedy and beam search.
"""

from __future__ import annotations

import importlib
import os
import queue
import sys
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import CODE_DIR, FlavorKey
from mlflow_tfexport.errors import FlavorConfError, TfexportError
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.decoding import DecodeConfig, StopFn
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.runtimes.device import resolve_device
from mlflow_tfexport.tasks import IMAGE

#: Held while a sampling ``generate`` draws from torch's global generator (see ``EagerRunner._run``).
_SAMPLING_LOCK = threading.Lock()

#: ``from_pretrained`` in transformers 5 swaps process-wide functions while it loads (``PreTrainedModel.tie_weights``
#: and ``init_weights`` and the ``torch.nn.init`` functions become no-ops, then are put back). Two loads in threads
#: at once (a worker's concurrent exports, ``load_model`` in threads) can put a no-op back for good: every later load
#: of the process then leaves tied weights (an LM head) on the meta device. Loads in this process take turns.
_LOAD_LOCK = threading.Lock()


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

    def _kwargs(self, cfg: DecodeConfig, seq2seq: bool) -> Dict[str, Any]:
        """``generate`` arguments for ``cfg``: only the request's processors (the exported variants' loop runs
        those and the model's forced first/last tokens); beam search with length penalty 1.0, no early stop."""
        eos = cfg.eos_token_id
        pad = getattr(self.model.generation_config, "pad_token_id", None) if seq2seq else None
        kwargs: Dict[str, Any] = dict(
            max_new_tokens=cfg.max_new_tokens, min_new_tokens=0, do_sample=cfg.do_sample, num_beams=cfg.num_beams,
            num_return_sequences=cfg.num_return_sequences, eos_token_id=eos,
            pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
            repetition_penalty=cfg.repetition_penalty, length_penalty=1.0, early_stopping=False,
            no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        )
        if seq2seq:
            kwargs["min_length"] = 0
        if cfg.do_sample:
            kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs

    def _inputs(self, prompts: Sequence[Sequence[int]], seq2seq: bool) -> Tuple[Any, Any]:
        """Prompts padded into one batch: on the left for a decoder (new tokens follow the last real one),
        on the right for an encoder."""
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        pad = int(getattr(self.model.config, "pad_token_id", None) or 0)
        ids.fill_(pad)
        for row, prompt in enumerate(prompts):
            span = slice(0, len(prompt)) if seq2seq else slice(width - len(prompt), width)
            ids[row, span] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _run(self, prompts: Sequence[Sequence[int]], cfg: DecodeConfig, **extra: Any) -> Any:
        torch = self.torch
        seq2seq = bool(getattr(self.model.config, "is_encoder_decoder", False))
        ids, mask = self._inputs(prompts, seq2seq)
        with torch.inference_mode():
            if not cfg.do_sample:
                out = self.model.generate(ids, attention_mask=mask, **self._kwargs(cfg, seq2seq), **extra)
            else:
                # transformers samples from torch's global generator: seeded requests hold the lock while
                # they draw, so concurrent requests never interleave their draws.
                with _SAMPLING_LOCK:
                    if cfg.seed is not None:
                        torch.manual_seed(int(cfg.seed))
                    out = self.model.generate(ids, attention_mask=mask, **self._kwargs(cfg, seq2seq), **extra)
        return out[:, 1:] if seq2seq else out[:, ids.shape[1]:]

    def decode(self, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
               stopped: Optional[StopFn] = None) -> List[List[List[int]]]:
        """Per prompt, its ``num_return_sequences`` new token lists (each cut after its eos token). ``stopped``
        (stop strings) ends a row as its eos token does; the caller cuts the text at the stop string."""
        if cfg.max_new_tokens <= 0 or not prompts:
            return [[[] for _ in range(cfg.num_return_sequences)] for _ in prompts]
        criteria = [] if stopped is None else [_stop_criterion(self, prompts, cfg, stopped)]
        if cfg.deadline is not None:
            criteria.append(_deadline_criterion(self, cfg))
        extra = {"stopping_criteria": require("transformers").StoppingCriteriaList(criteria)} if criteria else {}
        rows = [_until_eos([int(t) for t in row], cfg.eos_token_id)
                for row in self._run(prompts, cfg, **extra).tolist()]
        n = cfg.num_return_sequences
        return [rows[i * n:(i + 1) * n] for i in range(len(prompts))]

    def decode_stream(self, prompt: Sequence[int], cfg: DecodeConfig,
                      stopped: Optional[StopFn] = None) -> Iterator[int]:
        """The new tokens of one prompt as ``generate`` produces them (it runs in a thread, feeding a queue)."""
        if cfg.max_new_tokens <= 0:
            return iter(())
        return _stream(self, prompt, cfg)

    def generate(
        self, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_token_id: Optional[int], num_beams: int = 1
    ) -> List[int]:
        """Greedy (or beam) decoding of one prompt: its new tokens."""
        cfg = DecodeConfig(max_new_tokens=int(max_new_tokens), eos_token_id=eos_token_id, num_beams=int(num_beams))
        return self.decode([list(prompt_ids)], cfg)[0][0]

    def describe(self) -> Dict[str, Any]:
        return {"device": str(self.device), "torch": self.torch.__version__}


def _until_eos(tokens: List[int], eos: Optional[int]) -> List[int]:
    if eos is not None and eos in tokens:
        return tokens[:tokens.index(eos) + 1]
    return tokens


def _stop_criterion(runner: EagerRunner, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
                    stopped: StopFn) -> Any:
    """``stopped`` as a transformers stopping criterion: ``generate``'s rows are prompt-major (each prompt's
    ``num_return_sequences`` rows, or its beams), their new tokens follow the padded prompt (or the decoder
    start token). A row past its eos token is done already (not asked again)."""
    transformers = require("transformers")
    torch = runner.torch
    seq2seq = bool(getattr(runner.model.config, "is_encoder_decoder", False))
    start = 1 if seq2seq else max(len(p) for p in prompts)
    eos = cfg.eos_token_id

    class StopStrings(transformers.StoppingCriteria):  # type: ignore[misc,name-defined]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            rows = input_ids[:, start:].tolist()
            per_prompt = max(1, len(rows) // len(prompts))  # beam search asks about 2 x num_beams candidates
            done = []
            for r, new in enumerate(rows):
                prompt, j = divmod(r, per_prompt)
                row = prompt * cfg.num_return_sequences + (0 if cfg.num_beams > 1 else j)
                ended = eos is not None and eos in new
                done.append(ended or stopped(row, [int(t) for t in new]))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopStrings()


def _deadline_criterion(runner: EagerRunner, cfg: DecodeConfig) -> Any:
    """A stopping criterion that raises ``RequestTimeoutError`` once the request's deadline has passed: ``generate``
    calls it after every step, so a request answered 504 stops within a step."""
    transformers = require("transformers")

    class Deadline(transformers.StoppingCriteria):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.steps = 0

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.steps += 1
            cfg.check_deadline(self.steps)
            return runner.torch.zeros((input_ids.shape[0],), dtype=runner.torch.bool, device=input_ids.device)

    return Deadline()


def _stream(runner: EagerRunner, prompt: Sequence[int], cfg: DecodeConfig) -> Iterator[int]:
    """``generate`` in a thread with a streamer that queues each new token; closing the iterator (a stop
    string found, a client gone) stops ``generate`` at its next step."""
    transformers = require("transformers")
    tokens: queue.Queue[Any] = queue.Queue()
    cancelled = threading.Event()
    end = object()

    class Streamer:
        def __init__(self) -> None:
            self.first = True

        def put(self, value: Any) -> None:
            if self.first:  # the prompt (or the decoder start token)
                self.first = False
                return
            for token in value.reshape(-1).tolist():
                tokens.put(int(token))

        def end(self) -> None:
            tokens.put(end)

    class Cancelled(transformers.StoppingCriteria):  # type: ignore[misc,name-defined]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return runner.torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=runner.torch.bool)

    def work() -> None:
        try:
            runner._run([list(prompt)], cfg, streamer=Streamer(),
                        stopping_criteria=transformers.StoppingCriteriaList([Cancelled()]))
        except BaseException as exc:  # handed to the consumer
            tokens.put(exc)
        finally:
            tokens.put(end)

    thread = threading.Thread(target=work, name="tfexport-generate-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = tokens.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if cfg.eos_token_id is not None and item == cfg.eos_token_id:
                return
    finally:
        cancelled.set()  # generate stops at its next step
        thread.join()


def model_class(model_dir: str, flavor_conf: Mapping[str, Any]) -> Any:
    """The class of a source model defined outside transformers (``model_class``: ``module:QualName``), imported
    as installed, else from the model's own ``code/`` folder (where ``log_model(code_paths=...)`` put it, and
    which ``mlflow.pyfunc.load_model`` puts on ``sys.path`` too); None for a transformers class."""
    named = flavor_conf.get(FlavorKey.MODEL_CLASS)
    if not named:
        return None
    transformers = require("transformers")
    module_name, _, qualname = str(named).partition(":")
    parts = module_name.split(".") + qualname.split(".")
    if not qualname or not all(p.isidentifier() for p in parts):
        raise FlavorConfError(f"The MLmodel's model_class {named!r} is not 'module:ClassName'; log the model again.")
    if module_name == "transformers" or module_name.startswith("transformers."):
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        code = os.path.join(model_dir, CODE_DIR)
        if exc.name != module_name.split(".")[0] or not os.path.isdir(code):
            raise _class_missing(named, exc) from exc
        sys.path.append(code)  # after everything installed: the model's copy never shadows a package
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            raise _class_missing(named, again) from again
        finally:
            sys.path.remove(code)
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise FlavorConfError(f"model_class {named!r} is not a transformers PreTrainedModel class in {module_name}.")
    return cls


def _class_missing(named: str, exc: BaseException) -> TfexportError:
    return TfexportError(
        f"The source model's class {named} cannot be imported ({exc}). A model class outside transformers "
        "travels with the source model when it is logged with code_paths=['path/to/its_module.py'] (the module "
        "that defines and registers it); else install the package that defines it. Exported variants "
        "(ONNX, TorchScript) do not need it."
    )


def load_transformers_model(model_dir: str, flavor_conf: Mapping[str, Any]) -> Any:
    """Load the saved transformers model (safetensors) with the task's auto class (or its own class,
    ``model_class``, for a model defined outside transformers)."""
    transformers = require("transformers")
    spec = task_of(flavor_conf)
    auto_cls = model_class(model_dir, flavor_conf) or getattr(transformers, spec.auto_model)
    path = artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE)
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # no "Loading weights" bar per load: the stage lines say what is loading
    try:
        with _LOAD_LOCK:
            model = auto_cls.from_pretrained(path).eval()
    finally:
        if shown:
            bars.enable_progress_bar()
    pad = flavor_conf.get(FlavorKey.PAD_TOKEN_ID)
    if getattr(model.config, "pad_token_id", 0) is None and pad is not None:
        # Batches are padded with this id (GPT-2 has none of its own: its eos is used), and
        # sequence classification needs it to find each row's last real token.
        model.config.pad_token_id = int(pad)
    return model


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> EagerRunner:
    model = load_transformers_model(model_dir, flavor_conf)
    spec = task_of(flavor_conf)
    # An image model records the outputs it has (a backbone may lack pooler_output).
    outputs = flavor_conf.get(FlavorKey.OUTPUT_NAMES) if spec.input_kind == IMAGE else None
    device = resolve_device(require("torch"), config)
    return EagerRunner(model, flavor_conf[FlavorKey.INPUT_NAMES], outputs or spec.output_names, device)
