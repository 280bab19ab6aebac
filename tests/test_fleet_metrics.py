"""`/metrics` in worker mode: any worker's scrape reports the fleet's totals.

First the summing on two registries in this process (what each worker's collectors yield), then a
real `serve --workers 2`: requests spread over both worker processes, every scrape reports all of
them, and a worker killed with SIGKILL keeps its counts in the total.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelserve import testing
from modelserve.telemetry.fleet_metrics import SUFFIX, WorkerMetrics
from modelserve.testing_processes import ServeProcess


def _worker(directory: Path, requests: int, weight: float, version: str) -> WorkerMetrics:
    registry = CollectorRegistry(auto_describe=False)
    counter = Counter("app_requests", "requests", ["version"], registry=registry)
    histogram = Histogram(
        "app_latency_seconds", "latency", ["version"], buckets=(0.1, 1.0), registry=registry
    )
    Gauge("app_weight", "canary weight", registry=registry).set(weight)
    for i in range(requests):
        counter.labels(version).inc()
        histogram.labels(version).observe(0.05 if i % 2 else 0.5)
    return WorkerMetrics(registry, directory)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # when each worker's series began: its own
    }


def test_counters_and_histograms_add_up_over_workers_and_gauges_stay_the_answering_workers(
    tmp_path: Path,
) -> None:
    a = _worker(tmp_path, 3, 0.05, "1")
    b = _worker(tmp_path, 5, 0.05, "1")
    c = _worker(tmp_path, 2, 0.05, "2")  # a label set that only this worker has seen
    for worker in (a, b, c):
        worker.flush()
    scraped = _samples(generate_latest(a.exposition()).decode())
    assert scraped[("app_requests_total", (("version", "1"),))] == 8
    assert scraped[("app_requests_total", (("version", "2"),))] == 2
    assert scraped[("app_latency_seconds_count", (("version", "1"),))] == 8
    assert scraped[("app_latency_seconds_bucket", (("le", "0.1"), ("version", "1")))] == 1 + 2
    assert scraped[("app_latency_seconds_bucket", (("le", "+Inf"), ("version", "2")))] == 2
    assert scraped[("app_weight", ())] == 0.05  # not 0.15: a gauge is not summed
    assert scraped == _samples(generate_latest(b.exposition()).decode())  # any worker: same totals

    # b exits (or is killed): its last counts stay in the totals.
    scraped = _samples(generate_latest(_worker(tmp_path, 0, 0.0, "1").exposition()).decode())
    assert scraped[("app_requests_total", (("version", "1"),))] == 8


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_this_runs_workers_count_and_a_finished_runs_files_are_removed(tmp_path: Path) -> None:
    """A run is the children of one supervisor: another live run's files are not summed, those of a
    run whose supervisor is gone are deleted by the first flush of the next run."""
    other_run = _worker(tmp_path, 7, 0.0, "1")
    other_run.name = f"1-{other_run.name.split('-', 1)[1]}"  # pid 1 is alive: another run's supervisor
    other_run.flush()
    finished = _worker(tmp_path, 9, 0.0, "1")
    finished.name = f"{_dead_pid()}-{finished.name.split('-', 1)[1]}"
    finished.flush()
    mine = _worker(tmp_path, 2, 0.0, "1")
    mine.flush()
    assert not (tmp_path / finished.name).exists() and (tmp_path / other_run.name).exists()
    scraped = _samples(generate_latest(mine.exposition()).decode())
    assert scraped[("app_requests_total", (("version", "1"),))] == 2


def test_an_unchanged_worker_does_not_rewrite_its_file(tmp_path: Path) -> None:
    worker = _worker(tmp_path, 1, 0.0, "1")
    worker.flush()
    path = tmp_path / worker.name
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    worker.flush()
    assert path.stat().st_mtime_ns == stamp - 10**9


BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def _requests_total(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "modelserve_requests"
        for s in family.samples
        if s.name == "modelserve_requests_total"
    )


def _count_total(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "modelserve_request_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    )


def _scrapes_agree(url: str, expected: int, timeout_s: float) -> list[str]:
    """Scrape on new connections (either worker may answer) until 10 in a row report `expected`."""
    deadline = time.monotonic() + timeout_s
    agreeing: list[str] = []
    while len(agreeing) < 10:
        assert time.monotonic() < deadline, f"scrapes did not all report {expected}: {agreeing}"
        text = httpx.get(f"{url}/metrics", timeout=10).text
        if _requests_total(text) == expected and _count_total(text) == expected:
            agreeing.append(text)
        else:
            agreeing.clear()
            time.sleep(0.1)
    return agreeing


def test_serve_workers_2_metrics_report_the_fleet_total_on_any_worker(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1}})
    state = tmp_path / "state"
    (state / "metrics").mkdir(parents=True)
    stale = state / "metrics" / f"{_dead_pid()}-1-0{SUFFIX}"  # a previous run's: removed
    stale.write_text("[]")
    server = ServeProcess(
        [str(repo), "--state-dir", str(state), "--workers", "2"], log_path=tmp_path / "serve.log"
    ).start()
    try:
        server.wait_ready()
        sent = 0
        deadline = time.monotonic() + 60
        while len(list((state / "metrics").glob(f"*{SUFFIX}"))) < 2 or sent < 60:
            assert time.monotonic() < deadline, "requests did not reach both workers"
            # a new connection each time: the kernel spreads them over both workers
            assert httpx.post(f"{server.url}/v2/models/fraud/infer", json=BODY, timeout=30).status_code == 200
            sent += 1
            time.sleep(0.01)
        _scrapes_agree(server.url, sent, 10.0)
        assert not stale.exists()
        files = sorted((state / "metrics").glob(f"*{SUFFIX}"))
        per_worker = [_requests_total_of_file(path) for path in files]
        assert len(files) == 2 and all(n > 0 for n in per_worker), per_worker  # both served some

        # kill -9 of one worker: its counts stay; uvicorn starts a new worker, totals keep growing.
        victim = int(files[0].name.split("-")[1])
        os.kill(victim, signal.SIGKILL)
        for _ in range(10):
            answer = httpx.post(f"{server.url}/v2/models/fraud/infer", json=BODY, timeout=30)
            sent += answer.status_code == 200
        _scrapes_agree(server.url, sent, 30.0)
    finally:
        server.stop()


def _requests_total_of_file(path: Path) -> float:
    import orjson

    return sum(
        value
        for name, _, _, samples in orjson.loads(path.read_bytes())
        if name == "modelserve_requests"
        for sample_name, _, value in samples
        if sample_name == "modelserve_requests_total"
    )
