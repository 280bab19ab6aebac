"""Routing in the running server: flags choose versions, canary is sticky, failures fall back."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import serve

BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.2] * 16}]})
AUTH = {"authorization": "Bearer t"}


def flags_file(path: Path, variants: dict[str, object], targeting: object = None) -> Path:
    flag: dict[str, object] = {
        "state": "ENABLED",
        "variants": variants,
        "defaultVariant": next(iter(variants)),
    }
    if targeting is not None:
        flag["targeting"] = targeting
    path.write_text(json.dumps({"flags": {"fraud-model": flag}}))
    return path


@pytest.fixture
def repo(model_repo: Path) -> Path:
    (model_repo / "fraud" / "config.toml").write_text('live = "1"\n[routing]\nflag = "fraud-model"\n')
    return model_repo


@contextlib.contextmanager
def start(repo: Path, state: Path, flags: Path | None) -> Iterator[httpx.Client]:
    app = create_app(ServerConfig(repository=repo, state_dir=state, admin_token="t", flags_file=flags))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert (
            client.post("/admin/models/fraud/stage", json={"version": "2"}, headers=AUTH).status_code == 200
        )
        yield client


def version_for(client: httpx.Client, key: str, **headers: str) -> tuple[str, str]:
    response = client.post("/v2/models/fraud/infer", content=BODY, headers={"x-user-id": key, **headers})
    assert response.status_code == 200, response.text
    return response.headers["x-model-version"], response.headers["x-route-reason"]


def test_flag_fractional_split_is_sticky_and_matches_flagd(tmp_path: Path, repo: Path) -> None:
    targeting_rule = {"fractional": [["1", 50], ["2", 50]]}
    flags = flags_file(tmp_path / "flags.json", {"1": "1", "2": "2"}, targeting_rule)
    reference = FlagdCore()
    reference.set_flags(json.loads(flags.read_text()))
    with start(repo, tmp_path / "s", flags) as client:
        seen = {f"user-{i}": version_for(client, f"user-{i}") for i in range(200)}
        assert {reason for _, reason in seen.values()} == {"flag"}
        assert 60 < sum(v == "2" for v, _ in seen.values()) < 140
        for key, (version, _) in seen.items():  # the same assignment flagd itself makes
            assert (
                reference.resolve_string_value("fraud-model", "", EvaluationContext(targeting_key=key)).value
                == version
            )
        for key in list(seen)[:20]:
            assert version_for(client, key) == seen[key]  # sticky


def flag_status(client: httpx.Client) -> dict[str, object]:
    return client.get("/admin/flags", headers=AUTH).json()  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """The file watcher polls once a second: wait for the state it reports, bounded."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_flags_hot_reload_and_broken_file_keeps_last_good(tmp_path: Path, repo: Path) -> None:
    flags = flags_file(tmp_path / "flags.json", {"old": "1", "new": "2"}, None)
    with start(repo, tmp_path / "s", flags) as client:
        assert version_for(client, "a") == ("1", "flag")
        flags_file(flags, {"new": "2", "old": "1"}, None)  # default variant now "new"
        os.utime(flags, ns=(1, 10**18))  # a distinct mtime even on coarse file systems
        wait_for(lambda: flag_status(client)["reloads"] == 1)
        assert version_for(client, "a") == ("2", "flag")
        flags.write_text("{ not json")
        os.utime(flags, ns=(2, 2 * 10**18))
        wait_for(lambda: flag_status(client)["last_error"] is not None)
        status = flag_status(client)
        assert "keeping the last good flags" in status["last_error"]
        assert version_for(client, "a") == ("2", "flag")


def test_unknown_flag_and_non_version_variant_fall_back_to_live(tmp_path: Path, repo: Path) -> None:
    flags = flags_file(tmp_path / "flags.json", {"on": "banana"}, None)
    with start(repo, tmp_path / "s", flags) as client:
        assert version_for(client, "a") == ("1", "fallback")
        client.post("/admin/models/fraud/policy", json={"flag": "no-such-flag"}, headers=AUTH)
        assert version_for(client, "a") == ("1", "fallback")


def test_canary_is_sticky_monotonic_and_override_needs_permission(tmp_path: Path, repo: Path) -> None:
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    with start(repo, tmp_path / "s", None) as client:
        keys = [f"k{i}" for i in range(400)]
        client.post("/admin/models/fraud/canary", json={"percent": 5}, headers=AUTH)
        at5 = {k for k in keys if version_for(client, k)[0] == "2"}
        client.post("/admin/models/fraud/canary", json={"percent": 25}, headers=AUTH)
        at25 = {k for k in keys if version_for(client, k) == ("2", "canary")}
        assert at5 <= at25 and 60 < len(at25) < 140
        no_key = Counter(
            client.post("/v2/models/fraud/infer", content=BODY).headers["x-model-version"] for _ in range(100)
        )
        assert no_key["2"] > 5 and no_key["1"] > 40
        assert version_for(client, "k1", **{"x-model-version": "2"})[1] != "override"
        client.post("/admin/models/fraud/policy", json={"allow_version_override": True}, headers=AUTH)
        assert version_for(client, "k1", **{"x-model-version": "2"}) == ("2", "override")
        bad = client.post("/admin/models/fraud/canary", json={"percent": 150}, headers=AUTH)
        assert bad.status_code == 400
        client.post("/admin/models/fraud/canary", json={"percent": 0}, headers=AUTH)
        assert {version_for(client, k)[0] for k in keys[:50]} == {"1"}
