"""The README, run top to bottom as a user types it, on a fresh clone of this repository.

Every ```bash block of README.md runs, in order, in one bash session (so `source`, `export` and `cd`
carry over, as in a terminal), inside a `git clone` of the repository in a temporary folder. What
differs from a person at a keyboard, and why:

- A `modelserve serve ...` command that would hold the terminal runs in the background on a free
  loopback port (the session waits until `/v2/health/ready` answers 200, as a person waits for
  "Application startup complete"); a later `serve` stops the earlier one first (Ctrl-C), as the
  README says to. `localhost:8000` in commands becomes that port, and `MODELSERVE_URL` points the
  client commands at it, so the test never collides with anything else on port 8000.
- The install commands run as written, offline: the test's own environment (where every dependency,
  and the build backend, are installed already) is on `PYTHONPATH`, so pip finds each requirement
  satisfied and installs only the clone itself, editable (~20 s instead of minutes of downloads).
  pip may not reach any index (`PIP_NO_INDEX`, no pip configuration files) and builds the clone
  without build isolation (an isolated build would download setuptools), so the test never depends
  on PyPI; on a user's machine the same command downloads what it needs.
- A block preceded by `<!-- readme-test: skip REASON -->` is checked with `bash -n` but not run
  (the test-suite command, which would run this test again, and the benchmarks, which take minutes).

The whole run takes about a minute; its transcript is printed when it fails.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(?P<reason>[^>]*)-->\s*$")
TIMEOUT_S = 600  # ~1 min on an idle machine; a host busy with other work can take five


@dataclass(frozen=True, slots=True)
class Block:
    """One ```bash block: its commands, the line it starts on, and why it is skipped (if it is)."""

    line: int
    text: str
    skip: str | None


def bash_blocks(markdown: str) -> list[Block]:
    blocks = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```bash":
            start = index
            body = []
            index += 1
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            match = SKIP.search(previous)
            blocks.append(Block(start + 1, "\n".join(body), match["reason"].strip() if match else None))
        index += 1
    return blocks


def commands(text: str) -> list[str]:
    """The block's commands: lines joined at a trailing backslash."""
    joined: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [c for c in joined if c.strip() and not c.strip().startswith("#")]


SERVE = re.compile(r"^(?P<cmd>(?:\S*/)?modelserve serve\b[^&]*?)\s*(?P<bg>&)?\s*(?:#.*)?$")

PRELUDE = r"""
set -euo pipefail
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then kill -INT "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" || true; fi
    SERVER_PID=""
}
trap stop_server EXIT
start_server() {   # what a person does: start it, wait for "Application startup complete"
    stop_server
    "$@" --port "$README_PORT" > serve.log 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        if curl -fsS "localhost:$README_PORT/v2/health/ready" > /dev/null 2>&1; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat serve.log; return 1; fi
        sleep 0.1
    done
    cat serve.log; return 1
}
"""


def script(blocks: list[Block], port: int) -> str:
    """The README as one bash script, adapted as the module docstring says."""
    out = [PRELUDE]
    for block in blocks:
        if block.skip is not None:
            out.append("echo " + shlex.quote(f"### README line {block.line}: skipped ({block.skip})"))
            continue
        for command in commands(block.text):
            command = command.replace("localhost:8000", f"localhost:{port}")
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            out.append(f"echo; echo {shlex.quote('$ ' + command)}")
            parts = [part.strip() for part in command.split(" && ")]
            serve = SERVE.match(parts[-1])
            if serve is not None:
                if parts[:-1]:
                    out.append(" && ".join(parts[:-1]))
                out.append(f"start_server {serve['cmd']}")
            else:
                out.append(command)
    out.append("stop_server")
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_bash_block_is_valid_bash_and_skips_say_why() -> None:
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    for block in blocks:
        checked = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
        assert checked.returncode == 0, f"README line {block.line}: {checked.stderr}"
        assert block.skip is None or block.skip, f"README line {block.line}: say why it is skipped"


def test_the_readme_runs_top_to_bottom_on_a_fresh_clone(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.fail("the README test needs the repository's git history (it clones it)")
    clone = tmp_path / "modelserve"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    port = free_port()
    text = script(bash_blocks(README.read_text(encoding="utf-8")), port)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONHOME") and not key.startswith(("MODELSERVE_", "PIP_"))
    }
    env.update(
        PYTHONPATH=sysconfig.get_paths()["purelib"],  # every dependency: pip installs the clone only
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CONFIG_FILE=os.devnull,  # no machine-wide index, mirror or constraint
        PIP_NO_INDEX="1",  # offline: a download attempt fails the test
        PIP_NO_BUILD_ISOLATION="0",  # pip reads this inverted: "0" turns build isolation off
        README_PORT=str(port),
        MODELSERVE_URL=f"http://127.0.0.1:{port}",
    )
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if "/.venv/" not in p and not p.endswith("/.venv/bin")
    )
    try:
        run = subprocess.run(
            ["bash", "-c", text], cwd=clone, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the README took more than {TIMEOUT_S} s:\n{exc.stdout}\n{exc.stderr}")
    transcript = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, transcript
    assert "Traceback" not in transcript, transcript
