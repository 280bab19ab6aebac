"""The experiment work of a fleet's leader: bandit weights from the merged counters, and the supervisor.

Only the replica holding the lease runs `ExperimentLeader.run` (its writes carry the lease's fence,
so a deposed leader's are refused). Every `interval_s` it re-reads each running experiment's merged
counters, recomputes a bandit's weights once `reweight_every` more outcomes arrived, and publishes
them as `experiment-weights.<model>` when they changed; every replica routes by what it published.
Then it runs the `ExperimentSupervisor` (max duration, auto-stop, hand-over, health gates) and
publishes again, so an arm the health gates took out leaves every replica's draw at once.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from modelserve.errors import ModelServeError
from modelserve.experiments.lifecycle import ExperimentSupervisor
from modelserve.experiments.shared import FleetExperimentService, weights_key
from modelserve.state.coordinator import current_fence

log = logging.getLogger("modelserve.experiments")


class ExperimentLeader:
    """See the module docstring; one per replica, running only while it leads."""

    def __init__(self, service: FleetExperimentService, supervisor: ExperimentSupervisor) -> None:
        self.service = service
        self.supervisor = supervisor
        self._published: dict[str, dict[str, Any]] = {}
        self._reweighted_at: dict[str, int] = {}

    async def run(self) -> None:
        """The leader's term: until cancelled (the term ends), every `supervisor.interval_s`."""
        self._published.clear()  # a new term: publish what this replica computes
        while True:
            await self.step()
            await anyio.sleep(self.supervisor.interval_s)

    async def step(self) -> None:
        service = self.service
        for model in self._running():
            try:
                await service.refresh(model)
                await self.publish_weights(model)
            except ModelServeError as exc:
                log.warning("model %s: bandit weights not recomputed: %s", model, exc)
        try:
            await self.supervisor.check()
            for model in self._running():
                await self.publish_weights(model)
        except ModelServeError as exc:
            log.warning("experiment supervision failed: %s", exc)

    def _running(self) -> list[str]:
        return sorted(model for model, e in self.service.experiments.items() if e.running)

    async def publish_weights(self, model: str) -> None:
        """Reweight the model's bandit every `reweight_every` merged outcomes; publish changed weights."""
        experiment = self.service.experiments[model]
        bandit = experiment.bandit
        if bandit is None or not experiment.running:
            return
        outcomes = sum(bandit.n)
        if outcomes - self._reweighted_at.get(experiment.experiment_id, 0) >= bandit.reweight_every:
            bandit.reweight()
            self._reweighted_at[experiment.experiment_id] = outcomes
        body = {"id": experiment.experiment_id, "weights": bandit.weights(), "removed": dict(bandit.removed)}
        if self._published.get(model) == body:
            return
        await self.service.coordinator.put(
            weights_key(model), {**body, "outcomes": outcomes}, fence=current_fence.get()
        )
        self._published[model] = body
