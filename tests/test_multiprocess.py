"""Three real `modelserve serve` processes per shared backend (SQLite, real Redis).

What one process alone cannot show: a promote on A served by B and C within a second, changes made
on different replicas that all survive, no lost update under 600 concurrent admin patches, one
version per key fleet-wide, and a rollout leader killed with SIGKILL whose work another replica
takes over. Every process is stopped by its PID; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.testing_processes import ServeProcess, serve_fleet, shared_state_url, wait_until

TOKEN = "fleet-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def fleet(
    tmp: Path, coordinator: str, *, count: int = 3, lease_s: float = 10.0, extra: tuple[str, ...] = ()
) -> contextlib.AbstractContextManager[list[ServeProcess]]:
    """`count` replicas of `fraud` (v1 live, v2 on disk) sharing `coordinator`."""
    repo = testing.repository(tmp / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    args = ["--admin-token", TOKEN, "--leader-lease", str(lease_s), *extra]
    return serve_fleet(repo, tmp, coordinator, count=count, args=args)


def admin(
    base: str, method: str, path: str, body: dict[str, Any] | None = None, *, if_match: int | None = None
) -> Any:
    headers = AUTH if if_match is None else {**AUTH, "if-match": str(if_match)}
    response = httpx.request(method, f"{base}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def version_for(base: str, key: str) -> str:
    response = httpx.post(f"{base}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-model-version"]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def three(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServeProcess]]:
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    coordinator = shared_state_url(request.param, tmp, redis_url, db=1)
    with fleet(tmp, coordinator) as processes:
        yield processes


def test_changes_on_different_replicas_all_apply_everywhere(three: list[ServeProcess]) -> None:
    a, b, c = (p.url for p in three)
    admin(a, "POST", "/admin/models/fraud/stage", {"version": "2"})
    wait_until(lambda: all(_ready(u, "2") for u in (b, c)), 30, "version 2 warm on B and C")
    admin(a, "POST", "/admin/models/fraud/canary", {"percent": 30, "candidate": "2"})
    admin(b, "POST", "/admin/models/fraud/shadow", {"versions": ["2"]})
    for base in (a, b, c):  # both changes, on every replica, within the 1 s bound
        wait_until(lambda u=base: _both(_policy(u)), 1.0, f"canary and shadow on {base}")
    # One version per key on every replica (the hash is deterministic, the policy shared).
    keys = [f"user-{i}" for i in range(60)]
    answers = {base: [version_for(base, k) for k in keys] for base in (a, b, c)}
    assert answers[a] == answers[b] == answers[c]
    assert 0.15 < answers[a].count("2") / len(keys) < 0.45


def test_promote_on_one_replica_is_served_by_the_others_within_a_second(three: list[ServeProcess]) -> None:
    a, b, c = (p.url for p in three)
    current = admin(a, "GET", "/admin/models/fraud")["live_version"]
    target = "2" if current == "1" else "1"
    admin(b, "POST", "/admin/models/fraud/stage", {"version": target})
    admin(a, "POST", "/admin/models/fraud/canary", {"percent": 0})
    admin(a, "POST", "/admin/models/fraud/promote")  # waits until every replica has it READY
    promoted_at = time.monotonic()
    for base in (b, c):
        wait_until(lambda u=base: version_for(u, "someone") == target, 1.0, f"{target} served by {base}")
    assert time.monotonic() - promoted_at < 1.0 + 0.5  # both checks together, HTTP included


def test_600_concurrent_patches_from_three_replicas_lose_nothing(three: list[ServeProcess]) -> None:
    bases = [p.url for p in three]
    fields = {
        "flag": lambda i: f"flag-{i}",
        "shadow_sample_rate": lambda i: round((i % 100) / 100, 2),
        "targeting_header": lambda i: f"x-key-{i}",
    }
    names = list(fields)
    start = admin(bases[0], "POST", "/admin/models/fraud/policy", {})["revision"]

    def patch(i: int) -> tuple[str, Any, int]:
        name = names[i % len(names)]
        value = fields[name](i)
        reply = admin(bases[i % 3], "POST", "/admin/models/fraud/policy", {name: value})
        return name, value, reply["revision"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(patch, range(600)))
    revisions = [rev for _, _, rev in results]
    assert len(set(revisions)) == 600  # every patch its own revision: none overwrote another silently
    assert min(revisions) > start and max(revisions) == start + 600
    final = admin(bases[1], "POST", "/admin/models/fraud/policy", {})
    for name in names:  # per field, the value of the patch that landed last is what stands
        last = max((rev, value) for field, value, rev in results if field == name)[1]
        assert final["policy"][name] == last
    for base in bases:  # and every replica applied it
        wait_until(
            lambda u=base: _policy(u)["flag"] == final["policy"]["flag"], 1.0, f"final policy on {base}"
        )
    admin(bases[0], "POST", "/admin/models/fraud/policy",
          {"flag": None, "shadow_sample_rate": 1.0, "targeting_header": "x-user-id"})  # fmt: skip


def test_if_match_with_a_stale_revision_is_409(three: list[ServeProcess]) -> None:
    a, b, _ = (p.url for p in three)
    rev = admin(a, "POST", "/admin/models/fraud/policy", {})["revision"]
    admin(
        b,
        "POST",
        "/admin/models/fraud/policy",
        {"flag": "moved"},
    )
    stale = httpx.post(
        f"{a}/admin/models/fraud/policy",
        json={"flag": "mine"},
        headers={**AUTH, "if-match": str(rev)},
        timeout=30,
    )
    assert stale.status_code == 409 and "revision" in stale.json()["error"]
    fresh = admin(a, "POST", "/admin/models/fraud/policy", {"flag": None}, if_match=rev + 1)
    assert fresh["revision"] == rev + 2


def _both(policy: dict[str, Any]) -> bool:
    return bool(policy["canary_weight"] == 30 and policy["shadow_versions"] == ["2"])


def _policy(base: str) -> dict[str, Any]:
    policy: dict[str, Any] = admin(base, "GET", "/admin/models/fraud")["policy"]
    return policy


def _ready(base: str, version: str) -> bool:
    return httpx.get(f"{base}/v2/models/fraud/versions/{version}/ready", timeout=30).status_code == 200


PLAN = {
    "name": "fleet",
    "interval_s": 0.2,
    "window_s": 60.0,
    "gates": [{"name": "error_rate_absolute", "metric": "error_rate", "mode": "absolute", "threshold": 0.05}],
    "stages": [
        {"name": "canary-10", "weight": 10, "min_duration_s": 2.0, "min_samples": 5},
        {"name": "canary-50", "weight": 50, "min_duration_s": 2.0, "min_samples": 5},
        {"name": "full", "weight": 100, "min_duration_s": 1.0, "min_samples": 5},
    ],
}
LEASE_S = 2.0


def test_kill_9_of_the_rollout_leader_hands_the_rollout_to_another_replica(tmp_path: Path) -> None:
    receiver = _Receiver()
    coordinator = f"sqlite://{tmp_path / 'coordinator.db'}"
    hook = ("--webhook", receiver.url)
    with receiver, fleet(tmp_path, coordinator, lease_s=LEASE_S, extra=hook) as processes:
        bases = [p.url for p in processes]
        admin(bases[1], "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": PLAN})
        leader = _leader(processes)
        wait_until(lambda: "started" in receiver.kinds(), 30, "the webhook of the start")
        receiver.failing = True  # the leader's next deliveries fail (and are retried)...
        traffic = _Traffic(bases)
        # Mid-rollout: past the first stage, before the last.
        wait_until(lambda: traffic.step() and _stage_index(bases[0]) >= 1, 60, "stage 2")
        sent_before = set(receiver.ids())
        assert "advanced" not in receiver.kinds()
        leader.kill()  # SIGKILL: no shutdown, the lease stays until it expires
        receiver.failing = False  # ...so the event of stage 2 is the next leader's to deliver
        killed_at, killed_at_wall = time.monotonic(), time.time()
        survivors = [p for p in processes if p is not leader]
        traffic.bases = [p.url for p in survivors]
        wait_until(lambda: traffic.step() and _leader_or_none(survivors) is not None, 30, "a new leader")
        new_leader = _leader_or_none(survivors)
        assert new_leader is not None
        # When the new term began by the replica's own clock, not when this test's polling saw it.
        elected_at = admin(new_leader.url, "GET", "/admin/models/fraud")["rollout_leader_elected_at"]
        took = elected_at - killed_at_wall
        assert 0 < took <= LEASE_S + LEASE_S / 5 + 1.0  # TTL + one renewal, plus a late loop's slack
        wait_until(lambda: traffic.step() and _rollout(survivors[0].url)["rollout"]["state"] == "promoted",
                   90, "the rollout completes")  # fmt: skip
        events = _rollout(survivors[0].url)["events"]
        assert time.monotonic() - killed_at < 120
        ids = [e["event_id"] for e in events]
        # Webhooks: the new leader resumed from the shared delivery cursor: every logged event
        # arrived, and none the old leader had delivered was sent again (at most the one whose
        # delivery was over but whose cursor write had not landed when it was killed).
        wait_until(lambda: set(ids) <= set(receiver.ids()), 30, f"webhooks of {ids}: {receiver.ids()}")
    received = receiver.ids()
    again = [i for i in set(received) if received.count(i) > 1]
    assert len(again) <= 1 and set(again) <= sent_before, (again, received)
    assert len(ids) == len(set(ids)), ids  # no event twice
    advanced = [e["stage_index"] for e in events if e["kind"] == "advanced"]
    assert advanced == [1, 2]  # each stage entered once: none skipped, none repeated
    assert [e["kind"] for e in events].count("promoted") == 1
    assert any(e["kind"] == "restored" and "stage clock kept" in e["message"] for e in events)


class _Receiver:
    """A webhook receiver on a free loopback port: records every rollout event posted to it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies: list[dict[str, Any]] = []
        self.bodies = bodies
        self.failing = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if not receiver.failing and "event_id" in body:  # rollout events (audit entries too)
                    bodies.append(body)
                self.send_response(503 if receiver.failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def ids(self) -> list[str]:
        return [str(b["event_id"]) for b in list(self.bodies)]

    def kinds(self) -> list[str]:
        return [str(b["kind"]) for b in list(self.bodies)]


class _Traffic:
    """A few requests per step to every replica, so every replica's windows see the candidate."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.n = 0

    def step(self) -> bool:
        for base in self.bases:
            for _ in range(4):
                self.n += 1
                version_for(base, f"user-{self.n}")
        return True


def _rollout(base: str) -> dict[str, Any]:
    return admin(base, "GET", "/admin/models/fraud/rollout")  # type: ignore[no-any-return]


def _stage_index(base: str) -> int:
    """The rollout's stage on this replica; -1 until the rollout started elsewhere has reached it."""
    rollout = _rollout(base)["rollout"]
    return -1 if rollout is None else int(rollout["stage_index"])


def _leader_or_none(processes: list[ServeProcess]) -> ServeProcess | None:
    for process in processes:
        with contextlib.suppress(httpx.HTTPError):
            if admin(process.url, "GET", "/admin/models/fraud").get("rollout_leader"):
                return process
    return None


def _leader(processes: list[ServeProcess]) -> ServeProcess:
    deadline = time.monotonic() + 30
    while (leader := _leader_or_none(processes)) is None:
        assert time.monotonic() < deadline, "no rollout leader"
        time.sleep(0.05)
    return leader


def test_redis_stopped_under_load_serves_on_refuses_admin_with_503_and_resumes(tmp_path: Path) -> None:
    from modelserve.testing_processes import RedisServer, free_port

    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(free_port(), data_dir=tmp_path / "redis").start()
    try:
        with fleet(tmp_path, redis_server.url, count=2) as processes:
            a, b = (p.url for p in processes)
            admin(a, "POST", "/admin/models/fraud/stage", {"version": "2"})
            admin(a, "POST", "/admin/models/fraud/canary", {"percent": 30, "candidate": "2"})
            wait_until(lambda: _policy(b)["canary_weight"] == 30, 1.0, "canary on B")
            before = {k: version_for(b, k) for k in (f"k{i}" for i in range(40))}
            redis_server.stop()  # by PID
            # Well inside the 60 s after which a replica cuts canary traffic it cannot confirm.
            deadline = time.monotonic() + 30
            failed = checked = 0
            for _ in range(3):  # inference keeps serving the last applied state, on both
                for base in (a, b):
                    for key, version in before.items():
                        if time.monotonic() > deadline:
                            break
                        checked += 1
                        response = httpx.post(
                            f"{base}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": key}, timeout=30
                        )
                        failed += response.status_code != 200
                        assert response.headers.get("x-model-version") == version
            assert failed == 0 and checked >= len(before)
            refused = httpx.post(
                f"{a}/admin/models/fraud/policy", json={"flag": "x"}, headers=AUTH, timeout=60
            )
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            redis_server.start()  # same port, same data
            wait_until(
                lambda: httpx.post(f"{a}/admin/models/fraud/canary", json={"percent": 10}, headers=AUTH,
                                   timeout=60).status_code == 200,
                30, "admin works again",
            )  # fmt: skip
            wait_until(lambda: _policy(b)["canary_weight"] == 10, 2.0, "B follows again")
    finally:
        redis_server.stop()


