"""ShadowRunner: isolation of the primary from failing, hanging and disagreeing shadow versions."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelserve.shadow.runner import ShadowResult, ShadowRunner
from modelserve.shadow.stats import wilson_interval

Outputs = dict[str, np.ndarray]


class ManualClock:
    """A clock the test moves by hand, so deadlines pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _classifier(path: Path, bias: tuple[float, float]) -> ort.InferenceSession:
    """scores = x @ I + bias for x of shape [batch, 2]: a real two-class ONNX model."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["scores"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(np.eye(2, dtype=np.float32), "w"),
            numpy_helper.from_array(np.array(bias, dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every supported onnxruntime
    onnx.save(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _scores(session: ort.InferenceSession, inputs: Outputs) -> Outputs:
    return {"scores": session.run(None, inputs)[0]}


def _runner(**kwargs: object) -> ShadowRunner:
    return ShadowRunner(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def runners() -> Iterator[list[ShadowRunner]]:
    made: list[ShadowRunner] = []
    yield made
    for runner in made:
        runner.close(timeout=5)


def _submit(
    runner: ShadowRunner, run: Callable[[], Outputs], *, inline: bool = False, **extra: object
) -> bool:
    primary = {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}
    fields = dict(model="fraud", primary_version="1", shadow_version="2", run=run,
                  inputs={"x": np.array([[1.0, 0.0]], dtype=np.float32)}, primary_outputs=primary,
                  primary_latency_s=1e-4, request_id="req", **extra)  # fmt: skip
    return runner.run_inline(**fields) if inline else runner.submit(**fields)  # type: ignore[arg-type]


def _shadow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("modelserve-shadow-")]


def test_a_shadow_that_always_raises_is_counted_and_never_reaches_the_caller(
    runners: list[ShadowRunner],
) -> None:
    runner = _runner(max_workers=1, max_in_flight=1000, timeout_s=60)
    runners.append(runner)

    def broken() -> Outputs:
        raise RuntimeError("candidate exploded")

    accepted = [_submit(runner, broken) for _ in range(500)]
    assert runner.wait_idle(timeout=30)
    snap = runner.stats("fraud", "2").snapshot()
    assert all(accepted)
    assert (snap["errors"], snap["samples"], snap["timeouts"]) == (500, 0, 0)
    assert snap["last_error"] == "RuntimeError: candidate exploded"


def test_a_hanging_shadow_causes_drops_and_timeouts_without_thread_growth(
    runners: list[ShadowRunner],
) -> None:
    clock, release = ManualClock(), threading.Event()
    runner = _runner(max_workers=2, max_in_flight=4, timeout_s=0.5, clock=clock)
    runners.append(runner)
    threads_before = set(threading.enumerate())  # others' threads may end meanwhile; none may start
    hung = {"scores": np.array([[0.1, 0.9]], dtype=np.float32)}

    def hangs() -> Outputs:
        release.wait()
        return hung

    try:
        accepted = sum(_submit(runner, hangs) for _ in range(10_000))
        assert accepted == 4 and runner.in_flight == 4
        assert set(threading.enumerate()) <= threads_before
        assert len(_shadow_threads()) >= 2 and len(runner.threads) == 2
        clock.now += 1.0  # every admitted run is now overdue
        assert sum(_submit(runner, hangs) for _ in range(10_000)) == 0
        snap = runner.snapshot("fraud")[0]
        assert (snap["dropped"], snap["timeouts"], snap["samples"]) == (19_996, 4, 0)
        assert set(threading.enumerate()) <= threads_before
        assert all(thread.is_alive() for thread in runner.threads)
    finally:
        release.set()
    assert runner.wait_idle(timeout=30)
    snap = runner.snapshot("fraud")[0]
    assert (snap["timeouts"], snap["samples"], snap["errors"]) == (4, 0, 0)  # late results not compared
    assert _submit(runner, lambda: hung) and runner.wait_idle(timeout=30)
    assert runner.snapshot("fraud")[0]["samples"] == 1  # the slots came back


def test_runs_queued_behind_a_hung_one_expire_without_running(runners: list[ShadowRunner]) -> None:
    clock, release, ran = ManualClock(), threading.Event(), threading.Event()
    runner = _runner(max_workers=1, max_in_flight=3, timeout_s=0.5, clock=clock)
    runners.append(runner)
    started = threading.Event()

    def hangs() -> Outputs:
        started.set()
        release.wait()
        return {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}

    def must_not_run() -> Outputs:
        ran.set()
        return {}

    assert _submit(runner, hangs) and started.wait(10)
    assert _submit(runner, must_not_run) and _submit(runner, must_not_run)
    clock.now += 1.0
    release.set()
    assert runner.wait_idle(timeout=30)
    assert not ran.is_set()
    assert runner.stats("fraud", "2").snapshot()["timeouts"] == 3


def test_timeouts_say_whether_the_model_ran_and_how_much_it_computed(runners: list[ShadowRunner]) -> None:
    # The gates count a shadow timeout against the model only when it ran and used its budget:
    # a run that waited in the queue, or one a busy host starved of CPU, is the host's doing.
    clock, release = ManualClock(), threading.Event()
    results: list[ShadowResult] = []
    runner = _runner(max_workers=1, max_in_flight=3, timeout_s=0.5, clock=clock, on_result=results.append)
    runners.append(runner)
    started = threading.Event()

    def waits() -> Outputs:  # blocked, computing nothing: what a starved thread looks like
        started.set()
        release.wait()
        return {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}

    assert _submit(runner, waits) and started.wait(10)
    assert _submit(runner, waits)  # queued behind it
    clock.now += 1.0
    release.set()
    assert runner.wait_idle(timeout=30)
    by_ran = {r.ran: r for r in results}
    assert all(r.timed_out for r in results) and set(by_ran) == {True, False}
    late = by_ran[True]
    assert late.budget_s == 0.5 and late.compute_s is not None and late.compute_s < late.budget_s


def test_measured_agreement_matches_the_designed_disagreement(
    tmp_path: Path, runners: list[ShadowRunner]
) -> None:
    # primary: argmax(x0, x1); shadow: argmax(x0 + 0.4, x1). For x uniform on the unit square they
    # disagree exactly when x0 < x1 <= x0 + 0.4: probability 0.4 - 0.4**2 / 2 = 0.32.
    primary = _classifier(tmp_path / "1.onnx", (0.0, 0.0))
    shadow = _classifier(tmp_path / "2.onnx", (0.4, 0.0))
    runner = _runner(max_workers=1, max_in_flight=3000, timeout_s=60)
    runners.append(runner)
    rng = np.random.default_rng(42)
    for i in range(3000):
        inputs = {"x": rng.random((1, 2), dtype=np.float32)}
        primary_outputs = _scores(primary, inputs)
        assert runner.submit(
            model="fraud", primary_version="1", shadow_version="2", inputs=inputs,
            run=functools.partial(_scores, shadow, inputs),
            primary_outputs=primary_outputs, primary_latency_s=1e-5, request_id=f"r{i}",
        )  # fmt: skip
    assert runner.wait_idle(timeout=60)
    snap = runner.snapshot("fraud")[0]
    low, high = wilson_interval(snap["agreeing_rows"], snap["rows"])
    assert snap["rows"] == 3000 and low <= 0.68 <= high
    assert snap["agreement_interval"] == [low, high]
    assert len(snap["disagreements"]) == 50
    for example in snap["disagreements"]:
        x = np.array(example["inputs"]["x"], dtype=np.float32)
        assert x[0, 0] < x[0, 1] <= x[0, 0] + 0.4 + 1e-6  # genuinely in the disagreement region
        assert np.argmax(example["primary"]["scores"]) == 1 and np.argmax(example["shadow"]["scores"]) == 0
        assert example["shadow"]["scores"][0] == pytest.approx(shadow.run(None, {"x": x})[0][0].tolist())


def test_run_inline_runs_on_the_calling_thread(runners: list[ShadowRunner]) -> None:
    runner = _runner(max_workers=1, max_in_flight=2, timeout_s=60)
    runners.append(runner)
    seen: list[threading.Thread] = []

    def shadow() -> Outputs:
        seen.append(threading.current_thread())
        return {"scores": np.array([[0.2, 0.8]], dtype=np.float32)}

    assert _submit(runner, shadow, inline=True)
    assert seen == [threading.current_thread()]
    snap = runner.stats("fraud", "2").snapshot()
    assert (snap["samples"], snap["agreeing_rows"], len(snap["disagreements"])) == (1, 0, 1)


def test_an_inline_timeout_bars_the_version_from_inline_runs(runners: list[ShadowRunner]) -> None:
    clock = ManualClock()
    runner = _runner(max_workers=1, max_in_flight=2, timeout_s=0.5, clock=clock)
    runners.append(runner)

    def slow() -> Outputs:
        clock.now += 1.0  # returns after its deadline
        return {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}

    assert runner.inline_allowed("fraud", "2")
    assert _submit(runner, slow, inline=True)
    assert not runner.inline_allowed("fraud", "2")
    assert not _submit(runner, slow, inline=True)
    snap = runner.stats("fraud", "2").snapshot()
    assert (snap["timeouts"], snap["samples"]) == (1, 0)
    runner.forget("fraud", "2")
    assert runner.inline_allowed("fraud", "2")


def test_on_result_sees_every_outcome_with_the_callers_context(runners: list[ShadowRunner]) -> None:
    results: list[ShadowResult] = []

    def hook(result: ShadowResult) -> None:
        results.append(result)
        raise ValueError("a broken hook must not break shadowing")

    runner = _runner(max_workers=1, max_in_flight=10, timeout_s=60, on_result=hook)
    runners.append(runner)

    def broken() -> Outputs:
        raise KeyError("x")

    assert _submit(runner, lambda: {"scores": np.array([[0.7, 0.3]], dtype=np.float32)}, context="span-1")
    assert _submit(runner, broken, context="span-2")
    assert runner.wait_idle(timeout=30)
    by_context = {r.context: r for r in results}
    ok, failed = by_context["span-1"], by_context["span-2"]
    assert ok.comparison is not None and ok.comparison.agree and ok.error is None
    assert ok.start_time_ns is not None and ok.end_time_ns >= ok.start_time_ns
    assert failed.comparison is None and failed.error == "KeyError: 'x'"
    assert runner.hook_errors == 2


def test_unknown_comparison_is_recorded_as_a_shadow_error(runners: list[ShadowRunner]) -> None:
    runner = _runner(max_workers=1, max_in_flight=10, timeout_s=60)
    runners.append(runner)
    assert _submit(runner, lambda: {"scores": np.array([[0.7, 0.3]])}, compare="cosine")
    assert runner.wait_idle(timeout=30)
    assert "unknown shadow comparison" in runner.stats("fraud", "2").snapshot()["last_error"]


def test_stats_are_kept_per_model_and_shadow_version(runners: list[ShadowRunner]) -> None:
    runner = _runner(max_workers=2, max_in_flight=10, timeout_s=60)
    runners.append(runner)
    out = {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}
    for version in ("2", "3", "3"):
        assert runner.submit(model="fraud", primary_version="1", shadow_version=version, run=lambda: out,
                             inputs={}, primary_outputs=out, primary_latency_s=1e-4)  # fmt: skip
    assert runner.wait_idle(timeout=30)
    samples = {s["shadow_version"]: s["samples"] for s in runner.snapshot("fraud")}
    assert samples == {"2": 1, "3": 2}
    assert runner.snapshot("other") == []


def test_close_drops_queued_runs_refuses_new_ones_and_reports_a_hung_run(runners: list[ShadowRunner]) -> None:
    release, started = threading.Event(), threading.Event()
    runner = _runner(max_workers=1, max_in_flight=5, timeout_s=60)

    def hangs() -> Outputs:
        started.set()
        release.wait()
        return {"scores": np.array([[0.9, 0.1]], dtype=np.float32)}

    try:
        assert _submit(runner, hangs) and started.wait(10)
        assert _submit(runner, hangs) and _submit(runner, hangs)
        assert not runner.close(timeout=0.05)  # the hung run is still going
        assert not _submit(runner, hangs)
        assert runner.in_flight == 1
        assert runner.stats("fraud", "2").snapshot()["dropped"] == 3  # two queued + one after close
    finally:
        release.set()
    assert runner.wait_idle(timeout=30)
    assert runner.close(timeout=5)


def test_invalid_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        ShadowRunner(max_in_flight=0)
