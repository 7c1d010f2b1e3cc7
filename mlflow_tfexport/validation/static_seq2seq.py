"""Validation of an encoder-decoder traced at static shapes (``export/static_seq2seq.py``), through its runner.

At every validation shape (each bucket, a larger batch with a shorter source that
chunks, one token): the encoder states at real source positions, then the decoder's
logits on a teacher-forced decoder sequence (start token + random tokens, up to the
longest decoder length) at its first, middle and last position (the decoder returns the
logits of one position: each is a run on that prefix, right-padded to its decoder
length), each within ``atol`` of the eager model's one forward. Then
generation itself: greedy and beam-search (2 beams) tokens of the shape's rows as
prompts must equal the source's ``generate`` token for token.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.export.onnx.generation import sample_ids
from mlflow_tfexport.export.options import SourceModel
from mlflow_tfexport.export.wrapper import source_inputs
from mlflow_tfexport.serving.decoding import DecodeConfig
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.serving.runtimes.eager import EagerRunner
from mlflow_tfexport.tasks import BATCH, SEQUENCE
from mlflow_tfexport.validation.compare import compare
from mlflow_tfexport.validation.report import OutputCheck, ValidationReport

#: New tokens of the token-for-token generation check (fewer when the decoder lengths are shorter).
CHECKED_NEW_TOKENS = 8
#: Beams of the beam-search check.
CHECKED_BEAMS = 2


def _eager(model: Any, ids: np.ndarray, mask: np.ndarray, dec: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    torch = require("torch")
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    decoder_input_ids=torch.from_numpy(dec), use_cache=False, return_dict=True)
    return out.encoder_last_hidden_state.float().numpy(), out.logits.float().numpy()


def _tokens_check(name: str, want: List[List[int]], got: List[List[int]], atol: float,
                  shape: Tuple[int, int]) -> OutputCheck:
    same = want == got
    rows = [i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g]
    problem = "" if same else (f"tokens differ from the source's generate at row(s) {rows}: "
                               f"source {want[rows[0]]}, exported {got[rows[0]]}")
    return OutputCheck(name, (len(want), max((len(w) for w in want), default=0)),
                       (len(got), max((len(g) for g in got), default=0)), 0.0 if same else None, atol, shape, same,
                       problem)


def validate_static_seq2seq(source: SourceModel, staging: str, conf: Mapping[str, Any],
                            shapes: Sequence[Tuple[int, int]], atol: float) -> ValidationReport:
    """Encoder states, teacher-forced decoder logits and generated tokens against the eager model (see module doc)."""
    runner: Any = load_runner(staging, conf, {})
    report = ValidationReport(atol=atol)
    model = source.model
    eager = EagerRunner(model, source.input_names, source.output_names)
    longest = max(int(t) for t in conf[FlavorKey.DECODER_LENGTHS])
    start = int(conf[FlavorKey.DECODER_START_TOKEN_ID])
    eos = conf.get(FlavorKey.EOS_TOKEN_ID)
    for index, (batch, total) in enumerate(shapes):
        feeds = source_inputs(source, batch, total, seed=1000 + index)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        length = min(longest, max(total, 2))
        dec = sample_ids(source, batch, length, seed=2000 + index)
        dec[:, 0] = start
        hidden, logits = _eager(model, ids, mask, dec)
        states, padded = runner.encode(ids, mask)
        report.checks.extend(compare({"last_hidden_state": hidden}, {"last_hidden_state": states[:, :ids.shape[1]]},
                                     ["last_hidden_state"], atol, (batch, total), mask=mask,
                                     axes={"last_hidden_state": {0: BATCH, 1: SEQUENCE}}))
        for position in sorted({1, (length + 1) // 2, length}):
            got = runner.logits(dec[:, :position], states, padded)
            for check in compare({"logits": logits[:, position - 1]}, {"logits": got}, ["logits"], atol,
                                 (batch, position)):
                check.name = f"logits (decoder position {position} of {length})"
                report.checks.append(check)
        prompts = [ids[r, :int(mask[r].sum())].tolist() for r in range(batch)]
        new = min(CHECKED_NEW_TOKENS, longest - 1)
        greedy = DecodeConfig(max_new_tokens=new, eos_token_id=None if eos is None else int(eos))
        want = [s[0] for s in eager.decode(prompts, greedy)]
        report.checks.append(_tokens_check("greedy tokens", want, [s[0] for s in runner.decode(prompts, greedy)],
                                           atol, (batch, total)))
        beams = DecodeConfig(max_new_tokens=new, eos_token_id=greedy.eos_token_id, num_beams=CHECKED_BEAMS)
        want = [s[0] for s in eager.decode(prompts[:1], beams)]
        report.checks.append(_tokens_check(f"beam search ({CHECKED_BEAMS} beams) tokens", want,
                                           [s[0] for s in runner.decode(prompts[:1], beams)], atol, (1, total)))
    return report
