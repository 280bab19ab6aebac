"""Progressive rollout demo: the default plan on a compressed time scale, healthy and with a regression.

    python examples/rollout_demo.py                  # both runs, ~40 s
    python examples/rollout_demo.py --time-scale 0.2 # slower, closer to real minutes

Each run starts `modelserve serve` (a subprocess, fresh state dir) on the `credit` example model,
drives real traffic from `labelled_traffic.jsonl` (several client threads, random user ids, ground
truth kept per answer), starts the default plan (shadow -> 5% -> 25% -> 50% -> 100%, the default
gates, but shadow agreement >= 0.80 instead of 0.85 and 200 shadow comparisons instead of 1,000:
see `demo_plan`) for version 2 and prints progress, then the timeline with every gate's numbers
(`modelserve rollout status`).

1. healthy: version 2 as committed -> promoted.
2. regression: a temporary copy of the repository whose config.toml injects faults into version 2
   (`[testing.faults."2"] error_rate = 0.05`, see modelserve/serving/faults.py) -> rolled back,
   version 1 stays live and serves everything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from modelserve.cli import main as cli
from modelserve.rollout.plan import default_plan

EXAMPLES = Path(__file__).resolve().parent
TOKEN = "demo-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REGRESSION = '\n[testing.faults."2"]   # injected by rollout_demo.py\nerror_rate = 0.05\nseed = 1\n'
#: credit v2 (boosted trees) is a different model from v1 (a scorecard): it is more accurate on the
#: ground truth and disagrees with v1 on ~14% of labels, so the default agreement floor of 0.85 would
#: stop it at the shadow stage (a real finding, not noise). The demo lowers that one gate to 0.80.
AGREEMENT_THRESHOLD = 0.80
#: The default shadow stage waits for 1,000 comparisons, what low traffic needs to tell 0.5 % errors
#: from 2.5 %. The demo compresses time tenfold (60 s before an undecided stage pauses) and its
#: failing candidate fails 5 %; on a busy host the server sheds most shadow runs (they never slow
#: the live version), so the demo asks for 200.
SHADOW_SAMPLES = 200


def demo_plan() -> dict[str, Any]:
    """The default plan (stages, durations, gates) with the shadow agreement gate at 0.80 and 200
    shadow comparisons."""
    plan = default_plan().to_dict()
    plan["name"] = "default (agreement >= 0.80, 200 shadow comparisons)"
    for stage in plan["stages"]:
        if stage["shadow"]:
            stage["min_samples"] = SHADOW_SAMPLES
        for gate in stage["gates"]:
            if gate["metric"] == "shadow_agreement":
                gate["threshold"] = AGREEMENT_THRESHOLD
    return plan


def start_server(repo: Path, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "modelserve.cli", "serve", str(repo), "--port", str(port)]
    command += ["--state-dir", str(state), "--admin-token", TOKEN, "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited; see {log}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("server did not become ready in 60 s")
        time.sleep(0.1)


class Traffic:
    """Client threads replaying labelled rows; counts answers and correct labels per version."""

    def __init__(self, url: str, rows: list[dict[str, Any]], threads: int) -> None:
        self.url = f"{url}/v2/models/credit/infer"
        self.rows = rows
        self.answers: Counter[tuple[str, int]] = Counter()
        self.correct: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.drive, args=(i,), daemon=True) for i in range(threads)]

    def drive(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                row = rng.choice(self.rows)
                body = {
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row["input"]}]
                }
                body["outputs"] = [{"name": "label"}]
                response = client.post(
                    self.url, json=body, headers={"x-user-id": f"user-{rng.randrange(10**9)}"}
                )
                version = response.headers.get("x-model-version", "?")
                right = (
                    response.status_code == 200 and response.json()["outputs"][0]["data"][0] == row["label"]
                )
                with self.lock:
                    self.answers[(version, response.status_code)] += 1
                    self.correct[version] += right

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def report(self) -> str:
        with self.lock:
            answers, correct = Counter(self.answers), Counter(self.correct)
        lines = []
        for version in sorted({v for v, _ in answers}):
            total = sum(n for (v, _), n in answers.items() if v == version)
            errors = sum(n for (v, status), n in answers.items() if v == version and status >= 500)
            lines.append(
                f"  version {version}: {total} answers, {errors} server errors, "
                f"accuracy vs ground truth {correct[version] / total:.3f}"
            )
        return "\n".join(lines)


def run(title: str, repo: Path, work: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    print(f"\n=== {title} ===")
    process, url = start_server(repo, work / "state", work / "server.log")
    try:
        status = httpx.get(f"{url}/admin/models/credit", headers=AUTH, timeout=30).json()
        faults = (status["slots"][status["idle_slot"]] or {}).get("injected_faults")
        with Traffic(url, rows, args.threads) as traffic:
            time.sleep(1.0)  # a baseline for the live version before the rollout starts
            body = {"version": "2", "plan": demo_plan(), "time_scale": args.time_scale}
            started = httpx.post(f"{url}/admin/models/credit/rollout", json=body, headers=AUTH, timeout=60)
            if started.status_code >= 400:
                raise SystemExit(f"cannot start the rollout: {started.text}")
            live = httpx.get(f"{url}/admin/models/credit", headers=AUTH, timeout=30).json()
            idle = live["slots"][live["idle_slot"]] or {}
            if idle.get("injected_faults"):
                print(f"version 2 has injected faults (config.toml [testing]): {idle['injected_faults']}")
            elif faults is None:
                print("version 2 as committed, no injected faults")
            seen = ""
            deadline = time.monotonic() + args.timeout
            while True:
                rollout = httpx.get(f"{url}/admin/models/credit/rollout", headers=AUTH, timeout=30).json()[
                    "rollout"
                ]
                line = f"{rollout['state']:<11} stage {rollout['stage']:<10} {rollout['weight']:>3}%"
                if line != seen:
                    print(f"  {time.strftime('%H:%M:%S')}  {line}")
                    seen = line
                if not rollout["active"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # traffic after the decision: shows who serves now
        print("\ntraffic (ground truth from labelled_traffic.jsonl):")
        print(traffic.report())
        print("\n$ modelserve rollout status credit")
        os.environ["MODELSERVE_ADMIN_TOKEN"] = TOKEN
        cli(["rollout", "status", "credit", "--url", url])
        return str(rollout["state"])
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--time-scale", type=float, default=0.1, help="plan durations x this (default 0.1)")
    parser.add_argument("--threads", type=int, default=4, help="client threads driving traffic")
    parser.add_argument("--timeout", type=float, default=90.0, help="give up on a run after this many s")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as tmp:
        work = Path(tmp)
        (work / "healthy").mkdir()
        healthy = run("1. healthy candidate", EXAMPLES / "models", work / "healthy", args, rows)
        broken = work / "regression" / "models"
        shutil.copytree(EXAMPLES / "models", broken)
        with (broken / "credit" / "config.toml").open("a") as config:
            config.write(REGRESSION)
        regression = run("2. candidate failing 5% of requests", broken, work / "regression", args, rows)
    print(f"\nhealthy: {healthy}; regression: {regression}")
    return 0 if (healthy, regression) == ("promoted", "rolled_back") else 1


if __name__ == "__main__":
    sys.exit(main())
