"""Opt-in fault injection from config.toml `[testing]`: validated, seeded, visible, off by default."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from modelserve import testing
from modelserve.config import load_model_config, parse_model_config
from modelserve.errors import ConfigError, InferenceError
from modelserve.serving.faults import FaultSpec, FaultyRun, InjectedFault, fault_for
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.store import MemoryStateStore

FEEDS = {"input": np.full((1, 16), 0.25, dtype=np.float32)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_no_testing_table_means_no_faults() -> None:
    assert fault_for({}, "2") is None
    assert fault_for({"faults": {"3": {"error_rate": 0.5}}}, "2") is None
    assert load_model_config(Path("/nonexistent/config.toml")).testing == {}


def test_inline_and_table_forms_parse_to_the_same_spec() -> None:
    inline = parse_model_config(
        {"testing": {"faults": {"2": {"error_rate": 0.05, "extra_latency_ms": 3}}}}, where="c.toml"
    )
    spec = fault_for(inline.testing, "2")
    assert spec == FaultSpec(error_rate=0.05, extra_latency_ms=3.0)
    assert spec is not None and spec.slows


@pytest.mark.parametrize(
    ("testing_table", "message"),
    [
        ({"fault": {}}, "unknown key(s) fault"),
        ({"faults": {"2": {"error_rate": 1.5}}}, "error_rate must be within 0..1"),
        ({"faults": {"2": {"error_rat": 0.1}}}, "unknown key(s) error_rat"),
        ({"faults": {"2": {"hang": "yes"}}}, "hang must be true or false"),
        ({"faults": {"2": {"latency_factor": 0.5}}}, "latency_factor must be >= 1"),
        ({"faults": {"2": {"extra_latency_ms": -1}}}, "must be a number >= 0"),
        ({"faults": {"2": 0.05}}, "must be a table"),
    ],
)
def test_config_rejects_bad_fault_settings_naming_the_key(testing_table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_config({"testing": testing_table}, where="models/fraud/config.toml")


def test_error_draws_are_seeded_so_the_same_runs_fail_every_time() -> None:
    def failures(seed: int) -> list[int]:
        run = FaultyRun(lambda *a: "ok", FaultSpec(error_rate=0.2, seed=seed))
        failed = []
        for i in range(500):
            try:
                run()
            except InjectedFault:
                failed.append(i)
        assert run.calls == 500 and run.errors == len(failed)
        return failed

    first = failures(3)
    assert first == failures(3) != failures(4)
    assert 60 < len(first) < 140


def test_latency_fault_adds_the_extra_time_and_multiplies_the_run() -> None:
    def slow_model(*args: object) -> str:
        time.sleep(0.002)
        return "ok"

    run = FaultyRun(slow_model, FaultSpec(extra_latency_ms=5.0, latency_factor=3.0))
    started = time.perf_counter()
    assert run() == "ok"
    assert time.perf_counter() - started >= 0.002 * 3 + 0.005


def test_extra_latency_is_spent_computing_so_the_threads_cpu_time_sees_it() -> None:
    run = FaultyRun(lambda *a: "ok", FaultSpec(extra_latency_ms=5.0))
    started = time.thread_time()
    assert run() == "ok"
    assert time.thread_time() - started >= 0.005  # a sleep would add wall time only


def test_hang_blocks_for_hang_s_then_fails() -> None:
    run = FaultyRun(lambda *a: "ok", FaultSpec(hang=True, hang_s=0.01))
    with pytest.raises(InjectedFault, match="hang"):
        run()


def _repo(root: Path, testing_table: str) -> ModelRegistry:
    repo = testing.repository(root, {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text(f'live = "1"\n{testing_table}\n')
    return ModelRegistry(ModelRepository(repo), MemoryStateStore())


@pytest.mark.anyio
async def test_registry_applies_faults_to_the_named_version_only_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = _repo(
        tmp_path / "models", '[testing.faults."2"]\nerror_rate = 1.0\n[testing.faults."3"]\nhang = true'
    )
    with caplog.at_level(logging.WARNING, logger="modelserve.serving"):
        slots = await registry.load_model("fraud")
        assert "FAULT INJECTION" not in caplog.text  # version 1 is clean
        staged = await registry.stage("fraud", "2")
    assert "fraud version 2: FAULT INJECTION ACTIVE" in caplog.text
    assert staged.ready  # the warm-up ran clean
    assert staged.describe()["injected_faults"] == FaultSpec(error_rate=1.0).describe()
    assert "injected_faults" not in slots.live.describe()  # type: ignore[union-attr]
    with pytest.raises(InferenceError, match="injected fault"):
        await staged.infer(FEEDS)
    assert (await registry.resolve("fraud").infer(FEEDS))["probabilities"].shape == (1, 2)  # live: clean


@pytest.mark.anyio
async def test_a_slowed_version_runs_in_worker_threads_never_on_the_event_loop(tmp_path: Path) -> None:
    registry = _repo(tmp_path / "models", '[testing.faults."2"]\nextra_latency_ms = 20.0')
    await registry.load_model("fraud")
    staged = await registry.stage("fraud", "2")
    assert not staged.inline and staged.describe()["execution"] == "thread"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        await staged.infer(FEEDS)
        group.cancel_scope.cancel()
    assert ticks > 2  # the loop kept running while the version slept


@pytest.mark.anyio
async def test_a_run_reports_its_thread_cpu_time_on_a_worker_thread(tmp_path: Path) -> None:
    registry = _repo(tmp_path / "models", '[testing.faults."2"]\nextra_latency_ms = 5.0')
    await registry.load_model("fraud")
    staged = await registry.stage("fraud", "2")
    outputs, compute_s = await staged.infer_measured(FEEDS)
    assert set(outputs) == set(staged.output_names)
    assert compute_s is not None and compute_s >= 0.005  # measured on the thread that ran it


@pytest.mark.anyio
async def test_a_config_with_invalid_faults_keeps_the_model_from_loading(tmp_path: Path) -> None:
    registry = _repo(tmp_path / "models", '[testing.faults."2"]\nseed = 1.5')
    with pytest.raises(ConfigError, match=r"config.toml \[testing.faults.2\] seed must be an integer"):
        await registry.load_model("fraud")
