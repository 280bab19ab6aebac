"""The cost of the request deadline on runs in worker threads: with it vs without it, in one run.

    python benchmarks/deadline.py [--calls 2000] [--rounds 15]

The wide 256->512->512->10 MLP forced onto worker threads (as any model slower than ~50 µs runs),
batch 1, one caller: `LoadedVersion.infer_measured` without a deadline and with one (30 s, never
reached), in alternating rounds; the table shows the median and the best round of µs per call and
their ratio. Inline runs (µs models) take no deadline, so they cost nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import table

from modelserve import testing
from modelserve.config import RuntimeOptions
from modelserve.serving.runtime import load_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds of each variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = testing.mlp(Path(folder) / "wide.onnx", (256, 512, 512, 10))
        loaded = load_version("wide", "1", path, RuntimeOptions(execution="thread"))
    feeds = {"input": np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)}
    results: dict[str, list[float]] = {"no deadline": [], "deadline 30 s": []}

    async def measure() -> None:
        for _ in range(200):  # warm the worker threads
            await loaded.infer_measured(feeds, None, None)
        for _ in range(args.rounds):
            for name, timeout_s in (("no deadline", None), ("deadline 30 s", 30.0)):
                started = time.perf_counter()
                for _ in range(args.calls):
                    await loaded.infer_measured(feeds, None, timeout_s)
                results[name].append((time.perf_counter() - started) / args.calls * 1e6)

    anyio.run(measure)
    base_median = statistics.median(results["no deadline"])
    base_best = min(results["no deadline"])
    rows = [
        [
            name,
            f"{statistics.median(values):.1f}",
            f"{min(values):.1f}",
            f"{statistics.median(values) / base_median:.3f}x",
            f"{min(values) / base_best:.3f}x",
        ]
        for name, values in results.items()
    ]
    headers = ["thread run, wide MLP", "median µs/call", "best µs/call", "ratio (median)", "ratio (best)"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
