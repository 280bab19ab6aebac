"""1,000 promote/rollback switches under continuous load: no failed request, no stale version."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import orjson

from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import serve

BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.1] * 16}]})
SWITCHES = 1000


def test_switches_under_load_fail_no_request(tmp_path: Path, model_repo: Path) -> None:
    (model_repo / "fraud" / "config.toml").write_text('live = "1"\n')
    app = create_app(ServerConfig(repository=model_repo, state_dir=tmp_path / "state", admin_token="t"))
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    with serve(app) as server:

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    response = client.post("/v2/models/fraud/infer", content=BODY)
                    with lock:
                        statuses[response.status_code] += 1
                        versions[response.headers.get("x-model-version", "?")] += 1

        workers = [threading.Thread(target=load) for _ in range(3)]
        for worker in workers:
            worker.start()
        auth = {"authorization": "Bearer t"}
        stale = 0
        with httpx.Client(base_url=server.url, timeout=30, headers=auth) as admin:
            assert admin.post("/admin/models/fraud/stage", json={"version": "2"}).status_code == 200
            for i in range(SWITCHES):
                action = "promote" if i % 2 == 0 else "rollback"
                switched = admin.post(f"/admin/models/fraud/{action}")
                assert switched.status_code == 200, switched.text
                expected = switched.json()["switch"]["to_version"]
                seen = admin.post("/v2/models/fraud/infer", content=BODY).headers["x-model-version"]
                stale += seen != expected
        stop.set()
        for worker in workers:
            worker.join()

    assert stale == 0
    assert set(statuses) == {200}, statuses
    assert set(versions) == {"1", "2"}
    assert sum(statuses.values()) > SWITCHES
