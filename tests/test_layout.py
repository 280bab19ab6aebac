"""The repository layout check: every folder that does not fit is named with what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserve.errors import ConfigError
from modelserve.serving.layout import check_repository


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx")
    return path


def test_a_good_repository_has_no_problems(tmp_path: Path) -> None:
    touch(tmp_path / "repo" / "credit" / "1" / "model.onnx")
    touch(tmp_path / "repo" / "credit" / "2" / "model.onnx")
    (tmp_path / "repo" / "credit" / "config.toml").write_text('live = "1"\n')
    (tmp_path / "repo" / "README.md").write_text("notes\n")
    layout = check_repository(tmp_path / "repo")
    assert layout.models == {"credit": ("1", "2")}
    assert layout.problems == ()


@pytest.mark.parametrize(
    ("files", "found", "expected"),
    [
        (["iris/1/iris.onnx"], "repo/iris/1/ holds iris.onnx", "repo/iris/1/model.onnx (rename the file)"),
        (["iris/model.onnx"], "repo/iris/model.onnx is directly in the model folder", "repo/iris/1/"),
        (["iris/v1/model.onnx"], "repo/iris/v1/ is not a version number", "repo/iris/1/model.onnx"),
        (["iris/0/model.onnx"], "repo/iris/0/ is not a version number", "repo/iris/1/model.onnx"),
        (["iris.onnx"], "repo/iris.onnx is a model file directly in the repository", "repo/iris/1/"),
        (["iris/1/readme.txt"], "repo/iris/1/ has no model.onnx", "repo/iris/1/model.onnx"),
    ],
)
def test_each_misplaced_model_is_named_with_what_was_expected(
    tmp_path: Path, files: list[str], found: str, expected: str
) -> None:
    for name in files:
        touch(tmp_path / "repo" / name)
    touch(tmp_path / "repo" / "credit" / "1" / "model.onnx")
    layout = check_repository(tmp_path / "repo")
    assert layout.models == {"credit": ("1",)}
    [problem] = layout.problems
    assert problem.model == "iris"
    assert problem.found == found
    assert problem.expected.startswith(expected)
    assert layout.unservable() == {"iris": problem.message()}


def test_a_stray_folder_beside_good_versions_is_reported_but_the_model_serves(tmp_path: Path) -> None:
    touch(tmp_path / "repo" / "credit" / "1" / "model.onnx")
    touch(tmp_path / "repo" / "credit" / "v2" / "model.onnx")
    layout = check_repository(tmp_path / "repo")
    assert layout.models == {"credit": ("1",)}
    assert [p.found for p in layout.problems] == ["repo/credit/v2/ is not a version number"]
    assert layout.problems[0].expected.startswith("repo/credit/2/model.onnx")
    assert layout.unservable() == {}  # it has a version that serves


def test_an_empty_model_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "repo" / "iris").mkdir(parents=True)
    (tmp_path / "repo" / "iris" / "config.toml").write_text("")
    layout = check_repository(tmp_path / "repo")
    assert layout.unservable() == {"iris": "repo/iris/ has no versions; expected repo/iris/1/model.onnx"}


@pytest.mark.parametrize("case", ["missing", "file", "empty", "only-hidden"])
def test_nothing_to_serve_is_one_line_config_error(tmp_path: Path, case: str) -> None:
    repo = tmp_path / "repo"
    if case == "file":
        repo.write_text("")
    elif case in ("empty", "only-hidden"):
        repo.mkdir()
        if case == "only-hidden":
            (repo / ".modelserve").mkdir()
    with pytest.raises(ConfigError) as raised:
        check_repository(repo)
    message = str(raised.value)
    assert "\n" not in message and str(repo) in message
    assert "<model>/1/model.onnx" in message
    assert {"missing": "does not exist", "file": "is not a folder", "empty": "is empty"}.get(
        case, "is empty"
    ) in message
