"""`rollback --to` over a warm set of three versions, under load: time to take effect, failed requests.

Run: python benchmarks/warm_switch.py [--switches 1000]
A real `modelserve serve` (pinned to one core) holds the credit model's versions 1, 2 and a third (a
copy of 2) warm with `keep_warm = 3`; it promotes 1 -> 2 -> 3, then alternates `rollback --to 1` and
`promote` (3 is the candidate again after each rollback) while wrk drives inference on the other
core. "Effect" is the server's own measure of each switch (`effect_us`: from the command entering the
registry to the reference swap, before the state file is written; the admin call's round trip, also
shown, adds HTTP and the desired-state write); "stale" counts inference requests
sent after a switch answered that were still served by the old version. The table also lists each
warm version's measured memory (RSS delta at load, see serving/memory.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.harness import free_port, modelserve_argv, server_process, table, wrk

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=1000)
    args = parser.parse_args()
    body = json.dumps(json.loads((EXAMPLES / "req.json").read_text())).encode()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(EXAMPLES / "models" / "credit", repo / "credit")
        shutil.copytree(repo / "credit" / "2", repo / "credit" / "3")
        (repo / "credit" / "config.toml").write_text(
            'live = "1"\n[serving]\nintra_op_threads = 1\nkeep_warm = 3\n'
        )
        port = free_port()
        argv = modelserve_argv(repo, port, Path(tmp) / "state", "--admin-token", TOKEN)
        with server_process(argv, port, "/v2/health/ready"):
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(
                base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
            ) as admin:
                for version in ("2", "3"):
                    admin.post("/admin/models/credit/stage", json={"version": version}).raise_for_status()
                    admin.post("/admin/models/credit/promote").raise_for_status()
                effects: list[float] = []
                round_trips: list[float] = []
                stale = 0
                failed_switches = 0
                result: dict[str, object] = {}

                def load() -> None:
                    result["load"] = wrk(
                        f"{url}/v2/models/credit/infer",
                        body,
                        {"content-type": "application/json"},
                        connections=4,
                        seconds=duration,
                    )

                duration = max(5.0, args.switches * 0.012)
                loader = threading.Thread(target=load)
                loader.start()
                for i in range(args.switches):
                    rollback = i % 2 == 0
                    path = "/admin/models/credit/" + ("rollback" if rollback else "promote")
                    sent = time.perf_counter()
                    response = admin.post(path, json={"to": "1"} if rollback else None)
                    round_trips.append((time.perf_counter() - sent) * 1e3)
                    if response.status_code != 200:
                        failed_switches += 1
                        continue
                    switch = response.json()["switch"]
                    effects.append(switch["effect_us"])
                    served = admin.post("/v2/models/credit/infer", content=body).headers["x-model-version"]
                    stale += served != switch["to_version"]
                loader.join()
                warm = admin.get("/admin/models/credit").json()["warm"]
        load_result = result["load"]
        effects.sort()
        round_trips.sort()
        print(f"\n{len(effects)} switches (rollback --to 1 / promote 3) under wrk load, credit model")
        print(
            table(
                ["figure", "value"],
                [
                    ["switch effect p50 (µs)", statistics.median(effects)],
                    ["switch effect p99 (µs)", effects[int(0.99 * (len(effects) - 1))]],
                    ["switch effect max (µs)", effects[-1]],
                    ["admin call round trip p50 (ms)", statistics.median(round_trips)],
                    ["admin call round trip p99 (ms)", round_trips[int(0.99 * (len(round_trips) - 1))]],
                    ["failed switches", failed_switches],
                    ["stale responses after a switch", stale],
                    ["inference req/s during switches", load_result.requests_per_s],  # type: ignore[attr-defined]
                    ["inference p99 (ms)", load_result.p99_ms],  # type: ignore[attr-defined]
                    ["failed inference requests", load_result.errors],  # type: ignore[attr-defined]
                ],
            )
        )
        print("\nwarm versions and their measured memory")
        print(
            table(
                ["version", "role", "resident", "rss delta (B)", "file (B)"],
                [
                    [
                        row["version"],
                        row["role"],
                        row["memory"]["resident"],
                        row["memory"]["rss_delta_bytes"],
                        row["memory"]["file_bytes"],
                    ]
                    for row in warm
                ],
            )
        )


if __name__ == "__main__":
    main()
