"""Checks a model repository against the layout before anything loads, naming what does not fit.

The layout is Triton's: `<repo>/<model>/<version>/model.onnx`, versions positive integers, plus an
optional `<repo>/<model>/config.toml`. A folder that holds something close to it (a flat
`iris/model.onnx`, `iris/1/iris.onnx`, `iris/v1/model.onnx`) would otherwise be skipped without a
word and the server would say it is ready with nothing to serve; here each one becomes a
`LayoutProblem` that names the folder, what is there, and what was expected, so that startup logs
it, status shows it and readiness waits for it.

`check_repository` raises `ConfigError` (one line) when the repository is missing, not a folder, or
holds nothing at all: there is nothing sensible to serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from modelserve.errors import ConfigError

MODEL_FILE = "model.onnx"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_DIGITS = re.compile(r"([0-9]+)")
#: Folder and file names that are never models (tool caches, the default state folder, notes).
_IGNORED_SUFFIXES = (".md", ".txt", ".toml", ".json", ".yaml", ".yml", ".lock")


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutProblem:
    """One entry of the repository that does not follow the layout; `model` is the name it would have."""

    model: str
    found: str
    expected: str

    def message(self) -> str:
        return f"{self.found}; expected {self.expected}"

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "found": self.found, "expected": self.expected}


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryLayout:
    """What `check_repository` found: servable models with their versions, and the problems."""

    root: Path
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[LayoutProblem, ...] = ()

    def unservable(self) -> dict[str, str]:
        """Model name -> why it cannot be served (models with no version in the layout at all)."""
        found: dict[str, str] = {}
        for problem in self.problems:
            if problem.model not in self.models:
                found.setdefault(problem.model, problem.message())
        return found


def expected_path(root: Path, model: str, version: str = "1") -> str:
    return (Path(root.name) / model / version / MODEL_FILE).as_posix()


def check_repository(root: Path) -> RepositoryLayout:
    """Scan `root` once; raise ConfigError when there is nothing to serve at all."""
    root = Path(root)
    example = (Path(root.name or str(root)) / "<model>" / "1" / MODEL_FILE).as_posix()
    if not root.exists():
        raise ConfigError(f"model repository {root} does not exist (expected a folder like {example})")
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a folder (expected a folder like {example})")
    entries = sorted(p for p in root.iterdir() if not _ignored(p))
    if not entries:
        raise ConfigError(f"model repository {root} is empty (expected {example})")
    models: dict[str, tuple[str, ...]] = {}
    problems: list[LayoutProblem] = []
    for entry in entries:
        if entry.is_file():
            if entry.suffix == ".onnx":
                name = entry.stem if _MODEL_NAME.match(entry.stem) else "model"
                problems.append(
                    LayoutProblem(
                        model=name,
                        found=f"{_rel(root, entry)} is a model file directly in the repository",
                        expected=f"{expected_path(root, name)} (a folder per model, a folder per version)",
                    )
                )
            continue
        versions, found = _check_model(root, entry)
        if versions:
            models[entry.name] = versions
        problems.extend(found)
    return RepositoryLayout(root=root, models=models, problems=tuple(problems))


def _check_model(root: Path, folder: Path) -> tuple[tuple[str, ...], list[LayoutProblem]]:
    name = folder.name
    if not _MODEL_NAME.match(name):
        return (), [
            LayoutProblem(
                model=name,
                found=f"{_rel(root, folder)}/ is not a valid model name",
                expected="letters, digits, '_', '-', '.' (starting with a letter or digit)",
            )
        ]
    versions: list[str] = []
    problems: list[LayoutProblem] = []
    children = sorted(p for p in folder.iterdir() if not _ignored(p))
    for child in children:
        if child.is_file():
            if child.suffix == ".onnx":
                problems.append(
                    LayoutProblem(
                        model=name,
                        found=f"{_rel(root, child)} is directly in the model folder",
                        expected=f"{expected_path(root, name)} (versions are numbered folders)",
                    )
                )
            continue
        if not _VERSION.match(child.name):
            digits = _DIGITS.search(child.name)
            hint = (digits.group(1).lstrip("0") or "1") if digits else "1"
            problems.append(
                LayoutProblem(
                    model=name,
                    found=f"{_rel(root, child)}/ is not a version number",
                    expected=f"{expected_path(root, name, hint)} (versions are positive integers)",
                )
            )
            continue
        if (child / MODEL_FILE).is_file():
            versions.append(child.name)
            continue
        onnx = sorted(p.name for p in child.glob("*.onnx"))
        expected = expected_path(root, name, child.name)
        if onnx:
            found, expected = f"{_rel(root, child)}/ holds {', '.join(onnx)}", f"{expected} (rename the file)"
        else:
            found = f"{_rel(root, child)}/ has no {MODEL_FILE}"
        problems.append(LayoutProblem(model=name, found=found, expected=expected))
    if not children:
        problems.append(
            LayoutProblem(
                model=name, found=f"{_rel(root, folder)}/ has no versions", expected=expected_path(root, name)
            )
        )
    return tuple(sorted(versions, key=int)), problems


def _ignored(path: Path) -> bool:
    name = path.name
    return name.startswith((".", "_")) or (path.is_file() and name.endswith(_IGNORED_SUFFIXES))


def _rel(root: Path, path: Path) -> str:
    return (Path(root.name) / path.relative_to(root)).as_posix()


def model_file(path: Path) -> Path:
    """The ONNX file `path` names: the file itself, a version folder's model.onnx, or a model folder's
    highest version. Raises ConfigError saying what was found instead."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    versions = sorted(
        (p.name for p in path.iterdir() if _VERSION.match(p.name) and (p / MODEL_FILE).is_file()), key=int
    )
    if versions:
        return path / versions[-1] / MODEL_FILE
    onnx = sorted(p.name for p in path.glob("*.onnx"))
    found = f"it holds {', '.join(onnx)}" if onnx else f"it has no {MODEL_FILE}"
    raise ConfigError(f"{path} is a folder and {found}: give the path of an .onnx file")
