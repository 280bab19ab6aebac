"""Shadow statistics: Wilson interval, bounded histograms, reservoir, counters, thread safety."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from modelserve.shadow.compare import label
from modelserve.shadow.stats import ShadowStats, wilson_interval


def _record(stats: ShadowStats, primary: np.ndarray, shadow: np.ndarray, **kwargs: float) -> None:
    comparison = label({"p": primary}, {"p": shadow})
    stats.record_comparison(
        comparison,
        primary_latency_s=kwargs.get("primary_s", 1e-3),
        shadow_latency_s=kwargs.get("shadow_s", 2e-3),
        inputs={"x": primary * 10}, primary_outputs={"p": primary}, shadow_outputs={"p": shadow},
        primary_version="1", request_id="r",
    )  # fmt: skip


AGREE = (np.array([[0.9, 0.1]]), np.array([[0.8, 0.2]]))
DISAGREE = (np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]]))


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (7, 10), (10, 10), (850, 1000), (1, 50_000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_matches_statsmodels(successes: int, trials: int, confidence: float) -> None:
    expected = proportion_confint(successes, trials, alpha=1 - confidence, method="wilson")
    assert wilson_interval(successes, trials, confidence) == pytest.approx(expected, abs=1e-12)


def test_wilson_interval_without_trials_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_agreement_is_counted_per_row_with_its_interval() -> None:
    stats = ShadowStats("fraud", "2")
    batch_p = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    batch_s = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    _record(stats, batch_p, batch_s)
    _record(stats, *AGREE)
    snap = stats.snapshot()
    assert (snap["samples"], snap["rows"], snap["agreeing_rows"], snap["agreeing_samples"]) == (2, 5, 4, 1)
    assert snap["agreement_rate"] == 0.8
    assert snap["agreement_interval"] == pytest.approx(list(wilson_interval(4, 5)))


def test_snapshot_reports_latency_percentiles_in_milliseconds_and_failure_rates() -> None:
    stats = ShadowStats("fraud", "2")
    for _ in range(8):
        _record(stats, *AGREE, primary_s=0.001, shadow_s=0.003)
    stats.record_error("RuntimeError: boom")
    stats.record_timeout()
    stats.record_dropped()
    snap = stats.snapshot()
    assert snap["primary_latency_s"]["p50"] == pytest.approx(0.001, rel=0.05)
    assert snap["shadow_latency_s"]["p99"] == pytest.approx(0.003, rel=0.05)
    assert (snap["runs"], snap["errors"], snap["timeouts"], snap["dropped"]) == (10, 1, 1, 1)
    assert (snap["error_rate"], snap["timeout_rate"]) == (0.1, 0.1)
    assert snap["drop_rate"] == pytest.approx(1 / 11)
    assert snap["last_error"] == "RuntimeError: boom"
    assert snap["max_abs_diff"]["p50"] == pytest.approx(0.1, rel=0.05)
    assert snap["js_distance"]["count"] == 8


def test_reservoir_is_bounded_and_holds_only_disagreeing_examples() -> None:
    stats = ShadowStats("fraud", "2", reservoir_size=5, seed=7)
    for i in range(200):
        _record(stats, *(DISAGREE if i % 2 else AGREE))
    snap = stats.snapshot()
    assert snap["disagreements_seen"] == 100
    assert len(snap["disagreements"]) == 5
    for example in snap["disagreements"]:
        assert np.argmax(example["primary"]["p"][0]) != np.argmax(example["shadow"]["p"][0])
        assert example["inputs"]["x"] == [[9.0, 1.0]]


def test_reservoir_keeps_later_disagreements_with_fair_probability() -> None:
    kept_late = 0
    for seed in range(200):
        stats = ShadowStats("m", "2", reservoir_size=10, seed=seed)
        for i in range(100):
            p = np.array([[0.9, 0.1]])
            stats.record_comparison(
                label({"p": p}, {"p": DISAGREE[1]}), primary_latency_s=1e-3, shadow_latency_s=1e-3,
                inputs={"i": np.array([i])}, primary_outputs={"p": p}, shadow_outputs={"p": DISAGREE[1]},
            )  # fmt: skip
        kept_late += sum(e["inputs"]["i"][0] >= 50 for e in stats.snapshot()["disagreements"])
    assert kept_late / (200 * 10) == pytest.approx(0.5, abs=0.05)  # uniform: half from the later half


def test_snapshot_is_json_serialisable_including_bytes_outputs() -> None:
    stats = ShadowStats("fraud", "2")
    words_p, words_s = np.array([b"cat"], dtype=object), np.array([b"dog"], dtype=object)
    stats.record_comparison(
        label({"w": words_p}, {"w": words_s}), primary_latency_s=1e-3, shadow_latency_s=1e-3,
        inputs={"text": np.array(["hello"])}, primary_outputs={"w": words_p}, shadow_outputs={"w": words_s},
    )  # fmt: skip
    snap = json.loads(json.dumps(stats.snapshot()))
    assert snap["disagreements"][0]["shadow"] == {"w": ["dog"]}
    assert snap["max_abs_diff"]["p50"] is None


def test_concurrent_updates_are_all_counted() -> None:
    stats = ShadowStats("fraud", "2", reservoir_size=3)
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for i in range(2_000):
            _record(stats, *(DISAGREE if i % 4 == 0 else AGREE))
            stats.record_dropped()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = stats.snapshot()
    assert (snap["samples"], snap["agreeing_rows"], snap["dropped"]) == (8_000, 6_000, 8_000)
    assert snap["primary_latency_s"]["count"] == 8_000
    assert len(snap["disagreements"]) == 3


def test_a_huge_disagreeing_batch_enters_the_reservoir_bounded_and_is_not_retained() -> None:
    import gc
    import weakref

    stats = ShadowStats("fraud", "2", reservoir_size=5, seed=1)
    rows = 100_000  # a client-chosen batch: 800k input values
    inputs = np.ones((rows, 8), dtype=np.float32)
    primary = np.tile(np.array([[0.9, 0.1]]), (rows, 1))
    shadow = np.tile(np.array([[0.2, 0.8]]), (rows, 1))
    kept = weakref.ref(inputs)
    comparison = label({"p": primary}, {"p": shadow})
    for _ in range(8):
        stats.record_comparison(
            comparison, primary_latency_s=1e-3, shadow_latency_s=1e-3, inputs={"x": inputs},
            primary_outputs={"p": primary}, shadow_outputs={"p": shadow},
        )  # fmt: skip
    del inputs
    gc.collect()
    assert kept() is None  # the reservoir holds a bounded copy, never the client's tensor
    snap = stats.snapshot()
    assert len(snap["disagreements"]) == 5
    example = snap["disagreements"][0]
    assert example["truncated"] and example["shapes"]["inputs"]["x"] == [rows, 8]
    assert len(example["inputs"]["x"]) == 256 // 8 and example["inputs"]["x"][0] == [1.0] * 8
    assert len(json.dumps(snap)) < 200_000  # the whole tensors would be ~100 MB of JSON
    assert stats.snapshot(examples=False)["disagreements"] == []


def test_a_single_huge_row_and_huge_strings_are_cut_short() -> None:
    stats = ShadowStats("fraud", "2", seed=1)
    wide = np.zeros((1, 100_000), dtype=np.float32)
    text = np.array([b"y" * 1_000_000], dtype=object)
    comparison = label({"p": np.array([[0.9, 0.1]])}, {"p": np.array([[0.1, 0.9]])})
    stats.record_comparison(
        comparison, primary_latency_s=1e-3, shadow_latency_s=1e-3, inputs={"x": wide, "t": text},
        primary_outputs={"p": np.array([[0.9, 0.1]])}, shadow_outputs={"p": np.array([[0.1, 0.9]])},
    )  # fmt: skip
    (example,) = stats.snapshot()["disagreements"]
    assert len(example["inputs"]["x"]) == 256 and example["shapes"]["inputs"]["x"] == [1, 100_000]
    assert example["inputs"]["t"] == ["y" * 256]


def test_clearing_examples_keeps_the_counts() -> None:
    stats = ShadowStats("fraud", "2", seed=1)
    for _ in range(3):
        _record(stats, *DISAGREE)
    stats.clear_examples()
    snap = stats.snapshot()
    assert snap["disagreements"] == [] and snap["disagreements_seen"] == 3 and snap["samples"] == 3


def test_counts_per_time_window_show_a_shadow_that_agreed_then_drifted() -> None:
    from modelserve.cli_shadow import render

    now = [600.0]
    stats = ShadowStats("m", "2", window_s=60.0, wall_clock=lambda: now[0])
    for _ in range(10):
        _record(stats, *AGREE)
    now[0] = 665.0  # the next minute: it disagrees on every row
    for _ in range(4):
        _record(stats, *DISAGREE)
    stats.record_timeout()
    now[0] = 1000.0
    stats.record_dropped()
    windows = stats.snapshot()["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(600.0, 660.0), (660.0, 720.0), (960.0, 1020.0)]
    assert [(w["samples"], w["agreement_rate"], w["timeouts"], w["dropped"]) for w in windows] == [
        (10, 1.0, 0, 0),
        (4, 0.0, 1, 0),
        (0, None, 0, 1),
    ]
    assert windows[1]["agreement_interval"] == list(wilson_interval(0, 4))
    assert stats.snapshot()["agreement_rate"] == 10 / 14  # the cumulative rate hides the drift
    assert stats.snapshot(examples=False)["windows"] == []  # status and gates skip the list
    report = {
        "model": "m", "live_version": "1", "shadow_versions": ["2"], "sample_rate": 1.0,
        "primary": {"error_rate": 0.0, "requests": 14},
        "shadows": [{**stats.snapshot(), "recommendation": {"verdict": "hold", "checks": []}}],
    }  # fmt: skip
    assert "00:10 1.000 (10), 00:11 0.000 (4), 00:16 - (0)" in render(report)


def test_windows_are_bounded() -> None:
    now = [0.0]
    stats = ShadowStats("m", "2", window_s=1.0, wall_clock=lambda: now[0])
    for second in range(500):
        now[0] = float(second)
        stats.record_error("boom")
    windows = stats.windows()
    assert len(windows) == 60 and windows[-1]["start"] == 499.0 and windows[-1]["errors"] == 1