def test_serve_workers_2_shares_one_state_between_its_worker_processes(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    server = ServeProcess(
        [str(repo), "--state-dir", str(tmp_path / "state"), "--workers", "2", "--admin-token", TOKEN],
        log_path=tmp_path / "serve.log",
    ).start()
    try:
        server.wait_ready()
        replicas: set[str] = set()

        def both_answered() -> bool:  # new connections land on either worker, each under its own name
            replicas.add(admin(server.url, "GET", "/admin/models/fraud")["fleet"]["replica"])
            return len(replicas) == 2

        wait_until(both_answered, 60, "both workers")
        admin(server.url, "POST", "/admin/models/fraud/stage", {"version": "2"})  # on one worker
        admin(server.url, "POST", "/admin/models/fraud/promote")  # perhaps on the other: no 409
        time.sleep(1.0)  # the documented bound
        assert {version_for(server.url, f"k{i}") for i in range(30)} == {"2"}
        assert (tmp_path / "state" / "coordinator.db").exists()
    finally:
        server.stop()


SPREAD_PLAN = {
    "name": "spread",
    "interval_s": 0.2,
    "window_s": 60.0,
    "gates": [{"name": "errors", "metric": "error_rate", "mode": "absolute", "threshold": 0.5}],
    "stages": [
        {"name": "canary-5", "weight": 5, "min_duration_s": 1.0, "min_samples": 30},
        {"name": "full", "weight": 100, "min_duration_s": 600.0, "min_samples": 100_000},
    ],
}


def test_a_5_percent_canary_over_three_replicas_advances_on_their_sum_only(tmp_path: Path) -> None:
    from modelserve.routing.hashing import sticky_bucket

    # Keys in the 5 % canary (the hash every replica uses): 12 per replica, 30 needed, 36 in all.
    canary_keys = [k for k in (f"user-{i}" for i in range(5000)) if sticky_bucket("fraud", k) < 500][:36]
    with fleet(tmp_path, f"sqlite://{tmp_path / 'coordinator.db'}") as processes:
        bases = [p.url for p in processes]
        admin(bases[0], "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": SPREAD_PLAN})
        for base in bases:
            on = f"5 % on {base}"
            wait_until(lambda u=base: _policy(u)["canary_weight"] == 5 and _ready(u, "2"), 60, on)
        leader = _leader(processes)
        for base, keys in zip(bases[:2], (canary_keys[:12], canary_keys[12:24]), strict=True):
            assert [version_for(base, k) for k in keys] == ["2"] * 12
        # Two replicas' 24 together, each alone 12: the leader sees 24 < 30 and holds.
        wait_until(lambda: _candidate_samples(leader.url) == 24, 30, "24 samples merged at the leader")
        rollout = _rollout(leader.url)["rollout"]
        assert rollout["stage"] == "canary-5" and rollout["state"] == "running", rollout
        assert [version_for(bases[2], k) for k in canary_keys[24:]] == ["2"] * 12
        wait_until(lambda: _stage_index(leader.url) == 1, 30, "canary-5 passed on 36 samples")
        advanced = [e for e in _rollout(leader.url)["events"] if e["kind"] == "advanced"]
        assert 24 < advanced[0]["data"]["candidate_requests"] <= 36  # more than any two replicas had


def _candidate_samples(base: str) -> int:
    gates = _rollout(base)["rollout"]["gates"]
    return int(gates[0]["samples"]) if gates else 0
