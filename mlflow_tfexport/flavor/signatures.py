"""Model signatures per task: what a request carries, what comes back, which params exist."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.tasks import IMAGE, IMAGE_TEXT, TEXT, OutputKind, TaskSpec

_DTYPES = {"string": "string", "double": "double", "long": "long", "boolean": "boolean"}

#: ``input_schema=`` of ``log_model``/``save_model``: ``None`` (the task's default, ``default_inputs``),
#: ``False`` (no input schema), ``True`` (the task's named columns) or the column names to declare, each required.
InputSchemaArg = Union[bool, Sequence[str], None]

#: The pair column of text classification: an input example that carries it makes the default schema named.
PAIR_COLUMN = "text_pair"


def input_columns(spec: TaskSpec, input_schema: InputSchemaArg) -> List[Union[ColSpec, TensorSpec]]:
    """The named input columns for ``spec``: ``[]`` when ``input_schema`` is false.

    ``True`` declares the task's columns (``text``; ``text`` and an optional ``text_pair``;
    ``question`` and ``context``; ``image`` as binary); a sequence of names declares exactly
    those, each required (``["text", "text_pair"]`` for a pair classifier), and must be columns
    the task reads.
    """
    if not input_schema:
        return []
    known = (*spec.text_columns, *spec.optional_columns, *spec.numeric_columns)
    if input_schema is True:
        required, optional = list(spec.text_columns) + list(spec.numeric_columns), list(spec.optional_columns)
    else:
        names = [input_schema] if isinstance(input_schema, str) else list(input_schema)
        unknown = [n for n in names if n not in known]
        missing = [n for n in spec.text_columns if n not in names]
        if unknown or missing or len(set(names)) != len(names):
            raise TfexportError(
                f"input_schema={names!r} does not fit task {spec.name!r}: it reads column(s) "
                f"{', '.join(map(repr, spec.text_columns))}"
                + (f" and optionally {', '.join(map(repr, spec.optional_columns))}" if spec.optional_columns else "")
                + ". Pass True for the task's columns, or a list of those names (each then required)."
            )
        required, optional = names, []
    columns: List[Union[ColSpec, TensorSpec]] = [ColSpec(_column_type(spec, n), n) for n in required]
    return columns + [ColSpec(_column_type(spec, n), n, required=False) for n in optional]


def _column_type(spec: TaskSpec, name: str) -> str:
    """``binary`` for an image column (bytes; JSON requests send base64, which MLflow and MLServer decode),
    ``double`` for a numeric column of an export config, else ``string``."""
    if name in spec.numeric_columns:
        return "double"
    return "binary" if spec.input_kind in (IMAGE, IMAGE_TEXT) and name == IMAGE else "string"


def _example_columns(example: Any) -> List[str]:
    """The column names an input example carries (a dict, a DataFrame or records); ``[]`` for bare texts."""
    if isinstance(example, dict):
        return [str(k) for k in example]
    columns = getattr(example, "columns", None)
    if columns is not None:
        return [str(c) for c in columns]
    if isinstance(example, (list, tuple)) and example and all(isinstance(r, dict) for r in example):
        return list(dict.fromkeys(str(k) for r in example for k in r))
    return []


def _holds_pixel_arrays(example: Any) -> bool:
    """Whether an input example holds images as numpy arrays (``HxWx3``, a batch, or a list or dict of those)."""
    if isinstance(example, np.ndarray):
        if example.dtype == object:
            return any(_holds_pixel_arrays(v) for v in example.reshape(-1)[:8])
        return example.dtype.kind in "biuf" and example.ndim >= 2
    if isinstance(example, dict):
        return any(_holds_pixel_arrays(v) for v in list(example.values())[:8])
    if isinstance(example, (list, tuple)):
        return any(_holds_pixel_arrays(v) for v in example[:8])
    return False


def default_inputs(spec: TaskSpec, input_example: Any = None) -> Optional[Schema]:
    """The input schema a model of ``spec`` gets when the user names none (``input_schema=None``).

    - one text per row (every text task but question answering): one *unnamed* string column,
      the signature ``mlflow.transformers`` gives text pipelines. Bare lists, a string, arrays,
      ``{"inputs": [...]}``, ``instances``, ``dataframe_split`` with or without columns and
      ``dataframe_records`` all reach the model; MLServer/KServe, ``spark_udf`` and the MLflow UI
      read one string input. MLflow keeps only the first column of a request under an unnamed
      schema (a ``text_pair`` column is dropped before the model sees it), so a text classifier
      whose ``input_example`` carries ``text_pair`` gets the named columns ``text`` and
      ``text_pair`` instead;
    - several texts per row (``question`` and ``context``): the named columns, each required; so are
      the columns of a user's export config that feeds numbers from the request;
    - images: one *unnamed* binary column. Encoded bytes, base64 strings, PIL images, a DataFrame
      column, ``dataframe_records``, ``{"inputs": [...]}`` and ``instances`` reach the model; JSON
      requests send base64, which MLflow's scoring server (``dataframe_split``/``records``) and
      MLServer (V2 ``BYTES``, content type ``base64``) decode to bytes; the UI shows one binary input.
      MLflow's column enforcement refuses numpy pixel arrays (``HxWx3``, a list or a batch of them)
      under any column schema, before the model sees them: an ``input_example`` that holds arrays
      keeps the model without an input schema, as ``input_schema=False`` does. Zero-shot image
      classification whose ``input_example`` carries ``candidate_labels`` gets the named columns
      ``image`` and ``candidate_labels`` (an unnamed schema keeps only the first column of a request).
    """
    if spec.input_kind in (IMAGE, IMAGE_TEXT):
        if _holds_pixel_arrays(input_example):
            return None
        carried = [c for c in spec.optional_columns if c in _example_columns(input_example)]
        if carried:  # zero-shot's candidate_labels column
            return Schema([ColSpec(_column_type(spec, c), c) for c in (*spec.text_columns, *carried)])
        return Schema([ColSpec("binary")])
    if spec.input_kind != TEXT:
        return None
    if spec.numeric_columns:  # a user's export config feeds request columns of numbers: every column named
        return Schema(input_columns(spec, True))
    if len(spec.text_columns) > 1:
        return Schema([ColSpec("string", c) for c in spec.text_columns])
    if PAIR_COLUMN in spec.optional_columns and PAIR_COLUMN in _example_columns(input_example):
        return Schema([ColSpec("string", c) for c in (*spec.text_columns, PAIR_COLUMN)])
    return Schema([ColSpec("string")])


def with_default_inputs(signature: Optional[ModelSignature], spec: TaskSpec, input_example: Any = None
                        ) -> ModelSignature:
    """``signature`` with the task's default input schema where it has none (exports of older sources)."""
    if signature is None:
        return task_signature(spec, None, None, input_example)
    if signature.inputs is not None:
        return signature
    return ModelSignature(inputs=default_inputs(spec, input_example), outputs=signature.outputs,
                          params=signature.params)


