"""Durable state: small JSON documents written atomically, and append-only JSONL logs.

The file store is the default; a store shared by replicas (Redis) lives in `plugins/`. Every write is
temp file + fsync + rename, so a killed process leaves either the old or the new document, never a
torn one. Keys are simple names (`policy.credit`, `rollout.credit`); they map to files in one folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

import orjson

from modelserve.errors import ConfigError
from modelserve.validation import all_finite

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


class StateStore(Protocol):
    """What modelserve needs from durable state."""

    def read(self, key: str) -> dict[str, Any] | None: ...

    def write(self, key: str, value: dict[str, Any]) -> None: ...

    def append(self, key: str, record: dict[str, Any]) -> None: ...

    def read_log(self, key: str) -> list[dict[str, Any]]: ...


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key:
        raise ConfigError(f"invalid state key {key!r}")
    return key


def _check_finite(key: str, value: dict[str, Any]) -> None:
    # JSON has no NaN or infinity (orjson would write null): refuse, so the last good document stays.
    if not all_finite(value):
        raise ValueError(f"state {key!r} holds a non-finite number; not saved")


class FileStateStore:
    """State in a folder: `<key>.json` documents and `<key>.jsonl` logs."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def read(self, key: str) -> dict[str, Any] | None:
        path = self.directory / f"{_check_key(key)}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory, unreadable, ...: this key is broken, not the whole store
            raise ConfigError(f"state file {path} cannot be read: {exc.strerror or exc}") from exc
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"state file {path} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"state file {path} does not hold a JSON object")
        return value

    def write(self, key: str, value: dict[str, Any]) -> None:
        path = self.directory / f"{_check_key(key)}.json"
        _check_finite(key, value)
        write_atomically(path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))

    def append(self, key: str, record: dict[str, Any]) -> None:
        path = self.directory / f"{_check_key(key)}.jsonl"
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with open(path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read_log(self, key: str) -> list[dict[str, Any]]:
        path = self.directory / f"{_check_key(key)}.jsonl"
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash; everything before it is intact
        return records


class MemoryStateStore:
    """Non-durable store for embedded use and tests that do not test durability."""

    def __init__(self) -> None:
        self._docs: dict[str, dict[str, Any]] = {}
        self._logs: dict[str, list[dict[str, Any]]] = {}

    def read(self, key: str) -> dict[str, Any] | None:
        value = self._docs.get(_check_key(key))
        return orjson.loads(orjson.dumps(value)) if value is not None else None

    def write(self, key: str, value: dict[str, Any]) -> None:
        _check_finite(key, value)
        self._docs[_check_key(key)] = orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def append(self, key: str, record: dict[str, Any]) -> None:
        self._logs.setdefault(_check_key(key), []).append(record)

    def read_log(self, key: str) -> list[dict[str, Any]]:
        return list(self._logs.get(_check_key(key), []))


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename + fsync of the folder: the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
