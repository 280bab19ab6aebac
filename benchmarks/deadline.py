"""The cost of the request deadline on runs in worker threads: with it vs without it, in one run.

    python benchmarks/deadline.py [--calls 2000] [--rounds 15]

The wide 256->512->512->10 MLP forced onto worker threads (as any model slower than ~50 µs runs),
batch 1, one caller, in alternating rounds:
1. `LoadedVersion.infer_measured` without a deadline and with one (30 s, never reached);
2. the embedded `ModelServe.predict` (the whole in-process path: routing, the inference path, its
   observers) on two copies of the model, one with `request_timeout_ms = 0`, one with 30 s.
The table shows the median and the best round of µs per call (wall), the median CPU time per call
of the process (the loop and the worker thread together) and of the event loop's thread alone (where
the deadline's bookkeeping runs), and each ratio to the same path without a deadline. On a host
shared with other work the wall time swings with scheduling, CPU times much less.
Inline runs (µs models) take no deadline, so they cost nothing. To compare two checkouts, run this
file from one with `PYTHONPATH` set to the other's root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import table

from modelserve import testing
from modelserve.config import RuntimeOptions, ServerConfig
from modelserve.server.app import ModelServe
from modelserve.serving.runtime import load_version

WIDE = (256, 512, 512, 10)


def wide_repository(root: Path) -> Path:
    """Two copies of the wide MLP on worker threads: `off` without a deadline, `on` with 30 s."""
    repo = testing.repository(root, {"off": {"1": 1}, "on": {"1": 1}})
    for name, timeout_ms in (("off", 0), ("on", 30_000)):
        testing.mlp(repo / name / "1" / "model.onnx", WIDE)
        (repo / name / "config.toml").write_text(
            f'[serving]\nexecution = "thread"\nrequest_timeout_ms = {timeout_ms}\n'
        )
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds of each variant")
    args = parser.parse_args()
    feeds = {"input": np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)}
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    loop_cpu: dict[str, list[float]] = {}

    async def measure(loaded: object, server: ModelServe) -> None:
        scope: dict[str, object] = {"type": "http", "headers": []}
        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "thread run, no deadline": lambda: loaded.infer_measured(feeds, None, None),  # type: ignore[attr-defined]
            "thread run, deadline 30 s": lambda: loaded.infer_measured(feeds, None, 30.0),  # type: ignore[attr-defined]
            "predict, no deadline": lambda: server.predict(scope, "off", feeds),
            "predict, deadline 30 s": lambda: server.predict(scope, "on", feeds),
        }
        for call in variants.values():  # warm the worker threads
            for _ in range(200):
                await call()
        for _ in range(args.rounds):
            for name, call in variants.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                loop_started = time.thread_time()  # this coroutine runs on the loop's thread
                for _ in range(args.calls):
                    await call()
                results.setdefault(name, []).append((time.perf_counter() - started) / args.calls * 1e6)
                cpu.setdefault(name, []).append((time.process_time() - cpu_started) / args.calls * 1e6)
                loop_cpu.setdefault(name, []).append((time.thread_time() - loop_started) / args.calls * 1e6)

    async def run(repo: Path, loaded: object) -> None:
        server = ModelServe(ServerConfig(repository=repo, state_dir=None))
        async with server.lifespan():
            await measure(loaded, server)

    with tempfile.TemporaryDirectory() as folder:
        repo = wide_repository(Path(folder) / "models")
        path = repo / "on" / "1" / "model.onnx"
        loaded = load_version("wide", "1", path, RuntimeOptions(execution="thread"))
        anyio.run(run, repo, loaded)
    rows = []
    for name, values in results.items():
        base = name.split(",")[0] + ", no deadline"
        wall, base_wall = statistics.median(values), statistics.median(results[base])
        used, base_used = statistics.median(cpu[name]), statistics.median(cpu[base])
        looped, base_looped = statistics.median(loop_cpu[name]), statistics.median(loop_cpu[base])
        rows.append([
            name, f"{wall:.1f}", f"{min(values):.1f}", f"{used:.1f}", f"{looped:.1f}",
            f"{wall / base_wall:.3f}x", f"{used / base_used:.3f}x", f"{looped / base_looped:.3f}x",
        ])  # fmt: skip
    headers = [
        "wide MLP on threads", "median µs", "best µs", "CPU µs", "loop CPU µs", "ratio (median)",
        "ratio (CPU)", "ratio (loop CPU)",
    ]  # fmt: skip
    print(table(headers, rows))

if __name__ == "__main__":
    main()
