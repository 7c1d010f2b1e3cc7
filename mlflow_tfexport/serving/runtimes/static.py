"""Serve a static-shape model (TorchScript or Neuron traces) on requests of any shape.

A traced variant holds one module per bucket, a ``(batch, sequence)`` shape it
was traced at. For each call the runner picks the smallest bucket whose
sequence fits the request (and, among buckets of that sequence, the batch that
wastes fewest rows), pads the sequence (pad id for ``input_ids``, 0 for masks
and type ids) and the batch (dummy rows) up to the bucket, splits larger
batches into chunks of the bucket's batch, runs every chunk and strips the
padding from the outputs using the task spec's output axes (batch axis ->
rows, sequence axis -> positions).

Requests longer than the largest bucket never reach the runner: a static
variant's flavor block sets ``max_length`` to the largest bucket's sequence, so
the tokenizer truncates there (or answers 4xx with ``truncation=False``).

numpy only: no torch, no transformers. Python 3.10-compatible.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Type, TypeVar

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.tasks import BATCH, IMAGE, SEQUENCE, TEXT_INPUTS, OutputSpec

Shape = Tuple[int, int]  # (batch, sequence)
#: Runs one bucket's module on arrays of exactly that bucket's shape, in input order.
BucketFn = Callable[[Shape, Sequence[np.ndarray]], Sequence[np.ndarray]]

#: Folder (inside the saved model) holding one traced module per bucket.
TORCHSCRIPT_DIR = "torchscript"
NEURON_DIR = "neuron"


def shape_name(shape: Shape) -> str:
    """``(1, 128)`` -> ``"1x128"``: the tag spelling and the module's file stem."""
    return f"{int(shape[0])}x{int(shape[1])}"


def bucket_file(shape: Shape) -> str:
    return f"{shape_name(shape)}.pt"


def decoder_file(shape: Shape, length: int) -> str:
    """A static encoder-decoder's decoder module at bucket ``shape`` and ``length`` decoder positions."""
    return f"decoder-{shape_name(shape)}x{int(length)}.pt"


def read_buckets(flavor_conf: Mapping[str, Any]) -> List[Shape]:
    """The traced shapes from a variant's flavor block, sorted by sequence then batch."""
    raw = flavor_conf.get(FlavorKey.TRACE_SHAPES) or []  # well-formed: checked by serving.conf
    shapes = sorted({(int(b), int(s)) for b, s in raw}, key=lambda x: (x[1], x[0]))
    if not shapes:
        raise BadInputError(
            f"This {flavor_conf.get(FlavorKey.FORMAT)} model lists no trace shapes in its MLmodel "
            f"({FlavorKey.TRACE_SHAPES!r}); re-export it with trace_shape=..."
        )
    return shapes


def bucket_paths(model_dir: str, flavor_conf: Mapping[str, Any]) -> Dict[Shape, str]:
    return {shape: artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE, bucket_file(shape))
            for shape in read_buckets(flavor_conf)}


#: ``run_cost_rows`` of runtimes whose runs cost about the same at any batch up to the bucket's
#: (accelerators): the fewest chunks wins, then the smallest bucket.
FEWEST_CHUNKS = 1e6
#: ``run_cost_rows`` on CPU: a run costs about one row's compute of its own. TorchScript MiniLM-L6 at 32
#: tokens on 2 cores: 1x32 12.5 ms, 8x32 55 ms, so 2 rows run as two 1x32 chunks (25 ms), not one 8x32.
CPU_RUN_COST_ROWS = 1.0


