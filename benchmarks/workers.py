"""Scaling out: `serve --workers 2` vs 1, and how fast a policy change reaches every process.

    python benchmarks/workers.py [--seconds 10] [--rounds 3] [--connections 16] [--writes 100] [--watchers 4]

In one run:
1. req/s and latency of `modelserve serve --workers 1` and `--workers 2` on the 256-wide model
   (256->512->512->10, V2 JSON), side by side, with wrk, in `--rounds` alternating rounds (1, 2, 1,
   2, ...: a noisy host weighs on both alike); the median of each and their ratio, every round's
   figures, and how the requests split over the two workers. Nothing is pinned: two workers need
   both cores, and wrk shares them (as it would any load generator on this machine). Measuring starts
   only once every worker published itself in the shared state: `/v2/health/ready` answers as soon
   as one worker is ready, and wrk's keep-alive connections opened before the second one listens all
   stay on the first (earlier runs measured that: 1.38x).
2. Policy propagation per shared backend (SQLite, Redis): a writer process changes a model's
   desired-state document `--writes` times; `--watchers` other processes each watch the coordinator
   and re-read the document when told (what policy sync does before its in-memory swap). Reported:
   p50 / p99 / max of (re-read done - write started) over every (write, watcher), wall clock of one
   machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import harness
from harness import table

from modelserve import testing
from modelserve.state.coordinator import Coordinator, open_coordinator
from modelserve.testing_processes import ServeProcess, redis_server

WIDE = (256, 512, 512, 10)
#: Between writes: longer than SQLite's 50 ms poll, so each write is seen on its own (not coalesced).
GAP_S = 0.1
KEY = "model.bench"


def _all_workers_up(state: Path, workers: int, timeout_s: float = 120.0) -> None:
    """Wait until `workers` replicas published themselves in the shared state (SQLite)."""

    async def count() -> int:
        coordinator = open_coordinator(f"sqlite://{state / 'coordinator.db'}", state_dir=None, replica="")
        await coordinator.open()
        try:
            return len(await coordinator.snapshots("replicas"))
        finally:
            await coordinator.aclose()

    deadline = time.monotonic() + timeout_s
    while asyncio.run(count()) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not all start within {timeout_s} s")
        time.sleep(0.2)


def _requests_per_worker(state: Path) -> dict[str, int]:
    """Requests each worker served, from the files `/metrics` sums (`telemetry/fleet_metrics.py`)."""
    counts = {}
    for path in sorted((state / "metrics").glob("*.metrics.json")):
        families = orjson.loads(path.read_bytes())
        counts[path.name] = int(sum(
            value for name, _, _, samples in families if name == "modelserve_requests"
            for sample, _, value in samples if sample == "modelserve_requests_total"
        ))  # fmt: skip
    return counts


Rows = list[list[object]]


def throughput(seconds: float, connections: int, rounds: int) -> tuple[Rows, Rows]:
    """Medians per server (with the ratio), and every round's figures."""
    harness.LOAD_CORE = "0,1"  # wrk may use either core, like the workers
    body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.1] * 256}]}
    )
    results: dict[int, list[harness.LoadResult]] = {1: [], 2: []}
    per_round: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = testing.repository(Path(tmp) / "models", {"wide": {"1": 1}}, widths=WIDE)
        for round_index in range(rounds):
            for workers in (1, 2):
                state = Path(tmp) / f"state-{workers}-{round_index}"
                server = ServeProcess(
                    [str(repo), "--state-dir", str(state), "--workers", str(workers)],
                    log_path=Path(tmp) / f"serve-{workers}-{round_index}.log",
                )
                server.start()
                try:
                    server.wait_ready()
                    if workers > 1:
                        _all_workers_up(state, workers)
                    url = f"{server.url}/v2/models/wide/infer"
                    headers = {"content-type": "application/json"}
                    harness.wrk(url, body, headers, connections=connections, seconds=2)  # warm-up
                    before = _requests_per_worker(state) if workers > 1 else {}
                    result = harness.wrk(url, body, headers, connections=connections, seconds=seconds)
                    time.sleep(1.5)  # every worker's counts written (each second)
                    after = _requests_per_worker(state) if workers > 1 else {}
                finally:
                    server.stop()
                results[workers].append(result)
                served = sorted((n - before.get(name, 0) for name, n in after.items()), reverse=True)
                split = "/".join(str(n) for n in served) or "-"
                per_round.append([round_index + 1, f"--workers {workers}", result.requests_per_s,
                                  result.p50_ms, result.p99_ms, result.errors, split])  # fmt: skip
    base = statistics.median(r.requests_per_s for r in results[1])
    rows: list[list[object]] = []
    for workers in (1, 2):
        found = results[workers]
        median = statistics.median(r.requests_per_s for r in found)
        rows.append([
            f"--workers {workers}", median, median / base, statistics.median(r.p50_ms for r in found),
            statistics.median(r.p99_ms for r in found), sum(r.errors for r in found),
        ])  # fmt: skip
    return rows, per_round


