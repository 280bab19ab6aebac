"""The model repository on disk (Triton layout): `<root>/<model>/<version>/model.onnx`.

Model names are `[A-Za-z0-9][A-Za-z0-9_.-]*`; versions are positive integers, as in Triton. Anything
else is rejected before it touches the file system, so no request can name a path outside the root.
"""

from __future__ import annotations

import re
from pathlib import Path

from modelserve.config import ModelConfig, load_model_config
from modelserve.errors import ConfigError, NotFound, RequestError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
MODEL_FILE = "model.onnx"


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name) or ".." in name:
        raise RequestError(f"invalid model name {name[:80]!r}: use letters, digits, '_', '-', '.'")
    return name


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise RequestError(f"invalid version {version[:80]!r}: versions are positive integers")
    return version


def version_key(version: str) -> int:
    return int(version)


class ModelRepository:
    """Read-only view of the repository folder; re-scanned on demand so new versions are found."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")

    def model_names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _MODEL_NAME.match(p.name) and self.versions(p.name)
        )

    def versions(self, model: str) -> list[str]:
        folder = self.root / check_model_name(model)
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and _VERSION.match(p.name) and (p / MODEL_FILE).is_file()
        ]
        return sorted(found, key=version_key)

    def model_path(self, model: str, version: str) -> Path:
        check_model_name(model)
        check_version(version)
        path = self.root / model / version / MODEL_FILE
        if not (self.root / model).is_dir():
            raise NotFound(f"model {model!r} is not in the repository")
        if not path.is_file():
            raise NotFound(f"model {model!r} has no version {version!r} in the repository")
        return path

    def config(self, model: str) -> ModelConfig:
        return load_model_config(self.root / check_model_name(model) / "config.toml")
