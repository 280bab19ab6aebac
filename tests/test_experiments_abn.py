"""A/B/n experiments and N-arm bandits on three real credit versions through a real server: the
3-arm report with Holm, a Thompson bandit steered by feedback, auto-stop with hand-over to a rollout,
the maximum duration, and an unhealthy arm taken out of the draw."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import RunningServer, serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "t"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = orjson.dumps({k: v for k, v in json.loads((EXAMPLES / "req.json").read_text()).items() if k != "id"})


def credit_repo(root: Path, config: str) -> Path:
    """The shipped credit model (versions 1 and 2) plus a version 3 (a copy of 2), in `root`."""
    repo = root / "models"
    shutil.copytree(EXAMPLES / "models" / "credit", repo / "credit")
    shutil.copytree(repo / "credit" / "2", repo / "credit" / "3")
    (repo / "credit" / "config.toml").write_text('live = "1"\n[serving]\nintra_op_threads = 1\n' + config)
    return repo


def start_server(tmp_path: Path, config: str = "") -> Any:
    repo = credit_repo(tmp_path, "keep_warm = 3\n" + config)
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    return serve(app)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    with (
        start_server(tmp_path) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client,
    ):
        for version in ("2", "3"):
            assert client.post("/admin/models/credit/load", json={"version": version}).status_code == 200
        yield server, client


def cli(server: RunningServer, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSERVE_ADMIN_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "experiment", *argv, "--url", server.url],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def traffic(client: httpx.Client, requests: int, reward: Callable[[str], float]) -> Counter[str]:
    """`requests` inferences from fresh users, then one batch of outcomes; returns arms served."""
    served: Counter[str] = Counter()
    outcomes = []
    for _ in range(requests):
        response = client.post(
            "/v2/models/credit/infer", content=BODY, headers={"x-user-id": uuid.uuid4().hex}
        )
        assert response.status_code == 200, response.text
        arm = response.headers["x-model-version"]
        served[arm] += 1
        outcomes.append({"request_id": response.headers["x-request-id"], "value": reward(arm)})
    posted = client.post("/v2/models/credit/feedback", json={"outcomes": outcomes})
    assert posted.status_code == 200 and posted.json()["accepted"] == requests, posted.text
    return served


def bernoulli(rates: dict[str, float], seed: int) -> Callable[[str], float]:
    rng = np.random.default_rng(seed)
    return lambda arm: float(rng.random() < rates[arm])


def wait_for_event(client: httpx.Client, kind: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll the report until the experiment logs `kind` (the supervisor checks every second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        document = client.get("/admin/models/credit/experiment").json()
        found = [e for e in document["events"] if e["kind"] == kind]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {kind!r} event within {timeout_s} s")


def test_three_arm_experiment_reports_three_arms_with_intervals_and_holm(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    server, client = running
    started = cli(server, "start", "credit", "--arms", "1,2,3", "--metric", "approved", "--mde", "1")
    assert started.returncode == 0, started.stderr
    assert "1 33.3333%, 2 33.3333%, 3 33.3333%" in started.stdout
    served = traffic(client, 450, bernoulli({"1": 0.2, "2": 0.25, "3": 0.6}, seed=1))
    assert set(served) == {"1", "2", "3"}
    table = cli(server, "report", "credit")
    assert table.returncode == 0, table.stderr
    assert "1 (control)" in table.stdout and "Holm-adjusted over arms" in table.stdout
    report = orjson.loads(cli(server, "report", "credit", "--json").stdout)["report"]
    assert [arm["arm"] for arm in report["arms"]] == ["1", "2", "3"]
    for arm in report["arms"]:
        assert arm["interval"]["low"] < arm["estimate"] < arm["interval"]["high"]
    comparisons = {c["arm"]: c for c in report["comparisons"]}
    assert set(comparisons) == {"2", "3"}
    raw = [comparisons[a]["p_value"] for a in ("2", "3")]
    holm = [comparisons[a]["p_adjusted"] for a in ("2", "3")]
    smaller, larger = sorted(range(2), key=lambda i: raw[i])
    assert holm[smaller] == pytest.approx(min(1.0, 2 * raw[smaller]))
    assert holm[larger] == pytest.approx(max(holm[smaller], raw[larger]))
    assert len(report["srm"]["observed"]) == 3 and not report["srm"]["flagged"]
    assert comparisons["3"]["verdict"] == "B better"
    busy = client.post("/admin/models/credit/unload", json={"version": "2"})
    assert busy.status_code == 409 and "in use" in busy.json()["error"]


def test_feedback_steers_a_three_arm_thompson_bandit_to_the_best_arm(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    _, client = running
    spec = {
        "arms": ["1", "2", "3"],
        "metric": {"name": "approved", "kind": "binary"},
        "policy": "thompson",
        "bandit": {"min_outcomes": 30, "reweight_every": 30, "floor": 0.02},
    }
    assert client.post("/admin/models/credit/experiment", json=spec).status_code == 200
    reward = bernoulli({"1": 0.2, "2": 0.3, "3": 0.7}, seed=2)
    early = traffic(client, 150, reward)
    assert min(early.values()) > 20  # uniform until every arm has its outcomes
    for _ in range(10):
        traffic(client, 100, reward)
    late = traffic(client, 200, reward)
    assert late["3"] > 0.75 * 200, late
    posterior = {
        p["arm"]: p for p in client.get("/admin/models/credit/experiment").json()["report"]["posterior"]
    }
    assert posterior["3"]["weight"] > 0.8 and posterior["1"]["weight"] >= 0.02 - 1e-9


def test_auto_stop_ends_the_experiment_and_hands_the_winner_to_a_rollout(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    server, client = running
    started = cli(
        server, "start", "credit", "--arms", "1,3", "--mde", "0.2", "--auto-stop", "--on-win", "rollout"
    )
    assert started.returncode == 0, started.stderr
    traffic(client, 400, bernoulli({"1": 0.2, "3": 0.6}, seed=3))
    concluded = wait_for_event(client, "concluded")
    assert concluded["verdict"] == "B better" and concluded["winner"] == "3"
    assert concluded["comparisons"][0]["always_valid_p_adjusted"] < 0.05
    handed = wait_for_event(client, "handed_over")
    assert handed["version"] == "3" and "rollout of 3" in handed["rollout"]
    document = client.get("/admin/models/credit/experiment").json()
    assert document["experiment"]["state"] == "stopped"
    assert client.get("/admin/models/credit/rollout").json()["rollout"]["candidate"] == "3"


def test_on_win_plan_is_checked_at_the_start_and_names_the_plan_of_the_hand_over(
    running: tuple[RunningServer, httpx.Client], tmp_path: Path
) -> None:
    server, client = running
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[stages]]\nname = "all"\nweight = 150\n')
    refused = cli(server, "start", "credit", "--arms=1,3", "--on-win", "rollout", "--on-win-plan", f"{bad}")
    assert refused.returncode == 1 and "on_win_plan" in refused.stderr and "weight" in refused.stderr
    assert client.get("/admin/models/credit/experiment").status_code == 404  # nothing started
    env = {**os.environ, "MODELSERVE_ADMIN_TOKEN": TOKEN}
    started = subprocess.run(  # a plan name from examples/plans/, read by the CLI in the project folder
        [sys.executable, "-m", "modelserve.cli", "experiment", "start", "credit", "--arms=1,3", "--mde=0.2",
         "--auto-stop", "--on-win", "rollout", "--on-win-plan", "fast", "--url", server.url],
        capture_output=True, text=True, env=env, timeout=60, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    spec = client.get("/admin/models/credit/experiment").json()["experiment"]["spec"]
    assert spec["on_win_plan"]["name"] == "fast"
    traffic(client, 400, bernoulli({"1": 0.2, "3": 0.6}, seed=3))
    handed = wait_for_event(client, "handed_over")
    assert handed["version"] == "3" and handed["plan"] == "fast" and "(plan fast)" in handed["rollout"]
    assert handed["stages"][0] == "shadow (0%)"
    rollout = client.get("/admin/models/credit/rollout").json()["rollout"]
    assert rollout["candidate"] == "3" and rollout["plan"] == "fast"


def test_an_experiment_stops_at_its_maximum_duration(running: tuple[RunningServer, httpx.Client]) -> None:
    _, client = running
    spec = {"arms": ["1", "2"], "metric": "binary", "max_duration_s": 0.2}
    assert client.post("/admin/models/credit/experiment", json=spec).status_code == 200
    event = wait_for_event(client, "max_duration_reached")
    assert event["max_duration_s"] == 0.2 and event["elapsed_s"] >= 0.2
    assert client.get("/admin/models/credit/experiment").json()["experiment"]["state"] == "stopped"


def test_an_arm_failing_the_health_gates_leaves_the_bandit_draw(tmp_path: Path) -> None:
    faults = '[testing.faults."2"]\nerror_rate = 0.5\nseed = 1\n'
    with start_server(tmp_path, faults) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        for version in ("2", "3"):
            assert client.post("/admin/models/credit/load", json={"version": version}).status_code == 200
        spec = {"arms": ["1", "2", "3"], "metric": "binary", "policy": "epsilon_greedy"}
        assert client.post("/admin/models/credit/experiment", json=spec).status_code == 200
        failed = 0
        for _ in range(450):
            response = client.post(
                "/v2/models/credit/infer", content=BODY, headers={"x-user-id": uuid.uuid4().hex}
            )
            failed += response.status_code >= 500
        assert failed > 30
        event = wait_for_event(client, "arm_removed")
        assert event["arm"] == "2" and "error_rate" in event["reason"]
        assert event["gates"][0]["samples"] >= 100 and event["weights"]["2"] == 0.0
        served = Counter(
            client.post(
                "/v2/models/credit/infer", content=BODY, headers={"x-user-id": uuid.uuid4().hex}
            ).headers["x-model-version"]
            for _ in range(100)
        )
        assert "2" not in served
        table = client.get("/admin/models/credit/experiment", params={"format": "text"}).text
        assert "arm 2 removed from the draw: error_rate" in table
        status = client.get("/admin/models/credit").json()["experiment"]
        assert "2 (0%: " in status and "removed from the draw" in status


def test_experiment_size_uses_the_model_traffic_or_a_given_rate(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    server, client = running
    planned = cli(server, "size", "credit", "--baseline", "0.1", "--mde", "0.05", "--arms", "3", "--json")
    assert planned.returncode == 0, planned.stderr
    sized = orjson.loads(planned.stdout)
    assert sized["alpha_per_comparison"] == 0.025 and sized["days"] is None  # no traffic yet
    for _ in range(20):
        assert client.post("/v2/models/credit/infer", content=BODY).status_code == 200
    measured = orjson.loads(
        cli(server, "size", "credit", "--baseline", "0.1", "--mde", "0.05", "--arms", "3", "--json").stdout
    )
    assert measured["daily_users"] == pytest.approx(20 * 86_400 / 60) and measured["days"] > 0
    continuous = ("--kind", "continuous", "--baseline", "10", "--mde", "0.1")
    text = cli(server, "size", "credit", *continuous, "--sd", "4", "--daily-users", "5000")
    assert (
        text.returncode == 0 and "TTestIndPower" in text.stdout and "days at 5,000 users a day" in text.stdout
    )
    missing_sd = cli(server, "size", "credit", *continuous)
    assert missing_sd.returncode == 1 and "--sd" in missing_sd.stderr
