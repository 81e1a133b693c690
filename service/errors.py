"""Typed domain errors, the core's errors in the API's vocabulary, and ``redact``.

Routers and services raise these; ``service.http_errors.install`` maps them to HTTP once. No
web framework here: the worker imports this module (for ``redact`` and ``error_code``), and
the worker process does not import FastAPI (``tests/worker/test_imports.py``).
"""

from __future__ import annotations

import re

from models.errors import (
    ArtifactError,
    BackboneError,
    ConfigError,
    DataError,
    ExportError,
    ModelsError,
    WeakDescriptionsError,
)


class ServiceError(Exception):
    """An expected condition a client can cause; never a 500."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the response carries (``Retry-After`` on a 429)."""
        return {}


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Unauthorized(ServiceError):
    status = 401
    code = "invalid_api_key"


class Forbidden(ServiceError):
    status = 403
    code = "insufficient_scope"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class InsufficientStorage(ServiceError):
    """The volume a write went to is full (or over its quota): the operator's to fix, and the
    same request may succeed once space is freed (``service.storage.space_needed``)."""

    status = 507
    code = "insufficient_storage"


class TooManyRequests(ServiceError):
    """The server is at capacity for this work now; the client may retry after a delay."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, param: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, param)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")


# A value a client sent, quoted back in an error, is cut to this many characters: a 100 KB model
# name must not come back as a 100 KB 404.
ECHO_CHARS = 200
# A whole message (or param) is cut to this, whatever it quotes.
MESSAGE_CHARS = 1000
_LONG_WORD = re.compile(rf"\S{{{ECHO_CHARS + 1},}}")


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` as text, cut to ``limit`` characters with an ellipsis and its full length."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def trim_message(text: str) -> str:
    """An error message with every over-long run of non-space characters clipped, then the
    whole cut to ``MESSAGE_CHARS``: the net under every handler, whoever built the message."""
    text = _LONG_WORD.sub(lambda match: clip(match.group()), text)
    return clip(text, MESSAGE_CHARS)


def redact(text: str) -> str:
    """Hide the password of any URL in ``text`` (driver errors may quote the URL they used).

    For messages that leave the process: job events and errors, the readiness report.
    """
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


# The core's errors in the API's vocabulary, one table for both surfaces: the API answers a
# request with this status and code (``service.http_errors``), and a failed job or evaluation
# records the same code (``error_code``), never a Python class name.
CORE_ERRORS: dict[type[ModelsError], tuple[int, str]] = {
    ConfigError: (422, "invalid_config"),
    DataError: (422, "invalid_data"),
    BackboneError: (422, "invalid_model"),
    # A stored artifact that cannot be read: the model is unavailable, not the request wrong.
    ArtifactError: (503, "model_unavailable"),
    # A version whose architecture the ONNX exporter cannot express (or whose export would not
    # answer as torch does): a property of that model, not a server fault.
    ExportError: (422, "not_exportable"),
    # The pre-training guard (models.pipeline.guard_descriptions): a job's own failure code.
    WeakDescriptionsError: (422, "weak_descriptions"),
}
# The code of the core's other errors, which only training raises (``TrainingError``: a
# non-finite loss, an empty loader), so no request ever gets it.
TRAINING_FAILED = "training_failed"


def core_error(exc: BaseException) -> tuple[int, str] | None:
    """The (status, code) of ``exc``'s nearest class in ``CORE_ERRORS``, or None."""
    for kind in type(exc).__mro__:
        if kind in CORE_ERRORS:
            return CORE_ERRORS[kind]
    return None


def error_code(exc: ModelsError) -> str:
    """The code a failed job or evaluation records for a core error."""
    known = core_error(exc)
    return TRAINING_FAILED if known is None else known[1]
