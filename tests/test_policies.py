"""PolicyTable: saved runtime changes win over config.toml; a broken saved policy degrades one model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from modelserve.config import ModelConfig
from modelserve.errors import RequestError
from modelserve.state.policies import PolicyTable
from modelserve.state.store import FileStateStore


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"canary_weight": "lots"}', b'{"candidate": "../../etc"}', None]
)
def test_a_broken_saved_policy_serves_the_config_policy_and_says_why(
    tmp_path: Path, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStateStore(tmp_path)
    path = tmp_path / "policy.fraud.json"
    if content is None:
        path.mkdir()  # unreadable: a directory where the file should be
    else:
        path.write_bytes(content)
    store.write("policy.other", {"canary_weight": 5.0})
    table = PolicyTable(store)
    with caplog.at_level(logging.ERROR, logger="modelserve.state"):
        policy = table.ensure("fraud", ModelConfig(), "1")
    assert (policy.live, policy.canary_weight, policy.candidate) == ("1", 0.0, None)
    assert "fraud" in table.problems and any("fraud" in r.getMessage() for r in caplog.records)
    if content is None or content.startswith((b"{not", b"[")):
        assert "policy.fraud.json" in table.problems["fraud"]
    assert table.ensure("other", ModelConfig(), "1").canary_weight == 5.0 and "other" not in table.problems


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"candidate": "../../etc"}, "not a version"),
        ({"shadow_versions": ["2", "x\r\ny"]}, "not a version"),
        ({"targeting_header": "x-user\r\nset-cookie: a"}, "header name"),
        ({"canary_weight": float("nan")}, "finite"),
        ({"canary_weight": 1e308}, "canary_weight"),
        ({"shadow_sample_rate": float("inf")}, "finite"),
        ({"allow_version_override": "false"}, "true or false"),
    ],
)
def test_runtime_changes_are_validated_and_nothing_invalid_is_saved(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    store = FileStateStore(tmp_path)
    table = PolicyTable(store)
    table.ensure("fraud", ModelConfig(), "1")
    with pytest.raises(RequestError, match=message):
        table.update("fraud", **changes)
    assert store.read("policy.fraud") is None
