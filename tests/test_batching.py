from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from modelserve import testing
from modelserve.errors import RequestError
from modelserve.serving.runtime import LoadedVersion, RuntimeOptions, load_version


def batched(tmp_path: Path, **options: float) -> LoadedVersion:
    path = testing.mlp(tmp_path / "m.onnx", (16, 32, 4), seed=3)
    opts = RuntimeOptions(
        max_batch_size=int(options.get("size", 32)), max_queue_delay_ms=options.get("delay", 50.0)
    )
    return load_version("m", "1", path, opts)


def test_concurrent_requests_run_as_one_batch_with_identical_results(tmp_path: Path) -> None:
    loaded = batched(tmp_path)
    assert loaded.batcher is not None and loaded.describe()["execution"] == "batched"
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(1 + i % 3, 16)).astype(np.float32) for i in range(12)]
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = (await loaded.infer({"input": requests[i]}))["probabilities"]

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for i in range(len(requests)):
                group.start_soon(one, i)

    anyio.run(main)
    assert loaded.batcher.batches >= 1 and loaded.batcher.batched_rows > 1
    for i, x in enumerate(requests):
        np.testing.assert_allclose(
            results[i], loaded.run({"input": x})["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert results[i].shape == (x.shape[0], 4)


def test_a_full_batch_runs_without_waiting_for_the_delay(tmp_path: Path) -> None:
    loaded = batched(tmp_path, size=4, delay=60_000.0)  # a minute: only filling the batch can release it
    x = np.zeros((1, 16), np.float32)

    async def main() -> None:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(loaded.infer, {"input": x})

    anyio.run(main)
    assert loaded.batcher is not None and loaded.batcher.batches == 1


def test_incompatible_shapes_and_errors_do_not_mix(tmp_path: Path) -> None:
    loaded = batched(tmp_path, delay=20.0)
    errors: list[BaseException] = []
    good: list[np.ndarray] = []

    async def call(x: np.ndarray) -> None:
        try:
            good.append((await loaded.infer({"input": x}))["probabilities"])
        except RequestError as exc:
            errors.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(call, np.zeros((1, 16), np.float32))
            group.start_soon(call, np.zeros((1, 7), np.float32))  # wrong width: its own group, its own error
            group.start_soon(call, np.ones((2, 16), np.float32))

    anyio.run(main)
    assert len(errors) == 1 and len(good) == 2


def test_a_cancelled_caller_does_not_cancel_its_batch(tmp_path: Path) -> None:
    loaded = batched(tmp_path, delay=30.0)
    x = np.zeros((1, 16), np.float32)
    survivor: list[np.ndarray] = []

    async def leader_cancelled() -> None:
        with anyio.move_on_after(0.001):
            await loaded.infer({"input": x})

    async def follower() -> None:
        survivor.append((await loaded.infer({"input": x}))["probabilities"])

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(leader_cancelled)
            group.start_soon(follower)

    anyio.run(main)
    assert len(survivor) == 1


@pytest.mark.parametrize("bad", ["max_batch_size = 0", "max_queue_delay_ms = -1"])
def test_batching_options_are_validated(bad: str) -> None:
    import tomllib

    from modelserve.config import parse_model_config
    from modelserve.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_model_config(tomllib.loads(f"[serving]\n{bad}\n"), where="config.toml")
