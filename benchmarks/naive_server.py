"""The baseline modelserve is measured against: a plain Starlette + onnxruntime handler.

    python benchmarks/naive_server.py MODEL.onnx PORT blocking|thread

`blocking` runs the session on the event loop; `thread` hops to anyio's thread pool per request (what
most hand-written handlers do). Both parse and write V2 JSON with the standard library, as a typical
hand-written handler does.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build(model_path: str, mode: str) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        if mode == "thread":
            outputs = await run_in_threadpool(session.run, None, {input_name: x})
        else:
            outputs = session.run(None, {input_name: x})
        return JSONResponse(
            {
                "model_name": "naive",
                "outputs": [
                    {
                        "name": meta.name,
                        "datatype": "FP32",
                        "shape": list(out.shape),
                        "data": out.ravel().tolist(),
                    }
                    for meta, out in zip(session.get_outputs(), outputs, strict=True)
                ],
            }
        )

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


if __name__ == "__main__":
    path, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uvicorn.run(build(path, mode), host="127.0.0.1", port=port, log_level="warning", access_log=False)
