"""Shadow overhead: what running a candidate in shadow costs the primary, in one server process.

    python benchmarks/shadow_overhead.py [--seconds 3] [--concurrency 1 8 32] [--models tiny wide]

For each model (tiny 16->8->2 and wide 256->512->512->10 MLPs, built on the spot) one modelserve
server (pinned to core 0; wrk on core 1) serves version 1 while the shadow is toggled at runtime
through the admin API: off, 100% shadow of a same-size candidate, a shadow that raises on every call
(its Reshape fails on any non-zero input), and a slow shadow (a 16/256->4096x3 MLP, several ms per
call, beyond its 20 ms timeout under load: it behaves like a hang). A naive Starlette server is the
contrast: one handler that awaits the primary and the shadow (each through a thread hop), against
the same handler without the shadow. Ratios are against shadow-off at the same concurrency
(naive: against the naive handler without shadow). Prints a table; writes
benchmarks/out/shadow_overhead.png. Targets (benchmarks/README.md): p50 at c=1 <= 1.10x tiny / 1.20x
wide; throughput at saturation (c=32) >= 0.75x tiny / 0.65x wide; raising/slow shadow: p99 unchanged
within noise, 0 primary errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from harness import LoadResult, free_port, modelserve_argv, server_process, table, wrk

from modelserve import testing

MODELS = {"tiny": (16, 8, 2), "wide": (256, 512, 512, 10)}
SLOW = (4096, 4096, 4096)
TOKEN = "bench"
SCENARIOS = {"shadow 100%": "2", "raising shadow": "3", "slow shadow": "4"}  # scenario -> shadow version


def failing_model(path: Path, width: int, classes: int) -> None:
    """Warms up on zeros; raises in onnxruntime on any non-zero input (Reshape to a non-divisor)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [
        helper.make_node("Abs", ["input"], ["abs"]),
        helper.make_node("ReduceSum", ["abs"], ["total"], keepdims=0),
        helper.make_node("Min", ["total", "one"], ["clipped"]),
        helper.make_node("Ceil", ["clipped"], ["flag"]),
        helper.make_node("Mul", ["flag", "extra"], ["more"]),
        helper.make_node("Add", ["more", "width"], ["cols_f"]),
        helper.make_node("Cast", ["cols_f"], ["cols"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["cols", "axis0"], ["cols_1d"]),
        helper.make_node("Concat", ["minus_one", "cols_1d"], ["shape"], axis=0),
        helper.make_node("Reshape", ["input", "shape"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["probabilities"], axis=-1),
    ]
    inits = [
        const("one", np.float32(1)), const("extra", np.float32(3)), const("width", np.float32(width)),
        const("axis0", np.array([0], np.int64)), const("minus_one", np.array([-1], np.int64)),
        const("w", np.ones((width, classes), np.float32)),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def build_repo(root: Path, names: list[str]) -> None:
    for name in names:
        widths = MODELS[name]
        testing.mlp(root / name / "1" / "model.onnx", widths, seed=1)
        testing.mlp(root / name / "2" / "model.onnx", widths, seed=2)
        failing_model(root / name / "3" / "model.onnx", widths[0], widths[-1])
        testing.mlp(root / name / "4" / "model.onnx", (widths[0], *SLOW, widths[-1]), seed=4)
        (root / name / "config.toml").write_text(
            'live = "1"\n[serving]\nintra_op_threads = 1\n[shadow]\ntimeout_ms = 20\nmax_in_flight = 4\n'
        )


def naive_app(primary_path: str, shadow_path: str) -> Any:
    """/plain: the primary through a thread hop; /shadow: primary and shadow, both awaited."""
    import asyncio

    import onnxruntime as ort
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def session(path: str) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    primary, shadow = session(primary_path), session(shadow_path)

    async def handle(request: Request, with_shadow: bool) -> JSONResponse:
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        if with_shadow:
            outputs, _ = await asyncio.gather(
                run_in_threadpool(primary.run, None, {"input": x}),
                run_in_threadpool(shadow.run, None, {"input": x}),
            )
        else:
            outputs = await run_in_threadpool(primary.run, None, {"input": x})
        out = outputs[0]
        return JSONResponse({"model_name": "naive", "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": list(out.shape),
             "data": out.ravel().tolist()}
        ]})  # fmt: skip

    async def plain(request: Request) -> JSONResponse:
        return await handle(request, False)

    async def shadowed(request: Request) -> JSONResponse:
        return await handle(request, True)

    return Starlette(
        routes=[Route("/plain", plain, methods=["POST"]), Route("/shadow", shadowed, methods=["POST"])]
    )


def admin(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(
        method, base + path, json=body, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    response.raise_for_status()
    return response.json()


def measure(url: str, body: bytes, concurrencies: list[int], seconds: float) -> dict[int, LoadResult]:
    headers = {"Content-Type": "application/json"}
    return {c: wrk(url, body, headers, connections=c, seconds=seconds) for c in concurrencies}


def run_model(repo: Path, name: str, concurrencies: list[int], seconds: float) -> list[dict[str, Any]]:
    width = MODELS[name][0]
    x = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, width],
                                     "data": x.ravel().tolist()}]})  # fmt: skip
    rows: list[dict[str, Any]] = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v2/models/{name}/infer"
    with tempfile.TemporaryDirectory() as state:
        argv = modelserve_argv(repo, port, state, "--admin-token", TOKEN)
        with server_process(argv, port, quiet_stderr=True):  # onnxruntime logs each failed run
            wrk(url, body, {"Content-Type": "application/json"}, connections=8, seconds=1)  # warm
            for scenario in ("shadow off", *SCENARIOS):
                if scenario == "shadow off":
                    admin(base, "POST", f"/admin/models/{name}/shadow", {"off": True})
                else:
                    version = SCENARIOS[scenario]
                    admin(base, "POST", f"/admin/models/{name}/stage", {"version": version})
                    admin(base, "POST", f"/admin/models/{name}/shadow", {"versions": [version], "rate": 1.0})
                results = measure(url, body, concurrencies, seconds)
                shadow = {}
                if scenario != "shadow off":
                    report = admin(base, "GET", f"/admin/models/{name}/shadow/report")
                    snap = next(s for s in report["shadows"] if s["shadow_version"] == SCENARIOS[scenario])
                    shadow = {k: snap[k] for k in ("samples", "errors", "timeouts", "dropped")}
                for c, r in results.items():
                    rows.append({"model": name, "scenario": scenario, "c": c, "result": r, "shadow": shadow})
    naive_port = free_port()
    script = (
        "import sys, uvicorn; sys.path.insert(0, sys.argv[4]); from shadow_overhead import naive_app; "
        "uvicorn.run(naive_app(sys.argv[1], sys.argv[2]), host='127.0.0.1', port=int(sys.argv[3]), "
        "log_level='warning', access_log=False)"
    )
    argv = [sys.executable, "-c", script, str(repo / name / "1" / "model.onnx"),
            str(repo / name / "2" / "model.onnx"),
            str(naive_port), str(Path(__file__).parent)]  # fmt: skip
    with server_process(argv, naive_port, ready_path="/"):
        naive = f"http://127.0.0.1:{naive_port}"
        wrk(naive + "/plain", body, {"Content-Type": "application/json"}, connections=8, seconds=1)
        for scenario, path in (("naive, no shadow", "/plain"), ("naive shadow (awaited)", "/shadow")):
            for c, r in measure(naive + path, body, concurrencies, seconds).items():
                rows.append({"model": name, "scenario": scenario, "c": c, "result": r, "shadow": {}})
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {(r["model"], r["c"], r["scenario"].startswith("naive")): r["result"]
            for r in rows if r["scenario"] in ("shadow off", "naive, no shadow")}  # fmt: skip
    for row in rows:
        ref = base[(row["model"], row["c"], row["scenario"].startswith("naive"))]
        r = row["result"]
        row["x_rps"] = r.requests_per_s / ref.requests_per_s
        row["x_p50"] = r.p50_ms / ref.p50_ms
        row["x_p99"] = r.p99_ms / ref.p99_ms
    return rows


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=list(MODELS).index)
    scenarios = [
        s for s in dict.fromkeys(r["scenario"] for r in rows) if s not in ("shadow off", "naive, no shadow")
    ]
    concurrencies = sorted({r["c"] for r in rows})
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, (key, title) in enumerate(
            (("x_p50", "primary p50 vs shadow off"), ("x_rps", "primary req/s vs shadow off"))
        ):
            ax = axes[i][j]
            bar = 0.8 / len(scenarios)
            for k, scenario in enumerate(scenarios):
                values = [next(r[key] for r in rows
                               if (r["model"], r["scenario"], r["c"]) == (model, scenario, c))
                          for c in concurrencies]  # fmt: skip
                ax.bar([p + k * bar for p in range(len(concurrencies))], values, bar, label=scenario)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(
                [p + 0.4 - bar / 2 for p in range(len(concurrencies))], [f"c={c}" for c in concurrencies]
            )
            ax.set_title(f"{model}: {title}")
            ax.set_ylabel("ratio")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--chart", default=str(Path(__file__).parent / "out" / "shadow_overhead.png"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        build_repo(repo, args.models)
        for name in args.models:
            rows += run_model(repo, name, args.concurrency, args.seconds)
    rows = with_ratios(rows)
    print("Primary under shadow, batch 1, server pinned to one core, wrk on the other")
    print("(targets: p50 x at c=1 <= 1.10 tiny / 1.20 wide; req/s x at c=32 >= 0.75 tiny / 0.65 wide;")
    print(" raising/slow shadow: p99 within noise, 0 errors)")
    print(table(
        ["model", "scenario", "c", "req/s", "p50 ms", "p99 ms", "errors", "x req/s", "x p50", "x p99",
         "shadow ok/err/timeout/drop"],
        [[r["model"], r["scenario"], r["c"], r["result"].requests_per_s, r["result"].p50_ms,
          r["result"].p99_ms,
          r["result"].errors, r["x_rps"], r["x_p50"], r["x_p99"],
          "/".join(str(r["shadow"][k]) for k in ("samples", "errors", "timeouts", "dropped"))
          if r["shadow"] else "-"]
         for r in rows],
    ))  # fmt: skip
    chart(rows, Path(args.chart))
    print(f"\nchart: {args.chart}")


if __name__ == "__main__":
    main()
