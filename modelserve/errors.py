"""Error hierarchy, and the one mapping of errors to HTTP status codes (`http_status`).

ModelServeError
├── ConfigError              bad config.toml / plan / flags file (operator error)
├── RequestError             anything a client sent wrong             -> 400
│   ├── PayloadTooLarge                                               -> 413
│   ├── RequestTimeout       the body arrived too slowly              -> 408
│   └── UnsupportedMediaType                                          -> 415
├── NotFound                 unknown model or version                 -> 404
├── NotReady                 model known but not READY                -> 503
├── LoadError                a version failed to load or warm up      -> 400
├── Conflict                 e.g. a second rollout for the same model -> 409
├── InferenceError           the model failed on valid input          -> 500
├── DeadlineExceeded         no answer within the model's deadline    -> 504
└── AuthError                admin token missing (401) or wrong (403)
"""

from __future__ import annotations


class ModelServeError(Exception):
    """Base of every error modelserve raises on purpose."""


class ConfigError(ModelServeError):
    """A configuration file or value is invalid."""


class RequestError(ModelServeError):
    """The client sent something invalid (HTTP 400)."""


class PayloadTooLarge(RequestError):
    """The request body exceeds the configured limit (HTTP 413)."""


class RequestTimeout(RequestError):
    """The request body did not arrive in the time the server gives it (HTTP 408)."""


class UnsupportedMediaType(RequestError):
    """The request's content type cannot be decoded (HTTP 415)."""


class NotFound(ModelServeError):
    """Unknown model or version (HTTP 404)."""


class NotReady(ModelServeError):
    """The model or version exists but is not ready to serve (HTTP 503)."""


class LoadError(ModelServeError):
    """A version could not be loaded or failed its warm-up; the live slot is untouched."""


class Conflict(ModelServeError):
    """The operation conflicts with the current state (HTTP 409)."""


class InferenceError(ModelServeError):
    """The model raised on input that passed validation (HTTP 500, still a JSON error body)."""


class DeadlineExceeded(ModelServeError):
    """The model did not answer within its request deadline (HTTP 504); the run may still finish."""


class AuthError(ModelServeError):
    """Admin authentication failed; `status` is 401 (missing) or 403 (wrong)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def http_status(exc: BaseException) -> int:
    """The HTTP status for an exception; anything not raised on purpose is a 500."""
    if isinstance(exc, RequestError):
        if isinstance(exc, PayloadTooLarge):
            return 413
        if isinstance(exc, RequestTimeout):
            return 408
        if isinstance(exc, UnsupportedMediaType):
            return 415
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, NotReady):
        return 503
    if isinstance(exc, LoadError):
        return 400
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, AuthError):
        return exc.status
    if isinstance(exc, DeadlineExceeded):
        return 504
    return 500
