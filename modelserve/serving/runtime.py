"""One loaded model version: a warm onnxruntime session, its metadata, and how it runs.

This module (with the rest of `serving/`) is the only place that imports onnxruntime. A version is
READY only after a warm-up inference; the warm-up also times the model, which decides how requests run:
a model that answers in a few microseconds runs inline on the event loop (a thread hop costs more than
the model) when its inputs are small, anything slower, or larger, runs in one of the version's own
worker threads (`serving/runner.py`: `max_concurrency` slots and the request deadline).
"""

from __future__ import annotations

import enum
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelserve.config import RuntimeOptions
from modelserve.datatypes import ORT_TO_V2
from modelserve.errors import InferenceError, LoadError, RequestError
from modelserve.serving.batching import Batcher
from modelserve.serving.memory import MemoryCost
from modelserve.serving.runner import Runner
from modelserve.serving.tensors import TensorSpec

log = logging.getLogger("modelserve.serving")

Outputs = dict[str, np.ndarray]
#: skl2onnx wraps a classifier's probabilities in a ZipMap (a list of dicts) unless told not to.
ZIPMAP_HINT = (
    " (a scikit-learn classifier exported with ZipMap: export it again with "
    "skl2onnx.to_onnx(model, X, options={'zipmap': False}) to get a plain probability tensor)"
)
_OrtInvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument
#: Inputs larger than this run on a worker thread even for a version that runs inline: its runtime
#: grows with the batch (900k rows of a µs model took ~100 ms), and the event loop must not wait.
INLINE_MAX_BYTES = 64 * 1024
#: Inputs larger than this run with onnxruntime's arena shrinkage, so the memory a huge batch needed
#: goes back after the run (else each session keeps its largest batch's buffers for good).
SHRINK_ARENA_BYTES = 8 * 1024 * 1024
_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def input_bytes(feeds: Mapping[str, np.ndarray]) -> int:
    """The bytes of a call's input tensors (a plain loop: this is on every call's path)."""
    total = 0
    for value in feeds.values():
        total += value.nbytes
    return total


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADED = "UNLOADED"


