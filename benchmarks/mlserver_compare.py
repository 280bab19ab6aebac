"""HTTP throughput of modelserve vs MLServer serving the same ONNX models (target: >= 2.5x).

    python benchmarks/mlserver_compare.py [--seconds 5] [--connections 8] [--rounds 3]
                                          [--execution auto|inline|thread] [--mlserver-python PATH]

MLServer is not a project dependency: it lives in its own virtual environment, by default
`benchmarks/out/mlserver-venv` (created on first run with `pip install mlserver==1.7.1 onnxruntime`);
`--mlserver-python` points at the interpreter of an existing one. MLServer serves the models through a
small custom runtime (`benchmarks/mlserver_runtime/onnx_runtime.py`: onnxruntime with one intra-op
thread, MLServer's own numpy codecs), in-process (`parallel_workers: 0`), with metrics, gzip and
access logs off and gRPC on a free loopback port: its best single-core settings.

In one run, per round, for the wide 256->512->512->10 and the tiny 16->8->2 MLP: wrk (server on core 0,
wrk on core 1, same body, connections and duration) against MLServer (V2 JSON), modelserve V2 JSON and
modelserve with the binary tensor extension. Before measuring, one request to each server checks they
return the same numbers. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from harness import LoadResult, free_port, modelserve_argv, server_process, table, wrk
from serving_overhead import bodies

from modelserve import testing

HERE = Path(__file__).parent
MODELS = {"wide": (256, 512, 512, 10), "tiny": (16, 8, 2)}
MLSERVER_SPEC = "mlserver==1.7.1"
DEFAULT_VENV = HERE / "out" / "mlserver-venv"
RUNTIME_FILE = HERE / "mlserver_runtime" / "onnx_runtime.py"
SERVERS = ("MLServer JSON", "modelserve JSON", "modelserve binary")


def mlserver_python(explicit: str | None) -> Path:
    """The interpreter of an environment with mlserver and onnxruntime, creating the default one if needed."""
    python = Path(explicit) if explicit else DEFAULT_VENV / "bin" / "python"
    if not explicit and not _has_mlserver(python):
        pip = DEFAULT_VENV / "bin" / "pip"
        command = f"{pip} install '{MLSERVER_SPEC}' onnxruntime"
        print(
            f"MLServer is not a modelserve dependency; installing it into its own venv {DEFAULT_VENV}:\n"
            f"  {sys.executable} -m venv {DEFAULT_VENV}\n  {command}",
            flush=True,
        )
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_VENV)], check=True)
        done = subprocess.run([str(pip), "install", "-q", MLSERVER_SPEC, "onnxruntime"], check=False)
        if done.returncode != 0:
            sys.exit(f"could not install MLServer (pip exited {done.returncode}); command was:\n  {command}")
    if not _has_mlserver(python):
        sys.exit(
            f"{python} cannot import mlserver and onnxruntime; install them with:\n"
            f"  {python} -m pip install '{MLSERVER_SPEC}' onnxruntime"
        )
    return python


def _has_mlserver(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import mlserver, onnxruntime"], capture_output=True, check=False
    )
    return probe.returncode == 0


def versions(python: Path) -> str:
    code = "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"
    mls, ort_version = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return f"MLServer {mls} (onnxruntime {ort_version}) vs modelserve (onnxruntime {ort.__version__})"


def write_mlserver_folder(folder: Path, repo: Path, *, http_port: int, grpc_port: int) -> None:
    """Server settings, the runtime module, and one model-settings.json per model of `repo`."""
    settings = {
        "debug": False,  # access log off, as modelserve runs at --log-level warning
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,  # cannot be turned off in 1.7; kept on loopback
        "metrics_endpoint": None,
        "gzip_enabled": False,
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    shutil.copy(RUNTIME_FILE, folder / RUNTIME_FILE.name)
    for name in MODELS:
        model_dir = folder / name
        model_dir.mkdir()
        model_settings = {
            "name": name,
            "implementation": "onnx_runtime.OnnxRuntime",
            "parameters": {"uri": str(repo / name / "1" / "model.onnx")},
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def wait_until_ready(port: int, names: Sequence[str], timeout: float = 60) -> None:
    """MLServer answers 400 until its models load; wait for 200 on each model's ready endpoint."""
    deadline = time.monotonic() + timeout
    for name in names:
        while httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}/ready", timeout=2).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"MLServer model {name} not ready after {timeout} s")
            time.sleep(0.1)


