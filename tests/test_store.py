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


def test_a_state_file_that_is_a_directory_or_unreadable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    import os

    store = FileStateStore(tmp_path)
    (tmp_path / "slots.fraud.json").mkdir()
    with pytest.raises(ConfigError, match=r"slots\.fraud\.json cannot be read"):
        store.read("slots.fraud")
    store.write("policy.fraud", {"canary_weight": 5})
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "policy.fraud.json").chmod(0)
        with pytest.raises(ConfigError, match=r"policy\.fraud\.json cannot be read"):
            store.read("policy.fraud")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"deep": [1.0, float("-inf")]}])
def test_non_finite_numbers_are_never_saved_and_the_last_good_document_stays(
    tmp_path: Path, bad: object
) -> None:
    for store in (FileStateStore(tmp_path), MemoryStateStore()):
        store.write("experiment.fraud", {"total_sq": 1.0})
        with pytest.raises(ValueError, match="non-finite"):
            store.write("experiment.fraud", {"total_sq": bad})
        assert store.read("experiment.fraud") == {"total_sq": 1.0}
