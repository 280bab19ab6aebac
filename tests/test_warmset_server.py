"""The warm set through a real server: `rollback --to` under load, `load`/`unload`, the repository
extension, the memory budget, and the CLI commands, on three real credit versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import RunningServer, serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "t"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = orjson.dumps(json.loads((EXAMPLES / "req.json").read_text()))
CYCLES = 50


def credit_repo(root: Path, config: str) -> Path:
    """The shipped credit model (versions 1 and 2) plus a version 3 (a copy of 2), in `root`."""
    repo = root / "models"
    shutil.copytree(EXAMPLES / "models" / "credit", repo / "credit")
    shutil.copytree(repo / "credit" / "2", repo / "credit" / "3")
    (repo / "credit" / "config.toml").write_text('live = "1"\n[serving]\nintra_op_threads = 1\n' + config)
    return repo


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    repo = credit_repo(tmp_path, "keep_warm = 3\n")
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    with serve(app) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield server, client


def cli(server: RunningServer, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSERVE_ADMIN_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "modelserve.cli", *argv, "--url", server.url],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def post(client: httpx.Client, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_rollback_to_1_after_promoting_1_2_3_fails_no_request_under_load(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    server, admin = running
    for version in ("2", "3"):
        post(admin, "/admin/models/credit/stage", {"version": version})
        post(admin, "/admin/models/credit/promote")
    status = admin.get("/admin/models/credit").json()
    assert [(row["version"], row["role"]) for row in status["warm"]] == [
        ("1", "warm"),
        ("2", "previous"),
        ("3", "live"),
    ]
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v2/models/credit/infer", content=BODY)
                with lock:
                    statuses[response.status_code] += 1
                    versions[response.headers.get("x-model-version", "?")] += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    stale, effects = 0, []
    try:
        for _ in range(CYCLES):
            for path, body, expected in (
                ("/admin/models/credit/rollback", {"to": "1"}, "1"),
                ("/admin/models/credit/promote", None, "3"),  # 3 became the candidate again
            ):
                switch = post(admin, path, body)["switch"]
                assert switch["to_version"] == expected
                effects.append(switch["effect_us"])
                seen = admin.post("/v2/models/credit/infer", content=BODY).headers["x-model-version"]
                stale += seen != expected
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert stale == 0
    assert set(statuses) == {200}, statuses
    assert set(versions) == {"1", "3"} and sum(statuses.values()) > CYCLES
    assert all(isinstance(effect, float) and effect > 0 for effect in effects)
    final = admin.get("/admin/models/credit").json()
    assert final["live_version"] == "3" and final["history"] == ["1"]
    assert {row["version"] for row in final["warm"]} == {"1", "2", "3"}  # nothing was loaded or evicted


def test_cli_load_rollback_to_unload_and_status_show_the_warm_set(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    server, admin = running
    loaded = cli(server, "load", "credit", "3")
    assert loaded.returncode == 0, loaded.stderr
    assert "version 3 warm (memory" in loaded.stdout and "1 (live)" in loaded.stdout
    staged = cli(server, "stage", "credit", "2")
    assert staged.returncode == 0, staged.stderr
    promoted = cli(server, "promote", "credit")
    assert promoted.returncode == 0 and "promote 1 -> 2" in promoted.stdout
    back = cli(server, "rollback", "credit", "--to", "3")
    assert back.returncode == 0, back.stderr
    assert "rollback 2 -> 3" in back.stdout
    everything = cli(server, "status")
    assert everything.returncode == 0 and "memory: warm versions use " in everything.stdout
    assert "(no --memory-budget)" in everything.stdout
    status = cli(server, "status", "credit")
    assert status.returncode == 0, status.stderr
    assert "version 3 (live, slot green, pinned): READY" in status.stdout
    assert "version 1 (previous, slot blue)" in status.stdout and "memory " in status.stdout
    refused = cli(server, "unload", "credit", "3")
    assert refused.returncode == 1 and "is live" in refused.stderr
    unloaded = cli(server, "unload", "credit", "1")
    assert unloaded.returncode == 0, unloaded.stderr
    warm = [row["version"] for row in admin.get("/admin/models/credit").json()["warm"]]
    assert warm == ["2", "3"]
    cold = cli(server, "rollback", "credit", "--to", "1")
    assert cold.returncode == 1 and "not warm" in cold.stderr and "modelserve load credit 1" in cold.stderr


def test_repository_extension_load_and_unload_map_onto_the_warm_set(
    running: tuple[RunningServer, httpx.Client],
) -> None:
    _, client = running
    base = "/v2/repository/models/credit"
    assert client.post(base + "/load", json={"parameters": {"version": "3"}}).status_code == 200
    index = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [entry["version"] for entry in index] == ["1", "3"]
    assert client.get("/v2/models/credit/versions/3/ready").status_code == 200
    assert client.post(base + "/unload", json={"parameters": {"version": "3"}}).status_code == 200
    assert client.get("/v2/models/credit/versions/3/ready").status_code == 404
    live = client.post(base + "/unload", json={"parameters": {"version": "1"}})
    assert live.status_code == 409 and "is live" in live.json()["error"]
    bad = client.post(base + "/load", json={"parameters": {"version": True}})
    assert bad.status_code == 400 and "parameters.version" in bad.json()["error"]
    assert client.post(base + "/unload").status_code == 200  # no version: the whole model
    assert client.get("/v2/models/credit/ready").status_code == 503


def test_a_load_past_the_memory_budget_is_refused_and_status_shows_memory(tmp_path: Path) -> None:
    repo = credit_repo(tmp_path, "")
    config = ServerConfig(
        repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN, memory_budget=1024**3
    )
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        listing = client.get("/admin/models").json()
        memory = listing["memory"]
        assert memory["budget_bytes"] == 1024**3 and memory["used_bytes"] > 0
        shown = cli(server, "status")
        assert shown.returncode == 0 and "of the 1.0 GiB budget (" in shown.stdout
        row = listing["models"][0]["warm"][0]
        assert row["version"] == "1" and row["memory"]["resident_bytes"] >= row["memory"]["file_bytes"] > 0
        post(client, "/admin/models/credit/stage", {"version": "2"})
        # Shrink the budget to what is in use: the next load is refused, naming what could go.
        server.server.config.app.state.services.registry.memory_budget = client.get("/admin/models").json()[
            "memory"
        ]["used_bytes"]
        refused = client.post("/admin/models/credit/load", json={"version": "3"})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert "memory budget" in error and "modelserve unload credit 2" in error and "Nothing was" in error
        warm = [(r["version"], r["role"]) for r in client.get("/admin/models/credit").json()["warm"]]
        assert warm == [("1", "live"), ("2", "candidate")]


def test_serve_rejects_a_malformed_memory_budget(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "serve", str(tmp_path), "--memory-budget", "lots"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "--memory-budget: invalid size 'lots'" in result.stderr
