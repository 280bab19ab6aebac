"""Attacks on a running `modelserve serve` (loopback only, bounded): does it stay responsive and
give its memory back?

For each attack a prober (a process of its own, so the attack's client work never delays it) asks
`/v2/health/live` every 20 ms while the attack runs; the table shows
the liveness latency (p50 / p99 / max, and probes that got no answer within 5 s), the server's
resident memory before, at its peak and 3 s after, the CPU time the server used meanwhile (all
threads, including the 3 s after: the figure that hardly moves with the host's load), and what
the attack itself got back.

    python benchmarks/attacks.py                      # this tree
    python benchmarks/attacks.py --compare /work/wt/base   # and another checkout, side by side

A first row probes the idle server: on a shared host its p99 is the floor under every other row.
Attacks: a 100% shadow fed adversarial disagreeing batches (binary tensors), then status / shadow
report latency; four concurrent 60 MB JSON bodies; four concurrent 60 MB binary tensor bodies; 8 MB
headers; 1,000 slow-loris connections; a flags file of exponential `$ref`s dropped in while serving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

TOKEN = "bench"
#: Probing lasts at least this long, however fast the attack is answered.
MIN_PROBING_S = 5.0
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system, every thread): on a shared host latency swings
    with scheduling, the CPU an attack costs the server hardly."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def binary_body(rows: int, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    """The same tensor as `body` in the binary tensor extension: a small JSON header, then raw bytes."""
    data = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32).tobytes()
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [rows, 16],
        "parameters": {"binary_data_size": len(data)},
    }
    header = orjson.dumps({"inputs": [tensor]})
    return header + data, {"inference-header-content-length": str(len(header))}


def body(rows: int, seed: int = 0) -> bytes:
    data = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    return orjson.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data.ravel().tolist()}
            ]
        }
    )


@contextlib.contextmanager
def server(tree: Path, repo: Path, state: Path, flags: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    args = [sys.executable, "-m", "modelserve.cli", "serve", str(repo), "--port", str(port),
            "--state-dir", str(state), "--admin-token", TOKEN, "--flags", str(flags),
            "--log-level", "error"]  # fmt: skip
    # cwd too: `python -m` puts the working directory first on sys.path.
    env, cwd = {**os.environ, "PYTHONPATH": str(tree)}, str(tree)
    if "--header-timeout" in subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "serve", "--help"], capture_output=True, text=True, env=env,
        cwd=cwd,
    ).stdout:  # fmt: skip
        args += ["--header-timeout", "2"]
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def probe(url: str, pid: int, started: Any, stop: Any, results: Any) -> None:
    """Ask liveness every 20 ms and sample the server's memory until `stop` is set (own process)."""
    latencies: list[float] = []
    missed = 0
    peak = rss_mb(pid)
    with httpx.Client(timeout=5) as client:
        started.set()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.get(url + "/v2/health/live")
                latencies.append((time.perf_counter() - started) * 1e3)
            except httpx.HTTPError:
                missed += 1
            peak = max(peak, rss_mb(pid))
            time.sleep(0.02)
    results.put((latencies, missed, peak))


def measured(url: str, pid: int, attack: Callable[[], str]) -> dict[str, Any]:
    """Run `attack` while a prober process probes liveness and samples memory."""
    before = rss_mb(pid)
    cpu_before = cpu_s(pid)
    context = multiprocessing.get_context("spawn")
    started, stop, results = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=probe, args=(url, pid, started, stop, results))
    prober.start()
    started.wait(120)  # the prober's interpreter is up before the attack starts
    began = time.monotonic()
    try:
        outcome = attack()
        time.sleep(max(0.0, MIN_PROBING_S - (time.monotonic() - began)))  # enough probes for a p99
    except httpx.HTTPError as exc:  # the attack's own requests got no answer: that is the finding
        outcome = f"{type(exc).__name__}: the server did not answer"
    finally:
        stop.set()
        latencies, missed, peak = results.get(timeout=60)
        prober.join(timeout=30)
    time.sleep(3)
    latencies.sort()
    return {
        "live p50 ms": statistics.median(latencies) if latencies else None,
        "live p99 ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        "live max ms": latencies[-1] if latencies else None,
        "no answer": missed,
        "rss before MB": before,
        "rss peak MB": peak,
        "rss after MB": rss_mb(pid),
        "server cpu s": cpu_s(pid) - cpu_before,
        "outcome": outcome,
    }


def no_attack() -> str:
    """The reference row: the same prober against the idle server (the host's own noise)."""
    return "nothing sent"


