"""The warm set through the registry: roles over any number of warm versions, keep_warm, version
policies, `rollback --to`, the memory budget, restarts. Real onnxruntime sessions, real state files."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from modelserve import testing
from modelserve.config import parse_model_config
from modelserve.errors import ConfigError, Conflict, NotFound
from modelserve.serving.memory import MemoryBudgetExceeded, parse_size
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.store import FileStateStore


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """`fraud` with five versions (different weights)."""
    return testing.repository(tmp_path / "models", {"fraud": {str(v): v for v in range(1, 6)}})


def registry_for(repo: Path, state: Path, *, config: str = "", budget: int | None = None) -> ModelRegistry:
    (repo / "fraud" / "config.toml").write_text('live = "1"\n' + config)
    return ModelRegistry(ModelRepository(repo), FileStateStore(state), memory_budget=budget)


def test_keep_warm_three_promotes_1_2_3_then_rolls_back_to_1_instantly(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state", config="[serving]\nkeep_warm = 3\n")
        warm = await registry.load_model("fraud")
        v1 = warm.live
        for version in ("2", "3"):
            await registry.stage("fraud", version)
            await registry.promote("fraud")
        assert warm.warm_versions() == ["1", "2", "3"]
        assert warm.live_version == "3" and warm.history == ["1", "2"] and warm.previous == "2"
        assert [warm.role_of(v) for v in ("1", "2", "3")] == ["warm", "previous", "live"]
        switch = await registry.rollback("fraud", to="1")
        assert (switch.from_version, switch.to_version) == ("3", "1")
        assert registry.resolve("fraud") is v1  # the same warm session: nothing was loaded
        assert warm.history == [] and warm.candidate == "3"  # as blue/green: re-promotable
        assert warm.warm_versions() == ["1", "2", "3"]

    anyio.run(main)


def test_keep_warm_two_behaves_as_blue_green(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        warm = await registry.load_model("fraud")
        await registry.stage("fraud", "2")
        await registry.promote("fraud")
        assert (warm.live_slot, warm.idle_slot, warm.idle_role) == ("green", "blue", "previous")
        await registry.stage("fraud", "3")  # replaces the previous version, like the idle slot did
        assert warm.warm_versions() == ["2", "3"] and warm.candidate == "3"
        assert warm.slot_of("3") == "blue" and warm.idle_role == "candidate"
        await registry.stage("fraud", "4")  # a new candidate replaces the staged one
        assert warm.warm_versions() == ["2", "4"]
        with pytest.raises(Conflict, match="no previous version"):
            await registry.rollback("fraud")

    anyio.run(main)


def test_rollback_to_refuses_cold_live_and_candidate_versions(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state", config="[serving]\nkeep_warm = 3\n")
        await registry.load_model("fraud")
        await registry.stage("fraud", "2")
        with pytest.raises(Conflict, match=r"not warm .*modelserve load fraud 4"):
            await registry.rollback("fraud", to="4")
        with pytest.raises(Conflict, match="already live"):
            await registry.rollback("fraud", to="1")
        with pytest.raises(Conflict, match="staged candidate: promote it"):
            await registry.rollback("fraud", to="2")
        assert registry.resolve("fraud").version == "1"

    anyio.run(main)


def test_load_adds_pinned_versions_that_keep_warm_never_evicts(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        warm = await registry.load_model("fraud")
        await registry.load_version("fraud", "5")
        await registry.load_version("fraud", "4")
        await registry.stage("fraud", "2")
        await registry.promote("fraud")
        await registry.stage("fraud", "3")  # keep_warm 2: unloads only what is not pinned (1)
        assert warm.warm_versions() == ["2", "3", "4", "5"] and warm.pinned == {"4", "5"}
        assert warm.ready_versions == {"2", "3", "4", "5"}
        await registry.rollback("fraud", to="5")  # any warm version, even one never live
        assert registry.resolve("fraud").version == "5"
        with pytest.raises(Conflict, match="is live"):
            await registry.unload("fraud", "5")
        await registry.unload("fraud", "4")
        with pytest.raises(NotFound):
            await registry.unload("fraud", "4")
        assert warm.warm_versions() == ["2", "3", "5"]
        await registry.stage("fraud", "2")  # 2 -> candidate, then unloaded: no candidate, no previous
        await registry.unload("fraud", "2")
        await registry.unload("fraud", "3")
        described = warm.describe()
        assert described["idle_role"] is None and described["idle_slot"] in described["slots"]  # type: ignore[operator]

    anyio.run(main)


def test_unload_refuses_a_version_a_feature_uses(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        registry.in_use.append(lambda model: frozenset({"3"}))
        warm = await registry.load_model("fraud")
        await registry.load_version("fraud", "3")
        with pytest.raises(Conflict, match="in use"):
            await registry.unload("fraud", "3")
        assert "3" in warm.versions

    anyio.run(main)


def test_version_policies_load_and_pin_at_start(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        latest = registry_for(repo, tmp_path / "a", config="[serving]\nlatest = 3\n")
        warm = await latest.load_model("fraud")
        assert warm.live_version == "1" and warm.warm_versions() == ["1", "3", "4", "5"]
        assert warm.pinned == {"3", "4", "5"}
        specific = registry_for(repo, tmp_path / "b", config='[serving]\nversions = ["2", 5, "9"]\n')
        warm = await specific.load_model("fraud")
        assert warm.warm_versions() == ["1", "2", "5"]  # 9 is not in the repository: warned, skipped

    anyio.run(main)


def test_warm_set_roles_and_labels_survive_a_restart(tmp_path: Path, repo: Path) -> None:
    config = "[serving]\nkeep_warm = 4\n"

    async def first() -> None:
        registry = registry_for(repo, tmp_path / "state", config=config)
        await registry.load_model("fraud")
        for version in ("2", "3"):
            await registry.stage("fraud", version)
            await registry.promote("fraud")
        await registry.stage("fraud", "4")
        await registry.load_version("fraud", "5")

    async def second() -> dict[str, object]:
        registry = registry_for(repo, tmp_path / "state", config=config)
        warm = await registry.load_model("fraud")
        assert warm.live_version == "3" and warm.candidate == "4" and warm.history == ["1", "2"]
        assert warm.pinned == {"5"} and warm.warm_versions() == ["1", "2", "3", "4", "5"]
        await registry.rollback("fraud", to="1")
        assert registry.resolve("fraud").version == "1"
        return warm.describe()

    anyio.run(first)
    labels = FileStateStore(tmp_path / "state").read("slots.fraud")
    assert labels is not None and labels["warm"] == {
        "1": "blue",
        "2": "green",
        "3": "slot-3",
        "4": "slot-4",
        "5": "slot-5",
    }
    described = anyio.run(second)
    assert described["live_slot"] == "blue" and described["candidate"] == "4"


def test_a_saved_blue_green_document_is_restored(tmp_path: Path, repo: Path) -> None:
    store = FileStateStore(tmp_path / "state")
    store.write(
        "slots.fraud",
        {"live_version": "2", "live_slot": "green", "idle_version": "1", "idle_role": "previous"},
    )

    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        warm = await registry.load_model("fraud")
        assert (warm.live_version, warm.live_slot, warm.previous, warm.slot_of("1")) == (
            "2",
            "green",
            "1",
            "blue",
        )
        await registry.rollback("fraud")
        assert registry.resolve("fraud").version == "1"

    anyio.run(main)


def test_memory_is_measured_per_version_and_a_load_past_the_budget_is_refused(
    tmp_path: Path, repo: Path
) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        warm = await registry.load_model("fraud")
        await registry.stage("fraud", "2")
        costs = {v: warm.versions[v].memory for v in ("1", "2")}
        for cost in costs.values():
            assert cost is not None and cost.rss_delta_bytes is not None
            assert (
                cost.resident_bytes >= cost.file_bytes == (repo / "fraud" / "1" / "model.onnx").stat().st_size
            )
        used = registry.memory()["used_bytes"]
        assert used == sum(c.resident_bytes for c in costs.values() if c is not None)
        # A budget with room for what is warm and less than a file's size more: the next load is refused.
        registry.memory_budget = used + 100
        with pytest.raises(MemoryBudgetExceeded, match=r"version 3 .*modelserve unload fraud 2.*Nothing was"):
            await registry.load_version("fraud", "3")
        with pytest.raises(MemoryBudgetExceeded):
            await registry.stage("fraud", "3")
        assert warm.warm_versions() == ["1", "2"] and warm.live_version == "1" and warm.candidate == "2"
        await registry.unload("fraud", "2")
        # RSS deltas vary with what the allocator reuses: leave room for a generous measurement.
        registry.memory_budget = registry.memory()["used_bytes"] + 256 * 1024**2
        await registry.stage("fraud", "3")
        described = warm.describe()
        memory = {row["version"]: row["memory"] for row in described["warm"]}  # type: ignore[attr-defined]
        assert memory["3"]["resident_bytes"] > 0 and memory["1"]["file_bytes"] > 0

    anyio.run(main)


def test_only_live_versions_warm_says_raise_the_budget(tmp_path: Path, repo: Path) -> None:
    async def main() -> None:
        registry = registry_for(repo, tmp_path / "state")
        await registry.load_model("fraud")
        registry.memory_budget = registry.memory()["used_bytes"] + 1
        with pytest.raises(MemoryBudgetExceeded, match="only live versions are warm: raise --memory-budget"):
            await registry.load_version("fraud", "2")

    anyio.run(main)


def test_warm_policy_config_is_validated() -> None:
    assert parse_model_config({"serving": {"keep_warm": 3}}, where="c").warm.keep_warm == 3
    assert parse_model_config({"serving": {"versions": [1, "2"]}}, where="c").warm.versions == ("1", "2")
    for bad in ({"keep_warm": 1}, {"latest": -1}, {"versions": "1"}, {"latest": 2, "versions": ["1"]}):
        with pytest.raises(ConfigError):
            parse_model_config({"serving": bad}, where="c")


def test_sizes_parse_with_binary_units() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("4096") == 4096
    for bad in ("", "-1M", "12Q", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_a_restart_under_a_smaller_budget_restores_the_live_version_and_skips_the_rest(
    tmp_path: Path,
) -> None:
    # Versions 1 and 2 are 16.8 MB files (a version never costs less than its file); 3 is tiny.
    repo = tmp_path / "big"
    for version in ("1", "2"):
        testing.mlp(repo / "fraud" / version / "model.onnx", (16, 2048, 2048, 2), seed=int(version))
    testing.mlp(repo / "fraud" / "3" / "model.onnx", seed=3)
    config = "[serving]\nkeep_warm = 3\n"

    async def first() -> None:
        registry = registry_for(repo, tmp_path / "state", config=config)
        await registry.load_model("fraud")
        for version in ("2", "3"):
            await registry.stage("fraud", version)
            await registry.promote("fraud")

    async def second() -> None:
        registry = registry_for(repo, tmp_path / "state", config=config, budget=14 * 1024**2)
        warm = await registry.load_model("fraud")
        assert warm.live_version == "3" and registry.resolve("fraud").version == "3"
        assert warm.warm_versions() == ["3"]  # the previous versions did not fit: skipped, with a warning
        assert registry.memory()["used_bytes"] <= 14 * 1024**2

    anyio.run(first)
    anyio.run(second)