def task_signature(
    spec: TaskSpec, hidden_size: Optional[int] = None, input_schema: InputSchemaArg = None,
    input_example: Any = None,
) -> ModelSignature:
    """The signature written for ``spec`` when the user gives none.

    It always declares the outputs and the ``params`` schema. The inputs are the task's default
    (``input_schema=None``, see ``default_inputs``), none (``False``) or named columns (``True`` or
    the column names). A named schema is enforced by MLflow before the pyfunc sees the data
    (``mlflow.models.utils._enforce_schema``, MLflow 3.17):

    - a bare list or array of strings becomes a DataFrame column ``0`` and is refused with
      "Model is missing inputs ['text']", in process and as ``{"inputs": [...]}``: with a named
      schema a request names its columns (``{"text": [...]}``, a DataFrame, ``dataframe_records``);
    - an optional column (``text_pair``) makes ``spark_udf(...)()`` refuse a call without column
      names, so ``input_schema=["text"]`` declares only ``text`` (MLflow then drops a ``text_pair``
      column with a warning);
    - a string column of Python objects (what JSON requests carry) passes through unchanged, so
      ``[1, 2]`` in a ``text`` column still reaches the pyfunc's own check (a 400 naming column,
      row and type); an int64/float64 column of a DataFrame given in process is refused by MLflow
      first ("Incompatible input types for column text");
    - an empty batch (``dataframe_records: []``) is refused as missing columns.

    Without an input schema the pyfunc takes every shape (``mlflow_tfexport.serving.inputs``).
    """
    outputs: Optional[Schema]
    if spec.custom is not None and not spec.output_columns:  # raw outputs: one column of numbers (or lists) each
        outputs = None
    elif spec.output_kind == OutputKind.ARRAY:
        outputs = Schema([TensorSpec(np.dtype("float32"), (-1, hidden_size or -1))])
    elif spec.output_columns:
        outputs = Schema([ColSpec(_DTYPES[t], name) for name, t in spec.output_columns])
    else:
        outputs = Schema([ColSpec("string")])
    params = ParamSchema([ParamSpec(p.name, p.dtype, p.default, shape=p.shape) for p in spec.all_params])
    if input_schema is None:
        return ModelSignature(inputs=default_inputs(spec, input_example), outputs=outputs, params=params)
    columns = input_columns(spec, input_schema)
    return ModelSignature(inputs=Schema(columns) if columns else None, outputs=outputs, params=params)


def named_example(example: Any, signature: Optional[ModelSignature]) -> Any:
    """An input example that fits a named input schema: a bare list or string becomes its first column.

    MLflow validates the example against the signature when the model is logged; a bare list
    would fail a named schema (see ``task_signature``).
    """
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return example
    if isinstance(example, str):
        example = [example]
    if isinstance(example, (list, tuple, np.ndarray)) and not any(isinstance(r, dict) for r in example):
        import pandas as pd

        return pd.DataFrame({signature.inputs.input_names()[0]: list(example)})
    return example
