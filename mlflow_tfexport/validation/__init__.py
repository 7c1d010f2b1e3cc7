"""Validation of an exported variant against its source, returned as data.

``report`` (the report and its text, markdown and JSON renderings), ``compare``
(output by output within ``atol``, real positions only for static-shape variants),
``quantized`` (task-level agreement of a quantised model on tensors),
``generation`` (step-by-step decoding with past key values), ``data`` (the user's
validation rows in one form), ``agreement`` (the served answers of source and
variant on those rows, by the task's agreement metric), ``run`` (which of them an
export needs) and ``revalidate`` (an existing variant checked again on new rows).
"""
