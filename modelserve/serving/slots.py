"""Blue/green: the two-version view of a model's warm set, and the record of a switch.

Every warm version carries a slot label (`blue`, `green`, then `slot-3`, ...); the live version's
label is the live slot, and the candidate's (else the previous version's) is the idle slot. With two
warm versions this is exactly blue/green; `serving/warmset.py` holds any number.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_NAMES = ("blue", "green")


@dataclass(frozen=True, slots=True, kw_only=True)
class Switch:
    """What a promote or rollback did, for events and responses."""

    model: str
    action: str
    from_version: str | None
    to_version: str
    live_slot: str
    #: From the command entering the registry to the swap (lock wait + checks + the assignment), before
    #: anything is persisted: how long the switch took to take effect for the next request.
    effect_us: float | None = None
