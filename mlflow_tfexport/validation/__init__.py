"""Validation of an exported variant against its source, returned as data.

``report`` (the report and its text, markdown and JSON renderings), ``compare``
(output by output within ``atol``), ``quantized`` (task-level agreement of a
quantised model), ``generation`` (step-by-step decoding with past key values)
and ``run`` (which of them an export needs).
"""