async def _watch(url: str, out: Path, count: int) -> None:
    coordinator = open_coordinator(url, state_dir=None, replica="")
    await coordinator.open()
    seen: dict[int, float] = {}
    ready = out.with_suffix(".ready")
    async with asyncio.timeout(300):
        async for keys in _watching(coordinator, ready):
            if KEY in keys:
                doc = await coordinator.get(KEY)
                if doc is not None and "i" in doc.body:
                    seen.setdefault(int(doc.body["i"]), time.time() - float(doc.body["t"]))
                    if len(seen) >= count or int(doc.body["i"]) == count - 1:
                        break
    out.write_bytes(orjson.dumps(seen, option=orjson.OPT_NON_STR_KEYS))
    await coordinator.aclose()


async def _watching(coordinator: Coordinator, ready: Path):  # type: ignore[no-untyped-def]
    iterator = coordinator.watch().__aiter__()
    first = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0.3)  # the subscription is in place
    ready.touch()
    yield await first
    async for keys in iterator:
        yield keys


async def _write(url: str, writes: int, gap_s: float) -> None:
    coordinator = open_coordinator(url, state_dir=None, replica="")
    await coordinator.open()
    for i in range(writes):
        await coordinator.put(KEY, {"i": i, "t": time.time()})
        await asyncio.sleep(gap_s)
    await coordinator.aclose()


def propagation(url: str, writes: int, watchers: int, tmp: Path) -> list[float]:
    outs = [tmp / f"watch-{i}.json" for i in range(watchers)]
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--watch", url, "--out", str(out), "--writes", str(writes)]
        )
        for out in outs
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(o.with_suffix(".ready").exists() for o in outs):
            if time.monotonic() > deadline:
                raise TimeoutError("watchers did not start")
            time.sleep(0.05)
        asyncio.run(_write(url, writes, GAP_S))
        for process in processes:
            process.wait(timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    latencies: list[float] = []
    for out in outs:
        latencies += [float(v) for v in orjson.loads(out.read_bytes()).values()]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--watchers", type=int, default=4)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:  # a watcher process of part 2
        asyncio.run(_watch(args.watch, Path(args.out), args.writes))
        return

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    if not args.skip_http:
        print(f"\n1. 256-wide model, V2 JSON, wrk -c{args.connections}, {args.seconds:g} s each, "
              f"{args.rounds} alternating rounds; medians:")  # fmt: skip
        rows, per_round = throughput(args.seconds, args.connections, args.rounds)
        print(table(["server", "req/s", "x 1 worker", "p50 ms", "p99 ms", "errors"], rows))
        print("\nevery round (requests per worker while measured):")
        print(table(["round", "server", "req/s", "p50 ms", "p99 ms", "errors", "per worker"], per_round))

    print(f"\n2. policy propagation: {args.writes} writes, {args.watchers} watcher processes")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis:
        for name, url in (("sqlite", f"sqlite://{Path(tmp) / 'c.db'}"), ("redis", redis.url)):
            folder = Path(tmp) / name
            folder.mkdir()
            found = propagation(url, args.writes, args.watchers, folder)
            ordered = sorted(found)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            rows.append([name, len(found), statistics.median(found) * 1e3, p99 * 1e3, ordered[-1] * 1e3])
    print(table(["backend", "samples", "p50 ms", "p99 ms", "max ms"], rows))
    print("(bound promised in docs/scaling.md: every change applied everywhere within 1 s)")


if __name__ == "__main__":
    main()
