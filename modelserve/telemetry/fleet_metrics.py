"""Fleet totals on `/metrics` for the worker processes of one machine (`serve --workers N`).

Prometheus scrapes one worker at a time, and the kernel picks which; each worker counts only the
requests it served. As `prometheus_client`'s multiprocess mode does, every worker writes what it
counted into a shared folder and the worker that answers a scrape adds up every worker's file:

    worker A: collect its registry -> A's file (every `flush_s`, only when it changed; at shutdown)
    scrape on B: B's registry, live  +  every other worker's file  ->  one exposition

- **Counters, histograms, summaries** (additive) are summed per sample name and labels, so a scrape
  of any worker reports the fleet's totals. Another worker's counts are at most `flush_s` old.
- **Gauges** are the answering worker's own: the gauges modelserve exports describe the shared
  state (canary weight, rollout stage) or this worker's view of it, which a sum would distort.
- **Dead workers**: a worker's file stays after it exits or is killed, so totals never go back
  (a `kill -9` loses at most its last `flush_s` of counts); a file name carries the pid and a random
  suffix, so a new worker that reuses a dead one's pid never overwrites its counts.
- **One run**: the workers of one run are the children of one supervisor (`serve --workers N`,
  `uvicorn --workers N`, gunicorn's master), so only files of workers with this worker's parent
  count, and a worker starting removes those of parents that are gone (a previous run): no one has
  to empty the folder between runs, as the multiprocess mode asks.

Works on whatever is registered on the registry (modelserve's collectors and an app's own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

log = logging.getLogger("modelserve.telemetry")

#: Metric types whose samples add up across workers.
ADDITIVE = frozenset({"counter", "histogram", "summary"})
SUFFIX = ".metrics.json"


class WorkerMetrics:
    """This worker's file in the shared folder, and the exposition summed over every worker's."""

    def __init__(self, registry: CollectorRegistry, directory: Path, *, flush_s: float = 1.0) -> None:
        self.registry = registry
        self.directory = Path(directory)
        self.flush_s = flush_s
        self.run_prefix = f"{os.getppid()}-"
        self.name = f"{self.run_prefix}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._written = b""
        self._removed_stale = False

    # -- this worker's file ------------------------------------------------------------------------

    def export(self) -> bytes:
        """The additive samples of this worker's registry: `[[family, type, help, [[name, labels,
        value], ...]], ...]` as JSON."""
        families = []
        for family in self.registry.collect():
            if family.type in ADDITIVE:
                samples = [
                    [s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")
                ]
                families.append([family.name, family.type, family.documentation, samples])
        return orjson.dumps(families)

    def flush(self) -> None:
        """Write this worker's counts when they changed (temp file + rename: never half a file)."""
        data = self.export()
        if data == self._written:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._removed_stale:
            remove_stale(self.directory)
            self._removed_stale = True
        path = self.directory / self.name
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._written = data

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled, then once more (a graceful stop loses nothing)."""
        try:
            while True:
                try:
                    await anyio.to_thread.run_sync(self.flush)
                except OSError as exc:  # a full or read-only disk must not stop serving
                    log.warning("fleet metrics: cannot write %s: %s", self.directory / self.name, exc)
                await anyio.sleep(self.flush_s)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(self.flush)

    # -- a scrape ----------------------------------------------------------------------------------

    def exposition(self) -> CollectorRegistry:
        """The registry `/metrics` serves: this collector alone (it reads `self.registry` itself)."""
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(self)
        return exposed

    def others(self) -> list[list[Any]]:
        """Every other worker's families, as last written (unreadable files are skipped)."""
        found: list[list[Any]] = []
        for path in sorted(self.directory.glob(f"{self.run_prefix}*{SUFFIX}")):
            if path.name == self.name:
                continue
            try:
                found += orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # vanished between the listing and the read, or not ours
        return found

    def collect(self) -> Iterator[Metric]:
        """This worker's metrics with every other worker's additive samples added in."""
        remote: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        for name, kind, documentation, samples in self.others():
            _, _, sums = remote.setdefault(name, (kind, documentation, {}))
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                sums[key] = sums.get(key, 0.0) + float(value)
        for family in self.registry.collect():
            extra = remote.pop(family.name, None)
            if family.type not in ADDITIVE or extra is None or extra[0] != family.type:
                yield family
                continue
            yield _summed(family, extra[2])
        for name, (kind, documentation, sums) in remote.items():  # counted elsewhere only
            family = Metric(name, documentation, kind)
            yield _summed(family, sums)


def _summed(family: Metric, remote: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Metric:
    """`family` with `remote`'s values added per sample (name and labels); samples only remote added."""
    totals = dict(remote)
    merged = Metric(family.name, family.documentation, family.type, family.unit)
    for sample in family.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        added = totals.pop(key, 0.0) if not sample.name.endswith("_created") else 0.0
        merged.add_sample(sample.name, sample.labels, sample.value + added)
    for (name, labels), value in totals.items():
        merged.add_sample(name, dict(labels), value)
    return merged


def remove_stale(directory: Path) -> None:
    """Remove the files of runs whose supervisor (the workers' parent) is gone."""
    for path in directory.glob(f"*{SUFFIX}"):
        parent = path.name.split("-", 1)[0]
        if parent.isdigit() and not _alive(int(parent)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
