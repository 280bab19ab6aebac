"""Serving overhead: raw onnxruntime vs in-process predict vs HTTP (modelserve vs naive Starlette).

    python benchmarks/serving_overhead.py [--seconds 5] [--connections 8] [--skip-http]
                                          [--telemetry] [--monitoring] [--repeats 3]

In one run, on models built on the spot (tiny 16->8->2 and wide 256->512->512->10 MLPs):
1. µs per call, batch 1: `session.run`, and `ModelServe.predict` (embedded; overhead = difference);
2. HTTP req/s and latency with wrk (server on core 0, wrk on core 1, same uvicorn settings): a naive
   loop-blocking Starlette handler, a naive thread-hopping one, modelserve with V2 JSON and with the
   binary tensor extension. Ratios are against the naive handlers measured in the same run.
3. with --telemetry (tiny model, V2 JSON): modelserve without the telemetry feature vs metrics only
   (what `modelserve serve` does by default: no-op tracer, SDK meter + /metrics) vs traces + metrics
   (SDK tracer, every request sampled, BatchSpanProcessor into an exporter that drops spans). The
   three servers are measured in turn, `--repeats` times, and the median is reported.
4. with --monitoring (tiny model, V2 JSON): modelserve with monitoring off vs on (prediction
   distribution, drift against a reference, label join: what `modelserve serve` does by default,
   so every request up to `max_rate` a second and a uniform sample past it),
   the same way (interleaved, median of `--repeats`). The drift reference is frozen after 1 s so
   the run measures steady-state windowing, not capture.
Sections 3 and 4 also report the server's CPU time per request (from /proc, during the measured
wrk run): on a machine shared with other work, req/s swings with scheduling, CPU per request hardly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from harness import cpu_seconds, free_port, modelserve_argv, server_process, table, wrk

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.monitoring.version import DEFAULT_MAX_RATE as MAX_RATE
from modelserve.server.app import ModelServe

MODELS = {"tiny": (16, 8, 2), "wide": (256, 512, 512, 10)}


def time_per_call(fn, calls: int) -> float:  # type: ignore[no-untyped-def]
    """Median over 7 rounds of the mean µs per call."""
    rounds = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def in_process(repo: Path, name: str, width: int) -> tuple[float, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    raw = time_per_call(lambda: session.run(None, {"input": x}), 2000)

    async def predict_loop(calls: int) -> float:
        # The embedded entry point, on the one inference path (routing, observers: windows, metrics...).
        ms = ModelServe(ServerConfig(repository=repo, state_dir=None, load_models=(name,)))
        async with ms.lifespan():
            scope: dict[str, object] = {"type": "http", "headers": []}
            feeds = {"input": x}
            rounds = []
            for _ in range(7):
                started = time.perf_counter()
                for _ in range(calls):
                    await ms.predict(scope, name, feeds)
                rounds.append((time.perf_counter() - started) / calls * 1e6)
        return statistics.median(rounds)

    return raw, asyncio.run(predict_loop(2000))


def bodies(width: int) -> tuple[bytes, tuple[bytes, dict[str, str]]]:
    x = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    json_body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, width], "data": x.ravel().tolist()}]}
    )
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, width],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    binary_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return json_body, (header + x.tobytes(), binary_headers)


def http_rows(repo: Path, name: str, width: int, seconds: float, connections: int) -> list[list[object]]:
    json_body, (binary_body, binary_headers) = bodies(width)
    json_headers = {"Content-Type": "application/json"}
    model_path = str(repo / name / "1" / "model.onnx")
    here = Path(__file__).parent
    results = {}
    for mode in ("blocking", "thread"):
        port = free_port()
        argv = [sys.executable, str(here / "naive_server.py"), model_path, str(port), mode]
        with server_process(argv, port, ready_path="/"):
            url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
            wrk(url, json_body, json_headers, connections=connections, seconds=1)  # warm
            results[f"naive {mode}"] = wrk(
                url, json_body, json_headers, connections=connections, seconds=seconds
            )
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        argv = modelserve_argv(repo, port, state)
        with server_process(argv, port):
            url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
            wrk(url, json_body, json_headers, connections=connections, seconds=1)
            results["modelserve JSON"] = wrk(
                url, json_body, json_headers, connections=connections, seconds=seconds
            )
            results["modelserve binary"] = wrk(
                url, binary_body, binary_headers, connections=connections, seconds=seconds
            )
    blocking = results["naive blocking"].requests_per_s
    thread = results["naive thread"].requests_per_s
    return [
        [
            name,
            label,
            r.requests_per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.requests_per_s / blocking,
            r.requests_per_s / thread,
        ]
        for label, r in results.items()
    ]


TELEMETRY_MODES = ("off", "metrics", "traces+metrics")


def serve_for_telemetry(mode: str, repo: str, port: int) -> None:
    """Run modelserve on `port` with telemetry `mode` (a child process of `telemetry_rows`)."""
    import uvicorn
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from modelserve.config import ServerConfig
    from modelserve.server.app import create_app
    from modelserve.server.services import FeatureSet
    from modelserve.telemetry.exporters import build_providers_from_env

    class DropSpans(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    with tempfile.TemporaryDirectory() as state:
        config = ServerConfig(repository=Path(repo), state_dir=Path(state))
        if mode == "off":
            app = create_app(config, features=FeatureSet(telemetry=False))
        elif mode.startswith("monitoring"):
            app = create_app(config, features=FeatureSet(monitoring=mode == "monitoring on"))
        else:
            providers = build_providers_from_env({})  # as `modelserve serve` with no OTEL_* set
            tracer_provider = providers.tracer_provider
            if mode == "traces+metrics":
                # Past saturation the batch queue overflows and the SDK logs a warning per dropped span;
                # the harness never reads the server's stderr pipe, which would then fill and stall it.
                logging.getLogger("opentelemetry.sdk").setLevel(logging.ERROR)
                tracer_provider = TracerProvider()
                tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
            # As `modelserve serve`: with no metric exporter configured the app keeps its fast private path.
            meter_provider = providers.meter_provider if providers.metric_exporters else None
            app = create_app(config, tracer_provider=tracer_provider, meter_provider=meter_provider)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


MONITORING_MODES = ("monitoring off", "monitoring on")
#: "x off (CPU)": the baseline's server CPU per request over this mode's (1.0 = free); robust to load.
#: "paired": the median over rounds of each round's ratio (a round runs every mode back to back, so
#: the host's slower and faster minutes fall on both sides of each ratio).
COMPARISON_COLUMNS = (
    "req/s", "min", "max", "p50 ms", "errors", "x off", "paired", "CPU µs/req", "x off (CPU)", "paired",
)  # fmt: skip


def monitoring_work_us(requests: int = 20_000) -> tuple[float, float]:
    """CPU µs per monitored request, tiny-model shapes: `submit` (request path), `flush` (batch).

    Every request monitored (`max_rate = 0`): the work sampling divides past `max_rate` requests a
    second. Process CPU time, not wall time, so a busy machine does not inflate it.
    """
    from modelserve.monitoring.drift import DriftConfig
    from modelserve.monitoring.monitor import Monitor, MonitorConfig

    config = MonitorConfig(
        drift=DriftConfig(reference_period_s=0.0, reference_rows=2000, min_samples=500), max_rate=0.0
    )
    monitor = Monitor(config_for=lambda model: config, max_pending=requests)
    rng = np.random.default_rng(0)
    batch = [
        ({"input": rng.normal(size=(1, 16)).astype(np.float32)}, {"probabilities": rng.random((1, 2))})
        for _ in range(1000)
    ]
    for inputs, outputs in batch * 3:  # the reference freezes on these; then steady-state windowing
        monitor.submit("tiny", "1", inputs, outputs)
    monitor.flush()
    submit, flush = [], []
    for _ in range(5):
        submit_s = flush_s = 0.0
        for _ in range(requests // 1000):  # twice a second at ~2,000 req/s: ~1,000 requests a flush
            started = time.process_time()
            for inputs, outputs in batch:
                monitor.submit("tiny", "1", inputs, outputs)
            submit_s += time.process_time() - started
            started = time.process_time()
            monitor.flush()
            flush_s += time.process_time() - started
        submit.append(submit_s / requests * 1e6)
        flush.append(flush_s / requests * 1e6)
    return statistics.median(submit), statistics.median(flush)


def telemetry_rows(
    repo: Path, seconds: float, connections: int, repeats: int, modes: tuple[str, ...] = TELEMETRY_MODES
) -> list[list[object]]:
    """req/s of each server mode (the first is the baseline of the ratio), interleaved, median of repeats."""
    json_body, _ = bodies(MODELS["tiny"][0])
    headers = {"Content-Type": "application/json"}
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    p50s: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu_us: dict[str, list[float]] = {mode: [] for mode in modes}
    errors = dict.fromkeys(modes, 0)
    for _ in range(repeats):
        for mode in modes:  # interleaved, so drift on a noisy machine hits every mode alike
            port = free_port()
            argv = [sys.executable, __file__, "--serve-telemetry", mode, str(repo), str(port)]
            with server_process(argv, port) as process:
                url = f"http://127.0.0.1:{port}/v2/models/tiny/infer"
                wrk(url, json_body, headers, connections=connections, seconds=1)
                cpu_before = cpu_seconds(process.pid)
                result = wrk(url, json_body, headers, connections=connections, seconds=seconds)
                cpu = cpu_seconds(process.pid) - cpu_before
            # Server CPU per request: what a busy machine's scheduling does not change.
            cpu_us[mode].append(cpu / max(result.requests_per_s * seconds, 1.0) * 1e6)
            runs[mode].append(result.requests_per_s)
            p50s[mode].append(result.p50_ms)
            errors[mode] += result.errors
    off = statistics.median(runs[modes[0]])
    return [
        [
            mode,
            statistics.median(runs[mode]),
            min(runs[mode]),
            max(runs[mode]),
            statistics.median(p50s[mode]),
            errors[mode],
            statistics.median(runs[mode]) / off,
            statistics.median(b / a for a, b in zip(runs[modes[0]], runs[mode], strict=True)),
            statistics.median(cpu_us[mode]),
            statistics.median(cpu_us[modes[0]]) / statistics.median(cpu_us[mode]),
            statistics.median(a / b for a, b in zip(cpu_us[modes[0]], cpu_us[mode], strict=True)),
        ]
        for mode in modes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--telemetry", action="store_true", help="add the telemetry on/off comparison")
    parser.add_argument("--monitoring", action="store_true", help="add the monitoring on/off comparison")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the on/off comparisons")
    parser.add_argument(
        "--serve-telemetry", nargs=3, metavar=("MODE", "REPO", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_telemetry:
        mode, repo_path, port = args.serve_telemetry
        serve_for_telemetry(mode, repo_path, int(port))
        return
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name, widths in MODELS.items():
            testing.mlp(repo / name / "1" / "model.onnx", widths, seed=1)
            (repo / name / "config.toml").write_text(
                "[serving]\nintra_op_threads = 1\n[monitoring]\nreference_period_s = 1.0\n"
            )
        rows = []
        for name, widths in MODELS.items():
            raw, predict = in_process(repo, name, widths[0])
            rows.append([name, raw, predict, predict - raw])
        print("In-process, batch 1 (µs per call; target: overhead <= 15 µs)")
        print(table(["model", "session.run", "predict", "overhead"], rows))
        if args.telemetry:  # section 3 (runs with --skip-http too, which skips section 2 only)
            telemetry = telemetry_rows(repo, args.seconds, args.connections, args.repeats)
            print(
                f"\nTelemetry cost, tiny model, V2 JSON, wrk -c{args.connections}, "
                f"median of {args.repeats} (target: metrics on >= 0.90x off)"
            )
            print(table(["telemetry", *COMPARISON_COLUMNS], telemetry))
        if args.monitoring:  # section 4
            monitoring = telemetry_rows(repo, args.seconds, args.connections, args.repeats, MONITORING_MODES)
            print(
                f"\nMonitoring cost, tiny model, V2 JSON, wrk -c{args.connections}, "
                f"median of {args.repeats} (target: on >= 0.95x off)"
            )
            print(table(["monitoring", *COMPARISON_COLUMNS], monitoring))
            submit_us, flush_us = monitoring_work_us()
            off_rps = float(monitoring[0][1])  # type: ignore[arg-type]
            print(
                f"monitoring work per monitored request (CPU, in-process): submit {submit_us:.2f} µs on "
                f"the request path + flush {flush_us:.2f} µs in batches; {MAX_RATE:.0f} requests a second "
                f"are monitored (max_rate), a uniform sample of them past it: "
                f"{(submit_us + flush_us) * min(off_rps, MAX_RATE) / 1e4:.2f}% of one core at the 'off' "
                f"rate of {off_rps:.0f} req/s"
            )
        if args.skip_http:
            return
        http = []
        for name, widths in MODELS.items():
            http += http_rows(repo, name, widths[0], args.seconds, args.connections)
        print(
            f"\nHTTP, batch 1, wrk -c{args.connections}, server pinned to one core "
            "(targets: JSON >= 1.0x blocking and >= 1.2x thread; binary >= 1.5x)"
        )
        print(
            table(["model", "server", "req/s", "p50 ms", "p99 ms", "errors", "x blocking", "x thread"], http)
        )


if __name__ == "__main__":
    main()
