from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

DOC = {
    "flags": {
        "fraud-version": {
            "state": "ENABLED",
            "variants": {"v1": "1", "v2": "2", "v3": "3"},
            "defaultVariant": "v1",
            "targeting": {"fractional": [["v1", 70], ["v2", 20], ["v3", 10]]},
        }
    }
}
RUN = [sys.executable, "-m", "modelserve.cli_flags"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_keys_from_prints_csv_matching_flagd_core(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(DOC))
    keys = [f"user-{i}" for i in range(2000)]
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    result = cli("flags", "eval", str(flags), "fraud-version", "--keys-from", str(tmp_path / "keys.txt"))
    assert result.returncode == 0, result.stderr
    reference = FlagdCore()
    reference.set_flags(DOC)
    resolve = reference.resolve_string_value
    expected = [
        f"{k},{resolve('fraud-version', '', EvaluationContext(targeting_key=k)).variant}" for k in keys
    ]
    assert result.stdout.splitlines() == expected


def test_keys_from_stdin(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(DOC))
    result = cli("flags", "eval", str(flags), "fraud-version", "--keys-from", "-", stdin="a\nb\n")
    assert result.returncode == 0 and [line.split(",")[0] for line in result.stdout.splitlines()] == [
        "a",
        "b",
    ]


def test_single_key_prints_variant_reason_and_value(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(DOC))
    result = cli(
        "flags", "eval", str(flags), "fraud-version", "--key", "user-1", "--context", '{"tier": "gold"}'
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["reason"] == "SPLIT" and lines["variant"] in {"v1", "v2", "v3"}
    assert json.loads(lines["value"]) == DOC["flags"]["fraud-version"]["variants"][lines["variant"]]


def test_bad_file_unknown_flag_and_bad_context_exit_2_without_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    good = tmp_path / "flags.json"
    good.write_text(json.dumps(DOC))
    for args, message in [
        (("flags", "eval", str(broken), "f", "--key", "k"), "not valid JSON"),
        (("flags", "eval", str(tmp_path / "absent.json"), "f", "--key", "k"), "cannot read"),
        (("flags", "eval", str(good), "nope", "--key", "k"), "FLAG_NOT_FOUND"),
        (("flags", "eval", str(good), "fraud-version", "--key", "k", "--context", "[1"), "--context"),
        (("flags", "eval", str(good), "fraud-version"), "--key"),
    ]:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr
