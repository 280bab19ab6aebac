"""Dynamic batching: HTTP throughput of the 256-wide MLP with and without batching, same server.

    python benchmarks/batching.py [--seconds 5] [--connections 32]

One server (pinned to core 0) hosts the same ONNX file twice: `wide` (max_batch_size = 1) and
`wide_batched` (max_batch_size = 32, max_queue_delay_ms = 1); wrk on core 1 drives each in turn.
Target (benchmarks/README.md): >= 2x unbatched at concurrency 32.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import free_port, modelserve_argv, server_process, table, wrk
from serving_overhead import bodies

from modelserve import testing

WIDTHS = (256, 512, 512, 10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        testing.mlp(repo / "wide" / "1" / "model.onnx", WIDTHS, seed=1)
        (repo / "wide" / "config.toml").write_text('[serving]\nintra_op_threads = 1\nexecution = "thread"\n')
        (repo / "wide_batched" / "1").mkdir(parents=True)
        shutil.copy(repo / "wide" / "1" / "model.onnx", repo / "wide_batched" / "1" / "model.onnx")
        (repo / "wide_batched" / "config.toml").write_text(
            "[serving]\nintra_op_threads = 1\nmax_batch_size = 32\nmax_queue_delay_ms = 1.0\n"
        )
        json_body, (binary_body, binary_headers) = bodies(WIDTHS[0])
        port = free_port()
        argv = modelserve_argv(repo, port, Path(tmp) / "state")
        rows = []
        with server_process(argv, port):
            for encoding, body, headers in (
                ("JSON", json_body, {"Content-Type": "application/json"}),
                ("binary", binary_body, binary_headers),
            ):
                results = {}
                for model in ("wide", "wide_batched"):
                    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                    wrk(url, body, headers, connections=args.connections, seconds=1)
                    results[model] = wrk(
                        url, body, headers, connections=args.connections, seconds=args.seconds
                    )
                base = results["wide"].requests_per_s
                for model, r in results.items():
                    rows.append(
                        [
                            encoding,
                            model,
                            r.requests_per_s,
                            r.p50_ms,
                            r.p99_ms,
                            r.errors,
                            r.requests_per_s / base,
                        ]
                    )
    print(
        f"Dynamic batching, 256->512->512->10 MLP, batch 1 per request, wrk -c{args.connections}, "
        "server pinned to one core (target: >= 2x unbatched)"
    )
    print(table(["body", "model", "req/s", "p50 ms", "p99 ms", "errors", "x unbatched"], rows))


if __name__ == "__main__":
    main()
