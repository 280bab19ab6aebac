from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from modelserve import testing
from modelserve.errors import InferenceError, LoadError, RequestError
from modelserve.serving.runtime import RuntimeOptions, VersionState, load_version


def test_loaded_version_reads_v2_metadata_with_dynamic_dims(tmp_path: Path) -> None:
    loaded = load_version("m", "1", testing.mlp(tmp_path / "m.onnx", (16, 8, 2)), RuntimeOptions())
    assert loaded.state is VersionState.READY
    assert [(s.name, s.datatype, s.shape) for s in loaded.inputs] == [("input", "FP32", (-1, 16))]
    assert [(s.name, s.datatype, s.shape) for s in loaded.outputs] == [("probabilities", "FP32", (-1, 2))]
    assert loaded.warmup_latency_us is not None and loaded.warmup_latency_us > 0


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP64", "BYTES"])
def test_every_datatype_loads_warm_and_round_trips(tmp_path: Path, datatype: str) -> None:
    loaded = load_version("m", "1", testing.identity(tmp_path / "m.onnx", datatype), RuntimeOptions())
    assert loaded.inputs[0].datatype == datatype
    value = (
        np.array([["a", "b", "c", "d"]], dtype=object)
        if datatype == "BYTES"
        else np.ones((1, 4), loaded.inputs[0].dtype)
    )
    assert (loaded.run({"input": value})["output"] == value).all()


def test_execution_mode_follows_config_and_warmup_timing(tmp_path: Path) -> None:
    path = testing.mlp(tmp_path / "m.onnx")
    assert load_version("m", "1", path, RuntimeOptions(execution="inline")).inline
    assert not load_version("m", "1", path, RuntimeOptions(execution="thread")).inline
    slow_threshold = load_version("m", "1", path, RuntimeOptions(inline_threshold_us=0.0))
    assert not slow_threshold.inline


def test_thread_execution_uses_the_versions_own_runner(tmp_path: Path) -> None:
    loaded = load_version(
        "m", "1", testing.mlp(tmp_path / "m.onnx"), RuntimeOptions(execution="thread", max_concurrency=3)
    )
    assert loaded.runner.slots == 3

    async def main() -> dict[str, np.ndarray]:
        return await loaded.infer({"input": np.ones((2, 16), np.float32)})

    out = anyio.run(main)
    assert out["probabilities"].shape == (2, 2)
    assert loaded.runner.in_use == 0


def test_an_inline_version_runs_a_large_batch_on_a_worker_thread_not_the_event_loop(tmp_path: Path) -> None:
    import threading

    from modelserve.serving.runtime import INLINE_MAX_BYTES

    loaded = load_version("m", "1", testing.mlp(tmp_path / "m.onnx"), RuntimeOptions(execution="inline"))
    threads: list[int] = []

    def record_thread(run: Any) -> Any:
        def recorded(*args: Any) -> Any:
            threads.append(threading.get_ident())
            return run(*args)

        return recorded

    loaded.wrap_session(record_thread, describe={})
    large_rows = INLINE_MAX_BYTES // (16 * 4) + 1

    async def main() -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
        small = await loaded.infer({"input": np.ones((2, 16), np.float32)})
        large, _ = await loaded.infer_measured({"input": np.ones((large_rows, 16), np.float32)})
        return threading.get_ident(), small, large

    loop_thread, small, large = anyio.run(main)
    assert loaded.inline and threads[0] == loop_thread and threads[1] != loop_thread
    assert small["probabilities"].shape == (2, 2) and large["probabilities"].shape == (large_rows, 2)


def test_corrupt_and_missing_files_raise_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(LoadError, match="cannot load"):
        load_version("m", "1", bad, RuntimeOptions())
    with pytest.raises(LoadError, match="does not exist"):
        load_version("m", "1", tmp_path / "missing.onnx", RuntimeOptions())


def test_runtime_errors_are_typed(tmp_path: Path) -> None:
    loaded = load_version("m", "1", testing.mlp(tmp_path / "m.onnx"), RuntimeOptions())
    with pytest.raises(RequestError):
        loaded.run({"input": np.ones((1, 5), np.float32)})
    with pytest.raises((RequestError, InferenceError)):
        loaded.run({"wrong": np.ones((1, 16), np.float32)})


def test_an_arena_shrink_after_a_large_batch_leaves_the_version_serving(tmp_path: Path) -> None:
    loaded = load_version("m", "1", testing.mlp(tmp_path / "m.onnx", (16, 8, 2)), RuntimeOptions())
    batch = np.ones((200_000, 16), np.float32)  # 12.8 MB: run with shrinkage, outputs in the arena
    expected = loaded.run({"input": batch[:1]})["probabilities"]
    outputs = loaded.run({"input": batch})
    del outputs
    loaded.shrink_arena()
    again = loaded.run({"input": batch[:1]})["probabilities"]
    np.testing.assert_array_equal(again, expected)


def test_an_arena_shrink_that_fails_is_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_version("m", "1", testing.mlp(tmp_path / "m.onnx", (16, 8, 2)), RuntimeOptions())
    loaded.session = None  # type: ignore[assignment]  # e.g. torn down by an unload meanwhile
    with caplog.at_level("DEBUG", logger="modelserve.serving"):
        loaded.shrink_arena()
    assert "arena shrink" in caplog.text
