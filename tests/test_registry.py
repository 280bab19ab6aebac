from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from modelserve import testing
from modelserve.errors import Conflict, LoadError, NotFound, RequestError
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.store import FileStateStore


def make_registry(repo: Path, state: Path) -> ModelRegistry:
    return ModelRegistry(ModelRepository(repo), FileStateStore(state))


def test_first_start_serves_config_live_or_highest(tmp_path: Path, model_repo: Path) -> None:
    async def main() -> None:
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_all()
        assert registry.resolve("fraud").version == "2"  # highest without config
        (model_repo / "two" / "config.toml").write_text('live = "1"\n')
        assert registry.resolve("two").version == "1"

    anyio.run(main)


def test_stage_promote_rollback_keep_both_versions_warm(tmp_path: Path, model_repo: Path) -> None:
    (model_repo / "fraud" / "config.toml").write_text('live = "1"\n')

    async def main() -> None:
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_model("fraud")
        slots = registry.slots("fraud")
        assert slots.live.version == "1" and slots.idle is None
        v1 = slots.live
        staged = await registry.stage("fraud", "2")
        assert staged.ready and registry.resolve("fraud").version == "1"
        assert slots.ready_versions == {"1", "2"}
        switch = await registry.promote("fraud")
        assert (switch.from_version, switch.to_version) == ("1", "2")
        assert registry.resolve("fraud").version == "2"
        assert slots.idle is v1 and slots.idle_role == "previous"  # same warm session kept
        with pytest.raises(Conflict, match="use rollback"):
            await registry.promote("fraud")
        await registry.rollback("fraud")
        assert registry.resolve("fraud") is v1
        assert slots.idle_role == "candidate"
        with pytest.raises(Conflict):
            await registry.rollback("fraud")

    anyio.run(main)


def test_failed_stage_leaves_live_slot_untouched(tmp_path: Path, model_repo: Path) -> None:
    (model_repo / "fraud" / "3").mkdir()
    (model_repo / "fraud" / "3" / "model.onnx").write_bytes(b"\x08\x01garbage")
    (model_repo / "fraud" / "config.toml").write_text('live = "2"\n')

    async def main() -> None:
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_model("fraud")
        live = registry.resolve("fraud")
        with pytest.raises(LoadError):
            await registry.stage("fraud", "3")
        with pytest.raises(NotFound):
            await registry.stage("fraud", "9")
        with pytest.raises(RequestError):
            await registry.stage("fraud", "../two/1")
        assert registry.resolve("fraud") is live
        assert registry.slots("fraud").idle is None

    anyio.run(main)


def test_live_version_survives_restart_and_new_folders_never_go_live(
    tmp_path: Path, model_repo: Path
) -> None:
    (model_repo / "fraud" / "config.toml").write_text('live = "1"\n')

    async def first() -> None:
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_model("fraud")
        await registry.stage("fraud", "2")
        await registry.promote("fraud")

    async def second() -> None:
        testing.mlp(model_repo / "fraud" / "7" / "model.onnx", seed=7)
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_model("fraud")
        slots = registry.slots("fraud")
        assert slots.live.version == "2"
        assert slots.idle is not None and slots.idle.version == "1" and slots.idle_role == "previous"
        await registry.rollback("fraud")
        assert registry.resolve("fraud").version == "1"

    anyio.run(first)
    anyio.run(second)


def test_unload_refuses_the_live_version(tmp_path: Path, model_repo: Path) -> None:
    async def main() -> None:
        registry = make_registry(model_repo, tmp_path / "state")
        await registry.load_model("fraud")
        await registry.stage("fraud", "1")
        with pytest.raises(Conflict):
            await registry.unload("fraud", "2")
        await registry.unload("fraud", "1")
        assert registry.slots("fraud").idle is None
        await registry.unload("fraud")
        with pytest.raises(NotFound):
            registry.resolve("nope")

    anyio.run(main)
