"""One exception hierarchy for the package.

Every error says what was received, what was expected and how to fix it.
Errors that reach the scoring server derive from ``MlflowException`` with an
``INVALID_PARAMETER_VALUE`` code so that ``mlflow models serve`` answers 4xx.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE


class TfexportError(MlflowException):
    """Base class of every error raised by mlflow-tfexport."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class UnknownTaskError(TfexportError):
    """A task name that no task spec knows."""


class UnknownFormatError(TfexportError):
    """An export format that no backend registered."""


class BadInputError(TfexportError):
    """A prediction request that does not fit the model's input contract."""


class MissingDependencyError(TfexportError):
    """An optional package is missing; the message names the pip extra."""


class ExportError(TfexportError):
    """Export could not produce a model; nothing was registered."""


class NotATfexportModelError(TfexportError):
    """The model URI does not point to a model of this flavor."""


class ValidationFailedError(ExportError):
    """Exported outputs differ from the reference beyond the tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class FlavorConfError(TfexportError):
    """A field of a model's ``tfexport`` flavor block that cannot be right (changed by hand, or corrupted)."""


class RequestTimeoutError(TfexportError):
    """``predict`` stopped because the scoring server's request timeout passed (HTTP 504)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=DEADLINE_EXCEEDED)


def cause(exc: BaseException) -> str:
    """``Type: first non-empty line`` of ``exc``, for messages that wrap it (some errors start with an empty line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
