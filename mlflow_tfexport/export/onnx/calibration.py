"""Rows that static int8 quantisation calibrates its activation ranges on.

``quantize="int8-static"`` fixes the scale of every quantised activation
before serving, from the range the activation takes on calibration rows
(``onnxruntime.quantization.quantize_static`` with the MinMax method). The
rows are, in this order of preference:

1. the validation data given to the export (``validation_data=`` / ``--validation-data``): the
   user's own texts, the distribution the variant is validated and served on;
2. otherwise :data:`CALIBRATION_TEXTS` below (about a hundred short and long English sentences
   of many kinds, written for this package), with the rows of the source's logged input example
   in front of them. An input example alone is too small: ranges taken from a handful of rows clip
   the activations of longer or different texts.

Tasks with two text columns (question answering: question, context) calibrate on the data's two
columns; on the built-in texts, on consecutive sentences paired. At most :data:`MAX_CALIBRATION_ROWS`
rows are used, in batches of :data:`CALIBRATION_BATCH`, tokenized exactly as serving tokenizes
(``serving.tokenization.TextEncoder`` on the variant's own ``tokenizer.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import TOKENIZER_FILE, FlavorKey
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.serving.tokenization import TOKENIZER_CONFIG_FILE, TextEncoder

#: At most this many rows calibrate (MinMax needs the extremes, not every row of a large file).
MAX_CALIBRATION_ROWS = 512
#: Rows per calibration batch (each batch is padded to its longest row, as serving pads).
CALIBRATION_BATCH = 16
#: What ``origin`` says of the built-in rows.
BUILTIN = "built-in calibration texts"
#: The origin of validation data that is the source's logged input example (``validation/data.py``).
INPUT_EXAMPLE_ORIGIN = "input example"

CALIBRATION_TEXTS: Tuple[str, ...] = (
    "The train was late again this morning.",
    "I loved every minute of this film.",
    "Terrible service, we waited an hour for cold soup.",
    "Please reset my password.",
    "What time does the pharmacy on Main Street close on Sundays?",
    "The quarterly report shows revenue up 12% on the previous year, driven mostly by subscriptions.",
    "Add two eggs, then whisk until the mixture is pale and fluffy.",
    "It rained all weekend, so we stayed in and played board games.",
    "The new update drains my battery in a few hours.",
    "Honestly, the sequel is better than the original.",
    "Can you recommend a good book about the history of mathematics?",
    "The court ruled that the contract was void because one party had been misled.",
    "Our flight was cancelled and nobody at the desk could tell us why.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "meh",
    "Best pizza in town, hands down!!!",
    "The museum is free on the first Sunday of every month.",
    "He scored twice in the second half and the crowd went wild.",
    "Shipping took three weeks and the box arrived crushed.",
    "The hotel room was spotless, quiet and had a lovely view of the harbour.",
    "I'm not sure this is worth the price, but it does the job.",
    "Symptoms include fever, a dry cough and tiredness.",
    "The committee will meet on Thursday to discuss the budget.",
    "She opened the letter, read it twice, and quietly put it back in the envelope.",
    "Is there a vegetarian option on the menu?",
    "The software crashes whenever I try to export a PDF.",
    "A gripping thriller with a twist I did not see coming.",
    "The bridge has been closed for repairs since March.",
    "Customer support solved my problem in five minutes. Impressive.",
    "Mix the flour and the butter with your fingertips until it looks like breadcrumbs.",
    "The novel follows three generations of a family living on a remote island.",
    "Why is the sky blue?",
    "The concert was too loud and the sound was muddy.",
    "Our team shipped the new search feature two weeks ahead of schedule.",
    "The battery lasts all day, the screen is bright and the camera is decent.",
    "I would not stay here again.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The city council approved a plan to plant ten thousand trees by 2030.",
    "Great value for money, would definitely buy again.",
    "The lecture was dull and the slides were impossible to read.",
    "Turn left at the church, then take the second road on the right.",
    "Interest rates rose for the third time this year.",
    "The actors were brilliant but the script let them down.",
    "My order number is 48213 and it still has not arrived.",
    "The kids loved the playground, the adults loved the coffee.",
    "According to the manual, the filter should be cleaned every two weeks.",
    "What a waste of an evening.",
    "The garden is at its best in late spring, when the roses are in bloom.",
    "Researchers found that the drug reduced symptoms in two thirds of patients.",
    "The keyboard feels cheap and two keys stopped working after a month.",
    "Thanks for the quick reply!",
    "The mountain trail is steep, rocky and poorly marked in places.",
    "We need the final figures by Friday noon at the latest.",
    "A warm, funny and surprisingly moving story about friendship.",
    "The printer says it is out of paper, but the tray is full.",
    "Dinosaurs lived on Earth for about 165 million years.",
    "The waiter forgot our order twice and then charged us for a dessert we never had.",
    "I can't believe how comfortable these shoes are.",
    "The meeting has been moved to room 204.",
    "Tickets sold out within minutes of going on sale.",
    "This vacuum cleaner is powerful, light and surprisingly quiet.",
    "The plot makes no sense and the ending is rushed.",
    "How many moons does Jupiter have?",
    "Heavy snow is expected in the north overnight, with roads likely to be icy in the morning.",
    "The app asks for far too many permissions.",
    "Our guide was knowledgeable, patient and very funny.",
    "Let the dough rest for an hour before rolling it out.",
    "The stock fell sharply after the company cut its forecast.",
    "It's fine. Nothing special.",
    "The library extended its opening hours during the exam period.",
    "Absolutely stunning scenery, but the food on the tour was disappointing.",
    "Please find attached the signed copy of the agreement.",
    "The documentary explains how coral reefs are damaged by warmer seas.",
    "I returned the jacket because the zip broke on the first day.",
    "The orchestra played beautifully and the hall has wonderful acoustics.",
    "Who wrote the music for this film?",
    "Traffic on the ring road was at a standstill for two hours after the accident.",
    "Five stars. Fast delivery and exactly as described.",
    "The instructions were confusing and several screws were missing.",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "My cat refuses to eat anything except this brand of food.",
    "The new policy applies to all employees from the first of January.",
    "Not bad, not great, just average.",
    "The bakery on the corner sells the best croissants I have ever tasted, and they are still warm at eight.",
    "The speaker kept losing the connection to my phone.",
    "Volcanoes form where tectonic plates pull apart or push against each other.",
    "We had a wonderful time and the staff made our anniversary special.",
    "The report was due yesterday; can you send an update today?",
    "An ambitious film that never quite comes together.",
    "The hiking boots were waterproof for exactly one walk.",
    "Please confirm whether the invoice includes VAT.",
    "The festival brings together musicians from more than forty countries.",
    (
        "I bought this laptop for university. The screen is sharp and the keyboard is comfortable for long essays, "
        "but the fan gets loud under load and the battery barely lasts five hours, far less than advertised. "
        "Support offered a replacement charger, which did not help."
    ),
    (
        "The hotel looked nothing like the photos. Our room faced a car park, the air conditioning rattled all "
        "night and breakfast ran out of bread by eight. On the plus side, the staff at reception were friendly "
        "and let us check out late without charge."
    ),
    (
        "Set in a small fishing town in the 1950s, the novel follows a young teacher who arrives to find the "
        "school half empty and the town divided by an old quarrel. The prose is quiet and precise, and the last "
        "chapters are among the most moving I have read in years."
    ),
    (
        "To replace the filter, switch off the unit at the wall, open the front panel by pressing both clips, "
        "slide the old filter out, and insert the new one with the arrow pointing towards the fan. Close the "
        "panel and hold the reset button for three seconds."
    ),
    (
        "The central bank left interest rates unchanged on Wednesday, saying inflation had eased more slowly "
        "than expected, while several members of the committee argued for a cut as soon as next quarter to "
        "support a weakening labour market."
    ),
    (
        "We ordered the tasting menu and every course was a small surprise: a cold pea soup with mint, grilled "
        "mackerel with pickled cucumber, lamb that fell apart at the touch of a fork, and a lemon tart so sharp "
        "it made us laugh. Service was warm without being fussy."
    ),
    (
        "After the update the app logs me out every few minutes, notifications arrive hours late, and the dark "
        "mode setting resets itself each time I open it. I have reinstalled it twice and cleared the cache, and "
        "nothing has changed."
    ),
    (
        "Honey bees communicate the direction and distance of flowers to the rest of the hive with a dance: "
        "the angle of the dance relative to vertical shows the direction relative to the sun, and its length "
        "shows how far away the food is."
    ),
)


@dataclass(frozen=True)
class CalibrationRows:
    """The rows static quantisation calibrates on: texts (and their pairs, for two-column tasks)."""

    texts: Tuple[str, ...]
    pairs: Optional[Tuple[str, ...]]
    origin: str  # e.g. "validation data: 332 rows from file reviews.csv (digest ...)" or BUILTIN

    @property
    def rows(self) -> int:
        return len(self.texts)

    def describe(self) -> str:
        return f"{self.rows} rows of {self.origin}"


def _columns(spec: Any) -> Tuple[str, Optional[str]]:
    columns = tuple(spec.text_columns)
    return columns[0], (columns[1] if len(columns) > 1 else None)


def _from_data(data: Any, spec: Any) -> Tuple[List[str], Optional[List[str]]]:
    first, second = _columns(spec)
    columns = tuple(getattr(data, "columns", ()))
    texts = data.column(first) if first in columns else data.column(columns[0])
    if second is None and "text_pair" in columns:
        second = "text_pair"
    pairs = data.column(second) if second and second in columns else None
    return texts, pairs


def calibration_rows(data: Any, spec: Any) -> CalibrationRows:
    """The rows to calibrate on (see the module docstring): ``data`` is the export's validation data
    (``validation.data.ValidationData``) or None."""
    origin = str(getattr(data, "origin", "")) if data is not None else ""
    has_rows = data is not None and int(getattr(data, "rows", 0) or 0) > 0
    if has_rows and origin != INPUT_EXAMPLE_ORIGIN:
        texts, pairs = _from_data(data, spec)
        describe = data.describe() if hasattr(data, "describe") else origin
        return _bounded(texts, pairs, f"validation data: {describe}")
    texts, pairs = list(CALIBRATION_TEXTS), None
    first, second = _columns(spec)
    if second is not None:  # question, context: consecutive sentences paired
        pairs = texts[1:] + texts[:1]
    origin = BUILTIN
    if has_rows:  # the input example in front of the built-in texts
        example_texts, example_pairs = _from_data(data, spec)
        if (example_pairs is None) == (pairs is None):
            texts = example_texts + texts
            pairs = (example_pairs or []) + pairs if pairs is not None else None
            origin = f"the input example and the {BUILTIN}"
    return _bounded(texts, pairs, origin)


def _bounded(texts: Sequence[str], pairs: Optional[Sequence[str]], origin: str) -> CalibrationRows:
    texts = [str(t) for t in texts][:MAX_CALIBRATION_ROWS]
    kept = [str(p) for p in pairs][: len(texts)] if pairs is not None else None
    if not texts:
        raise ExportError(f"quantize='int8-static' needs rows to calibrate on; {origin} has none.")
    return CalibrationRows(tuple(texts), tuple(kept) if kept is not None else None, origin)


def encoder_for(source: Any) -> Any:
    """The serving tokenizer of ``source`` (a ``SourceModel``): calibration sees what serving will feed."""
    conf = source.flavor_conf
    folder = os.path.join(source.local_path, str(conf.get(FlavorKey.TOKENIZER_DIR) or ""))
    tokenizer_file = os.path.join(folder, TOKENIZER_FILE)
    if not conf.get(FlavorKey.TOKENIZER_DIR) or not os.path.isfile(tokenizer_file):
        raise ExportError(
            "quantize='int8-static' calibrates on tokenized text, and this source has no tokenizer.json; "
            "use quantize='int8' (dynamic) instead."
        )
    return TextEncoder(
        tokenizer_file,
        input_names=source.input_names,
        max_length=int(conf[FlavorKey.MAX_LENGTH]),
        pad_token_id=int(conf.get(FlavorKey.PAD_TOKEN_ID) or 0),
        pair_strategy=source.spec.pair_strategy,
        config_file=os.path.join(folder, TOKENIZER_CONFIG_FILE),
    )


def calibration_feeds(rows: CalibrationRows, encoder: Any, input_names: Sequence[str],
                      batch: int = CALIBRATION_BATCH) -> List[Dict[str, np.ndarray]]:
    """``rows`` tokenized into batches of model inputs (only ``input_names``, the graph's inputs)."""
    feeds = []
    for start in range(0, rows.rows, batch):
        texts = rows.texts[start:start + batch]
        pairs = rows.pairs[start:start + batch] if rows.pairs is not None else None
        encoded = encoder.encode(texts, pairs, allow_empty=True)
        feeds.append({n: encoded.feeds[n] for n in input_names if n in encoded.feeds})
    return feeds


class FeedsReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over prepared feeds (duck-typed: ``get_next``
    returns the next feed dict, then None)."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[Dict[str, np.ndarray]] = iter(list(feeds))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._feeds, None)
