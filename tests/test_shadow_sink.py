"""The JSONL sink: one record per outcome, size rotation, a bounded queue that drops instead of blocking."""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelserve.shadow.runner import ShadowRunner
from modelserve.shadow.sink import JsonlSink

RECORD_FIELDS = {
    "ts", "model", "primary_version", "shadow_version", "request_id", "compare", "agree", "agreement", "rows",
    "max_abs_diff", "js_distance", "reason", "primary_latency_s", "shadow_latency_s", "error", "timeout",
    "key_hash", "primary_outputs", "shadow_outputs",  # `inputs` too, only when opted in
}  # fmt: skip


def _lines(*paths: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]


def test_one_record_per_completed_comparison_in_the_documented_format(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "shadow.jsonl")
    runner = ShadowRunner(max_workers=1, max_in_flight=2000, timeout_s=60, sink=sink)
    primary = {"p": np.array([[0.9, 0.1]], dtype=np.float32)}
    agreeing = {"p": np.array([[0.8, 0.2]], dtype=np.float32)}
    disagreeing = {"p": np.array([[0.3, 0.7]], dtype=np.float32)}

    def broken() -> dict[str, np.ndarray]:
        raise RuntimeError("no")

    for i in range(1000):
        shadow = disagreeing if i % 4 == 0 else agreeing
        assert runner.submit(
            model="fraud", primary_version="1", shadow_version="2", run=functools.partial(dict, shadow),
            inputs={}, primary_outputs=primary, primary_latency_s=0.002, request_id=f"r{i}",
        )  # fmt: skip
    assert runner.submit(model="fraud", primary_version="1", shadow_version="2", run=broken, inputs={},
                         primary_outputs=primary, primary_latency_s=0.002, request_id="bad")  # fmt: skip
    assert runner.wait_idle(timeout=60) and runner.close()
    sink.close()
    records = _lines(tmp_path / "shadow.jsonl")
    assert len(records) == sink.written == 1001 and sink.dropped == 0
    assert all(set(r) == RECORD_FIELDS for r in records)
    compared = [r for r in records if r["error"] is None]
    assert sorted(r["request_id"] for r in compared) == sorted(f"r{i}" for i in range(1000))
    assert sum(not r["agree"] for r in compared) == 250
    first = next(r for r in compared if r["request_id"] == "r0")
    assert (first["model"], first["primary_version"], first["shadow_version"], first["compare"]) == (
        "fraud", "1", "2", "label",
    )  # fmt: skip
    assert first["agreement"] == 0.0 and first["rows"] == 1 and first["timeout"] is False
    assert first["max_abs_diff"] == pytest.approx(0.6) and first["js_distance"] > 0
    assert first["primary_latency_s"] == pytest.approx(0.002) and first["shadow_latency_s"] >= 0
    failed = next(r for r in records if r["request_id"] == "bad")
    assert failed["error"] == "RuntimeError: no" and failed["agree"] is None


def test_rotation_keeps_every_record_within_size_and_backup_limits(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    sink = JsonlSink(path, max_bytes=4096, backups=50, queue_size=10_000)
    for i in range(2000):
        assert sink.offer({"i": i, "pad": "x" * 40})
    sink.close()
    files = [path.with_name(f"shadow.jsonl.{n}") for n in range(50, 0, -1)] + [path]
    existing = [f for f in files if f.exists()]
    assert len(existing) > 10
    assert all(f.stat().st_size <= 4096 for f in existing)
    assert [r["i"] for r in _lines(*files)] == list(range(2000))  # oldest backup first, nothing lost
    assert sink.written == 2000


def test_rotation_deletes_the_oldest_file_beyond_the_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    sink = JsonlSink(path, max_bytes=1024, backups=2)
    for i in range(1000):
        sink.offer({"i": i, "pad": "y" * 40})
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow.jsonl", "shadow.jsonl.1", "shadow.jsonl.2"]
    kept = [r["i"] for r in _lines(path.with_name("shadow.jsonl.2"), path.with_name("shadow.jsonl.1"), path)]
    assert kept == list(range(1000 - len(kept), 1000))


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    path.write_text('{"old": true}\n')
    sink = JsonlSink(path, max_bytes=10_000)
    sink.offer({"new": True})
    sink.close()
    assert _lines(path) == [{"old": True}, {"new": True}]


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    # A FIFO nobody reads: the writer thread blocks in write() once the pipe is full, as on a stuck disk.
    fifo = tmp_path / "stuck.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = JsonlSink(fifo, max_bytes=1 << 40, queue_size=10)
    record = {"pad": "z" * 10_000}
    offered = accepted = 0
    while offered - accepted < 1000:  # ends only because offer() returns instead of waiting
        offered += 1
        accepted += sink.offer(record)
    assert sink.dropped == 1000 and accepted <= 10 + 64
    drained = threading.Event()

    def drain() -> None:
        os.set_blocking(reader, True)
        while os.read(reader, 1 << 16):
            pass
        drained.set()

    reading = threading.Thread(target=drain)
    reading.start()
    sink.close()
    assert drained.wait(30)
    reading.join()
    os.close(reader)
    assert sink.written == accepted and sink.written + sink.dropped == offered


def test_offers_after_close_are_refused_and_counted(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "s.jsonl")
    sink.close()
    sink.close()
    assert not sink.offer({"late": True})
    assert sink.stats() == {"written": 0, "dropped": 1, "write_errors": 0, "queued": 0}


def test_invalid_limits_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JsonlSink(tmp_path / "s.jsonl", max_bytes=0)
