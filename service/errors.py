"""Typed domain errors. Routers raise these; ``service.app`` maps them to HTTP in one place."""

from __future__ import annotations

import re


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
