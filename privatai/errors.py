"""One error hierarchy, mapped once to OpenAI's error JSON.

Messages here may reach the client (they can echo upstream text, which may
echo the prompt), so they are never logged: log the class and status only
(see :func:`privatai.ops.logs.describe_error`).
"""
from __future__ import annotations

from typing import Any


class PrivatAIError(Exception):
    """Base class: an HTTP status, an OpenAI error ``type`` and ``code``."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PrivatAIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotOffered(InvalidRequest):
    """An endpoint the backend serving the model cannot offer (embeddings from
    a chat-only server, say): refused, never answered with something else."""

    code = "unsupported_endpoint"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class AuthenticationFailed(PrivatAIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PrivatAIError):
    status = 403
    type = "permission_error"
    code = "account_suspended"


class AccountPending(PermissionDenied):
    """A new account an operator has not approved yet."""

    code = "account_pending"


class SubscriptionInactive(PermissionDenied):
    """The key's account has no subscription that pays for it (any longer)."""

    code = "subscription_inactive"


class RateLimited(PrivatAIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class CapacityExceeded(RateLimited):
    code = "capacity_exceeded"


class BackendError(PrivatAIError):
    """The backend failed. ``retryable`` errors may be tried on another backend
    as long as nothing has been sent to the client yet."""

    status = 502
    type = "backend_error"
    code = "backend_error"

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.retryable = retryable


class BackendUnavailable(BackendError):
    """Connection refused, timed out or 5xx before the first token."""

    status = 503
    code = "backend_unavailable"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, retryable=True, status=status, code=code)


class BackendRateLimited(BackendUnavailable):
    """The backend answered 429 before the first token. Another backend may
    serve the request; when none can, the client gets this 429 with the
    backend's ``Retry-After`` (whole seconds)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class UpstreamRejected(InvalidRequest):
    """The backend refused the request as invalid (context too long, bad schema)."""

    code = "upstream_invalid_request"


class ConfigError(Exception):
    """backends.yaml is unusable: the file, the key path and a one-line reason."""

    def __init__(self, file: str, path: str, reason: str) -> None:
        super().__init__(f"{file}: {path}: {reason}")
        self.file = file
        self.path = path
        self.reason = reason
