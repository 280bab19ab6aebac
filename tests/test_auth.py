"""Scoped bearer tokens: feedback-only, read-only, admin for changes, optional inference token."""

from __future__ import annotations

import pytest

from modelserve.errors import AuthError
from modelserve.server.auth import Tokens

TOKENS = Tokens(admin="adm", read="rd", feedback="fb")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_the_feedback_token_posts_outcomes_and_nothing_else() -> None:
    assert TOKENS.authorize(bearer("fb"), "feedback") == "feedback"
    for scope in ("admin", "read"):
        with pytest.raises(AuthError, match="may not use") as raised:
            TOKENS.authorize(bearer("fb"), scope)
        assert raised.value.status == 403


def test_the_read_token_reads_and_cannot_change() -> None:
    assert TOKENS.authorize(bearer("rd"), "read") == "read"
    with pytest.raises(AuthError, match="may not use the admin API"):
        TOKENS.authorize(bearer("rd"), "admin")
    with pytest.raises(AuthError, match="may not use the feedback API"):
        TOKENS.authorize(bearer("rd"), "feedback")


def test_the_admin_token_grants_every_scope_and_is_named_as_admin() -> None:
    for scope in ("admin", "read", "feedback"):
        assert TOKENS.authorize(bearer("adm"), scope) == "admin"


def test_missing_is_401_wrong_is_403_unconfigured_is_403_naming_the_option() -> None:
    with pytest.raises(AuthError) as missing:
        TOKENS.authorize(None, "feedback")
    assert missing.value.status == 401
    with pytest.raises(AuthError, match="invalid read token") as wrong:
        TOKENS.authorize(bearer("nope"), "read")
    assert wrong.value.status == 403
    with pytest.raises(AuthError, match="--feedback-token") as closed:
        Tokens().authorize(bearer("x"), "feedback")
    assert closed.value.status == 403


def test_inference_is_open_until_an_inference_token_is_set() -> None:
    assert Tokens().authorize(None, "inference") == "inference"
    locked = Tokens(admin="adm", inference="inf", feedback="fb")
    with pytest.raises(AuthError) as missing:
        locked.authorize(None, "inference")
    assert missing.value.status == 401
    assert locked.authorize(bearer("inf"), "inference") == "inference"
    assert locked.authorize(bearer("adm"), "inference") == "admin"
    with pytest.raises(AuthError, match="may not use the inference API"):
        locked.authorize(bearer("fb"), "inference")
