"""What fleet monitoring costs a replica: the size of its snapshot and the CPU of making, reading and
merging snapshots (`modelserve/monitoring/fleet.py`), in-process, no network.

The monitor is shaped like the example credit model (20 inputs, a label and two scores) with two
versions, each with a file reference and 5,000 rows counted; the label tally has labels in every 10 s
slot of the last 24 hours for both versions (the largest the outcome slots get). Reported: the
snapshot's JSON size (and without the label slots), and CPU milliseconds per call of `export` (every
`publish_s` in a worker thread), reading one replica's snapshot back (every refresh, per other
replica, in a worker thread) and the fleet view of three replicas (per `/ui` poll or model status).

    python benchmarks/fleet_monitoring.py [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from modelserve.monitoring.fleet import FleetMonitoring
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import MAX_SLOTS, SLOT_S, OutcomeTally
from modelserve.monitoring.snapshot import MonitoringSnapshot


def outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    p = 1 / (1 + np.exp(-x[:, 0]))
    return {"label": (p > 0.5).astype(np.int64), "probabilities": np.stack([1 - p, p], axis=1)}


def replica() -> FleetMonitoring:
    rng = np.random.default_rng(0)
    monitor = Monitor(config_for=lambda model: MonitorConfig())
    for version in ("1", "2"):
        reference = rng.normal(size=(2000, 20)).astype(np.float32)
        monitor.set_reference("credit", version, {"input": reference}, outputs(reference), source="file")
        rows = rng.normal(size=(5000, 20)).astype(np.float32)
        monitor.submit("credit", version, {"input": rows}, outputs(rows))
    clock = [0.0]
    tally = OutcomeTally(wall_clock=lambda: clock[0])
    for slot in range(MAX_SLOTS):
        clock[0] = time.time() - SLOT_S * (MAX_SLOTS - slot)
        for version in ("1", "2"):
            tally.record_labels("credit", version, 3, 5, experiment=False)
    coordinator: Any = None  # nothing here publishes: only the in-process work is measured
    return FleetMonitoring(
        coordinator=coordinator, monitor=monitor, tally=tally, replica_id="a",
        config_for=lambda model: MonitorConfig(),
    )  # fmt: skip


def cpu_ms(work: Any, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        work()
    return (time.process_time() - started) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20)
    calls = parser.parse_args().calls
    fleet = replica()
    snapshot = fleet.export()
    body = json.dumps(snapshot.to_json())
    without_slots = json.dumps({**snapshot.to_json(), "slots": []})
    read: dict[str, Any] = {name: MonitoringSnapshot.from_json(json.loads(body)) for name in ("b", "c")}
    fleet.remote = read
    kib = (len(body) / 1024, len(without_slots) / 1024)
    print(f"snapshot JSON: {kib[0]:.1f} KiB ({kib[1]:.1f} KiB without the label slots)")
    print(f"export:                        {cpu_ms(fleet.export, calls):6.2f} ms CPU per call")
    parse = cpu_ms(lambda: MonitoringSnapshot.from_json(json.loads(body)), calls)
    print(f"read one replica's snapshot:   {parse:6.2f} ms")
    print(f"fleet view of three replicas:  {cpu_ms(lambda: fleet.view('credit'), calls):6.2f} ms")


if __name__ == "__main__":
    main()
