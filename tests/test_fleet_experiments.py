"""Experiments across three real `modelserve serve` processes per shared backend (SQLite, real Redis).

One experiment id and hashing namespace fleet-wide, feedback joined exactly once on whichever replica
receives it, counters merged exactly, bandit weights computed by the leader and routed by every
replica, the experiment supervisor on the leader only, and 503 + Retry-After for feedback while the
backend is away. Every process is stopped by its PID; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.testing_processes import (
    RedisServer,
    ServeProcess,
    free_port,
    serve_fleet,
    shared_state_url,
    wait_until,
)

TOKEN = "fleet-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
BINARY = {"name": "conversion", "kind": "binary"}


@contextlib.contextmanager
def fleet(tmp: Path, coordinator: str, *, count: int = 3) -> Iterator[list[ServeProcess]]:
    repo = testing.repository(tmp / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    args = ["--admin-token", TOKEN, "--leader-lease", "2"]
    with serve_fleet(repo, tmp, coordinator, count=count, args=args) as processes:
        # Version 2 warm on every replica (staged: the desired state asks each one to load it).
        call(processes[0].url, "POST", "/admin/models/fraud/stage", {"version": "2"})
        for process in processes:
            wait_until(lambda u=process.url: _ready(u, "2"), 60, f"version 2 warm on {process.url}")
        yield processes


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def three(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServeProcess]]:
    tmp = tmp_path_factory.mktemp(f"fleet-experiments-{request.param}")
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    coordinator = shared_state_url(request.param, tmp, redis_url, db=2)
    with fleet(tmp, coordinator) as processes:
        yield processes


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, f"{base}{path}", json=body, headers=AUTH, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def start(base: str, **spec: Any) -> str:
    experiment_id: str = call(
        base, "POST", "/admin/models/fraud/experiment", {"arms": ["1", "2"], "metric": BINARY, **spec}
    )["experiment"]["id"]
    return experiment_id


def stop_if_running(base: str) -> None:
    response = httpx.post(f"{base}/admin/models/fraud/experiment/stop", headers=AUTH, timeout=60)
    assert response.status_code in (200, 404, 409), response.text


def report(base: str) -> dict[str, Any]:
    document: dict[str, Any] = call(base, "GET", "/admin/models/fraud/experiment")
    return document


def serve(client: httpx.Client, base: str, key: str) -> tuple[str, str, str | None]:
    """(version, route reason, request id) of one inference for `key`."""
    response = client.post(f"{base}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": key})
    assert response.status_code == 200, response.text
    headers = response.headers
    return headers["x-model-version"], headers["x-route-reason"], headers.get("x-request-id")


def feedback(base: str, outcomes: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        f"{base}/v2/models/fraud/feedback", json={"outcomes": outcomes}, headers=AUTH, timeout=60
    )


def test_one_experiment_fleet_wide_and_feedback_for_1000_requests_joins_once_on_another_replica(
    three: list[ServeProcess],
) -> None:
    a, b, c = (p.url for p in three)
    stop_if_running(a)
    experiment_id = start(a)
    for base in (b, c):  # one id, so one hashing namespace, on every replica
        wait_until(
            lambda u=base: report(u)["experiment"]["id"] == experiment_id, 2.0, f"{experiment_id} on {base}"
        )
    keys = [f"user-{i}" for i in range(60)]
    with httpx.Client(timeout=30) as client:
        arms = {base: [serve(client, base, k)[:2] for k in keys] for base in (a, b, c)}
        assert arms[a] == arms[b] == arms[c]
        assert {reason for _, reason in arms[a]} == {"experiment"}
        assert {version for version, _ in arms[a]} == {"1", "2"}
        # 1,000 requests served by A (one key each), their outcomes posted to C.
        served = [serve(client, a, f"request-{i}") for i in range(1000)]
    ids = [request_id for _, _, request_id in served]
    assert None not in ids and len(set(ids)) == 1000
    outcomes = [
        {"request_id": rid, "value": int(version == "2" and i % 2 == 0)}
        for i, (version, _, rid) in enumerate(served)
    ]
    joined = [feedback(c, outcomes[i : i + 250]) for i in range(0, 1000, 250)]
    assert [r.status_code for r in joined] == [200] * 4
    assert sum(r.json()["accepted"] for r in joined) == 1000
    assert sum(r.json()["unknown"] + r.json()["duplicate"] for r in joined) == 0
    again = feedback(b, outcomes).json()  # the same 1,000 again, to a third replica
    assert (again["accepted"], again["duplicate"], again["unknown"]) == (0, 1000, 0)
    unknown = feedback(c, [{"request_id": f"never-served-{i}", "value": 1} for i in range(5)]).json()
    assert (unknown["unknown"], unknown["accepted"]) == (5, 0)
    assert unknown["unknown_ids"] == [f"never-served-{i}" for i in range(5)]
    # Fleet totals on every replica, exact: the assignments of all three, every outcome once.
    expected_successes = sum(o["value"] for o in outcomes)
    per_arm = {v: sum(1 for version, _, _ in served if version == v) for v in ("1", "2")}
    for base in (a, b, c):
        document = report(base)
        arms_report = {arm["arm"]: arm for arm in document["report"]["arms"]}
        assert {v: arms_report[v]["n"] for v in ("1", "2")} == per_arm
        assert sum(arm["assigned"] for arm in arms_report.values()) == 1000 + len(keys) * 3
        successes = round(arms_report["2"]["estimate"] * arms_report["2"]["n"])
        assert successes == expected_successes
        stats = document["feedback"]
        assert (stats["joined"], stats["duplicate_outcomes"], stats["unknown_outcomes"]) == (1000, 1000, 5)
    stop_if_running(b)
    for base in (a, c):
        wait_until(lambda u=base: report(u)["experiment"]["state"] == "stopped", 2.0, f"stopped on {base}")
    late = feedback(a, outcomes[:1]).json()
    assert late["duplicate"] == 1  # answered already: still a duplicate, never counted twice


def test_a_bandit_is_steered_by_the_leader_and_every_replica_routes_by_its_weights(
    three: list[ServeProcess],
) -> None:
    a, b, c = (p.url for p in three)
    stop_if_running(a)
    start(b, policy="thompson", bandit={"min_outcomes": 30, "reweight_every": 20, "floor": 0.02})
    for base in (a, c):
        wait_until(lambda u=base: report(u)["experiment"]["state"] == "running", 2.0, f"bandit on {base}")
    n = 0
    with httpx.Client(timeout=30) as client:
        for _ in range(6):  # traffic on all three, outcomes posted round robin: arm 2 always converts
            outcomes = []
            for base in (a, b, c):
                for _ in range(30):
                    n += 1
                    version, reason, rid = serve(client, base, f"bandit-{n}")
                    assert reason == "bandit"
                    outcomes.append({"request_id": rid, "value": int(version == "2")})
            for i, base in enumerate((c, a, b)):
                assert feedback(base, outcomes[i::3]).json()["accepted"] == len(outcomes[i::3])

        def steered() -> bool:
            weights = [_weights(report(base)) for base in (a, b, c)]
            return weights[0] == weights[1] == weights[2] and weights[0]["2"] > 0.9

        wait_until(steered, 10.0, "the leader's weights on every replica")
        fresh = [serve(client, base, f"after-{i}")[0] for base in (a, b, c) for i in range(40)]
    assert fresh.count("2") >= 0.85 * len(fresh)  # every replica routes by the leader's weights
    stop_if_running(c)


def _is_leader(base: str) -> bool:
    return bool(call(base, "GET", "/admin/models/fraud").get("rollout_leader"))


def _ready(base: str, version: str) -> bool:
    return httpx.get(f"{base}/v2/models/fraud/versions/{version}/ready", timeout=30).status_code == 200


def _weights(document: dict[str, Any]) -> dict[str, float]:
    return {p["arm"]: p["weight"] for p in document["report"]["posterior"]}


def test_the_experiment_supervisor_runs_on_the_leader_only(three: list[ServeProcess]) -> None:
    a, b, c = (p.url for p in three)
    stop_if_running(a)
    experiment_id = start(c, max_duration_s=1.0)
    for base in (a, b, c):
        wait_until(lambda u=base: report(u)["experiment"]["state"] == "stopped", 10.0, f"stopped on {base}")
    time.sleep(1.5)  # three supervisors would each have acted by now
    leader = [p.env["POD_NAME"] for p in three if p.env and _is_leader(p.url)]
    assert len(leader) == 1
    for base in (a, b, c):
        events = [e for e in report(base)["events"] if e["experiment"] == experiment_id]
        assert [(e["kind"], e["replica"]) for e in events] == [("max_duration_reached", leader[0])]


def test_feedback_while_redis_is_away_is_503_with_retry_after_then_joins(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), data_dir=tmp_path / "redis").start()
    try:
        with fleet(tmp_path, server.url, count=2) as processes:
            a, b = (p.url for p in processes)
            start(a)
            wait_until(lambda: report(b)["experiment"]["state"] == "running", 2.0, "experiment on B")
            with httpx.Client(timeout=30) as client:
                served = [serve(client, a, f"k{i}") for i in range(20)]
                time.sleep(0.3)  # A flushed its decisions
                server.stop()  # by PID
                during = [serve(client, b, f"k{i}") for i in range(20)]  # inference keeps serving
            assert [version for version, _, _ in during] == [version for version, _, _ in served]
            outcomes = [{"request_id": rid, "value": 1} for _, _, rid in served]
            refused = feedback(b, outcomes)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            server.start()  # same port, same data
            answers: list[httpx.Response] = []

            def posted() -> bool:  # a client retrying as Retry-After says, until it is answered
                answers.append(feedback(b, outcomes))
                assert answers[-1].status_code in (200, 503), answers[-1].text
                return answers[-1].status_code == 200

            wait_until(posted, 30, "feedback works again")
            last = answers[-1].json()
            assert last["unknown"] == 0 and last["accepted"] + last["duplicate"] == 20
            assert report(b)["feedback"]["joined"] == 20  # each outcome joined once, whatever was retried
    finally:
        server.stop()
