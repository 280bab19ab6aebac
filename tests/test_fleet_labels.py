"""Labels joined fleet-wide through a real SQLite coordinator: once, wherever posted, shadows included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelserve.errors import RequestError
from modelserve.monitoring.fleet_labels import FleetLabels, decode, encode
from modelserve.monitoring.outcomes import ACCURACY, ERROR, LabelJoin, OutcomeTally, Prediction
from modelserve.state.sqlite_backend import SqliteCoordinator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Replica = tuple[FleetLabels, LabelJoin, OutcomeTally]


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    """Two replicas' label joins on one coordinator file, as two processes have them."""
    found, coordinators = [], []
    for _ in range(2):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        coordinators.append(coordinator)
        tally = OutcomeTally()
        join = LabelJoin(tally)
        found.append((FleetLabels(coordinator, join, settle_s=0.0, join_wait_s=0.05), join, tally))
    yield found
    for coordinator in coordinators:
        await coordinator.aclose()


def served(replica: Replica, request_id: str, values: list[int], *, also: str | None = None) -> Prediction:
    """What the request path does for an identified request: remember here, queue for the fleet."""
    prediction = Prediction(model="credit", version="1", kind=ACCURACY, values=np.asarray(values))
    labels, join, _ = replica
    join.remember(request_id, prediction, also=also)
    labels.remember(request_id, prediction, also=also)
    return prediction


@pytest.mark.anyio
async def test_a_label_joins_once_on_either_replica_and_a_repeat_is_a_duplicate(
    replicas: list[Replica],
) -> None:
    (a_labels, _, a_tally), (b_labels, _, b_tally) = replicas
    served(replicas[0], "r1", [1, 0])
    await a_labels.flush()
    assert await b_labels.resolve("credit", [("r1", [1, 1])]) == {"accepted": 1, "unknown": 0, "duplicate": 0}
    assert b_tally.summary("credit", "1").samples == 2 and b_tally.summary("credit", "1").correct == 1
    assert a_tally.summary("credit", "1").samples == 0  # counted once, where it was posted
    for labels in (a_labels, b_labels):
        assert await labels.resolve("credit", [("r1", 1)]) == {"accepted": 0, "unknown": 0, "duplicate": 1}
    assert await a_labels.resolve("credit", [("nobody", 1)]) == {"accepted": 0, "unknown": 1, "duplicate": 0}
    assert await b_labels.resolve("other-model", [("r1", 1)]) == {"accepted": 0, "unknown": 1, "duplicate": 0}


@pytest.mark.anyio
async def test_the_serving_replica_scores_its_own_copy_and_both_ids_are_used_up(
    replicas: list[Replica],
) -> None:
    (a_labels, a_join, a_tally), (b_labels, _, _) = replicas
    prediction = served(replicas[0], "server-id", [1], also="client-id")
    a_join.add_shadow("server-id", "2", np.asarray([0]))  # settles after the record was stored
    await a_labels.flush()
    assert await a_labels.resolve("credit", [("client-id", 1)]) == {
        "accepted": 1,
        "unknown": 0,
        "duplicate": 0,
    }
    assert a_tally.paired_since("credit", "1", "2", 0.0) == (1, 0, 1)  # the local copy has the shadow
    assert prediction.shadows.keys() == {"2"}
    assert await b_labels.resolve("credit", [("server-id", 1)]) == {
        "accepted": 0,
        "unknown": 0,
        "duplicate": 1,
    }


@pytest.mark.anyio
async def test_a_shadow_that_settled_before_the_record_was_stored_travels_with_it(
    replicas: list[Replica],
) -> None:
    (a_labels, a_join, _), (b_labels, _, b_tally) = replicas
    served(replicas[0], "r2", [1, 1])
    a_join.add_shadow("r2", "2", np.asarray([1, 0]))
    await a_labels.flush()
    assert await b_labels.resolve("credit", [("r2", [1, 1])]) == {"accepted": 1, "unknown": 0, "duplicate": 0}
    assert b_tally.labelled_since("credit", "2", 0.0, role="shadow") == (1, 2)
    assert b_tally.paired_since("credit", "1", "2", 0.0) == (2, 1, 2)


@pytest.mark.anyio
async def test_a_label_that_cannot_be_scored_is_refused_after_the_ones_before_it(
    replicas: list[Replica],
) -> None:
    (a_labels, _, _), (b_labels, _, b_tally) = replicas
    served(replicas[0], "r3", [1])
    served(replicas[0], "r4", [1])
    await a_labels.flush()
    with pytest.raises(RequestError, match="label 1: the label must be one value per row"):
        await b_labels.resolve("credit", [("r3", 1), ("r4", [1, 0, 1])])
    assert b_tally.summary("credit", "1").samples == 1


@pytest.mark.anyio
async def test_the_queue_is_bounded_and_nothing_is_stored_before_it_settles(replicas: list[Replica]) -> None:
    labels, join, _ = replicas[0]
    bounded = FleetLabels(labels.coordinator, join, max_queued=3, settle_s=60.0, join_wait_s=0.0)
    for i in range(5):
        bounded.remember(
            f"q{i}", Prediction(model="credit", version="1", kind=ACCURACY, values=np.asarray([1]))
        )
    assert bounded.dropped == 2
    await bounded.flush()  # nothing settled yet
    assert await replicas[1][0].resolve("credit", [("q4", 1)]) == {
        "accepted": 0,
        "unknown": 1,
        "duplicate": 0,
    }


def test_a_record_reads_back_as_the_prediction_and_a_damaged_one_as_none() -> None:
    prediction = Prediction(
        model="credit", version="1", kind=ACCURACY, values=np.asarray([1.0, 0.0]),
        shadows={"2": np.asarray([b"1", b"1"], dtype=object)}, aliases=("a", "b"),
    )  # fmt: skip
    back = decode("credit", encode(prediction))
    assert (
        back is not None and back.values.tolist() == ["1", "0"] and back.shadows["2"].tolist() == ["1", "1"]
    )
    assert back.aliases == ("a", "b") and back.kind == ACCURACY
    regression = decode("m", encode(Prediction(model="m", version="3", kind=ERROR, values=np.asarray([2.5]))))
    assert regression is not None and regression.values.tolist() == [2.5]
    damaged: list[Any] = [
        None, {}, {"kind": "x", "version": "1", "values": [1]}, {"kind": ACCURACY, "version": 1},
        {"kind": ERROR, "version": "1", "values": ["a"]}, {"kind": ERROR, "version": "1", "values": []},
        {"kind": ACCURACY, "version": "1", "values": [1] * 65},
    ]  # fmt: skip
    assert [decode("m", body) for body in damaged] == [None] * len(damaged)