def pick_bucket(buckets: Sequence[Shape], rows: int, sequence: int,
                run_cost_rows: float = FEWEST_CHUNKS) -> Shape:
    """Smallest sequence that fits; among its batches, the cheapest: chunks x (batch + ``run_cost_rows``),
    the padded rows computed plus each run's own cost in rows (ties: the larger batch, fewer chunks)."""
    fitting = [b for b in buckets if b[1] >= sequence]
    if not fitting:
        largest = max(s for _, s in buckets)
        raise BadInputError(
            f"A batch of {sequence} tokens is longer than the largest traced shape's {largest}. "
            f"Requests are truncated to {largest} tokens by the tokenizer; export with a longer "
            "trace_shape to serve longer text."
        )
    seq = min(s for _, s in fitting)
    batches = sorted(b for b, s in fitting if s == seq)
    return (min(batches, key=lambda b: (-(-rows // b) * (b + run_cost_rows), -b)), seq)


def _slices(spec: OutputSpec, rows: int, sequence: int, ndim: int) -> Tuple[slice, ...]:
    index = [slice(None)] * ndim
    for axis, name in spec.axes.items():
        if name == BATCH:
            index[axis] = slice(0, rows)
        elif name == SEQUENCE:
            index[axis] = slice(0, sequence)
    return tuple(index)


def _batch_axis(spec: OutputSpec) -> int:
    for axis, name in spec.axes.items():
        if name == BATCH:
            return int(axis)
    return 0


class StaticRunner:
    """Buckets, pads, chunks and un-pads around a per-bucket function (see module doc)."""

    def __init__(
        self,
        buckets: Sequence[Shape],
        run_bucket: BucketFn,
        *,
        input_names: Sequence[str],
        outputs: Sequence[OutputSpec],
        pad_token_id: int,
        describe: Mapping[str, Any] | None = None,
        sequence_inputs: Mapping[str, str] | None = None,
    ) -> None:
        self.buckets: List[Shape] = sorted({(int(b), int(s)) for b, s in buckets}, key=lambda x: (x[1], x[0]))
        self.run_bucket = run_bucket
        self.input_names: Tuple[str, ...] = tuple(input_names)
        self.outputs: Tuple[OutputSpec, ...] = tuple(outputs)
        self.output_names: Tuple[str, ...] = tuple(o.name for o in self.outputs)
        self.pad_token_id = int(pad_token_id)
        #: Inputs padded along their sequence axis -> the tokenizer output they carry (``input_ids`` is padded
        #: with the pad id, masks and type ids with 0); every other input is padded along its batch only.
        self.sequence_inputs: Dict[str, str] = dict(
            sequence_inputs if sequence_inputs is not None else {n: n for n in self.input_names if n in TEXT_INPUTS})
        self.calls: Dict[Shape, int] = {b: 0 for b in self.buckets}  # per-bucket call count
        #: What one more run costs, in rows (``pick_bucket``); set by the runtime.
        self.run_cost_rows = FEWEST_CHUNKS
        self._calls_lock = threading.Lock()  # requests run in several threads at once
        self._describe = dict(describe or {})

    @property
    def max_length(self) -> int:
        return max(s for _, s in self.buckets)

    def _pad_value(self, name: str) -> int:
        return self.pad_token_id if self.sequence_inputs.get(name, name) == "input_ids" else 0

    def _chunk(self, feeds: Mapping[str, np.ndarray], start: int, stop: int, bucket: Shape) -> List[np.ndarray]:
        """Rows ``start:stop`` padded to ``bucket``: sequence with pad values, batch with copies of row 0.
        Image inputs (``pixel_values``: their size is the bucket's) are padded along the batch only."""
        b, s = bucket
        arrays = []
        for name in self.input_names:
            if name not in self.sequence_inputs:
                pixels = np.asarray(feeds[name][start:stop])
                padded = np.empty((b,) + pixels.shape[1:], dtype=pixels.dtype)
                padded[: len(pixels)] = pixels
                padded[len(pixels):] = pixels[0]
                arrays.append(padded)
                continue
            part = np.asarray(feeds[name][start:stop], dtype=np.int64)
            rows, length = part.shape
            out = np.full((b, s), self._pad_value(name), dtype=np.int64)
            out[:rows, :length] = part
            if rows < b:
                out[rows:] = out[0]  # dummy rows: a real row, so no all-masked row can misbehave
            arrays.append(out)
        return arrays

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BadInputError(f"Missing model inputs {missing}; this model takes {list(self.input_names)}.")
        text = [n for n in self.input_names if n in self.sequence_inputs]
        first = np.shape(feeds[text[0] if text else self.input_names[0]])
        if not text:  # images (N, C, H, W): buckets over the batch size only
            rows, sequence = int(first[0]), int(first[2])
            if sequence not in {s for _, s in self.buckets}:
                raise BadInputError(
                    f"Images of height {sequence} received; this variant was traced at image height(s) "
                    f"{sorted({s for _, s in self.buckets})} (its image processor's size)."
                )
        else:
            rows, sequence = (int(d) for d in first)
        if rows == 0:
            return self._empty(sequence)
        bucket = pick_bucket(self.buckets, rows, sequence, self.run_cost_rows)
        pieces: Dict[str, List[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, rows, bucket[0]):
            stop = min(start + bucket[0], rows)
            values = self.run_bucket(bucket, self._chunk(feeds, start, stop, bucket))
            with self._calls_lock:
                self.calls[bucket] = self.calls.get(bucket, 0) + 1
            if len(values) != len(self.outputs):
                raise BadInputError(
                    f"The {shape_name(bucket)} module returned {len(values)} outputs, expected "
                    f"{len(self.outputs)} ({', '.join(self.output_names)})."
                )
            for spec, value in zip(self.outputs, values, strict=True):
                arr = np.asarray(value)
                pieces[spec.name].append(arr[_slices(spec, stop - start, sequence, arr.ndim)])
        return {
            spec.name: np.concatenate(pieces[spec.name], axis=_batch_axis(spec)) for spec in self.outputs
        }

    def _empty(self, sequence: int) -> Dict[str, np.ndarray]:
        """Zero rows in, zero rows out, with the right trailing dimensions (probed on one row)."""
        probe = {n: np.full((1, 1), self._pad_value(n), dtype=np.int64) for n in self.input_names}
        if "attention_mask" in probe:
            probe["attention_mask"] = np.ones_like(probe["attention_mask"])
        out = self.run(probe)
        empty = {}
        for spec in self.outputs:
            shape = list(out[spec.name].shape)
            for axis, name in spec.axes.items():
                shape[axis] = 0 if name == BATCH else sequence
            empty[spec.name] = np.zeros(shape, dtype=out[spec.name].dtype)
        return empty

    def describe(self) -> Dict[str, Any]:
        return {"buckets": [shape_name(b) for b in self.buckets], **self._describe}


R = TypeVar("R", bound=StaticRunner)


def static_runner(
    flavor_conf: Mapping[str, Any],
    run_bucket: BucketFn,
    describe: Mapping[str, Any] | None = None,
    cls: Type[R] = StaticRunner,  # type: ignore[assignment]
) -> R:
    """A ``StaticRunner`` (or subclass ``cls``) configured from a variant's flavor block."""
    spec = task_of(flavor_conf)
    sequence_inputs = None
    if spec.custom is not None:  # a user's export config: its tokenizer-fed inputs are padded along the sequence
        sequence_inputs = {i.name: i.source for i in spec.custom.tokenizer_inputs}
    # An image model records the outputs it has (a backbone may lack pooler_output).
    recorded = flavor_conf.get(FlavorKey.OUTPUT_NAMES) if spec.input_kind == IMAGE else None
    return cls(
        read_buckets(flavor_conf),
        run_bucket,
        input_names=flavor_conf[FlavorKey.INPUT_NAMES],
        outputs=[o for o in spec.outputs if o.name in recorded] if recorded else spec.outputs,
        pad_token_id=int(flavor_conf.get(FlavorKey.PAD_TOKEN_ID) or 0),
        describe=describe,
        sequence_inputs=sequence_inputs,
    )