def decode_outputs(response: httpx.Response) -> np.ndarray:
    """The first output of a V2 response, JSON or binary tensor extension."""
    response.raise_for_status()
    header_length = response.headers.get("inference-header-content-length")
    if header_length is None:
        out = response.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    header = json.loads(response.content[: int(header_length)])
    out = header["outputs"][0]
    size = out["parameters"]["binary_data_size"]
    start = int(header_length)
    return np.frombuffer(response.content[start : start + size], dtype=np.float32).reshape(out["shape"])


def check_same_outputs(repo: Path, mlserver_port: int, modelserve_port: int) -> list[list[object]]:
    """One request per server and encoding; all must match onnxruntime run directly."""
    mlserver, modelserve = f"http://127.0.0.1:{mlserver_port}", f"http://127.0.0.1:{modelserve_port}"
    rows: list[list[object]] = []
    for name, widths in MODELS.items():
        json_body, (binary_body, binary_headers) = bodies(widths[0])
        x = np.asarray(json.loads(json_body)["inputs"][0]["data"], dtype=np.float32).reshape(1, widths[0])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(repo / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        reference = session.run(None, {"input": x})[0]
        json_headers = {"Content-Type": "application/json"}
        path = f"/v2/models/{name}/infer"
        answers = {
            "MLServer JSON": httpx.post(f"{mlserver}{path}", content=json_body, headers=json_headers),
            "modelserve JSON": httpx.post(f"{modelserve}{path}", content=json_body, headers=json_headers),
            "modelserve binary": httpx.post(
                f"{modelserve}{path}", content=binary_body, headers=binary_headers
            ),
        }
        mlserver_out = decode_outputs(answers["MLServer JSON"])
        for label, response in answers.items():
            out = decode_outputs(response)
            rows.append(
                [
                    name,
                    label,
                    str(out.shape),
                    f"{np.abs(out - reference).max():.1e}",
                    bool(np.allclose(out, reference)) and bool(np.allclose(out, mlserver_out)),
                ]
            )
    return rows


def measure(url: str, body: bytes, headers: dict[str, str], seconds: float, connections: int) -> LoadResult:
    wrk(url, body, headers, connections=connections, seconds=1)  # warm up
    return wrk(url, body, headers, connections=connections, seconds=seconds)


def one_round(
    repo: Path, python: Path, seconds: float, connections: int, *, check: bool, reverse: bool
) -> dict[tuple[str, str], LoadResult]:
    """Both servers up together (one idle while the other is measured), each model and encoding;
    `reverse` measures modelserve first, so drifting load from other processes favours neither."""
    results: dict[tuple[str, str], LoadResult] = {}
    json_headers = {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory() as mlserver_dir, tempfile.TemporaryDirectory() as state:
        folder = Path(mlserver_dir)
        mlserver_port, modelserve_port = free_port(), free_port()
        write_mlserver_folder(folder, repo, http_port=mlserver_port, grpc_port=free_port())
        mlserver_argv = [str(python), "-c", "from mlserver.cli import main; main()", "start", str(folder)]
        modelserve_cmd = modelserve_argv(repo, modelserve_port, state)
        cwd = os.getcwd()
        os.chdir(folder)  # MLServer keeps .envs/.metrics in its working directory
        try:
            with (
                server_process(mlserver_argv, mlserver_port, ready_path="/v2/health/live"),
                server_process(modelserve_cmd, modelserve_port),
            ):
                wait_until_ready(mlserver_port, list(MODELS))
                if check:
                    rows = check_same_outputs(repo, mlserver_port, modelserve_port)
                    print("Same input, same numbers (vs onnxruntime run directly, and vs MLServer):")
                    print(table(["model", "server", "shape", "max |diff|", "allclose"], rows))
                    if not all(row[-1] for row in rows):
                        sys.exit("outputs differ: not benchmarking")
                for name, widths in MODELS.items():
                    json_body, (binary_body, binary_headers) = bodies(widths[0])
                    runs = {
                        "MLServer JSON": (mlserver_port, json_body, json_headers),
                        "modelserve JSON": (modelserve_port, json_body, json_headers),
                        "modelserve binary": (modelserve_port, binary_body, binary_headers),
                    }
                    for label in reversed(runs) if reverse else runs:
                        port, body, headers = runs[label]
                        url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
                        results[name, label] = measure(url, body, headers, seconds, connections)
        finally:
            os.chdir(cwd)
    return results


def summary(rounds: Sequence[dict[tuple[str, str], LoadResult]]) -> list[list[object]]:
    """Per model and server: median req/s, p50 and p99 over the rounds, total errors, and the median of
    the per-round ratios (each ratio compares runs seconds apart, so load drifting between rounds cancels)."""
    rows: list[list[object]] = []
    for name in MODELS:
        for label in SERVERS:
            runs = [r[name, label] for r in rounds]
            ratio = statistics.median(
                r[name, label].requests_per_s / r[name, "MLServer JSON"].requests_per_s for r in rounds
            )
            rows.append(
                [
                    name,
                    label,
                    statistics.median(run.requests_per_s for run in runs),
                    statistics.median(run.p50_ms for run in runs),
                    statistics.median(run.p99_ms for run in runs),
                    sum(run.errors for run in runs),
                    ratio,
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="repeat the whole comparison (noisy machine)")
    parser.add_argument(
        "--execution",
        choices=("auto", "inline", "thread"),
        default="auto",
        help="modelserve [serving] execution for both models (auto: decided at warm-up)",
    )
    parser.add_argument("--mlserver-python", help="python of an environment with mlserver + onnxruntime")
    args = parser.parse_args()
    python = mlserver_python(args.mlserver_python)
    print(versions(python), flush=True)
    rounds: list[dict[tuple[str, str], LoadResult]] = []
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name, widths in MODELS.items():
            testing.mlp(repo / name / "1" / "model.onnx", widths, seed=1)
            (repo / name / "config.toml").write_text(
                f'[serving]\nintra_op_threads = 1\nexecution = "{args.execution}"\n'
            )
        for number in range(1, args.rounds + 1):
            load_before = os.getloadavg()[0]
            results = one_round(
                repo, python, args.seconds, args.connections, check=number == 1, reverse=number % 2 == 0
            )
            rounds.append(results)
            load = f"{load_before:.2f}/{os.getloadavg()[0]:.2f}"
            for name in MODELS:
                baseline = results[name, "MLServer JSON"].requests_per_s
                for label in SERVERS:
                    r = results[name, label]
                    rows.append(
                        [
                            number,
                            load,
                            name,
                            label,
                            r.requests_per_s,
                            r.p50_ms,
                            r.p99_ms,
                            r.errors,
                            r.requests_per_s / baseline,
                        ]
                    )
    print(
        f"\nHTTP, batch 1, wrk -c{args.connections} -d{args.seconds:g}s, servers pinned to one core, "
        f"modelserve execution {args.execution}; "
        f"{os.cpu_count()} cores shared with other work, load average (1 min) before/after each round"
    )
    print(
        table(["round", "load", "model", "server", "req/s", "p50 ms", "p99 ms", "errors", "x MLServer"], rows)
    )
    print(f"\nMedian over {len(rounds)} rounds; x MLServer = median of per-round ratios (target: >= 2.5x)")
    print(table(["model", "server", "req/s", "p50 ms", "p99 ms", "errors", "x MLServer"], summary(rounds)))


if __name__ == "__main__":
    main()
