"""The public API: the names `from modelserve import ...` offers, pinned."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import modelserve
from modelserve import errors
from modelserve.routing.decision import RouteDecision

PUBLIC = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "InferenceError",
    "LoadError",
    "ModelServe",
    "ModelServeError",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "RouteDecision",
    "ServerConfig",
    "UnsupportedMediaType",
    "create_app",
]


def test_all_is_sorted_and_exactly_the_public_names() -> None:
    assert modelserve.__all__ == sorted(modelserve.__all__) == PUBLIC


def test_every_public_name_resolves_to_the_object_its_module_defines() -> None:
    from modelserve.config import ServerConfig
    from modelserve.server.app import ModelServe, create_app

    defined = {"ServerConfig": ServerConfig, "ModelServe": ModelServe, "create_app": create_app}
    defined["RouteDecision"] = RouteDecision
    for name in PUBLIC:
        assert getattr(modelserve, name) is defined.get(name, getattr(errors, name, None)), name


def test_every_error_class_is_public_and_derives_from_the_base() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ModelServeError)
    }
    assert classes <= set(PUBLIC)
    assert all(issubclass(getattr(modelserve, name), errors.ModelServeError) for name in classes)


def test_the_version_is_the_installed_distributions() -> None:
    assert modelserve.__version__ == importlib.metadata.version("modelserve")
    assert "__version__" in dir(modelserve) and "ModelServe" in dir(modelserve)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        modelserve.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("modelserve.NoSuchThing resolved")


def test_importing_the_package_loads_neither_onnxruntime_nor_the_server() -> None:
    code = (
        "import sys, modelserve; print(sorted(m for m in ('onnxruntime', 'starlette') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
