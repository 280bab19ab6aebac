"""Tiny real ONNX models for tests, benchmarks and demos (needs the `onnx` package: the `test` extra).

Every builder writes a genuine ONNX graph that onnxruntime loads; weights come from a seeded generator
so two calls with the same seed produce the same model, and different seeds genuinely different ones.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def _onnx() -> Any:
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "building ONNX models needs `pip install modelserve[test]` (the onnx package)"
        ) from exc
    return onnx, helper, numpy_helper


def mlp(
    path: str | Path,
    widths: Sequence[int] = (16, 8, 2),
    *,
    seed: int = 0,
    softmax: bool = True,
    input_name: str = "input",
    output_name: str = "probabilities",
) -> Path:
    """A float32 MLP `widths[0] -> ... -> widths[-1]` with ReLU between layers and a softmax head."""
    onnx, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = input_name
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, fan_out)).astype(np.float32)
        b = rng.normal(0, 0.1, (fan_out,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        current = out
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(
        helper.make_node(
            "Softmax" if softmax else "Identity",
            [current],
            [output_name],
            **({"axis": -1} if softmax else {}),
        )
    )
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["batch", widths[-1]])],
        initializer=inits,
    )
    return _save(onnx, helper, graph, path)


def identity(path: str | Path, datatype: str, shape: Sequence[int | str] = ("batch", 4)) -> Path:
    """A model whose single output `output` equals its single input `input` of the given V2 datatype."""
    onnx, helper, _ = _onnx()
    elem = _onnx_types(onnx)[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", elem, list(shape))],
        [helper.make_tensor_value_info("output", elem, list(shape))],
    )
    return _save(onnx, helper, graph, path)


def two_in_two_out(path: str | Path) -> Path:
    """`sum = a + b` (FP32) and `flag = a > b` (BOOL), both shaped [batch, 3]: for output filtering."""
    onnx, helper, _ = _onnx()
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Greater", ["a", "b"], ["flag"])],
        "two",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 3]) for n in ("a", "b")],
        [
            helper.make_tensor_value_info("sum", onnx.TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, ["batch", 3]),
        ],
    )
    return _save(onnx, helper, graph, path)


def zipmap_classifier(path: str | Path, features: int = 4) -> Path:
    """What skl2onnx exports for a classifier by default: `label` and a ZipMap `probabilities` output
    of type seq(map(int64, tensor(float))), which no V2 tensor can carry."""
    onnx, helper, numpy_helper = _onnx()
    weights = numpy_helper.from_array(np.ones((features, 2), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
        helper.make_node(
            "ZipMap", ["probs"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "zipmap",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["batch"]),
            helper.make_value_info(
                "probabilities",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        onnx.TensorProto.INT64, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [])
                    )
                ),
            ),
        ],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    return target


def _onnx_types(onnx: Any) -> dict[str, int]:
    t = onnx.TensorProto
    return {
        "BOOL": t.BOOL,
        "UINT8": t.UINT8,
        "UINT16": t.UINT16,
        "UINT32": t.UINT32,
        "UINT64": t.UINT64,
        "INT8": t.INT8,
        "INT16": t.INT16,
        "INT32": t.INT32,
        "INT64": t.INT64,
        "FP16": t.FLOAT16,
        "FP32": t.FLOAT,
        "FP64": t.DOUBLE,
        "BYTES": t.STRING,
    }


def _save(onnx: Any, helper: Any, graph: Any, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    return target


def repository(
    root: str | Path, models: dict[str, dict[str, int]], widths: Sequence[int] = (16, 8, 2)
) -> Path:
    """A model repository: `{"fraud": {"1": seed, "2": seed}}` -> root/fraud/<version>/model.onnx MLPs."""
    root = Path(root)
    for name, versions in models.items():
        for version, seed in versions.items():
            mlp(root / name / version / "model.onnx", widths, seed=seed)
    return root


@dataclass
class RunningServer:
    url: str
    host: str
    port: int
    server: Any  # uvicorn.Server

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def serve(app: Any, **uvicorn_options: Any) -> Iterator[RunningServer]:
    """Run `app` on uvicorn in a thread, on a free loopback port, until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    import uvicorn

    options = {"log_level": "warning", "lifespan": "on", "access_log": False, **uvicorn_options}
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread died during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", "127.0.0.1", port, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class Traffic:
    """Real V2 requests from client threads, each with a fresh random targeting key (`x-user-id`),
    until the block ends; counts the answers per (served version, HTTP status) and keeps the error
    messages of answers of 500 and above (the first `MAX_KEPT_ERRORS`).

    `url` is one server or several (`threads` threads for each); `body` is a request body, or a
    function of each thread's `random.Random` giving one per request.
    """

    MAX_KEPT_ERRORS = 1000

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        model: str = "fraud",
        threads: int = 3,
        body: dict[str, Any] | Callable[[random.Random], dict[str, Any]],
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.body = body
        self.counts: Counter[tuple[str, int]] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._drive, args=(f"{base}/v2/models/{model}/infer", seed), daemon=True)
            for seed, base in enumerate(urls * threads)
        ]

    def _drive(self, url: str, seed: int) -> None:
        import httpx

        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                body = self.body(rng) if callable(self.body) else self.body
                answer = client.post(url, json=body, headers={"x-user-id": f"u{rng.randrange(10**9)}"})
                with self._lock:
                    self.counts[(answer.headers.get("x-model-version", "?"), answer.status_code)] += 1
                    if answer.status_code >= 500 and len(self.errors) < self.MAX_KEPT_ERRORS:
                        self.errors.append(answer.json().get("error", answer.text))

    def snapshot(self) -> Counter[tuple[str, int]]:
        with self._lock:
            return Counter(self.counts)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
