"""The exception tree every service shares.

    PaystreamError
    ├── DomainError            a rule of the business said no; never retried
    │   ├── NotFound           the object does not exist for this tenant (404)
    │   ├── Conflict           the object is not in a state that allows this (409)
    │   └── Invalid            well-formed but unacceptable input (422)
    └── InfrastructureError    a dependency failed; `retryable` says whether to try again
        ├── TransientError     timeouts, lost connections, deadlocks: retry later
        └── PoisonMessage      a message that can never be processed: dead-letter it

Adapters translate driver errors into this tree with ``raise ... from exc`` so the
consumer runtime and the HTTP layer can map them mechanically.
"""

from __future__ import annotations


class PaystreamError(Exception):
    """Base of every error paystream raises on purpose."""


class DomainError(PaystreamError):
    """A business rule refused the operation. Retrying cannot help."""

    status = 422
    code = "invalid_request"
    title = "Invalid request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Invalid(DomainError):
    status = 422
    code = "invalid_request"
    title = "Unprocessable request"


class InfrastructureError(PaystreamError):
    """A dependency failed."""

    retryable = True


class TransientError(InfrastructureError):
    """Worth retrying after a pause: timeouts, lost connections, deadlocks."""

    retryable = True


class PoisonMessage(InfrastructureError):
    """A message that can never be processed as it is: goes to the dead-letter table."""

    retryable = False
