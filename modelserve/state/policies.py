"""The per-model routing policies in force, durable across restarts.

A policy starts from the model's config.toml `[routing]` / `[shadow]` tables; runtime changes (canary
weight, candidate, shadow versions, flag) are saved under `policy.<model>` and win over the file on
the next start. The live version is not stored here: the slots own it, and `on_switch` keeps the
policy's copy in step the moment a switch happens.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import modelserve.validation as validation
from modelserve.config import ModelConfig
from modelserve.errors import ConfigError, RequestError
from modelserve.routing.policy import ModelPolicy
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.state")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")  # what the repository accepts (serving.repository.check_version)


class SlotSwitch(Protocol):
    """What `on_switch` reads of a slot switch (`serving.slots.Switch`); state sits below serving."""

    @property
    def model(self) -> str: ...
    @property
    def to_version(self) -> str: ...


#: Policy fields an operator may change at runtime (admin API, CLI, rollout controller).
MUTABLE_FIELDS = (
    "candidate",
    "canary_weight",
    "flag",
    "allow_version_override",
    "targeting_header",
    "shadow_versions",
    "shadow_sample_rate",
    "request_timeout_s",
)


class PolicyTable:
    """model name -> ModelPolicy; read on every request (a dict lookup), changed rarely."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._policies: dict[str, ModelPolicy] = {}
        #: Where `change` sends runtime changes when replicas share state (the desired document);
        #: it must install the result here before it returns.
        self.writer: Callable[[str, dict[str, Any]], Awaitable[object]] | None = None
        #: model -> why its saved policy was not applied (a corrupt or unreadable file, an invalid value).
        self.problems: dict[str, str] = {}

    def get(self, model: str) -> ModelPolicy | None:
        return self._policies.get(model)

    def __contains__(self, model: object) -> bool:
        return model in self._policies

    def ensure(self, model: str, config: ModelConfig, live: str) -> ModelPolicy:
        """The model's policy, created from config.toml plus saved changes on first use."""
        policy = self._policies.get(model)
        if policy is not None:
            if policy.live != live:
                policy = self._policies[model] = dataclasses.replace(policy, live=live)
            return policy
        routing, shadow = config.routing, config.shadow
        base = ModelPolicy(
            model=model,
            live=live,
            candidate=routing.candidate,
            canary_weight=routing.canary_weight,
            flag=routing.flag,
            allow_version_override=routing.allow_version_override,
            targeting_header=routing.targeting_header.lower(),
            shadow_versions=shadow.versions,
            shadow_sample_rate=shadow.sample_rate,
        )
        # A saved policy that cannot be read or no longer validates must not keep the model down:
        # the model serves on its config.toml policy, and status says why.
        try:
            policy = _apply(base, self.store.read(f"policy.{model}") or {})
            self.problems.pop(model, None)
        except (ConfigError, RequestError, TypeError, ValueError) as exc:
            policy = base
            self.problems[model] = f"saved policy not applied (using config.toml): {exc}"
            log.error("model %s: %s", model, self.problems[model])
        self._policies[model] = policy
        return policy

    def check(self, model: str, **changes: Any) -> ModelPolicy:
        """The policy these runtime changes would give; RequestError (nothing changed) if invalid."""
        current = self._policies.get(model)
        if current is None:
            raise RequestError(f"model {model!r} has no routing policy (is it loaded?)")
        unknown = sorted(set(changes) - set(MUTABLE_FIELDS))
        if unknown:
            raise RequestError(f"unknown policy field(s): {', '.join(unknown)}")
        try:
            return _apply(current, changes)
        except (ConfigError, TypeError, ValueError) as exc:
            raise RequestError(str(exc)) from None

    def update(self, model: str, **changes: Any) -> ModelPolicy:
        """Change runtime fields, validate, persist, and swap the policy in (one assignment)."""
        policy = self.check(model, **changes)
        self._policies[model] = policy
        self.store.write(
            f"policy.{model}", {name: _jsonable(getattr(policy, name)) for name in MUTABLE_FIELDS}
        )
        return policy

    async def change(self, model: str, **changes: Any) -> ModelPolicy:
        """Change runtime fields everywhere they apply: through `writer` when set, else `update`."""
        if self.writer is None:
            return self.update(model, **changes)
        self.check(model, **changes)  # refused here, before it reaches the shared state
        await self.writer(model, changes)
        return self._policies[model]

    def install(self, policy: ModelPolicy) -> None:
        """Swap in a policy decided elsewhere (the shared desired state), without saving it here."""
        self._policies[policy.model] = policy

    def remove(self, model: str) -> None:
        self._policies.pop(model, None)

    def on_switch(self, switch: SlotSwitch) -> None:
        policy = self._policies.get(switch.model)
        if policy is not None:
            self._policies[switch.model] = dataclasses.replace(policy, live=switch.to_version)

    def describe(self, model: str) -> dict[str, Any]:
        policy = self._policies.get(model)
        if policy is None:
            return {}
        return {name: _jsonable(getattr(policy, name)) for name in MUTABLE_FIELDS}


def _apply(policy: ModelPolicy, changes: dict[str, Any]) -> ModelPolicy:
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in MUTABLE_FIELDS:
            continue
        if name == "shadow_versions":
            if isinstance(value, str) or not isinstance(value, list | tuple) or len(value) > 16:
                raise ConfigError("shadow_versions must be a list of at most 16 versions")
            value = tuple(_version(v, name) for v in value)
        elif name == "candidate" and value is not None:
            value = _version(value, name)
        elif name == "flag" and value is not None:
            value = validation.text(str(value), "flag", error=ConfigError)
        elif name in ("canary_weight", "shadow_sample_rate"):
            value = validation.number(value, name, error=ConfigError)  # finite first: NaN passes no range
            if name == "canary_weight" and not 0.0 <= value <= 100.0:
                raise ConfigError(
                    f"canary_weight is a percent of targeting keys, 0 to 100 (5 = 5 %), not {value:g}"
                )
            if name == "shadow_sample_rate" and not 0.0 <= value <= 1.0:
                raise ConfigError(f"shadow_sample_rate is a fraction of requests, 0 to 1, not {value:g}")
        elif name == "request_timeout_s" and value is not None:
            value = validation.request_timeout_s(value, name, error=ConfigError)
        elif name == "allow_version_override":
            value = validation.flag(value, name, error=ConfigError)
        elif name == "targeting_header":
            if not isinstance(value, str) or not _HEADER_NAME.match(value):
                raise ConfigError(
                    f"targeting_header must be an HTTP header name (token characters), not {value!r:.60}"
                )
            value = value.lower()
        clean[name] = value
    return dataclasses.replace(policy, **clean)


def _version(value: Any, name: str) -> str:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if _VERSION.match(text):
        return text
    raise ConfigError(f"{name}: {value!r:.60} is not a version (versions are positive integers)")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
