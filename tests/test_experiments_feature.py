"""Experiments wired into the server: arm assignment, feedback over real HTTP, persistence, SRM, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelserve.config import ServerConfig
from modelserve.experiments.service import ExperimentService
from modelserve.middleware.routing import RouteContext
from modelserve.routing.decision import ROUTE_KEY, RouteDecision
from modelserve.routing.hashing import sticky_bucket
from modelserve.server.app import ModelServe, create_app
from modelserve.testing import serve

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})
BINARY = {"name": "conversion", "kind": "binary"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(tmp_path: Path, model_repo: Path) -> ServerConfig:
    return ServerConfig(repository=model_repo, state_dir=tmp_path / "state", admin_token=TOKEN)


@pytest.fixture
def http(config: ServerConfig) -> Iterator[httpx.Client]:
    """A real server with fraud v2 live and v1 staged (both warm: the two arms)."""
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        yield client


def start(client: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = client.post(
        "/admin/models/fraud/experiment", json={"arms": ["1", "2"], "metric": BINARY, **spec}
    )
    assert response.status_code == 200, response.text
    return response.json()


def infer(client: httpx.Client, key: str | None = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["x-user-id"] = key
    response = client.post("/v2/models/fraud/infer", content=BODY, headers=headers)
    assert response.status_code == 200, response.text
    return response


def report(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/admin/models/fraud/experiment")
    assert response.status_code == 200, response.text
    return response.json()


def arm_counts(document: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """arm -> (assigned, outcomes) from a report document."""
    return {arm["arm"]: (arm["assigned"], arm["n"]) for arm in document["report"]["arms"]}


def test_arms_must_be_warm_and_a_second_start_conflicts(config: ServerConfig) -> None:
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        spec = {"arms": ["1", "2"], "metric": BINARY}
        refused = client.post("/admin/models/fraud/experiment", json=spec)
        assert refused.status_code == 400
        assert "not warm" in refused.json()["error"] and "modelserve load fraud 1" in refused.json()["error"]
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        bad = client.post("/admin/models/fraud/experiment", json={**spec, "alpha": 2})
        assert bad.status_code == 400 and "alpha" in bad.json()["error"]
        started = start(client)
        again = client.post("/admin/models/fraud/experiment", json=spec)
        assert again.status_code == 409
        assert (
            started["experiment"]["id"] in again.json()["error"] and "stop it first" in again.json()["error"]
        )
        assert client.get("/admin/models/two/experiment").status_code == 404


def test_feedback_over_http_moves_the_report_and_counts_unknown_and_duplicate_ids(http: httpx.Client) -> None:
    start(http, segments=["country"])
    served = [infer(http, f"user-{i}", **{"x-segment-country": "fr" if i % 2 else "de"}) for i in range(40)]
    assert {r.headers["x-route-reason"] for r in served} == {"experiment"}
    ids = [r.headers["x-request-id"] for r in served]
    assert len(set(ids)) == len(ids)
    batch = [{"request_id": rid, "value": i % 3 == 0} for i, rid in enumerate(ids[:30])]
    answer = http.post(
        "/v2/models/fraud/feedback", json={"outcomes": [*batch, {"request_id": "nobody", "value": 1}]}
    )
    assert answer.status_code == 200
    assert answer.json()["unknown_ids"] == ["nobody"]
    assert (answer.json()["accepted"], answer.json()["unknown"], answer.json()["duplicate"]) == (30, 1, 0)
    single = http.post("/v2/models/fraud/feedback", json={"request_id": ids[30], "value": 1})
    assert single.json()["accepted"] == 1
    repeat = http.post("/v2/models/fraud/feedback", json={"request_id": ids[0], "value": 1})
    assert (repeat.json()["accepted"], repeat.json()["duplicate"]) == (0, 1)

    document = report(http)
    served_by = Counter(r.headers["x-model-version"] for r in served)
    outcomes_by = Counter(r.headers["x-model-version"] for r in served[:31])
    assert arm_counts(document) == {arm: (served_by[arm], outcomes_by[arm]) for arm in ("1", "2")}
    assert document["feedback"]["unknown_outcomes"] == 1 and document["feedback"]["duplicate_outcomes"] == 1
    assert {s["value"] for s in document["report"]["segments"]} == {"de", "fr"}


def test_a_bad_value_fails_the_whole_batch_and_counts_nothing(http: httpx.Client) -> None:
    start(http)
    ids = [infer(http, f"k{i}").headers["x-request-id"] for i in range(2)]
    before = arm_counts(report(http))
    for body in (
        {"outcomes": [{"request_id": ids[0], "value": 1}, {"request_id": ids[1], "value": 2}]},  # binary
        {"request_id": ids[0], "value": "yes"},
        {"request_id": ids[0]},
        {"value": 1},
        {"outcomes": []},
        {"request_id": ids[0], "value": 1, "segments": ["fr"]},
    ):
        response = http.post("/v2/models/fraud/feedback", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]
    assert arm_counts(report(http)) == before
    assert (
        http.post("/v2/models/fraud/feedback", json={"request_id": ids[1], "value": 0}).json()["accepted"]
        == 1
    )


def test_feedback_needs_the_admin_token(http: httpx.Client) -> None:
    start(http)
    response = http.post(
        "/v2/models/fraud/feedback", json={"request_id": "x", "value": 1}, headers={"authorization": ""}
    )
    assert response.status_code == 401


def test_assignment_is_sticky_per_key_and_follows_the_weights(http: httpx.Client) -> None:
    experiment_id = start(http, arms=[{"version": "1", "weight": 70}, {"version": "2", "weight": 30}])[
        "experiment"
    ]["id"]
    keys = [f"user-{i}" for i in range(600)]
    arms = {key: infer(http, key).headers["x-model-version"] for key in keys}
    for key in keys[:25]:
        assert infer(http, key).headers["x-model-version"] == arms[key]
    namespace = f"experiment:fraud:{experiment_id}"
    assert arms == {key: "1" if sticky_bucket(namespace, key) < 7000 else "2" for key in keys}
    assert 0.64 < Counter(arms.values())["1"] / len(keys) < 0.76


def test_requests_without_a_targeting_key_are_assigned_at_random(http: httpx.Client) -> None:
    start(http)
    versions = Counter(infer(http).headers["x-model-version"] for _ in range(60))
    assert set(versions) == {"1", "2"}


def test_bandit_feedback_updates_the_arm_that_served_the_request(http: httpx.Client) -> None:
    start(http, policy="thompson")
    outcomes = {"1": 0, "2": 0}
    for i in range(24):
        response = infer(http, f"user-{i}")
        assert response.headers["x-route-reason"] == "bandit"
        arm = response.headers["x-model-version"]
        reward = 1 if arm == "2" else 0
        answer = http.post(
            "/v2/models/fraud/feedback",
            json={"request_id": response.headers["x-request-id"], "value": reward},
        )
        assert answer.json()["accepted"] == 1
        outcomes[arm] += 1
        posterior = {p["arm"]: p["outcomes"] for p in report(http)["report"]["posterior"]}
        assert posterior == outcomes
    assert min(outcomes.values()) > 0


def test_counters_and_bandit_state_survive_a_restart(config: ServerConfig) -> None:
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        started = start(client, policy="epsilon_greedy", metric={"name": "revenue", "kind": "continuous"})
        served = [infer(client, f"user-{i}") for i in range(12)]
        outcomes = [{"request_id": r.headers["x-request-id"], "value": 2.5 * i} for i, r in enumerate(served)]
        assert client.post("/v2/models/fraud/feedback", json={"outcomes": outcomes}).json()["accepted"] == 12
        before = report(client)
        arm_of_key = {r.headers["x-model-version"] for r in served[:1]}
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        after = report(client)
        assert after["experiment"]["id"] == started["experiment"]["id"]
        assert after["experiment"]["state"] == "running"
        assert arm_counts(after) == arm_counts(before)
        assert after["report"]["posterior"] == before["report"]["posterior"]
        assert {infer(client, "user-0").headers["x-model-version"]} == arm_of_key
        late = client.post(
            "/v2/models/fraud/feedback", json={"request_id": outcomes[0]["request_id"], "value": 1}
        )
        assert late.json()["unknown"] == 1  # decisions waiting for outcomes live in memory only
        stopped = client.post("/admin/models/fraud/experiment/stop")
        assert stopped.json()["experiment"]["state"] == "stopped"
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert report(client)["experiment"]["state"] == "stopped"
        assert infer(client, "user-0").headers["x-route-reason"] == "stable"


def test_state_is_saved_periodically_while_serving(config: ServerConfig) -> None:
    app = create_app(config)
    app.state.services.experiments.save_interval_s = 0.05
    state_file = config.state_dir / "experiment.fraud.json"  # type: ignore[operator]
    with serve(app) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        start(client)
        infer(client, "someone")
        deadline = time.monotonic() + 10
        assigned = 0
        while assigned == 0 and time.monotonic() < deadline:
            if not state_file.exists():  # state is written behind the event loop: it may not be there yet
                time.sleep(0.01)
                continue
            saved = orjson.loads(state_file.read_bytes())
            assigned = sum(arm["assigned"] for arm in saved["counters"]["arms"].values())
        assert assigned == 1


def test_stop_answers_the_final_report_and_later_outcomes_count_as_unknown(http: httpx.Client) -> None:
    start(http)
    rid = infer(http, "user-1").headers["x-request-id"]
    status = http.get("/admin/models/fraud").json()["experiment"]
    assert "running" in status and "1 assigned" in status
    final = http.post("/admin/models/fraud/experiment/stop")
    assert final.status_code == 200 and final.json()["experiment"]["state"] == "stopped"
    assert http.post("/admin/models/fraud/experiment/stop").status_code == 409
    assert http.post("/v2/models/fraud/feedback", json={"request_id": rid, "value": 1}).json()["unknown"] == 1
    assert infer(http, "user-1").headers["x-route-reason"] == "stable"
    text = http.get("/admin/models/fraud/experiment", params={"format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert "(stopped)" in text.text and "SRM: ok" in text.text and "verdict:" in text.text
    restarted = start(http)  # a new experiment: new id, old decisions stay unknown
    assert restarted["experiment"]["id"] != final.json()["experiment"]["id"]


def running_scope(ms: ModelServe, key: str | None) -> dict[str, Any]:
    headers = [(b"x-user-id", key.encode())] if key is not None else []
    return {"type": "http", "headers": headers, ROUTE_KEY: RouteContext(ms.services.router, headers)}


@pytest.mark.anyio
async def test_embedded_predict_exposes_the_request_id_for_in_process_outcomes(config: ServerConfig) -> None:
    ms = ModelServe(config)
    async with ms.lifespan():
        await ms.services.registry.stage("fraud", "1")
        service: ExperimentService = ms.services.experiments
        await service.start("fraud", {"arms": ["1", "2"], "metric": "binary"})
        scope = running_scope(ms, "embedded-user")
        await ms.predict(scope, "fraud", {"input": np.full((1, 16), 0.5, dtype=np.float32)})
        decision = ms.decision(scope, "fraud")
        request_id = ms.request_id(scope)
        assert request_id is not None and decision.reason == "experiment"
        assert service.record_outcome(request_id, 1) == "accepted"
        assert service.record_outcome(request_id, 1) == "duplicate"
        assert service.record_outcome("never-seen", 1) == "unknown"
        assert service.experiments["fraud"].counters.arms[decision.version].metric.n == 1
        keyless = ms.decision(running_scope(ms, None), "fraud")
        assert keyless.reason == "experiment" and "random assignment" in keyless.detail


@pytest.mark.anyio
async def test_a_skewed_assignment_is_flagged_as_srm_and_gets_no_winner(config: ServerConfig) -> None:
    ms = ModelServe(config)
    async with ms.lifespan():
        await ms.services.registry.stage("fraud", "1")
        service: ExperimentService = ms.services.experiments

        async def run(split: dict[str, int]) -> dict[str, Any]:
            if "fraud" in service.experiments and service.experiments["fraud"].running:
                await service.stop("fraud")
            await service.start("fraud", {"arms": ["1", "2"], "metric": "binary"})
            for arm, count in split.items():
                rate = 0.10 if arm == "1" else 0.30  # a large, real lift for arm 2
                for i in range(count):
                    rid = f"{arm}-{i}-{sum(split.values())}"
                    decision = RouteDecision(model="fraud", version=arm, reason="experiment", arm=arm)
                    assert service.join.record_decision(rid, decision)
                    assert service.record_outcome(rid, int(i < rate * count)) == "accepted"
            return service.experiments["fraud"].report().to_dict()

        balanced = await run({"1": 2000, "2": 2000})
        assert (balanced["verdict"], balanced["winner"], balanced["srm"]["flagged"]) == (
            "B better",
            "2",
            False,
        )
        skewed = await run({"1": 2000, "2": 2300})  # 50/50 configured, 46.5/53.5 observed
        assert skewed["srm"]["flagged"] and skewed["srm"]["p_value"] < 0.001
        assert (skewed["verdict"], skewed["winner"]) == ("invalid (SRM)", None)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSERVE_ADMIN_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "experiment", args[0], *args[1:], "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_cli_starts_reports_posts_feedback_and_stops(config: ServerConfig) -> None:
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        refused = cli(server.url, "start", "fraud", "--arms", "1,2")
        assert refused.returncode == 1 and "modelserve load fraud 1" in refused.stderr
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        started = cli(server.url, "start", "fraud", "--arms", "1,2", "--weights", "80,20", "--mde", "0.1")
        assert started.returncode == 0, started.stderr
        assert "1 80%, 2 20%" in started.stdout
        rid = infer(client, "cli-user").headers["x-request-id"]
        posted = cli(server.url, "feedback", "fraud", rid, "1")
        assert posted.returncode == 0 and orjson.loads(posted.stdout) == {
            "accepted": 1,
            "unknown": 0,
            "duplicate": 0,
        }
        unknown = cli(server.url, "feedback", "fraud", "no-such-id", "1")
        assert unknown.returncode == 1 and orjson.loads(unknown.stdout)["unknown"] == 1
        table = cli(server.url, "report", "fraud")
        assert table.returncode == 0 and "SRM:" in table.stdout and "1 unknown" in table.stdout
        as_json = orjson.loads(cli(server.url, "report", "fraud", "--json").stdout)
        assert sum(arm["n"] for arm in as_json["report"]["arms"]) == 1
        stopped = cli(server.url, "stop", "fraud")
        assert stopped.returncode == 0 and "(stopped)" in stopped.stdout


@pytest.mark.anyio
async def test_the_rollout_experiment_gate_reads_the_running_experiment(config: ServerConfig) -> None:
    """A candidate the running experiment finds significantly worse fails the rollout's experiment gate."""
    from modelserve.rollout.plan import plan_from_dict

    ms = ModelServe(config)
    async with ms.lifespan():
        services = ms.services
        assert services.experiments is not None and services.rollout is not None
        await services.registry.stage("fraud", "1")  # v2 live (the control), v1 the candidate
        service = services.experiments
        await service.start("fraud", {"arms": ["2", "1"], "metric": "binary"})
        for arm, rate in (("2", 0.30), ("1", 0.10)):  # the candidate converts a third as often
            for i in range(2000):
                rid = f"{arm}-{i}"
                decision = RouteDecision(model="fraud", version=arm, reason="experiment", arm=arm)
                assert service.join.record_decision(rid, decision)
                assert service.record_outcome(rid, int(i < rate * 2000)) == "accepted"
        gate = {"name": "experiment_not_worse", "metric": "experiment", "min_samples": 100}
        stage = {"name": "canary-5", "weight": 5, "min_duration_s": 0, "min_samples": 1, "gates": [gate]}
        plan = plan_from_dict({"stages": [stage], "gates": []}, where="test")
        await services.rollout.start("fraud", "1", plan)
        await services.rollout.controller.evaluate_once()
        status = services.rollout.status("fraud")
        assert status is not None and status.state == "rolled_back"
        (result,) = status.gates
        assert result.gate == "experiment_not_worse" and result.verdict == "fail" and result.samples == 2000
        assert result.detail.startswith("A better") and "experiment_not_worse" in status.reason
