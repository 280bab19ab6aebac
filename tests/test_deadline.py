"""The per-model request deadline (`[serving] request_timeout_ms`), through a real server and a slow model.

A version that answers late gets a V2 504 on time, is counted as a timeout of that version (what the
timeout gates read), and never holds more worker threads than its `max_concurrency`.
"""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from modelserve import testing
from modelserve.cli import main
from modelserve.config import RuntimeOptions, parse_model_config
from modelserve.errors import ConfigError, DeadlineExceeded
from modelserve.serving.runtime import load_version
from modelserve.testing_processes import ServeProcess, serve_fleet

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}
TOKEN = "deadline-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
def slow_repo(root: Path, *, timeout_ms: float, hang_s: float) -> Path:
    """`fraud` v1 (live, healthy) and v2, which blocks `hang_s` on every run, both with a deadline."""
    repo = testing.repository(root, {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text(
        f'live = "1"\n[serving]\nrequest_timeout_ms = {timeout_ms}\nmax_concurrency = 1\n'
        f'[testing.faults."2"]\nhang = true\nhang_s = {hang_s}\n'
    )
    return repo


def test_request_timeout_is_read_in_ms_bounded_and_zero_turns_it_off() -> None:
    assert RuntimeOptions().request_timeout_ms == 30_000.0
    config = parse_model_config({"serving": {"request_timeout_ms": 250}}, where="config.toml")
    assert config.serving.request_timeout_ms == 250.0
    assert (
        parse_model_config({"serving": {"request_timeout_ms": 0}}, where="c").serving.request_timeout_ms == 0
    )
    with pytest.raises(ConfigError, match="request_timeout_ms"):
        parse_model_config({"serving": {"request_timeout_ms": -1}}, where="config.toml")
    with pytest.raises(ConfigError, match="request_timeout_ms"):
        parse_model_config({"serving": {"request_timeout_ms": float("inf")}}, where="config.toml")


def test_a_run_past_the_deadline_raises_and_its_runner_stays_taken_until_the_run_ends(tmp_path: Path) -> None:
    path = testing.mlp(tmp_path / "m.onnx")
    loaded = load_version("m", "1", path, RuntimeOptions(execution="thread", max_concurrency=1))
    release = threading.Event()
    original = loaded._run

    def blocked(*args: object, **kwargs: object) -> object:
        release.wait(10)
        return original(*args, **kwargs)

    loaded._run = blocked
    feeds = {"input": np.full((1, 16), 0.25, dtype=np.float32)}

    async def scenario() -> tuple[float, float, float]:
        with pytest.raises(DeadlineExceeded, match="deadline of 50 ms \\(running\\)"):
            await loaded.infer_measured(feeds, None, 0.05)
        held = loaded.runner.in_use  # the abandoned run still holds its runner
        with pytest.raises(DeadlineExceeded, match="waiting for a free runner"):
            await loaded.infer_measured(feeds, None, 0.05)
        release.set()
        for _ in range(500):  # the run ends in its thread and gives the runner back on the loop
            if loaded.runner.in_use == 0:
                break
            await anyio.sleep(0.01)
        freed = loaded.runner.in_use
        outputs, _ = await loaded.infer_measured(feeds, None, 5.0)
        return held, freed, float(outputs["probabilities"].sum())

    held, freed, total = anyio.run(scenario)
    assert held == 1 and freed == 0
    assert total == pytest.approx(1.0, rel=1e-5)


def test_batched_runs_keep_the_batch_whole_when_a_caller_reaches_its_deadline(tmp_path: Path) -> None:
    path = testing.mlp(tmp_path / "m.onnx")
    options = RuntimeOptions(execution="thread", max_batch_size=8, max_queue_delay_ms=20)
    loaded = load_version("m", "1", path, options)
    original = loaded._run

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)
        return original(*args, **kwargs)

    loaded._run = slow
    feeds = {"input": np.full((1, 16), 0.25, dtype=np.float32)}
    answers: dict[str, str] = {}

    async def call(name: str, timeout_s: float) -> None:
        try:
            await loaded.infer_measured(feeds, None, timeout_s)
            answers[name] = "ok"
        except DeadlineExceeded as exc:
            answers[name] = str(exc)

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(call, "leader", 0.1)  # leads the batch; runs it for everyone
            await anyio.sleep(0.005)
            group.start_soon(call, "patient", 5.0)
            group.start_soon(call, "hurried", 0.1)

    anyio.run(scenario)
    # The leader's run is shielded (the others wait on it): it answers when the batch is done.
    assert answers["leader"] == answers["patient"] == "ok"
    assert "deadline of 100 ms (batched)" in answers["hurried"]


def test_slow_version_gets_a_504_on_time_counted_as_its_timeout_and_the_live_version_is_unaffected(
    tmp_path: Path,
) -> None:
    from modelserve.config import ServerConfig
    from modelserve.server.app import create_app

    repo = slow_repo(tmp_path / "models", timeout_ms=200, hang_s=2.0)
    config = ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN)
    with testing.serve(create_app(config)) as server, httpx.Client(timeout=30) as client:
        url = server.url
        staged = client.post(f"{url}/admin/models/fraud/stage", json={"version": "2"}, headers=AUTH)
        assert staged.status_code == 200, staged.text
        answers: list[httpx.Response] = []

        def call() -> None:
            answers.append(client.post(f"{url}/v2/models/fraud/versions/2/infer", json=BODY))

        started = time.monotonic()
        callers = [threading.Thread(target=call) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        answered_within = time.monotonic() - started
        live = [client.post(f"{url}/v2/models/fraud/infer", json=BODY) for _ in range(20)]
        status = client.get(f"{url}/admin/models/fraud", headers=AUTH).json()
    # Every caller of the hanging version got a clear V2 504 before a single run of it ended.
    assert answered_within < 2.0
    assert [a.status_code for a in answers] == [504] * 4
    for answer in answers:
        assert answer.headers["content-type"] == "application/json"
        assert "fraud version 2 did not answer within its deadline of 200 ms" in answer.json()["error"]
        assert answer.headers["x-model-version"] == "2"
    assert [r.status_code for r in live] == [200] * 20
    rows = {(m["version"], m["role"]): m for m in status["metrics"]}
    slow, healthy = rows[("2", "primary")], rows[("1", "primary")]
    assert slow["requests"] == 4 and slow["timeout_rate"] == 1.0 and slow["error_rate"] == 1.0
    assert healthy["requests"] == 20 and healthy["timeout_rate"] == 0.0
    # max_concurrency = 1: one run of version 2 started; the others timed out waiting for its runner.
    where = sorted(a.json()["error"].rsplit("(", 1)[1] for a in answers)
    assert where == ["running)"] + ["waiting for a free runner)"] * 3


def test_a_canary_that_times_out_is_rolled_back_by_the_timeout_gate_with_its_numbers(tmp_path: Path) -> None:
    from modelserve.config import ServerConfig
    from modelserve.server.app import create_app

    repo = slow_repo(tmp_path / "models", timeout_ms=50, hang_s=0.2)
    timeout_gate = {
        "name": "timeout_rate_vs_baseline",
        "metric": "timeout_rate",
        "mode": "relative",
        "threshold": 2.0,
        "floor": 0.005,
    }  # the default plan's; alone, so no error gate decides first (timeouts are errors too)
    plan = {
        "name": "quick", "interval_s": 0.1, "window_s": 60.0, "gates": [timeout_gate],
        "stages": [{"name": "canary-50", "weight": 50, "min_duration_s": 0.3, "min_samples": 30}],
    }  # fmt: skip
    config = ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN)
    stop = threading.Event()

    def traffic(seed: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                client.post(f"{url}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": f"u{seed}-{i}"})

    with testing.serve(create_app(config)) as server, httpx.Client(timeout=30) as admin:
        url = server.url
        started = admin.post(
            f"{url}/admin/models/fraud/rollout", json={"version": "2", "plan": plan}, headers=AUTH
        )
        assert started.status_code == 200, started.text
        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(600):
                rollout = admin.get(f"{url}/admin/models/fraud/rollout", headers=AUTH).json()
                if not rollout["rollout"]["active"]:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert rollout["rollout"]["state"] == "rolled_back"
    gates = {g["gate"]: g for g in rollout["events"][-1]["gates"]}
    timeouts = gates["timeout_rate_vs_baseline"]
    assert timeouts["observed"] == 1.0 and timeouts["baseline"] == 0.0
    assert timeouts["samples"] >= 30 and timeouts["verdict"] == "fail"
    assert timeouts["difference_interval"][0] > timeouts["threshold"] - timeouts["baseline"]


