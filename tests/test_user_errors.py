"""Mistakes a new user makes get a message that says what to do, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserve import testing
from modelserve.errors import ConfigError, LoadError
from modelserve.serving.layout import model_file
from modelserve.serving.runtime import RuntimeOptions, load_version


def test_a_default_skl2onnx_export_with_zipmap_says_to_export_with_zipmap_false(tmp_path: Path) -> None:
    path = testing.zipmap_classifier(tmp_path / "iris" / "1" / "model.onnx")
    with pytest.raises(LoadError) as raised:
        load_version("iris", "1", path, RuntimeOptions())
    message = str(raised.value)
    assert "seq(map(int64,tensor(float)))" in message
    assert "options={'zipmap': False}" in message


def test_loading_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="is a folder, not an ONNX file"):
        load_version("iris", "1", tmp_path, RuntimeOptions())


def test_model_file_accepts_a_version_folder_or_a_model_folder(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "repo", {"iris": {"1": 1, "2": 2}})
    assert model_file(repo / "iris" / "1") == repo / "iris" / "1" / "model.onnx"
    assert model_file(repo / "iris") == repo / "iris" / "2" / "model.onnx"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "iris.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"is a folder and it holds iris\.onnx: give the path of an \.onnx"):
        model_file(tmp_path / "odd")
