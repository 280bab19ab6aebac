from __future__ import annotations

from pathlib import Path

import pytest

from modelserve.errors import ConfigError
from modelserve.state.store import FileStateStore, MemoryStateStore


def test_file_store_writes_atomically_and_reads_back(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.write("slots.fraud", {"live_version": "2"})
    store.write("slots.fraud", {"live_version": "3"})
    assert store.read("slots.fraud") == {"live_version": "3"}
    assert store.read("missing") is None
    assert not list(tmp_path.glob("*.tmp"))


def test_log_survives_a_torn_last_line(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.append("events", {"n": 1})
    store.append("events", {"n": 2})
    with open(tmp_path / "events.jsonl", "ab") as handle:
        handle.write(b'{"n": 3')  # a crash mid-write
    assert store.read_log("events") == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".hidden"])
def test_keys_cannot_escape_the_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError):
        FileStateStore(tmp_path).write(key, {})


def test_memory_store_copies_values() -> None:
    store = MemoryStateStore()
    value = {"a": [1]}
    store.write("k", value)
    value["a"].append(2)
    assert store.read("k") == {"a": [1]}
