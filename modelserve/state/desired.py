"""Desired state: one revisioned document per model that every replica reconciles toward.

The document `model.<name>` says which version is live, which one was live before (kept warm for a
rollback), which one is staged, the routing candidate and its canary weight, the flag, the shadow
versions and rate, the running experiment, and the warm set: every version the fleet holds warm
(`warm`, live and roles included) and those held on purpose by `load` or the version policy
(`pinned`). `warm` is None in a document no replica has recorded its warm set in yet.

Admin commands on any replica change it with field-level patches: read, change the named fields
only, compare-and-set on the revision, retry when another writer won (or, for a strict caller that
sent `If-Match`, answer 409). Replicas never write each other's whole policy.

The first replica to start seeds the document from the state it had before (`slots.<name>` and
`policy.<name>`) and `config.toml`, with create-if-absent; later ones read what it wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import modelserve.validation as validation
from modelserve.errors import ConfigError, RequestError
from modelserve.routing.policy import ModelPolicy
from modelserve.state.coordinator import Coordinator, Fence, cas_update

#: Routing fields an operator may change with a policy patch (admin API, CLI, rollout controller).
POLICY_FIELDS = (
    "candidate",
    "canary_weight",
    "flag",
    "allow_version_override",
    "targeting_header",
    "shadow_versions",
    "shadow_sample_rate",
    "request_timeout_s",
)
#: Fields only serving commands change (stage, promote, rollback, experiments).
SERVING_FIELDS = ("live", "previous", "staged", "experiment", "warm", "pinned", "promoted_at")


def key_of(model: str) -> str:
    """The state key of a model's desired document."""
    return f"model.{model}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredModel:
    """One revision of a model's desired state."""

    model: str
    rev: int
    live: str
    previous: str | None = None
    #: Staged with `stage`: held warm as the candidate, with no traffic until a canary or promote.
    staged: str | None = None
    candidate: str | None = None
    canary_weight: float = 0.0
    flag: str | None = None
    allow_version_override: bool = False
    targeting_header: str = "x-user-id"
    shadow_versions: tuple[str, ...] = ()
    shadow_sample_rate: float = 1.0
    #: The model's request deadline while a rollout plan sets one (None: each version's config one).
    request_timeout_s: float | None = None
    experiment: str | None = None
    #: Every version held warm on every replica (None: not recorded yet, each keeps what it has).
    warm: tuple[str, ...] | None = None
    #: Warm versions held on purpose (`load`, the version policy): `keep_warm` never unloads them.
    pinned: tuple[str, ...] = ()
    #: When (wall clock) a promotion made `live` live, replacing `previous`; None after a rollback.
    #: The post-promotion watch of a new leader or a restarted server starts from it.
    promoted_at: float | None = None

    def policy(self) -> ModelPolicy:
        """The routing policy this revision asks for."""
        return ModelPolicy(
            model=self.model,
            live=self.live,
            candidate=self.candidate,
            canary_weight=self.canary_weight,
            flag=self.flag,
            allow_version_override=self.allow_version_override,
            targeting_header=self.targeting_header,
            shadow_versions=self.shadow_versions,
            shadow_sample_rate=self.shadow_sample_rate,
            request_timeout_s=self.request_timeout_s,
        )

    def wanted_versions(self) -> tuple[str, ...]:
        """Versions a replica should hold warm: live, staged, candidate, shadows, previous, the warm set."""
        roles = [self.live, self.staged, self.candidate, *self.shadow_versions, self.previous]
        ordered = [*roles, *(self.warm or ())]
        return tuple(dict.fromkeys(v for v in ordered if v))

    def body(self) -> dict[str, Any]:
        """The stored form (JSON)."""
        data = dataclasses.asdict(self)
        del data["model"], data["rev"]
        data["shadow_versions"] = list(self.shadow_versions)
        data["warm"] = None if self.warm is None else list(self.warm)
        data["pinned"] = list(self.pinned)
        return data


