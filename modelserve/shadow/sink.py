"""A rotating JSONL file of shadow outcomes, written by its own thread behind a bounded queue.

`offer` never blocks: when the queue is full the record is dropped and counted. The writer thread
appends one JSON object per line, flushes after every batch it drains, and rotates by size:
`path` -> `path.1` -> ... -> `path.N` (`backups` = N; the oldest is deleted).

Record format (one per shadow outcome; one per completed comparison, plus one per error or timeout):

| field | type | meaning |
|---|---|---|
| `ts` | float | Unix time (s) the outcome was recorded |
| `model` | str | model name |
| `primary_version` | str | version that answered the request |
| `shadow_version` | str | version run in shadow |
| `request_id` | str or null | the request's id (joins with access logs and feedback) |
| `compare` | str | comparison used (`label`, `allclose`, `topk`, or a callable's name) |
| `agree` | bool or null | every row agreed; null when no comparison was made (error, timeout) |
| `agreement` | float or null | fraction of rows agreeing |
| `rows` | int or null | rows compared |
| `max_abs_diff` | float or null | max absolute difference over numeric outputs |
| `js_distance` | float or null | largest per-row Jensen-Shannon distance (base 2), probability outputs only |
| `reason` | str | why outputs could not be compared (missing output, shape), else "" |
| `primary_latency_s` | float | primary model run time, seconds |
| `shadow_latency_s` | float or null | shadow model run time, seconds; null if it never ran or returned |
| `error` | str or null | the shadow's exception (`Type: message`), if it raised |
| `timeout` | bool | the shadow missed its deadline; its result (if any) was not compared |
| `key_hash` | str or null | 16 hex digits of the targeting key's SHA-256 (joins a user's rows, not who) |
| `primary_outputs` | object | the primary's outputs, at most 256 values per tensor (leading rows first) |
| `shadow_outputs` | object or null | the shadow's outputs, cut the same way; null if it did not return |
| `inputs` | object | only when the model's `[shadow] log_inputs_rate` sampled this request: the inputs, cut |
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import IO, Any

import orjson

_STOP = object()


def key_hash(targeting_key: str | None) -> str | None:
    """A stable pseudonym of a targeting key for offline joins (16 hex digits of its SHA-256)."""
    if not targeting_key:
        return None
    return hashlib.sha256(targeting_key.encode("utf-8", "replace")).hexdigest()[:16]
_BATCH = 256  # records drained per write; bounds the time between flushes


class JsonlSink:
    """Bounded, non-blocking, size-rotated JSONL writer on a dedicated thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 5,
        queue_size: int = 10_000,
    ) -> None:
        if max_bytes <= 0 or backups < 0 or queue_size <= 0:
            raise ValueError("max_bytes and queue_size must be positive, backups non-negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._count_lock = threading.Lock()
        self._closed = False
        self._written = self._dropped = self._write_errors = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = self.path.open("ab")
        self._size = os.fstat(self._file.fileno()).st_size
        self._thread = threading.Thread(target=self._run, name="modelserve-shadow-sink", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        """Records written to disk so far."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records refused because the queue was full, the sink closed, or a write failed."""
        return self._dropped

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue a record for writing; False (and counted as dropped) when full or closed. Never blocks."""
        if not self._closed:
            try:
                self._queue.put_nowait(record)
                return True
            except queue.Full:
                pass
        with self._count_lock:
            self._dropped += 1
        return False

    def close(self) -> None:
        """Write everything queued, then stop the writer thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # may wait for room: close is not on the serving path
        self._thread.join()

    def stats(self) -> dict[str, int]:
        """Counters as plain JSON types."""
        return {"written": self._written, "dropped": self._dropped, "write_errors": self._write_errors,
                "queued": self._queue.qsize()}  # fmt: skip

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [r for r in batch if r is not _STOP]
            self._write(batch)
        self._file.close()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        written = 0
        try:
            for record in batch:
                line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._size += len(line)
                written += 1
            self._file.flush()
        except (OSError, TypeError) as exc:  # disk full, unserialisable record: count, keep serving
            with self._count_lock:
                self._write_errors += 1
                self._dropped += len(batch) - written
            if isinstance(exc, OSError):
                self._reopen()
        self._written += written

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("wb")
        self._size = 0

    def _reopen(self) -> None:
        try:
            self._file.close()
            self._file = self.path.open("ab")
            self._size = os.fstat(self._file.fileno()).st_size
        except OSError:
            pass
