"""The controller's only view of the serving layer, and of shadow agreement and experiments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from modelserve.rollout.gates import ExperimentEvidence, OutcomeEvidence, ShadowAgreement

#: `(model, candidate) -> agreement of the candidate's shadow results with the primary's, or None`.
AgreementSource = Callable[[str, str], ShadowAgreement | None]
#: `(model, candidate) -> the running experiment's verdict on the candidate, or None`.
ExperimentSource = Callable[[str, str], ExperimentEvidence | None]
#: `(model, candidate, baseline, since wall time, shadow stage) -> both versions' labelled outcomes
#: since then: in a shadow stage on the same rows, else each on the requests it served`.
OutcomeSource = Callable[[str, str, str, float, bool], OutcomeEvidence | None]


class RolloutTarget(Protocol):
    """What the controller needs from the serving layer (the app implements it over its slots)."""

    async def live_version(self, model: str) -> str | None:
        """The version serving the model's stable traffic, or None for an unknown model."""

    async def is_ready(self, model: str, version: str) -> bool:
        """True when `version` is loaded, warmed and may receive traffic."""

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        """Route `weight` percent (0..100, sticky) of the model's traffic to `candidate`."""

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        """Run (or stop running) `candidate` in shadow beside every primary request of the model."""

    async def promote(self, model: str, version: str) -> None:
        """Make `version` live; the previous live version stays warm, the canary split is cleared."""

    async def set_deadline(self, model: str, timeout_s: float | None) -> None:
        """Give every request of the model (any version) `timeout_s` to answer; None: each version's
        config.toml deadline again."""
