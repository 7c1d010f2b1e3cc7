"""The behaviour the task table names: post-processing and decoding rules, looked up by name.

``tasks.py`` is data (it names a rule, e.g. ``postprocess="text_classification"``); this module holds the
functions behind the names, so the table never imports serving code. Adding a rule is one function in
``postprocess``/``image_postprocess``/``generation`` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict

from mlflow_tfexport.serving import generation, image_postprocess, postprocess
from mlflow_tfexport.tasks import TaskSpec

#: Post-processing rules: ``(outputs, batch, context) -> rows`` for text tasks,
#: ``(outputs, sizes, id2label, problem_type, params) -> rows`` for image tasks.
POSTPROCESS: Dict[str, Callable[..., Any]] = {
    "feature_extraction": postprocess.feature_extraction,
    "text_classification": postprocess.text_classification,
    "token_classification": postprocess.token_classification,
    "question_answering": postprocess.question_answering,
    "fill_mask": postprocess.fill_mask,
    "raw_outputs": postprocess.raw_outputs,  # a user's export config with raw outputs (tasks.CUSTOM)
    "image_classification": image_postprocess.image_classification,
    "image_feature_extraction": image_postprocess.image_feature_extraction,
    "object_detection": image_postprocess.object_detection,
    "zero_shot_image_classification": image_postprocess.zero_shot_image_classification,
}


@dataclass(frozen=True)
class Decoder:
    """A generation task's two entry points.

    ``generate``: ``(runner, encoder, flavor_conf, texts, params, deadline=None) -> texts`` (``deadline``: the
    request's ``serving.deadline.Deadline``, checked between prompts); ``stream``: ``(runner, encoder,
    flavor_conf, text, params) -> iterator of text chunks`` (``predict_stream``).
    """

    generate: Callable[..., Any]
    stream: Callable[..., Any]


DECODERS: Dict[str, Decoder] = {
    "causal": Decoder(generation.causal, generation.causal_stream),
    "text2text": Decoder(generation.text2text, generation.text2text_stream),
}


def postprocess_of(spec: TaskSpec) -> Callable[..., Any]:
    """The post-processing function the task names (every non-generation task names one: ``tasks.py``)."""
    if spec.postprocess is None or spec.postprocess not in POSTPROCESS:
        raise KeyError(f"Task {spec.name!r} names post-processing {spec.postprocess!r}; known: {sorted(POSTPROCESS)}")
    return POSTPROCESS[spec.postprocess]


def decoder_of(spec: TaskSpec) -> Decoder:
    """The decoding rule a generation task names."""
    if spec.generate is None or spec.generate not in DECODERS:
        raise KeyError(f"Task {spec.name!r} names decoding {spec.generate!r}; known: {sorted(DECODERS)}")
    return DECODERS[spec.generate]
