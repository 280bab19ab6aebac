from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from modelserve.errors import ConfigError
from modelserve.state.flags import FlagFileSource


def write(path: Path, default: str, *, bump: int = 0) -> None:
    doc = {"flags": {"f": {"state": "ENABLED", "variants": {"a": "1", "b": "2"}, "defaultVariant": default}}}
    path.write_text(json.dumps(doc))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_poll_swaps_in_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, "a")
    source = FlagFileSource(path)
    first = source.flagset
    assert source.poll() is False
    write(path, "b", bump=1)
    assert source.poll() is True
    assert source.flagset is not first and source.flagset.evaluate("f").variant == "b"


def test_invalid_file_keeps_last_good_flags_and_records_the_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, "a")
    source = FlagFileSource(path)
    good = source.flagset
    path.write_text('{"flags": {"f": {"state": "MAYBE"}}}')
    assert source.poll() is False
    assert source.flagset is good
    assert source.last_error is not None and "'state' must be" in source.last_error
    write(path, "b", bump=2)
    assert source.poll() is True and source.last_error is None


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FlagFileSource(tmp_path / "nope.json")


def test_watch_reloads_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, "a")
    source = FlagFileSource(path)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(source.watch, 0.01)
            write(path, "b", bump=3)
            with anyio.fail_after(5):
                while source.reloads == 0:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()

    anyio.run(main)
    assert source.flagset.evaluate("f").variant == "b"


def test_a_reload_that_fails_in_any_way_keeps_the_last_good_flags_and_later_reloads_work(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.json"
    write(path, "a")
    source = FlagFileSource(path)
    rule: object = "a"
    for _ in range(400):  # deeper than any sane rule: refused, never a RecursionError
        rule = {"if": [True, rule, "b"]}
    doc = {"flags": {"f": {"state": "ENABLED", "variants": {"a": "1", "b": "2"}, "defaultVariant": "a",
                           "targeting": rule}}}  # fmt: skip
    path.write_text(json.dumps(doc))
    assert source.poll() is False
    assert source.last_error is not None and "nests more than" in source.last_error
    assert source.flagset.evaluate("f").variant == "a"
    write(path, "b", bump=5)
    assert source.poll() is True and source.last_error is None
    assert source.flagset.evaluate("f").variant == "b"
