"""Bearer tokens with scopes: who may change, read, post outcomes, and (optionally) run inference.

    scope      may                                                      token option
    admin      everything: every change, plus what the scopes below may  --admin-token
    read       status, reports, history, /ui                             --read-token
    feedback   post outcomes (POST /v2/models/{m}/feedback) and nothing  --feedback-token
    inference  run inference, when inference requires a token            --inference-token

The admin token grants every scope, so a one-token set-up keeps working. A scope that no configured
token grants is closed (403, naming the option that opens it), except inference, which is open until
an inference token is set. A token of another scope gets 403 "may not use". Constant-time compares.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from modelserve.errors import AuthError

ADMIN, READ, FEEDBACK, INFERENCE = "admin", "read", "feedback", "inference"
SCOPES = (ADMIN, READ, FEEDBACK, INFERENCE)
_OPTION = {
    ADMIN: "--admin-token",
    READ: "--read-token (or --admin-token)",
    FEEDBACK: "--feedback-token (or --admin-token)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens:
    """The configured tokens; None means that scope has no token of its own."""

    admin: str | None = None
    read: str | None = None
    feedback: str | None = None
    inference: str | None = None

    def open_scopes(self) -> frozenset[str]:
        """Scopes that need no token: inference, unless an inference token is set."""
        return frozenset({INFERENCE} if self.inference is None else ())

    def authorize(self, authorization: str | None, scope: str) -> str:
        """The scope the presented bearer token grants for `scope`, or AuthError (401 missing, 403 wrong).

        Returns `scope` for an open scope, otherwise the name of the matching token (`admin` when the
        admin token was used), which is what the audit log records as the actor.
        """
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        if scope in self.open_scopes():
            return scope
        presented = _bearer(authorization)
        candidates = [(scope, getattr(self, scope)), (ADMIN, self.admin)]
        configured = [(name, token) for name, token in candidates if token]
        if not configured:
            raise AuthError(
                f"the {scope} API is disabled: start the server with {_OPTION[scope]}", status=403
            )
        if presented is None:
            raise AuthError(f"missing bearer token ({scope} scope)", status=401)
        for name, token in configured:
            if hmac.compare_digest(presented.encode(), token.encode()):
                return name
        if any(hmac.compare_digest(presented.encode(), (t or "").encode()) for t in self._others(scope)):
            raise AuthError(f"this token may not use the {scope} API", status=403)
        raise AuthError(f"invalid {scope} token", status=403)

    def _others(self, scope: str) -> list[str]:
        return [t for name in SCOPES if name not in (scope, ADMIN) and (t := getattr(self, name))]


def _bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None
