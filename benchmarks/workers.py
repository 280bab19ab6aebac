"""Scaling out: `serve --workers 2` vs 1, and how fast a policy change reaches every process.

    python benchmarks/workers.py [--seconds 10] [--connections 16] [--writes 100] [--watchers 4]

In one run:
1. req/s and latency of `modelserve serve --workers 1` and `--workers 2` on the 256-wide model
   (256->512->512->10, V2 JSON), side by side, with wrk. Nothing is pinned: two workers need both
   cores, and wrk shares them (as it would any load generator on this machine).
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


def throughput(seconds: float, connections: int) -> list[list[object]]:
    harness.LOAD_CORE = "0,1"  # wrk may use either core, like the workers
    body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.1] * 256}]}
    )
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = testing.repository(Path(tmp) / "models", {"wide": {"1": 1}}, widths=WIDE)
        base = None
        for workers in (1, 2):
            state = Path(tmp) / f"state-{workers}"
            server = ServeProcess(
                [str(repo), "--state-dir", str(state), "--workers", str(workers)],
                log_path=Path(tmp) / f"serve-{workers}.log",
            )
            server.start()
            try:
                server.wait_ready()
                url = f"{server.url}/v2/models/wide/infer"
                headers = {"content-type": "application/json"}
                harness.wrk(url, body, headers, connections=connections, seconds=2)  # warm-up
                result = harness.wrk(url, body, headers, connections=connections, seconds=seconds)
            finally:
                server.stop()
            base = base or result.requests_per_s
            rows.append([
                f"--workers {workers}", result.requests_per_s, result.requests_per_s / base,
                result.p50_ms, result.p99_ms, result.errors,
            ])  # fmt: skip
    return rows


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
        print(f"\n1. 256-wide model, V2 JSON, wrk -c{args.connections}, {args.seconds:g} s each")
        rows = throughput(args.seconds, args.connections)
        print(table(["server", "req/s", "x 1 worker", "p50 ms", "p99 ms", "errors"], rows))

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
