"""The warm set across three real `modelserve serve` processes per shared backend (SQLite, real Redis).

`load` on one replica makes the version warm on every replica, `rollback --to` switches every
replica to a version they all hold warm, `unload` on another replica takes it away everywhere, and a
load one replica's memory budget refuses is refused for the fleet (undone on every replica) with the
reason. Every process is stopped by its PID; every loop is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.testing_processes import serve_fleet, shared_state_url, wait_until

TOKEN = "fleet-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
#: Version 4 is a 32.1 MiB model: it never fits replica C's 32M budget beside the live version; A's
#: and B's budgets are unbounded.
BIG_WIDTHS = (16, 2048, 2048, 2048, 2)
BUDGET_OF_C = "32M"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def three(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp(f"warm-fleet-{request.param}")
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    coordinator = shared_state_url(request.param, tmp, redis_url, db=2)
    repo = testing.repository(tmp / "models", {"fraud": {"1": 1, "2": 2, "3": 3}})
    testing.mlp(repo / "fraud" / "4" / "model.onnx", BIG_WIDTHS, seed=4)
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    admin_token = ["--admin-token", TOKEN]
    budget = [*admin_token, "--memory-budget", BUDGET_OF_C]
    with (
        serve_fleet(repo, tmp, coordinator, count=2, args=admin_token) as unbounded,
        serve_fleet(repo, tmp, coordinator, count=1, first=2, args=budget) as bounded,
    ):
        yield [p.url for p in (*unbounded, *bounded)]


def admin(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{base}{path}", json=body, headers=AUTH, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def ready(base: str, version: str) -> bool:
    return httpx.get(f"{base}/v2/models/fraud/versions/{version}/ready", timeout=30).status_code == 200


def served_by(base: str, version: str | None = None) -> str:
    path = "/v2/models/fraud" + (f"/versions/{version}" if version else "") + "/infer"
    response = httpx.post(base + path, json=BODY, headers={"x-user-id": "someone"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-model-version"]


def warm_rows(base: str) -> dict[str, dict[str, Any]]:
    return {row["version"]: row for row in admin(base, "GET", "/admin/models/fraud")["warm"]}


def test_load_on_a_is_warm_everywhere_rollback_to_1_on_a_is_live_everywhere_unload_on_b_is_gone_everywhere(
    three: list[str],
) -> None:
    a, b, c = three
    admin(a, "POST", "/admin/models/fraud/load", {"version": "3"})  # returns once READY on every replica
    for base in (b, c):
        wait_until(lambda u=base: ready(u, "3"), 1.0, f"version 3 warm on {base}")
        assert served_by(base, "3") == "3"
        row = warm_rows(base)["3"]
        assert row["role"] == "warm" and row["pinned"] is True
    # Promote 1 -> 2 -> 3 from different replicas: 3 is warm everywhere, nothing loads for it.
    admin(c, "POST", "/admin/models/fraud/stage", {"version": "2"})
    admin(b, "POST", "/admin/models/fraud/promote")
    admin(a, "POST", "/admin/models/fraud/stage", {"version": "3"})
    admin(c, "POST", "/admin/models/fraud/promote")
    for base in three:
        wait_until(lambda u=base: served_by(u) == "3", 1.0, f"3 live on {base}")
        assert set(warm_rows(base)) == {"1", "2", "3"}
    switch = admin(a, "POST", "/admin/models/fraud/rollback", {"to": "1"})["switch"]
    assert (switch["from_version"], switch["to_version"]) == ("3", "1")
    for base in three:
        wait_until(lambda u=base: served_by(u) == "1", 1.0, f"1 live on {base}")
        assert admin(base, "GET", "/admin/models/fraud")["live_version"] == "1"
    refused = httpx.post(f"{b}/admin/models/fraud/unload", json={"version": "1"}, headers=AUTH, timeout=60)
    assert refused.status_code == 409 and "is live" in refused.json()["error"]
    admin(b, "POST", "/admin/models/fraud/unload", {"version": "2"})
    for base in three:
        wait_until(lambda u=base: not ready(u, "2"), 1.0, f"version 2 gone from {base}")
        assert set(warm_rows(base)) == {"1", "3"}
    assert all(served_by(base) == "1" for base in three)


def test_a_load_one_replicas_memory_budget_refuses_is_undone_everywhere_with_the_reason(
    three: list[str],
) -> None:
    a, b, c = three
    before = {base: set(warm_rows(base)) for base in three}
    response = httpx.post(f"{a}/admin/models/fraud/load", json={"version": "4"}, headers=AUTH, timeout=120)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "replica replica-2" in error and "memory budget" in error and "undone on every replica" in error
    for base in three:
        # the undo is in the shared state when the 409 answers; each replica applies it at its next
        # sync (tens of ms idle, seconds on a starved host)
        wait_until(lambda u=base: not ready(u, "4"), 15.0, f"version 4 not warm on {base}")
        assert set(warm_rows(base)) == before[base]
    listing = admin(c, "GET", "/admin/models")
    assert listing["memory"]["budget_bytes"] == 32 * 1024**2
    admin(b, "POST", "/admin/models/fraud/load", {"version": "3"})  # what fits everywhere still loads
    assert all(ready(base, "3") for base in three)