#: A plan's request deadline: well below the slow candidate's compute, far below the config's 30 s.
PLAN_DEADLINE_S = 0.05
SLOW_COMPUTE_MS = 150
#: The plan file a user writes: one 50 % canary stage judged by the default plan's timeout gate alone
#: (timeouts are errors too: no error gate may decide first).
DEADLINE_PLAN = f"""
name = "strict"
interval_s = 0.1
window_s = 60.0
request_timeout_s = {PLAN_DEADLINE_S}

[[gates]]
name = "timeout_rate_vs_baseline"
metric = "timeout_rate"
mode = "relative"
threshold = 2.0
floor = 0.005

[[stages]]
name = "canary-50"
weight = 50
min_duration_s = 0.3
min_samples = 30
max_duration_s = 120
"""


def replica_status(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/admin/models/fraud", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def current_rollout(url: str) -> dict[str, Any]:
    """The rollout as the shared state has it (any replica answers; the leader runs it)."""
    answer = httpx.get(f"{url}/admin/models/fraud/rollout", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["rollout"])


def has_rollout(url: str) -> bool:
    answer = httpx.get(f"{url}/admin/models/fraud/rollout", headers=AUTH, timeout=30)
    return answer.status_code == 200 and answer.json()["rollout"] is not None


def wait_for_deadline(urls: list[str], expected: float | None, processes: list[ServeProcess]) -> None:
    """Until every replica's policy carries `expected` as the model's request deadline."""
    limit = time.monotonic() + 30
    while any(replica_status(url)["policy"]["request_timeout_s"] != expected for url in urls):
        assert time.monotonic() < limit, [p.log_tail() for p in processes]
        time.sleep(0.05)


def pinned_to_candidate(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/fraud/versions/2/infer", json=BODY, timeout=30)


@contextmanager
def slow_candidate_fleet(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    """Two `modelserve serve` replicas on one SQLite coordinator (leader lease 2 s): `fraud` v1 live,
    v2 computing SLOW_COMPUTE_MS per request, staged and READY on both; the config deadline: 30 s."""
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text(
        f'live = "1"\n[serving]\nmax_concurrency = 1\n'
        f'[testing.faults."2"]\nextra_latency_ms = {SLOW_COMPUTE_MS}\n'
    )
    coordinator = f"sqlite:///{tmp_path / 'fleet.db'}"
    args = ["--leader-lease", "2", "--admin-token", TOKEN]
    with serve_fleet(repo, tmp_path, coordinator, count=2, args=args) as processes:
        staged = httpx.post(
            f"{processes[0].url}/admin/models/fraud/stage", json={"version": "2"}, headers=AUTH, timeout=60
        )
        assert staged.status_code == 200, staged.text
        for process in processes:  # the other replica loads the staged version within a poll or two
            limit = time.monotonic() + 60
            while pinned_to_candidate(process.url).status_code != 200:
                assert time.monotonic() < limit, [p.log_tail() for p in processes]
                time.sleep(0.05)
        yield processes


def wait_for_the_end(url: str, processes: list[ServeProcess]) -> dict[str, Any]:
    """The rollout once it is no longer active (it never pauses here: it is decided in time)."""
    limit = time.monotonic() + 120
    while (rollout := current_rollout(url))["state"] in ("running", "paused"):
        assert rollout["state"] == "running", rollout
        assert time.monotonic() < limit, [p.log_tail() for p in processes]
        time.sleep(0.1)
    return rollout


def test_a_plans_request_timeout_s_rolls_a_slow_candidate_back_on_every_replica_then_config_deadline_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "strict.toml"
    plan_file.write_text(DEADLINE_PLAN)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with slow_candidate_fleet(tmp_path) as processes:
        urls = [p.url for p in processes]
        # The config deadline alone lets the slow candidate answer.
        assert [pinned_to_candidate(url).status_code for url in urls] == [200, 200]

        # Invalid deadlines are refused where they enter, naming the field; nothing starts.
        bad_file = tmp_path / "bad.toml"
        refusals = (("0", "a positive number at most 3600, got 0"), ("inf", "a finite number, got inf"))
        for bad, message in refusals:
            bad_file.write_text(
                DEADLINE_PLAN.replace(f"request_timeout_s = {PLAN_DEADLINE_S}", f"request_timeout_s = {bad}")
            )
            assert main(["rollout", "start", "fraud", "2", "--plan", str(bad_file), "--url", urls[0]]) == 1
            assert f"{bad_file}: request_timeout_s must be {message}" in capsys.readouterr().err
        too_long = {"version": "2", "plan": {**tomllib.loads(DEADLINE_PLAN), "request_timeout_s": 7200}}
        for path, body, expected in (
            ("rollout", too_long, "request_timeout_s must be a positive number at most 3600"),
            ("policy", {"request_timeout_s": 0.05}, "request_timeout_s is set by a running rollout's plan"),
        ):
            refused = httpx.post(f"{urls[1]}/admin/models/fraud/{path}", json=body, headers=AUTH, timeout=30)
            assert refused.status_code == 400 and expected in refused.json()["error"], refused.text
        assert httpx.get(f"{urls[0]}/admin/models/fraud/rollout", headers=AUTH).json()["rollout"] is None

        assert main(["rollout", "start", "fraud", "2", "--plan", str(plan_file), "--url", urls[0]]) == 0
        wait_for_deadline(urls, PLAN_DEADLINE_S, processes)  # every replica applies the plan's deadline
        capsys.readouterr()
        assert main(["status", "fraud", "--url", urls[1]]) == 0
        assert "request deadline 50 ms (policy)" in capsys.readouterr().out
        with testing.Traffic(urls, threads=2, body=BODY) as traffic:
            rollout = wait_for_the_end(urls[0], processes)
        assert rollout["state"] == "rolled_back" and "timeout_rate_vs_baseline" in rollout["reason"]
        wait_for_deadline(urls, None, processes)  # the rollout ended: the config deadline is back
        after = [pinned_to_candidate(url) for url in urls]
        statuses = [replica_status(url) for url in urls]

    assert [answer.status_code for answer in after] == [200, 200], [answer.text for answer in after]
    # Under the plan's deadline every request the candidate got was a 504, and the live version's none.
    counts = traffic.counts
    assert counts[("2", 504)] >= 30 and counts[("2", 200)] == 0
    assert counts[("1", 200)] > 0 and counts[("1", 504)] == 0
    assert all(f"fraud version 2 did not answer within its deadline of {PLAN_DEADLINE_S * 1000:g} ms" in e
               for e in traffic.errors)  # fmt: skip
    # Counted per version, as timeouts (what the gate read), on the replicas that served them (the
    # candidate's pinned requests before and after the rollout answered in time).
    timeouts = 0
    for status in statuses:
        rows = {(m["version"], m["role"]): m for m in status["metrics"]}
        slow = rows.get(("2", "primary"))
        timeouts += round(slow["requests"] * slow["timeout_rate"]) if slow and slow["requests"] else 0
        assert rows[("1", "primary")]["timeout_rate"] == 0.0
    assert timeouts == counts[("2", 504)]


def test_a_new_leader_after_kill_9_keeps_the_plans_deadline_and_clears_it_when_the_rollout_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_file = tmp_path / "strict.toml"
    plan_file.write_text(DEADLINE_PLAN)
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with slow_candidate_fleet(tmp_path) as processes:
        urls = [p.url for p in processes]
        assert main(["rollout", "start", "fraud", "2", "--plan", str(plan_file), "--url", urls[0]]) == 0
        wait_for_deadline(urls, PLAN_DEADLINE_S, processes)  # no traffic yet: nothing is decided
        limit = time.monotonic() + 30
        while not all(has_rollout(url) for url in urls):  # its state is shared (written behind)
            assert time.monotonic() < limit
            time.sleep(0.05)
        limit = time.monotonic() + 30
        while not any(leading := [replica_status(url)["rollout_leader"] for url in urls]):
            assert time.monotonic() < limit
            time.sleep(0.05)
        leader, survivor = (0, 1) if leading[0] else (1, 0)
        processes[leader].kill()  # no chance to clear anything
        survivor_url = urls[survivor]
        assert replica_status(survivor_url)["policy"]["request_timeout_s"] == PLAN_DEADLINE_S
        # the survivor takes the lease and runs the rollout
        with testing.Traffic(survivor_url, threads=2, body=BODY) as traffic:
            rollout = wait_for_the_end(survivor_url, processes)
        assert rollout["state"] == "rolled_back" and "timeout_rate_vs_baseline" in rollout["reason"]
        wait_for_deadline([survivor_url], None, processes)
        assert replica_status(survivor_url)["rollout_leader"] is True
        assert pinned_to_candidate(survivor_url).status_code == 200
    assert traffic.counts[("2", 504)] >= 30 and traffic.counts[("1", 504)] == 0
