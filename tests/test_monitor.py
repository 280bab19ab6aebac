"""Monitor: prediction distributions and drift per version, fed in batches; bounded under load."""

from __future__ import annotations

import gc
import json
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

from modelserve.errors import ConfigError
from modelserve.monitoring.drift import DriftConfig
from modelserve.monitoring.histogram import SCORE_EDGES, ClassCounts, ValueHistogram, WindowedCounts
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.reference_file import load_reference

EXAMPLES = Path(__file__).parent.parent / "examples"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def request(
    rng: np.random.Generator, scale: float = 1.0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = rng.normal(size=(1, 3)).astype(np.float32)
    x[:, 2] *= scale
    p1 = 1 / (1 + np.exp(-x[:, 0]))
    outputs = {
        "label": (p1 > 0.5).astype(np.int64),
        "probabilities": np.column_stack([1 - p1, p1]).astype(np.float32),
    }
    return {"input": x}, outputs


def test_histogram_counts_match_numpy_with_prometheus_bucket_convention() -> None:
    values = np.random.default_rng(0).random(1000)
    values[:3] = [0.05, 0.0, 2.0]
    hist = ValueHistogram()
    hist.add(values[:500])
    other = ValueHistogram()
    other.add(values[500:])
    hist.merge(other)
    edges = np.asarray(SCORE_EDGES)
    expected = [
        int(((values <= e) & (values > (edges[i - 1] if i else -np.inf))).sum()) for i, e in enumerate(edges)
    ]
    assert hist.counts[:-1].tolist() == expected and hist.counts[-1] == int((values > edges[-1]).sum())
    assert hist.total == pytest.approx(values.sum())


def test_class_counts_are_capped() -> None:
    counts = ClassCounts(max_classes=3)
    counts.add(np.arange(10))
    assert len(counts.counts) == 4 and counts.counts["__other__"] == 7 and counts.count == 10


def test_windowed_counts_forget_old_sub_windows() -> None:
    window = WindowedCounts((2,), window_s=10, sub_windows=5)
    window.add(np.array([1, 2]), now=0.5)
    window.add(np.array([1, 0]), now=9.5)
    assert window.total(now=9.9).tolist() == [2, 2]
    assert window.total(now=13.0).tolist() == [1, 0]  # the first sub-window is older than the window


def test_distribution_per_version_counts_every_submitted_request() -> None:
    rng = np.random.default_rng(0)
    monitor = Monitor()
    labels = {"1": 0, "2": 0}
    for i in range(300):
        version = "1" if i % 3 else "2"
        inputs, outputs = request(rng)
        labels[version] += int(outputs["label"][0])
        monitor.submit("credit", version, inputs, outputs)
    dist = monitor.distribution("credit", "1")
    assert dist["rows"] == 200 and dist["classes"]["label"].get("1", 0) == labels["1"]
    assert sum(dist["histograms"]["probabilities[1]"]["counts"]) == 200
    assert monitor.distribution("credit", "2")["rows"] == 100


def test_submit_drops_and_counts_past_the_pending_bound() -> None:
    monitor = Monitor(max_pending=10)
    rng = np.random.default_rng(0)
    for _ in range(15):
        monitor.submit("m", "1", *request(rng))
    assert monitor.dropped == 5 and monitor.flush() == 10


def test_sampling_keeps_one_request_in_k() -> None:
    monitor = Monitor(config_for=lambda model: MonitorConfig(sample_every=4))
    rng = np.random.default_rng(0)
    for _ in range(100):
        monitor.submit("m", "1", *request(rng))
    assert monitor.distribution("m", "1")["rows"] == 25


def test_past_max_rate_a_uniform_sample_is_monitored_and_what_is_left_out_is_counted() -> None:
    clock = Clock()
    monitor = Monitor(config_for=lambda model: MonitorConfig(max_rate=1000), clock=clock)
    rng = np.random.default_rng(0)
    for _ in range(3000):  # the first second: every request (no rate is known yet)
        monitor.submit("m", "1", *request(rng))
    assert monitor.distribution("m", "1")["rows"] == 3000
    clock.now = 1.0
    truth = {"0": 0, "1": 0}
    for i in range(5000):  # a second at 3,000 a second before: one in 3
        clock.now = 1.0 + i / 5000
        inputs, outputs = request(rng)
        truth[str(int(outputs["label"][0]))] += 1
        monitor.submit("m", "1", inputs, outputs)
    assert monitor.sampling("m") == {"every": 3, "skipped": 5000 - 5000 // 3}
    clock.now = 2.0
    for _ in range(10):
        monitor.submit("m", "1", *request(rng))  # 5,000 a second before: one in 5
    dist = monitor.distribution("m", "1")
    assert dist["rows"] == 3000 + 5000 // 3 + 2
    assert monitor.sampled_out() == {"m": 5000 - 5000 // 3 + 8}
    clock.now = 100.0
    monitor.submit("m", "1", *request(rng))  # 10 requests in 98 s: all again
    assert monitor.sampling("m")["every"] == 1


def test_sampled_shares_match_every_requests_shares() -> None:
    """A uniform one in k: the class shares of the sample are those of all the traffic."""
    clock = Clock()
    sampled = Monitor(config_for=lambda model: MonitorConfig(max_rate=500), clock=clock)
    every = Monitor(config_for=lambda model: MonitorConfig(max_rate=0), clock=clock)
    rng = np.random.default_rng(1)
    for i in range(40_000):  # 4,000 a second for 10 s
        clock.now = i / 4000
        inputs, outputs = request(rng)
        sampled.submit("m", "1", inputs, outputs)
        every.submit("m", "1", inputs, outputs)
        if i % 4000 == 3999:
            sampled.flush()
            every.flush()
    all_rows, some_rows = every.distribution("m", "1"), sampled.distribution("m", "1")
    assert all_rows["rows"] == 40_000 and every.sampled_out() == {"m": 0}
    assert 4000 + 8 * 500 <= some_rows["rows"] <= 4000 + 9 * 500 + 10
    share = {
        name: dist["classes"]["label"]["1"] / dist["rows"]
        for name, dist in (("all", all_rows), ("some", some_rows))
    }
    assert abs(share["all"] - share["some"]) < 0.02


def test_a_huge_request_counts_a_bounded_evenly_spaced_sample_of_its_rows() -> None:
    from modelserve.monitoring.monitor import MAX_ROWS_PER_REQUEST

    monitor = Monitor()
    rows = 10 * MAX_ROWS_PER_REQUEST + 3
    labels = (np.arange(rows) % 11 == 0).astype(np.int64)  # class 1 on every 11th row, from row 0
    monitor.submit("m", "1", {"input": np.zeros((rows, 3), np.float32)}, {"label": labels})
    monitor.flush()
    dist = monitor.distribution("m", "1")
    assert dist["rows"] == -(-rows // 11) <= MAX_ROWS_PER_REQUEST  # every 11th row, inputs and outputs
    assert set(dist["classes"]["label"]) == {"1"}
    monitor.submit("m", "2", {"input": np.zeros((100, 3), np.float32)}, {"label": labels[:100]})
    assert monitor.distribution("m", "2")["rows"] == 100  # a normal batch counts every row


def test_a_huge_requests_arrays_are_not_held_until_the_flush() -> None:
    from modelserve.monitoring.monitor import MAX_ROWS_PER_REQUEST

    monitor = Monitor()
    rows = 10 * MAX_ROWS_PER_REQUEST
    inputs = {"input": np.ones((rows, 3), np.float32)}
    outputs = {"label": np.ones(rows, np.int64)}
    held = [weakref.ref(inputs["input"]), weakref.ref(outputs["label"])]
    monitor.submit("m", "1", inputs, outputs)
    del inputs, outputs  # the request is answered: its body and onnxruntime's buffers may go
    assert [ref() for ref in held] == [None, None]  # only the sampled rows wait, copied
    monitor.flush()
    assert monitor.distribution("m", "1")["rows"] == MAX_ROWS_PER_REQUEST


def test_a_wide_output_is_queued_as_its_counted_columns_not_as_the_buffer_it_views() -> None:
    """A large request's output viewing a bigger buffer (as onnxruntime's do): the buffer is not
    held until the flush, and the columns counted are the same."""
    monitor = Monitor()
    rows, classes = 2000, 1000
    buffer = np.random.default_rng(0).random((rows, classes)).astype(np.float32)
    owner = weakref.ref(buffer)
    inputs = {"input": np.ones((rows, 3), np.float32)}
    monitor.submit("m", "1", inputs, {"probabilities": buffer[:, :]})
    del buffer
    assert owner() is None
    dist = monitor.distribution("m", "1")
    assert dist["rows"] == rows
    assert len(dist["histograms"]) == 8  # the first score columns, as for any wide output
    outputs = monitor.drift("m", "1")
    assert outputs["reference"]["state"] == "capturing"


def test_queued_bytes_are_bounded_and_what_is_past_the_bound_is_dropped_and_counted() -> None:
    from modelserve.monitoring.monitor import MAX_PENDING_BYTES

    monitor = Monitor(config_for=lambda model: MonitorConfig(max_columns=32))
    wide = np.ones((4096, 100), np.float64)  # queued as 4096 x 32 float64: 1 MiB a request
    accepted = MAX_PENDING_BYTES // (4096 * 32 * 8 + 4096 * 8)
    tracemalloc.start()
    try:
        for _ in range(accepted + 20):
            monitor.submit("m", "1", {"input": wide}, {"y": np.zeros(4096)})
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert monitor.dropped == 20
    assert held <= MAX_PENDING_BYTES * 1.05
    assert monitor.flush() == accepted


def test_queued_requests_make_no_work_for_the_garbage_collector() -> None:
    """Thousands of requests wait between flushes: queueing them allocates no object the collector
    tracks (a tuple per request made a full collection every few seconds at full load)."""
    monitor = Monitor()
    rng = np.random.default_rng(0)
    requests = [request(rng) for _ in range(2000)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for inputs, outputs in requests:
            monitor.submit("m", "1", inputs, outputs)
        tracked = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert tracked < 20
    assert monitor.flush() == 2000


def test_requests_with_other_shapes_are_grouped_apart() -> None:
    monitor = Monitor()
    monitor.submit("m", "1", {"input": np.zeros((1, 3))}, {"y": np.zeros((1, 1))})
    monitor.submit("m", "1", {"input": np.zeros((2, 4))}, {"y": np.zeros((2, 1))})
    monitor.flush()
    assert monitor.skipped == 0 and monitor.distribution("m", "1")["rows"] == 3


def test_drift_alarm_counts_once_per_crossing_and_output_shift_compares_versions() -> None:
    clock = Clock()
    config = MonitorConfig(
        drift=DriftConfig(
            min_samples=200, reference_rows=500, reference_period_s=0, window_s=60, sub_windows=6
        )
    )
    monitor = Monitor(config_for=lambda model: config, clock=clock)
    rng = np.random.default_rng(5)
    for _ in range(500):
        monitor.submit("m", "1", *request(rng))
    monitor.flush()
    assert monitor.drift("m", "1")["reference"] == {"state": "ready", "source": "live", "rows": 500}
    for i in range(400):
        clock.now = 1 + i * 0.1
        monitor.submit("m", "1", *request(rng, scale=3.0))
        monitor.submit("m", "2", *request(rng))
    report = monitor.drift("m", "1")
    drifted = [r.column for r in report["inputs"] if r.drifted]
    assert drifted == ["input[2]"]
    assert monitor.alarms == {("m", "1", "input", "input[2]"): 1}
    monitor.flush()
    assert monitor.alarms == {("m", "1", "input", "input[2]"): 1}  # still drifted: no new alarm
    shift = {r.column: r for r in monitor.output_shift("m", "1", "2")}
    assert shift["probabilities[1]"].drifted is False  # same model behaviour on both versions


def test_reference_from_the_examples_jsonl() -> None:
    tensors = load_reference(EXAMPLES / "labelled_traffic.jsonl", ["input"])
    assert tensors["input"].shape == (300, 20)
    monitor = Monitor()
    monitor.set_reference("credit", "1", tensors, source="file")
    rows = [
        json.loads(line)["input"] for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
    ]
    for row in rows[:200]:
        monitor.submit("credit", "1", {"input": np.array([row], dtype=np.float32)}, {"label": np.array([0])})
    report = monitor.drift("credit", "1")
    assert report["reference"] == {"state": "ready", "source": "file", "rows": 300}
    assert len(report["inputs"]) == 20 and all(r.samples == 200 for r in report["inputs"])


def test_reference_file_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": [1, 2]}\nnot json\n')
    with pytest.raises(ConfigError, match="not JSON"):
        load_reference(bad, ["input"])
    with pytest.raises(ConfigError, match="no line"):
        load_reference(EXAMPLES / "labelled_traffic.jsonl", ["other"])


def test_memory_stays_bounded_over_a_million_requests_with_distinct_values() -> None:
    """1M rows, every value distinct, in 1,000-row requests: traced memory stops growing."""
    monitor = Monitor(max_pending=64)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        peaks = []
        for batch in range(1000):
            base = batch * 1000.0
            x = base + rng.random((1000, 8))
            y = rng.random((1000, 2))
            monitor.submit(
                "m", str(batch % 3), {"input": x}, {"p": y, "label": (y[:, 1] > 0.5).astype(np.int64)}
            )
            if batch % 50 == 49:
                monitor.flush()
                peaks.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert peaks[-1] < 8 * 1024 * 1024
    assert peaks[-1] <= peaks[len(peaks) // 2] * 1.1  # flat in the second half


@pytest.mark.parametrize(
    "forbidden", ["starlette", "anyio", "asyncio", "uvicorn", "onnxruntime", "modelserve.server"]
)
def test_monitoring_is_pure(forbidden: str) -> None:
    """Everything but the modules running background tasks (the service, the fleet's snapshots) is
    pure: no I/O framework, no HTTP."""
    import ast

    for path in (Path(__file__).parent.parent / "modelserve" / "monitoring").glob("*.py"):
        if path.name in ("service.py", "fleet.py", "fleet_labels.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == forbidden or n.startswith(forbidden + ".") for n in names), path


def test_shadow_outputs_are_a_distribution_of_their_own_from_any_thread() -> None:
    import threading

    rng = np.random.default_rng(1)
    monitor = Monitor()
    served = [request(rng) for _ in range(40)]
    for inputs, outputs in served:
        monitor.submit("credit", "1", inputs, outputs)
    shadowed = [request(rng)[1] for _ in range(120)]
    threads = [
        threading.Thread(target=lambda part=part: [monitor.submit_shadow("credit", "2", o) for o in part])
        for part in (shadowed[:60], shadowed[60:])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert monitor.distribution("credit", "2")["rows"] == 0  # it served nothing
    shadow = monitor.distribution("credit", "2", role="shadow")
    assert shadow["rows"] == 120
    assert shadow["classes"]["label"].get("1", 0) == sum(int(o["label"][0]) for o in shadowed)
    assert monitor.distribution("credit", "1", role="shadow")["rows"] == 0
    roles = {(version, role) for _, version, role, _, _ in monitor.histograms()}
    assert roles == {("1", "primary"), ("2", "shadow")}
    assert {(v, r) for _, v, r, _, _ in monitor.class_counts()} == roles
    # The candidate ran only in shadow: its output shift against live reads what it predicted there.
    shift = monitor.output_shift("credit", "1", "2")
    assert shift and all(r.samples == 120 and r.reference_samples == 40 for r in shift)


def test_has_pending_says_when_a_flush_has_work() -> None:
    monitor = Monitor()
    rng = np.random.default_rng(2)
    assert not monitor.has_pending()
    monitor.submit("m", "1", *request(rng))
    assert monitor.has_pending()
    monitor.flush()
    assert not monitor.has_pending()
    monitor.submit_shadow("m", "2", request(rng)[1])
    assert monitor.has_pending() and monitor.flush() == 1 and not monitor.has_pending()
