"""Per-model routing policy and the pure route decision.

`decide` picks the version that serves one request, in this order:

1. **override** - the client asked for a version (``X-Model-Version``); honoured only when the
   policy allows it and the version is READY;
2. **flag** - the policy names a flag whose variant values are version names; a usable variant must
   name a READY version, otherwise the request falls back to the live version (reason
   ``fallback``, the detail says why). A flag that is disabled or yields no variant is skipped;
3. **experiment / bandit** - an `arms` callback (experiments) may assign an arm;
4. **canary** - the candidate (if READY) gets ``canary_weight`` percent, sticky and monotonic on
   the targeting key (`hashing.sticky_bucket`); requests without a key are split at random and the
   detail says so;
5. **stable** - the live version.

Only READY versions are ever chosen as primary; if even the live version is not ready the decision
names it anyway (reason ``fallback``) so the server answers 503 rather than guessing. Shadows are
the configured shadow versions that are READY and not the primary, sampled at ``shadow_sample_rate``
(sticky on the targeting key when there is one).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import modelserve.validation as validation
from modelserve.errors import ConfigError
from modelserve.routing.decision import RouteDecision
from modelserve.routing.flagd import Evaluation
from modelserve.routing.hashing import sticky_bucket

#: Resolution of sticky buckets: weights are honoured to 0.01 percentage point.
BUCKETS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPolicy:
    """How one model's requests are routed. Change it with `dataclasses.replace`."""

    model: str
    live: str
    candidate: str | None = None
    canary_weight: float = 0.0
    flag: str | None = None
    allow_version_override: bool = False
    targeting_header: str = "x-user-id"
    shadow_versions: tuple[str, ...] = ()
    shadow_sample_rate: float = 1.0
    #: The request deadline of every version of the model, replacing each version's config.toml one
    #: while set (a running rollout plan's `request_timeout_s`); None: the config deadlines.
    request_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.model or not self.live:
            raise ConfigError("a routing policy needs a model name and a live version")
        if not 0.0 <= self.canary_weight <= 100.0:
            raise ConfigError(f"{self.model}: canary_weight must be within 0..100, got {self.canary_weight}")
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            raise ConfigError(
                f"{self.model}: shadow sample_rate must be within 0..1, got {self.shadow_sample_rate}"
            )
        if self.request_timeout_s is not None:
            validation.request_timeout_s(self.request_timeout_s, f"{self.model}: request_timeout_s",
                                         error=ConfigError)  # fmt: skip

    @property
    def canary_threshold(self) -> float:
        """Buckets below this go to the candidate."""
        return self.canary_weight * BUCKETS / 100.0


def decide(
    policy: ModelPolicy,
    *,
    ready_versions: frozenset[str],
    targeting_key: str | None,
    override: str | None,
    flag_eval: Evaluation | None,
    rng: Callable[[], float] = random.random,
    arms: Callable[[], RouteDecision | None] | None = None,
) -> RouteDecision:
    """The route decision for one request (pure apart from `rng` for key-less canary/shadow draws).

    `arms`, when given, is consulted after the flag and before the canary: an experiment or bandit
    assignment (reason ``experiment`` / ``bandit``), or None to fall through.
    """
    model = policy.model
    notes = ""
    if override is not None:
        if not policy.allow_version_override:
            notes = f"override {override!r} ignored: not allowed by policy; "
        elif override in ready_versions:
            return _decision(policy, override, "override", targeting_key, ready_versions, rng, "")
        else:
            notes = f"override {override!r} ignored: version not ready; "

    if policy.flag is not None and flag_eval is not None:
        if flag_eval.error_code is not None:
            detail = f"{notes}flag {policy.flag!r}: {flag_eval.error_code}: {flag_eval.error_message}"
            return _fallback(policy, targeting_key, ready_versions, rng, detail)
        if flag_eval.variant is not None:
            version = flag_eval.value if type(flag_eval.value) is str else str(flag_eval.value)
            if version in ready_versions:
                detail = f"{notes}flag {policy.flag} variant {flag_eval.variant} ({flag_eval.reason})"
                if not policy.shadow_versions:  # the hot path: no shadow sampling to do
                    return RouteDecision(
                        model=model,
                        version=version,
                        reason="flag",
                        targeting_key=targeting_key,
                        detail=detail,
                    )
                return _decision(policy, version, "flag", targeting_key, ready_versions, rng, detail)
            detail = (
                f"{notes}flag {policy.flag!r} variant {flag_eval.variant!r} names version {version!r}, "
                "which is not ready"
            )
            return _fallback(policy, targeting_key, ready_versions, rng, detail)

    if arms is not None:
        assigned = arms()
        if assigned is not None:
            return assigned

    candidate = policy.candidate
    if candidate is not None and policy.canary_weight > 0:
        if candidate not in ready_versions:
            notes += f"candidate {candidate!r} not ready"
        elif targeting_key is not None:
            bucket = sticky_bucket(model, targeting_key, BUCKETS)
            if bucket < policy.canary_threshold:
                detail = f"{notes}bucket {bucket} < {policy.canary_threshold:g} of {BUCKETS}"
                return _decision(policy, candidate, "canary", targeting_key, ready_versions, rng, detail)
            notes += f"bucket {bucket} >= {policy.canary_threshold:g} of {BUCKETS}"
        else:
            if rng() * 100.0 < policy.canary_weight:
                detail = f"{notes}no targeting key, random split"
                return _decision(policy, candidate, "canary", None, ready_versions, rng, detail)
            notes += "no targeting key, random split"

    if policy.live not in ready_versions:
        return _fallback(policy, targeting_key, ready_versions, rng, f"{notes}live version not ready")
    return _decision(policy, policy.live, "stable", targeting_key, ready_versions, rng, notes.rstrip("; "))


def _fallback(
    policy: ModelPolicy,
    targeting_key: str | None,
    ready: frozenset[str],
    rng: Callable[[], float],
    detail: str,
) -> RouteDecision:
    return _decision(policy, policy.live, "fallback", targeting_key, ready, rng, detail)


def _decision(
    policy: ModelPolicy,
    version: str,
    reason: str,
    targeting_key: str | None,
    ready: frozenset[str],
    rng: Callable[[], float],
    detail: str,
) -> RouteDecision:
    shadows: tuple[str, ...] = ()
    if policy.shadow_versions and policy.shadow_sample_rate > 0:
        shadows = tuple(v for v in policy.shadow_versions if v != version and v in ready)
        if shadows and policy.shadow_sample_rate < 1.0 and not _sampled(policy, targeting_key, rng):
            shadows = ()
    return RouteDecision(
        model=policy.model,
        version=version,
        reason=reason,
        shadows=shadows,
        targeting_key=targeting_key,
        detail=detail,
    )


def _sampled(policy: ModelPolicy, targeting_key: str | None, rng: Callable[[], float]) -> bool:
    if targeting_key is None:
        return rng() < policy.shadow_sample_rate
    return (
        sticky_bucket("shadow:" + policy.model, targeting_key, BUCKETS) < policy.shadow_sample_rate * BUCKETS
    )
