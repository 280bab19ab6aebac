"""The experiment-routed request path: µs per embedded `predict` with an experiment running, per backend.

    python benchmarks/experiment_path.py [--calls 3000]
    PYTHONPATH=/path/to/other/checkout python benchmarks/experiment_path.py   # the same rows there

In one run, on the tiny 16->8->2 MLP (two versions, an A/B experiment over both, a new targeting
key per request so every request counts an assignment and remembers a decision):
1. µs per `ModelServe.predict` with no experiment, and with one running, for the single-process
   default (in-process state) and for a fleet replica on SQLite and on a real `redis-server`. A
   fleet replica only queues the decision and the assignment on the request path; the write to the
   backend happens in batches off the path, so the rows should match within noise.
2. the join: ms to post 1,000 outcomes (one batch) to a fleet replica, per backend, for requests
   served by another replica's service on the same backend.
The median of 7 rounds per row. `redis-server` must be installed (Debian: apt-get install redis-server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import table

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.middleware.routing import RouteContext
from modelserve.routing.decision import ROUTE_KEY
from modelserve.server.app import ModelServe
from modelserve.testing_processes import redis_server

SPEC = {"arms": ["1", "2"], "metric": {"name": "conversion", "kind": "binary"}}


def routed_scope(ms: ModelServe, key: str) -> dict[str, Any]:
    """A request scope as the routing middleware leaves it (targeting key in `x-user-id`)."""
    headers = [(b"x-user-id", key.encode())]
    return {"type": "http", "headers": headers, ROUTE_KEY: RouteContext(ms.services.router, headers)}


async def predict_us(
    repo: Path, coordinator: str | None, state: Path, *, experiment: bool, calls: int
) -> float:
    config = ServerConfig(repository=repo, state_dir=state, load_models=("tiny",), coordinator=coordinator)
    ms = ModelServe(config)
    feeds = {"input": np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)}
    async with ms.lifespan():
        services = ms.services
        await services.registry.stage("tiny", "2")
        if experiment:
            assert services.experiments is not None
            await services.experiments.start("tiny", SPEC)
            scope = routed_scope(ms, "check")
            await ms.predict(scope, "tiny", feeds)
            assert ms.request_id(scope) is not None  # the experiment routes these requests
        n = 0
        rounds = []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(calls):
                n += 1
                await ms.predict(routed_scope(ms, f"user-{n}"), "tiny", feeds)
            rounds.append((time.perf_counter() - started) / calls * 1e6)
            await asyncio.sleep(0.1)  # let the background writers run between rounds, as idle moments do
        if experiment:
            assert services.experiments is not None
            await services.experiments.stop("tiny")
    return statistics.median(rounds)


async def join_ms(repo: Path, coordinator: str, state: Path) -> float:
    """Requests served by replica A (one process's service), 1,000 outcomes posted to replica B."""
    a = ModelServe(ServerConfig(repository=repo, state_dir=state / "a", load_models=("tiny",),
                                coordinator=coordinator, replica_id="a"))  # fmt: skip
    b = ModelServe(ServerConfig(repository=repo, state_dir=state / "b", load_models=("tiny",),
                                coordinator=coordinator, replica_id="b"))  # fmt: skip
    feeds = {"input": np.zeros((1, 16), dtype=np.float32)}
    times = []
    async with a.lifespan(), b.lifespan():
        for ms in (a, b):
            await ms.services.registry.stage("tiny", "2")
        assert a.services.experiments is not None and b.services.experiments is not None
        await a.services.experiments.start("tiny", SPEC)
        await b.services.experiments.refresh("tiny")
        for round_ in range(7):
            ids = []
            for i in range(1000):
                scope = routed_scope(a, f"{round_}-{i}")
                await a.predict(scope, "tiny", feeds)
                ids.append(a.request_id(scope))
            await a.services.experiments.flush()  # type: ignore[attr-defined]
            outcomes = [{"request_id": rid, "value": i % 2} for i, rid in enumerate(ids)]
            started = time.perf_counter()
            result = await b.services.experiments.submit_outcomes(outcomes, model="tiny")
            times.append((time.perf_counter() - started) * 1e3)
            assert result["accepted"] == 1000, result
        await a.services.experiments.stop("tiny")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--single", action="store_true", help="the single-process row only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis:
        root = Path(tmp)
        repo = testing.repository(root / "models", {"tiny": {"1": 1, "2": 2}})
        (repo / "tiny" / "config.toml").write_text('live = "1"\n')
        backends: dict[str, str | None] = {
            "single process (in-process state)": None,
            "fleet replica, SQLite": f"sqlite://{root / 'coordinator.db'}",
            "fleet replica, Redis": redis.url,
        }
        rows = []
        base: float | None = None
        if args.single:
            backends = {name: url for name, url in backends.items() if url is None}
        for i, (name, url) in enumerate(backends.items()):
            plain = asyncio.run(predict_us(repo, url, root / f"s{i}", experiment=False, calls=args.calls))
            routed = asyncio.run(predict_us(repo, url, root / f"e{i}", experiment=True, calls=args.calls))
            base = base if base is not None else routed
            rows.append(
                [name, f"{plain:.1f}", f"{routed:.1f}", f"{routed - plain:+.1f}", f"{routed / base:.2f}"]
            )
        print("\nµs per ModelServe.predict (tiny model), median of 7 rounds of", args.calls)
        print(table(["state", "no experiment", "experiment", "experiment cost", "x single process"], rows))
        join_rows: list[list[object]] = []
        for name, url in list(backends.items())[1:]:
            try:
                ms = asyncio.run(join_ms(repo, str(url), root / f"join-{len(join_rows)}"))
            except Exception as exc:  # e.g. a checkout without the shared join
                join_rows.append([name, f"n/a ({exc.__class__.__name__})"])
                continue
            join_rows.append([name, f"{ms:.1f}"])
        print(
            "\nfeedback join: 1,000 outcomes posted to replica B for requests replica A served (median of 7)"
        )
        if join_rows:
            print(table(["backend", "ms per 1,000 (= µs per outcome)"], join_rows))


if __name__ == "__main__":
    main()