def from_body(model: str, rev: int, body: dict[str, Any]) -> DesiredModel:
    """Parse a stored document; `ConfigError` when it is not a valid desired state."""
    clean = validate({k: v for k, v in body.items() if k in POLICY_FIELDS or k in SERVING_FIELDS})
    if not clean.get("live"):
        raise ConfigError(f"desired state of {model!r} has no live version")
    try:
        desired = DesiredModel(model=model, rev=rev, **clean)
        desired.policy()  # range checks
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"desired state of {model!r}: {exc}") from None
    return desired


def validate(changes: dict[str, Any]) -> dict[str, Any]:
    """Type-check and normalise changed fields; `ConfigError` names the first bad one."""
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in POLICY_FIELDS and name not in SERVING_FIELDS:
            raise ConfigError(f"unknown policy field {name!r}")
        if name == "shadow_versions":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ConfigError("shadow_versions must be a list of versions")
            value = tuple(str(v) for v in value)
        elif name in ("warm", "pinned"):
            if value is None and name == "warm":
                clean[name] = None
                continue
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ConfigError(f"{name} must be a list of versions")
            value = tuple(dict.fromkeys(str(v) for v in value))
        elif name in ("candidate", "flag", "live", "previous", "staged", "experiment") and value is not None:
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ConfigError(f"{name} must be a string")
            value = str(value)
        elif name in ("canary_weight", "shadow_sample_rate"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number")
            value = float(value)
        elif name == "promoted_at" and value is not None:
            value = validation.number(value, "promoted_at", low=0.0, error=ConfigError)
        elif name == "request_timeout_s" and value is not None:
            value = validation.request_timeout_s(value, name, error=ConfigError)
        elif name == "allow_version_override" and not isinstance(value, bool):
            raise ConfigError("allow_version_override must be true or false")
        elif name == "targeting_header":
            if not isinstance(value, str) or not value:
                raise ConfigError("targeting_header must be a header name")
            value = value.lower()
        clean[name] = value
    return clean


class DesiredStates:
    """Read and change desired documents through a coordinator (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def get(self, model: str) -> DesiredModel | None:
        doc = await self.coordinator.get(key_of(model))
        return None if doc is None else from_body(model, doc.rev, doc.body)

    async def seed(self, model: str, initial: dict[str, Any]) -> DesiredModel:
        """The model's document, created from `initial` when no replica created it yet."""
        doc = await cas_update(self.coordinator, key_of(model), lambda body: body or validate(initial))
        return from_body(model, doc.rev, doc.body)

    async def patch(
        self,
        model: str,
        changes: dict[str, Any] | Callable[[DesiredModel], dict[str, Any]],
        *,
        expect_rev: int | None = None,
        fence: Fence | None = None,
    ) -> DesiredModel:
        """Change fields of the model's document with compare-and-set.

        `changes` is a dict of fields, or a function of the current revision returning one (it may
        raise to refuse, e.g. `Conflict`). With `expect_rev` the write happens only at that revision
        (`StaleRevision` otherwise, HTTP 409); without it a lost race is retried on the new revision.
        """
        current_holder: list[DesiredModel] = []

        def change(body: dict[str, Any]) -> dict[str, Any]:
            current_holder.clear()
            if not body:
                raise RequestError(f"model {model!r} has no desired state (is it in the repository?)")
            current = from_body(model, -1, body)
            current_holder.append(current)
            fields = changes(current) if callable(changes) else changes
            try:
                updated = dataclasses.replace(current, **validate(fields))
                updated.policy()
            except (ConfigError, TypeError, ValueError) as exc:
                raise RequestError(str(exc)) from None
            return updated.body()

        if expect_rev is not None:
            from modelserve.state.coordinator import StaleRevision

            doc = await self.coordinator.get(key_of(model))
            actual = doc.rev if doc is not None else 0
            if actual != expect_rev:
                raise StaleRevision(key_of(model), expect_rev, actual)
            new = await self.coordinator.put(
                key_of(model), change(doc.body if doc else {}), expect_rev=expect_rev, fence=fence
            )
        else:
            new = await cas_update(self.coordinator, key_of(model), change, fence=fence)
        return from_body(model, new.rev, new.body)
