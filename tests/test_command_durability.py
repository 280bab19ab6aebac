"""An acknowledged rollout command is durable: the answer waits until the shared backend has it.

The rollout documents are written behind the caller (`state/cached.py`); an operator's command must
not be acknowledged before its state is written, or a kill -9 right after the answer loses it. Here
the backend, a real `redis-server`, is paused (SIGSTOP) while the command is sent: the answer waits
for it, and after a kill -9 of the server that acknowledged it the restarted server shows it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx

from modelserve import testing
from modelserve.testing_processes import RedisServer, ServeProcess, free_port, wait_until

TOKEN = "durable-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = {
    "name": "slow",
    "interval_s": 60.0,
    "stages": [{"name": "canary-10", "weight": 10, "min_duration_s": 600.0, "min_samples": 5}],
}


def rollout_state(url: str) -> str | None:
    answer = httpx.get(f"{url}/admin/models/fraud/rollout", headers=AUTH, timeout=30).json()
    return answer["rollout"]["state"] if answer["rollout"] else None


def test_a_pause_is_answered_only_once_written_and_survives_kill_9(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(free_port(), data_dir=tmp_path / "redis").start()
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    args = [str(repo), "--coordinator", redis_server.url, "--admin-token", TOKEN, "--state-dir"]
    server = ServeProcess([*args, str(tmp_path / "a")], log_path=tmp_path / "a.log").start().wait_ready()
    try:
        started = httpx.post(
            f"{server.url}/admin/models/fraud/rollout", json={"version": "2", "plan": PLAN}, headers=AUTH,
            timeout=60,
        )  # fmt: skip
        assert started.status_code == 200, started.text
        wait_until(lambda: rollout_state(server.url) == "running", 30, "the rollout runs")
        answers: list[httpx.Response] = []

        def pause() -> None:
            answers.append(
                httpx.post(f"{server.url}/admin/models/fraud/rollout/pause", headers=AUTH, timeout=60)
            )

        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        sender = threading.Thread(target=pause)
        try:
            sender.start()
            sender.join(timeout=2.0)
            assert not answers, "acknowledged while the backend could not have it"
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        sender.join(timeout=30)
        assert answers and answers[0].status_code == 200, answers
        assert server.process is not None
        server.process.kill()  # SIGKILL right after the answer
        server.process.wait(timeout=10)
        again = ServeProcess([*args, str(tmp_path / "b")], log_path=tmp_path / "b.log").start().wait_ready()
        try:
            wait_until(lambda: rollout_state(again.url) is not None, 30, "the restored rollout")
            assert rollout_state(again.url) == "paused"
        finally:
            again.stop()
    finally:
        server.stop()
        redis_server.stop()