class LoadedVersion:
    """A warm `InferenceSession` for one version of one model."""

    def __init__(self, model: str, version: str, path: Path, options: RuntimeOptions) -> None:
        self.model = model
        self.version = version
        self.path = path
        self.options = options
        self.state = VersionState.LOADING
        #: Every run off the event loop: `max_concurrency` slots, worker threads, the deadline timer.
        self.runner = Runner(options.max_concurrency, what=f"{model} version {version}")
        #: The request deadline from config.toml (`[serving] request_timeout_ms`); None: none.
        self.timeout_s = options.request_timeout_ms / 1000.0 or None
        self.warmup_latency_us: float | None = None
        self.inline = False
        self.batcher: Batcher | None = None
        self.memory: MemoryCost | None = None  # measured by the registry at load (serving/memory.py)
        session_options = ort.SessionOptions()
        # An explicit count: the default (0) pins its own worker threads and collides with a second session.
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 4  # failures are raised to the caller; no per-run log lines
        if not path.is_file():
            problem = "is a folder, not an ONNX file" if path.is_dir() else "does not exist"
            raise LoadError(f"{model} version {version}: {path} {problem}")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported graphs
            raise LoadError(
                f"{model} version {version}: cannot load {path.name}: {_first_line(exc)}"
            ) from exc
        self.inputs = tuple(_spec(arg, f"{model} version {version}") for arg in self.session.get_inputs())
        self.outputs = tuple(_spec(arg, f"{model} version {version}") for arg in self.session.get_outputs())
        self.output_names = [spec.name for spec in self.outputs]
        self._text_inputs = tuple(spec.name for spec in self.inputs if spec.datatype == "BYTES")
        self._run = self.session.run
        self.faults: dict[str, Any] | None = None  # set by `wrap_session` (serving/faults.py)

    def warm_up(self) -> None:
        """Run a synthetic batch-1 request several times; time it; mark READY. Blocking: call in a thread."""
        feeds = {spec.name: _synthetic(spec) for spec in self.inputs}
        timings = []
        try:
            for _ in range(max(1, self.options.warmup_runs)):
                started = time.perf_counter()
                self._run(self.output_names, feeds)
                timings.append((time.perf_counter() - started) * 1e6)
        except Exception as exc:
            raise LoadError(
                f"{self.model} version {self.version}: warm-up inference failed: {_first_line(exc)}"
            ) from exc
        self.warmup_latency_us = statistics.median(timings)
        execution = self.options.execution
        self.inline = execution == "inline" or (
            execution == "auto" and self.warmup_latency_us <= self.options.inline_threshold_us
        )
        batchable = all(spec.shape and spec.shape[0] == -1 for spec in self.inputs)
        if self.options.max_batch_size > 1 and batchable:
            self.inline = False  # a batch runs on a worker thread
            self.batcher = Batcher(
                self.run,
                max_batch_size=self.options.max_batch_size,
                max_queue_delay_s=self.options.max_queue_delay_ms / 1000.0,
                runner=self.runner,
            )
        self.state = VersionState.READY

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def wrap_session(
        self,
        wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
        *,
        describe: dict[str, Any],
        force_thread: bool = False,
    ) -> None:
        """Route every later session call through `wrap(call)`: opt-in fault injection (serving/faults.py).

        `describe` is shown in `describe()` so the wrapping is visible; `force_thread` moves an inline
        version to worker threads, so a wrapper that sleeps never blocks the event loop.
        """
        self._run = wrap(self._run)
        self.faults = describe
        if force_thread:
            self.inline = False

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> Outputs:
        """Blocking inference; returns every output (or those named) by name."""
        names = list(output_names) if output_names else self.output_names
        if self._text_inputs:
            feeds = {
                **feeds,
                **{name: _as_text(name, feeds[name]) for name in self._text_inputs if name in feeds},
            }
        try:
            if input_bytes(feeds) > SHRINK_ARENA_BYTES:
                return dict(zip(names, self._run(names, feeds, _SHRINK), strict=True))
            return dict(zip(names, self._run(names, feeds), strict=True))
        except _OrtInvalidArgument as exc:  # shapes/values validation could not see, e.g. a Reshape mismatch
            raise RequestError(f"{self.model} version {self.version}: {_first_line(exc)}") from exc
        except Exception as exc:
            raise InferenceError(f"{self.model} version {self.version} failed: {_first_line(exc)}") from exc

    def shrink_arena(self) -> None:
        """Give back the arena memory a large batch made onnxruntime allocate. Blocking: call it in a
        thread once that batch's outputs are gone.

        onnxruntime shrinks its arena only at the end of a run (`SHRINK_ARENA_BYTES`); the large run's
        outputs were still held then, so their buffers stayed. A batch-1 run with shrinkage frees them.
        """
        feeds = {spec.name: _synthetic(spec) for spec in self.inputs}
        try:
            self.session.run(self.output_names, feeds, _SHRINK)
        except Exception:  # best effort (the version may be unloading): the memory stays until next time
            log.debug("arena shrink of %s version %s failed", self.model, self.version, exc_info=True)

    def run_measured(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> tuple[Outputs, float]:
        """`run`, and the thread CPU time it took: the model's compute, whatever thread or priority
        ran it and however busy the host was (onnxruntime with one intra-op thread computes in the
        calling thread)."""
        started = time.thread_time()
        outputs = self.run(feeds, output_names)
        return outputs, time.thread_time() - started

    async def infer(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> Outputs:
        """Run inline when the warm-up showed it is cheaper than a thread hop (and the inputs are
        small), else on a worker thread."""
        if self.inline and input_bytes(feeds) <= INLINE_MAX_BYTES:
            return self.run(feeds, output_names)
        if self.batcher is not None:
            return await self.batcher.infer(feeds, output_names)
        return await self.runner.run(partial(self.run, feeds, output_names))

    async def infer_measured(
        self,
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Outputs, float | None]:
        """`infer` with the run's thread CPU time (None for a batched run: the batch shares it).

        With `timeout_s`, a run off the event loop raises DeadlineExceeded when no answer came in
        time (serving/runner.py); an inline run takes microseconds and is not interrupted.
        """
        if self.inline and input_bytes(feeds) <= INLINE_MAX_BYTES:
            return self.run_measured(feeds, output_names)
        if self.batcher is not None:
            return await self.batcher.infer(feeds, output_names, timeout_s), None
        return await self.runner.run(partial(self.run_measured, feeds, output_names), timeout_s)

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {
            "version": self.version,
            "state": self.state.value,
            "execution": "inline" if self.inline else ("batched" if self.batcher else "thread"),
            "warmup_latency_us": None if self.warmup_latency_us is None else round(self.warmup_latency_us, 1),
            "inputs": [spec.as_metadata() for spec in self.inputs],
            "outputs": [spec.as_metadata() for spec in self.outputs],
        }
        if self.faults is not None:
            info["injected_faults"] = self.faults
        return info


def load_version(model: str, version: str, path: Path, options: RuntimeOptions) -> LoadedVersion:
    """Load and warm a version (blocking: call it in a thread). Raises LoadError, never anything else."""
    try:
        loaded = LoadedVersion(model, version, path, options)
        loaded.warm_up()
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"{model} version {version}: {_first_line(exc)}") from exc
    return loaded


def _spec(arg: ort.NodeArg, where: str) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        hint = ZIPMAP_HINT if arg.type.startswith(("seq(map(", "map(")) else ""
        raise LoadError(
            f"{where}: tensor {arg.name!r} has type {arg.type}, which the V2 protocol cannot carry{hint}"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _synthetic(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime string tensors hold UTF-8 text: decode bytes elements (it would str() them)."""
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.ravel().tolist()]
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"input {name!r}: the model takes UTF-8 text; element is not UTF-8 ({exc.reason})"
        ) from None
    return np.array(items, dtype=object).reshape(array.shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
