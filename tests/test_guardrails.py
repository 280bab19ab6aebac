"""Guardrails beyond rollouts, on real servers with real failing versions (faults from config.toml).

A manual canary of a failing version goes back to 0 %, a promoted version that regresses inside the
watch window gives way to the previous version, a failing A/B arm stops its experiment; each action
carries the gates' evidence into the status, the audit log and the counters. Too little data never acts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import create_app

TOKEN = "guardrail-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


def repo_with_failing_v2(
    root: Path, *, error_rate: float, min_samples: int = 30, watch_s: float = 0.0
) -> Path:
    """`fraud` v1 live; v2 fails `error_rate` of its runs; guardrails look every 0.1 s."""
    repo = testing.repository(root, {"fraud": {"1": 1, "2": 2}})
    config = f'live = "1"\n[guardrails]\ninterval_s = 0.1\nmin_samples = {min_samples}\nwatch_s = {watch_s}\n'
    if error_rate:
        config += f'[testing.faults."2"]\nerror_rate = {error_rate}\nseed = 3\n'
    (repo / "fraud" / "config.toml").write_text(config)
    return repo


def client_load(url: str) -> testing.Traffic:
    return testing.Traffic(url, threads=2, body=BODY)


@contextmanager
def running(repo: Path, state: Path) -> Iterator[str]:
    config = ServerConfig(repository=repo, state_dir=state, admin_token=TOKEN)
    with testing.serve(create_app(config)) as server:
        yield server.url


def get(url: str, path: str) -> Any:
    answer = httpx.get(f"{url}{path}", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = get(url, "/admin/models/fraud")
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {status['guardrails']}"
        time.sleep(0.05)


def served_at_least(traffic: testing.Traffic, version: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(n for (v, _), n in traffic.snapshot().items() if v == version) < count:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def check_evidence(action: dict[str, Any], min_samples: int) -> dict[str, Any]:
    """The failing gates carry estimate, interval, samples and threshold, beyond doubt."""
    failed = [g for g in action["gates"] if g["verdict"] == "fail"]
    assert failed, action
    for gate in failed:
        assert gate["samples"] >= min_samples and gate["observed"] > gate["threshold"]
        assert gate["interval"] is not None and gate["confidence"] == 0.95
        if gate["difference_interval"] is not None:  # relative: the excess clears the margin
            assert gate["difference_interval"][0] > gate["threshold"] - gate["baseline"]
        else:
            assert gate["interval"][0] > gate["threshold"]
    return failed[0]


def metric(url: str, name: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_manual_canary_of_a_failing_version_goes_back_to_0_and_the_version_needs_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_with_failing_v2(tmp_path / "models", error_rate=0.5)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        assert main(["stage", "fraud", "2", "--url", url]) == 0
        assert main(["canary", "fraud", "50", "--url", url]) == 0
        status = wait_for(url, lambda s: s["guardrails"]["last_action"] is not None)
        after = traffic.snapshot()
        served_at_least(traffic, "1", sum(n for (v, _), n in after.items() if v == "1") + 100)
        later = traffic.snapshot() - after
        history = get(url, "/admin/models/fraud/history")
        counted = metric(url, "modelserve_guardrail_actions_total")
        refused = httpx.post(f"{url}/admin/models/fraud/promote", headers=AUTH, timeout=30)
    action = status["guardrails"]["last_action"]
    assert action["watched"] == "canary" and action["action"] == "canary_weight_zero"
    assert action["version"] == "2" and action["baseline_version"] == "1"
    assert action["message"].startswith("canary of 2 set to 0 %: error_rate")
    gate = check_evidence(action, 30)
    assert gate["metric"] == "error_rate" and gate["observed"] > 0.2
    assert after[("2", 500)] > 0  # the faults were real 500s
    assert sum(n for (v, _), n in later.items() if v == "2") <= 2  # in flight at the switch at most
    assert status["live_version"] == "1" and status["policy"]["canary_weight"] == 0
    entry = [e for e in history["entries"] if e["action"] == "guardrail.canary_weight_zero"][-1]
    assert entry["actor"] == "guardrail" and entry["detail"] == action["message"]
    assert {g["gate"] for g in entry["after"]["gates"]} >= {"error_rate_vs_baseline", "error_rate_absolute"}
    assert 'modelserve_guardrail_actions_total{action="canary_weight_zero",model="fraud"} 1.0' in counted
    assert refused.status_code == 409 and "by guardrail: canary of 2 set to 0 %" in refused.json()["error"]


def test_a_promoted_version_that_regresses_inside_the_watch_window_gives_way_to_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_with_failing_v2(tmp_path / "models", error_rate=0.3, watch_s=60.0)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        served_at_least(traffic, "1", 60)  # the baseline: version 1's requests before the switch
        assert main(["stage", "fraud", "2", "--url", url]) == 0
        assert main(["promote", "fraud", "--url", url]) == 0
        status = wait_for(url, lambda s: s["guardrails"]["last_action"] is not None)
        history = get(url, "/admin/models/fraud/history")
        counted = metric(url, "modelserve_guardrail_actions_total")
    action = status["guardrails"]["last_action"]
    assert action["watched"] == "promotion_watch" and action["action"] == "rolled_back"
    assert status["live_version"] == "1"
    assert action["version"] == "2" and action["baseline_version"] == "1"
    assert action["message"].startswith("1 live again, 2 regressed after promotion: error_rate")
    check_evidence(action, 30)
    assert 0 < action["data"]["watched_for_s"] < 60.0
    assert traffic.snapshot()[("2", 500)] > 0
    assert status["candidate"] == "2"  # kept warm, withdrawn: promoting it again needs force
    actions = [e["action"] for e in history["entries"]]
    assert actions[-3:] == ["stage", "promote", "guardrail.rolled_back"]
    promoted, rolled_back = history["entries"][-2:]  # the guardrail may act before any status poll
    assert promoted["after"]["live"] == "2" and rolled_back["actor"] == "guardrail"
    assert 'modelserve_guardrail_actions_total{action="rolled_back",model="fraud"} 1.0' in counted


@pytest.mark.parametrize("restart_after_s", [0.0, 3.0])
def test_a_server_restarted_inside_the_watch_window_watches_the_rest_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restart_after_s: float
) -> None:
    """The promotion's time is in the durable desired state (as it is in the shared one, where a new
    leader reads it): a restart inside the window still rolls a regressing version back; a restart
    after the window has closed starts no watch."""
    watch_s = 2.0 if restart_after_s else 60.0
    repo = repo_with_failing_v2(tmp_path / "models", error_rate=0.3, watch_s=watch_s)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with running(repo, tmp_path / "state") as url:
        assert main(["stage", "fraud", "2", "--url", url]) == 0
        assert main(["promote", "fraud", "--url", url]) == 0  # no traffic yet: nothing to judge
    time.sleep(restart_after_s)
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        if restart_after_s:
            served_at_least(traffic, "2", 200)  # far beyond the 30 samples that would act
            status = get(url, "/admin/models/fraud")
            assert status["live_version"] == "2" and status["guardrails"]["watching"] == []
            assert status["guardrails"]["last_action"] is None
            return
        status = wait_for(url, lambda s: s["guardrails"]["last_action"] is not None)
    action = status["guardrails"]["last_action"]
    assert action["watched"] == "promotion_watch" and action["action"] == "rolled_back"
    assert status["live_version"] == "1" and action["version"] == "2"
    check_evidence(action, 30)
    assert traffic.snapshot()[("2", 500)] > 0


def test_guardrails_never_act_on_too_little_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = repo_with_failing_v2(tmp_path / "models", error_rate=1.0, min_samples=100_000)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        assert main(["stage", "fraud", "2", "--url", url]) == 0
        assert main(["canary", "fraud", "50", "--url", url]) == 0
        served_at_least(traffic, "2", 100)  # every one of them failed, over many looks
        status = get(url, "/admin/models/fraud")
    assert status["policy"]["canary_weight"] == 50
    assert status["guardrails"]["last_action"] is None
    (watch,) = status["guardrails"]["watching"]
    assert watch["watched"] == "canary" and watch["version"] == "2"
    assert set(watch["verdicts"].values()) == {"inconclusive"}


def test_a_failing_ab_arm_stops_the_experiment_with_the_evidence(tmp_path: Path) -> None:
    repo = repo_with_failing_v2(tmp_path / "models", error_rate=0.5)
    with running(repo, tmp_path / "state") as url, client_load(url):
        loaded = httpx.post(f"{url}/admin/models/fraud/load", json={"version": "2"}, headers=AUTH, timeout=30)
        assert loaded.status_code == 200, loaded.text
        started = httpx.post(
            f"{url}/admin/models/fraud/experiment",
            json={"arms": ["1", "2"], "metric": "binary"},
            headers=AUTH,
            timeout=30,
        )
        assert started.status_code == 200, started.text
        status = wait_for(url, lambda s: s["guardrails"]["last_action"] is not None)
        report = httpx.get(f"{url}/admin/models/fraud/experiment", headers=AUTH, timeout=30).json()
    action = status["guardrails"]["last_action"]
    assert action["watched"] == "experiment" and action["action"] == "experiment_stopped"
    assert action["version"] == "2" and action["baseline_version"] == "1"
    check_evidence(action, 30)
    events = [e for e in report["events"] if e["kind"] == "guardrail_stopped"]
    assert events and events[0]["gates"]
    assert report["experiment"]["state"] == "stopped"


def test_in_a_fleet_only_the_rollout_leader_acts_and_the_canary_goes_to_0_on_every_replica(
    tmp_path: Path,
) -> None:
    from modelserve.testing_processes import serve_fleet

    repo = repo_with_failing_v2(tmp_path / "models", error_rate=0.5)
    coordinator = f"sqlite:///{tmp_path / 'fleet.db'}"
    args = ["--admin-token", TOKEN, "--leader-lease", "2"]
    with serve_fleet(repo, tmp_path, coordinator, count=2, args=args) as processes:
        a, b = (p.url for p in processes)
        staged = httpx.post(f"{a}/admin/models/fraud/stage", json={"version": "2"}, headers=AUTH, timeout=60)
        assert staged.status_code == 200, staged.text
        deadline = time.monotonic() + 60  # replica b loads the staged version within a poll or two
        while "2" not in [w["version"] for w in get(b, "/admin/models/fraud")["warm"]]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        canary = httpx.post(f"{b}/admin/models/fraud/canary", json={"percent": 50}, headers=AUTH, timeout=60)
        assert canary.status_code == 200, canary.text
        with client_load(a), client_load(b):
            deadline = time.monotonic() + 90
            while not all(get(url, "/admin/models/fraud")["policy"]["canary_weight"] == 0 for url in (a, b)):
                assert time.monotonic() < deadline, [p.log_tail() for p in processes]
                time.sleep(0.1)
        statuses = [get(url, "/admin/models/fraud") for url in (a, b)]
        counted = [metric(url, "modelserve_guardrail_actions_total") for url in (a, b)]
    leaders = [s["rollout_leader"] for s in statuses]
    assert sorted(leaders) == [False, True]
    leader, follower = (statuses[0], statuses[1]) if leaders[0] else (statuses[1], statuses[0])
    action = leader["guardrails"]["last_action"]
    assert action["action"] == "canary_weight_zero" and action["version"] == "2"
    check_evidence(action, 30)
    assert follower["guardrails"]["last_action"] is None and follower["guardrails"]["watching"] == []
    assert sum('action="canary_weight_zero"' in text for text in counted) == 1
