"""An MLServer custom runtime serving one ONNX model with onnxruntime, as an MLServer user writes it.

Runs inside MLServer's own environment (`benchmarks/mlserver_compare.py` copies this file into the
MLServer model folder), so it imports `mlserver`, which the modelserve project does not depend on.
Requests are decoded and responses encoded with MLServer's own codecs; `session.run` runs inline on
the event loop, as MLServer's sklearn/xgboost runtimes do, which is the fastest choice on one core.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    """Loads `parameters.uri` (an .onnx file) into an InferenceSession with one intra-op thread."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        # With the default 0, onnxruntime pins its own worker threads and ignores taskset.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [meta.name for meta in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode_request(payload, default_codec=NumpyRequestCodec)
        outputs = self._session.run(self._output_names, {self._input_name: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, out)
                for name, out in zip(self._output_names, outputs, strict=True)
            ],
        )