def shadow_attack(url: str, batch: tuple[bytes, dict[str, str]]) -> str:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        client.post("/admin/models/fraud/stage", json={"version": "1"})
        client.post("/admin/models/fraud/shadow", json={"versions": ["1"], "rate": 1.0})
        for _ in range(15):
            client.post("/v2/models/fraud/infer", content=batch[0], headers=batch[1])
        time.sleep(1)
        status_ms, report_ms, size = [], [], 0
        for _ in range(10):
            started = time.perf_counter()
            client.get("/admin/models/fraud")
            status_ms.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            size = len(client.get("/admin/models/fraud/shadow/report").content)
            report_ms.append((time.perf_counter() - started) * 1e3)
        client.post("/admin/models/fraud/shadow", json={"off": True})
    status, report = statistics.median(status_ms), statistics.median(report_ms)
    return f"status p50 {status:.1f} ms, report p50 {report:.1f} ms ({size / 1e3:.0f} kB)"


def large_bodies_attack(url: str, big: bytes, headers: dict[str, str] | None = None) -> str:
    codes: list[int] = []

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.post(url + "/v2/models/fraud/infer", content=big, headers=headers, timeout=120)
            codes.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return f"{len(big) / 1e6:.0f} MB x4: statuses {sorted(codes)}"


def header_attack(url: str) -> str:
    codes: list[int | str] = []
    for i in range(20):
        try:
            response = httpx.get(
                url + "/v2/health/live", headers={f"x-context-k{i}": "v" * 8_000_000}, timeout=30
            )
            codes.append(response.status_code)
        except httpx.HTTPError as exc:
            codes.append(type(exc).__name__)
    return f"8 MB headers x20: {sorted(set(map(str, codes)))}"


def slowloris_attack(url: str) -> str:
    port = int(url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        sock.setblocking(False)
        sockets.append(sock)
    time.sleep(6)
    closed = 0
    for sock in sockets:
        try:
            if sock.recv(4096) is not None:  # data (408) or b"" (closed)
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return f"1000 partial connections: {closed} closed by the server within 6 s"


def flags_attack(url: str, flags: Path) -> str:
    evaluators = {f"e{i}": {"or": [{"$ref": f"e{i + 1}"}] * 4} for i in range(25)}
    evaluators["e25"] = {"==": [{"var": "k"}, "x"]}
    flag = {"state": "ENABLED", "variants": {"a": "1"}, "defaultVariant": "a"}
    doc = {
        "$evaluators": evaluators,
        "flags": {"f": {**flag, "targeting": {"if": [{"$ref": "e0"}, "a", "a"]}}},
    }
    flags.write_text(json.dumps(doc))
    time.sleep(4)
    ready = httpx.get(url + "/v2/health/ready", timeout=30).status_code
    return f"exponential $refs ({len(json.dumps(doc))} B): ready {ready}"


def run(tree: Path, only: str | None = None) -> dict[str, dict[str, Any]]:
    from modelserve import testing  # this tree's: it only writes the ONNX files

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = testing.repository(root / "models", {"fraud": {"1": 1, "2": 2}})
        flags = root / "flags.json"
        flags.write_text(
            json.dumps({"flags": {"f": {"state": "ENABLED", "variants": {"a": "1"}, "defaultVariant": "a"}}})
        )
        results = {}
        # Payloads are built before measuring: the prober shares this process (and its GIL).
        batch = binary_body(
            20_000
        )  # 1.3 MB, unauthenticated inference traffic; v1 and v2 disagree on many rows
        big = body(200_000, seed=1)  # ~60 MB of JSON, under the default 64 MB body limit
        big_binary = binary_body(900_000, seed=1)  # ~58 MB of binary tensor
        with server(tree, repo, root / "state", flags) as (url, process):
            for name, attack in [
                ("none (the host's noise)", no_attack),
                ("shadow, adversarial batches", lambda: shadow_attack(url, batch)),
                ("4 x 60 MB JSON bodies", lambda: large_bodies_attack(url, big)),
                ("4 x 58 MB binary tensors", lambda: large_bodies_attack(url, *big_binary)),
                ("8 MB headers", lambda: header_attack(url)),
                ("slow-loris", lambda: slowloris_attack(url)),
                ("flags: exponential $refs", lambda: flags_attack(url, flags)),
            ]:
                if only is None or only in name or attack is no_attack:  # the reference row always
                    results[name] = measured(url, process.pid, attack)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="another checkout, measured in the same run")
    parser.add_argument("--only", help="run the attacks whose name contains this text (e.g. binary)")
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.compare:
        trees = {"compare": args.compare.resolve(), **trees}
    for label, tree in trees.items():
        print(f"\n## {label}: {tree}")
        columns = "live p50 / p99 / max ms | no answer | RSS before / peak / after MB | server CPU s"
        print(f"| attack | {columns} | outcome |")
        print("|---|---|---|---|---|---|")
        for name, r in run(tree, args.only).items():
            live = "/".join(
                "-" if r[k] is None else f"{r[k]:.1f}" for k in ("live p50 ms", "live p99 ms", "live max ms")
            )
            rss = f"{r['rss before MB']:.0f} / {r['rss peak MB']:.0f} / {r['rss after MB']:.0f}"
            cpu = f"{r['server cpu s']:.2f}"
            print(f"| {name} | {live} | {r['no answer']} | {rss} | {cpu} | {r['outcome']} |", flush=True)


if __name__ == "__main__":
    main()
