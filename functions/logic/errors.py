"""Domain errors. The API maps each to one HTTP status in one place (functions/api/app.py)."""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Unprocessable(DomainError):
    """Well-formed input that cannot be honoured (config fails the job's schema, bad bundle)."""

    code = "unprocessable"


class Unavailable(DomainError):
    """A dependency (queue, store) failed; nothing was recorded, the caller may retry."""

    code = "unavailable"


class BadRequest(DomainError):
    """Input the API cannot even interpret (an undecodable or foreign cursor): 400."""

    code = "bad_request"


class TooLarge(DomainError):
    """Input or output over a stated size limit: 413."""

    code = "payload_too_large"
