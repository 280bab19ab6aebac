"""Monitoring figures fleet-wide, over three real `modelserve serve` processes per shared backend.

Each replica publishes its counts through the coordinator (SQLite, real Redis); any replica's `/ui`
JSON and model status show the fleet's sums beside its own. Checked against direct computations on
what the responses said: class counts and score histograms summed over replicas, drift PSI and JS of
the summed bins (numpy, the formula written out), a replica with another reference kept apart, and a
replica killed with SIGKILL named as missing. Every process is stopped by its PID; loops are bounded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright

from modelserve.monitoring.fleet import FleetMonitoring
from modelserve.monitoring.histogram import SCORE_EDGES
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import ACCURACY, LabelJoin, OutcomeTally, Prediction
from modelserve.rollout.gates import INCONCLUSIVE, OutcomeEvidence, evaluate_gate
from modelserve.rollout.plan import GateSpec, Stage
from modelserve.rollout.sample import Sample
from modelserve.state.sqlite_backend import SqliteCoordinator
from modelserve.testing_processes import ServeProcess, serve_fleet, shared_state_url

EXAMPLES = Path(__file__).parent.parent / "examples"
ROWS: list[list[float]] = [
    json.loads(line)["input"] for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
]
TRUTH: list[int] = [
    int(json.loads(line)["label"]) for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
]
CHROMIUM = "/usr/bin/chromium"  # the Debian package; `.ci/run` installs it
TOKEN = "fleet-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
#: A window longer than the module runs: every row sent is in the drift window, so sums are exact.
MONITORING = 'reference = "reference.jsonl"\nmin_samples = 100\nwindow_s = 3600.0\n'


@dataclass
class Fleet:
    """The replicas, and every row the live version served (the ground truth of the fleet's sums)."""

    processes: list[ServeProcess]
    folder: Path
    coordinator: str
    served: list[tuple[list[float], int, float]] = field(default_factory=list)  # row, label, P(1)

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.processes]


def credit_repo(folder: Path, monitoring: str) -> Path:
    repo = folder / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    shutil.copy(EXAMPLES / "labelled_traffic.jsonl", repo / "credit" / "reference.jsonl")
    config = repo / "credit" / "config.toml"
    config.write_text(config.read_text() + "\n[monitoring]\n" + monitoring)
    return repo


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp(f"fleet-monitoring-{request.param}")
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    coordinator = shared_state_url(request.param, folder, redis_url, db=3)
    repo = credit_repo(folder, MONITORING)
    with serve_fleet(repo, folder, coordinator, args=["--admin-token", TOKEN]) as processes:
        yield Fleet(processes, folder, coordinator)


def infer(
    client: httpx.Client, base: str, row: list[float], request_id: str, *, key: str | None = None
) -> tuple[int, float, str]:
    """(label, P(class 1), version that served) of one identified request."""
    body = {
        "id": request_id,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row}],
    }
    headers = {"x-user-id": key} if key is not None else {}
    response = client.post(f"{base}/v2/models/credit/infer", json=body, headers=headers)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return int(outputs["label"][0]), float(outputs["probabilities"][1]), response.headers["x-model-version"]


def serve_rows(fleet: Fleet, base: str, rows: list[list[float]], prefix: str) -> list[int]:
    labels = []
    with httpx.Client(timeout=30) as client:
        for i, row in enumerate(rows):
            label, p1, version = infer(client, base, row, f"{prefix}-{i}")
            assert version == "1"
            fleet.served.append((row, label, p1))
            labels.append(label)
    return labels


def page(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/ui/api/models/credit", timeout=30)
    assert response.status_code == 200, response.text
    monitoring: dict[str, Any] = response.json()["monitoring"]
    return monitoring


def status(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/admin/models/credit", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    monitoring: dict[str, Any] = response.json()["monitoring"]
    return monitoring


def wait_for(read: Callable[[], Any], check: Callable[[Any], bool], timeout_s: float, what: str) -> Any:
    """Poll `read()` until `check` holds for what it returned (bounded); that last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}; last: {value}"
        time.sleep(0.2)


def histogram(values: list[float]) -> list[int]:
    """Bucket counts as the monitor's histogram counts them (Prometheus `le`, float32 outputs)."""
    index = np.searchsorted(np.asarray(SCORE_EDGES), np.asarray(values, dtype=np.float32).astype(np.float64))
    return np.bincount(index, minlength=len(SCORE_EDGES) + 1).tolist()


def test_class_counts_and_score_histograms_are_the_sum_over_three_replicas(fleet: Fleet) -> None:
    a, b, c = fleet.urls
    mine = serve_rows(fleet, a, ROWS[0:30], "classes-a")
    serve_rows(fleet, b, ROWS[30:70], "classes-b")
    serve_rows(fleet, c, ROWS[70:120], "classes-c")
    classes = dict(Counter(str(label) for _, label, _ in fleet.served))
    buckets = histogram([p1 for _, _, p1 in fleet.served])

    def summed(monitoring: dict[str, Any]) -> bool:
        found = monitoring["fleet"]["versions"].get("1", {}).get("distribution", {})
        return (
            found.get("classes", {}).get("label") == classes
            and found["histograms"]["probabilities[1]"]["counts"] == buckets
            and found["rows"] == len(fleet.served)
        )

    for base in (a, b, c):  # every replica shows the same fleet figures
        monitoring = wait_for(lambda u=base: page(u), summed, 20, f"fleet class counts on {base}")
        fleet_view = monitoring["fleet"]
        assert fleet_view["complete"] is True and fleet_view["missing"] == []
        assert fleet_view["replicas"] == ["replica-0", "replica-1", "replica-2"]
    local = page(a)["versions"]["1"]["distribution"]  # beside them, the replica's own
    assert local["classes"]["label"] == dict(Counter(str(label) for label in mine))
    summary = wait_for(
        lambda: status(b), lambda m: m["fleet"]["versions"]["1"]["predictions"]["primary"]["rows"] == 120, 20,
        "fleet rows in the model status",
    )  # fmt: skip
    shares = summary["fleet"]["versions"]["1"]["predictions"]["primary"]["class_shares"]["label"]
    assert shares == pytest.approx({name: count / 120 for name, count in classes.items()})
    assert summary["versions"]["1"]["predictions"]["primary"]["rows"] == 40  # b's own, beside


def reference_bins(column: int) -> tuple[np.ndarray, np.ndarray]:
    """Interior deciles of the reference file's column (sample values), and its bin counts (NaN last)."""
    values = np.asarray([row[column] for row in ROWS], dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)[1:-1], method="lower"))
    return edges, counts_in(edges, values)


def counts_in(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    index = np.searchsorted(edges, values, side="right")
    return np.bincount(index, minlength=11)


def psi_and_js(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    p, q = reference / reference.sum(), current / current.sum()
    pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    psi = float(np.sum((qf - pf) * np.log(qf / pf)))
    m = (p + q) / 2
    kl = [float(np.sum(x[x > 0] * np.log2(x[x > 0] / m[x > 0]))) for x in (p, q)]
    return psi, float(np.sqrt(sum(kl) / 2))


def test_shifted_traffic_on_one_replica_raises_the_fleet_drift_of_the_summed_bins(fleet: Fleet) -> None:
    a, _, c = fleet.urls
    amount = 4  # the credit amount: tripled on replica c only
    shifted = [[v * 3 if j == amount else v for j, v in enumerate(row)] for row in ROWS[150:300]]
    serve_rows(fleet, c, shifted, "drift-c")
    edges, reference = reference_bins(amount)
    current = counts_in(edges, np.asarray([row[amount] for row, _, _ in fleet.served], dtype=np.float64))
    psi, js = psi_and_js(reference, current)
    column = f"input[{amount}]"

    def fleet_column(monitoring: dict[str, Any]) -> dict[str, Any]:
        columns = monitoring["fleet"]["versions"]["1"]["drift"]["inputs"]
        return next((d for d in columns if d["column"] == column), {"samples": None})  # None: not yet

    monitoring = wait_for(
        lambda: page(a), lambda m: fleet_column(m)["samples"] == len(fleet.served), 20, "drift summed"
    )
    found = fleet_column(monitoring)
    assert found["psi"] == pytest.approx(psi, rel=1e-9) and found["js"] == pytest.approx(js, rel=1e-9)
    assert found["drifted"] is True and psi > 0.2
    assert monitoring["fleet"]["versions"]["1"]["reference"]["replicas"] == [
        "replica-0",
        "replica-1",
        "replica-2",
    ]
    assert monitoring["fleet"]["versions"]["1"]["not_mergeable"] == []
    own = next(d for d in page(c)["versions"]["1"]["drift"]["inputs"] if d["column"] == column)
    assert own["samples"] < found["samples"] and own["psi"] != pytest.approx(psi)  # c alone drifts more
    assert column in status(a)["fleet"]["versions"]["1"]["drifted"]


def post_labels(base: str, labels: list[dict[str, Any]]) -> dict[str, int]:
    response = httpx.post(
        f"{base}/v2/models/credit/labels", json={"labels": labels}, headers=AUTH, timeout=30
    )
    assert response.status_code == 200, response.text
    answer: dict[str, int] = response.json()
    return answer


def test_a_label_posted_to_any_replica_joins_once_where_the_request_was_served(fleet: Fleet) -> None:
    a, b, c = fleet.urls
    rows = {base: list(range(start, start + 30)) for base, start in ((a, 0), (b, 100), (c, 200))}
    predicted = {}
    for base, indexes in rows.items():
        labels = serve_rows(fleet, base, [ROWS[i] for i in indexes], f"label-{base[-5:]}")
        predicted |= {
            f"label-{base[-5:]}-{n}": (label, TRUTH[i])
            for n, (i, label) in enumerate(zip(indexes, labels, strict=True))
        }
    truth = [{"request_id": rid, "label": t} for rid, (_, t) in predicted.items()]
    served_by = {
        base: [t for t in truth if t["request_id"].startswith(f"label-{base[-5:]}")] for base in (a, b, c)
    }
    # a's requests labelled on c, b's on a, c's on c itself.
    assert post_labels(c, served_by[a] + served_by[c]) == {"accepted": 60, "unknown": 0, "duplicate": 0}
    assert post_labels(a, served_by[b]) == {"accepted": 30, "unknown": 0, "duplicate": 0}
    for base in (a, b, c):  # a repeat is a duplicate wherever it is posted
        assert post_labels(base, served_by[a][:2]) == {"accepted": 0, "unknown": 0, "duplicate": 2}
    assert post_labels(b, [{"request_id": "never-served", "label": 1}]) == {
        "accepted": 0,
        "unknown": 1,
        "duplicate": 0,
    }
    # Hostile input is a 4xx or counted, never a 500: odd ids, a label of the wrong shape (refused after
    # its record was taken, as documented: the request cannot be labelled again).
    odd = [
        {"request_id": rid, "label": 1} for rid in ("ü/../label:x", "a" * 128, "*", "label:credit/label-a")
    ]
    assert post_labels(c, odd) == {"accepted": 0, "unknown": 4, "duplicate": 0}
    serve_rows(fleet, a, [ROWS[5]], "hostile")  # served as "hostile-0"
    refused = [
        {"request_id": "hostile-0", "label": [1, 0]}, {"request_id": "x" * 129, "label": 1},
        {"labels": [{"request_id": "hostile-0"}]}, {"labels": "x"}, {"request_id": 5, "label": 1},
    ]  # fmt: skip
    for body in refused:
        response = httpx.post(f"{b}/v2/models/credit/labels", json=body, headers=AUTH, timeout=30)
        assert response.status_code == 400, (body, response.text)
    assert post_labels(b, [{"request_id": "hostile-0", "label": 1}])["duplicate"] == 1
    correct = sum(label == t for label, t in predicted.values())

    def accuracy(monitoring: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = monitoring["fleet"]["versions"]["1"]["accuracy"]
        return found

    found = wait_for(lambda: accuracy(page(b)), lambda f: f["samples"] == 90, 20, "fleet labels")
    assert found["correct"] == correct and found["accuracy"] == pytest.approx(correct / 90)
    # Each label counted once, by the replica it was posted to.
    assert [page(u)["versions"]["1"]["accuracy"]["samples"] for u in (a, b, c)] == [30, 0, 60]
    # Every replica sees them within a publish and a refresh (2 s each).
    wait_for(lambda: status(a), lambda m: m["fleet"]["versions"]["1"]["labelled"] == 90, 20, "labels on a")


@contextlib.contextmanager
def chromium(url: str) -> Iterator[Page]:
    """The status page at `url` in a real headless Chromium (the Debian package)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/ui")
            yield page
        finally:
            browser.close()


def test_the_status_page_shows_the_fleets_figures_and_the_replicas_own_on_request(fleet: Fleet) -> None:
    b = fleet.urls[1]
    mine = page(b)["versions"]["1"]
    fleet_rows = len(fleet.served)
    fleet_view = wait_for(
        lambda: page(b)["fleet"],
        lambda f: f["complete"] and f["versions"]["1"]["distribution"]["rows"] == fleet_rows
        and f["versions"]["1"]["accuracy"]["samples"] == 90,
        20, "every row in b's fleet view",
    )  # fmt: skip
    assert mine["distribution"]["rows"] < fleet_rows
    input4 = next(d for d in fleet_view["versions"]["1"]["drift"]["inputs"] if d["column"] == "input[4]")
    with chromium(b) as browser:
        browser.wait_for_selector("#fleet-state:has-text('3 replicas, all reporting')", timeout=15_000)
        assert browser.get_attribute("#scope-fleet", "class") == "active"
        rows = browser.locator("#class-shares tbody tr[data-role='primary'] td").nth(2)
        assert int(rows.inner_text()) == fleet_rows
        drift = browser.locator("#drift tbody tr", has_text="input[4]").locator("td")
        assert drift.nth(1).inner_text().startswith(f"{input4['psi']:.3f}") and drift.nth(
            4
        ).inner_text() == str(fleet_rows)
        accuracy = browser.locator("#versions tbody tr").first.locator("td").nth(8).inner_text()
        assert accuracy.endswith("n=90")  # every replica's labels
        # The accuracy chart over time: the fleet's series has points (a history point every 5 s).
        chart = "figure[data-metric='accuracy']"
        browser.wait_for_selector(f"{chart}[data-series='fleet_accuracy'] canvas", timeout=20_000)
        assert "fleet" in browser.inner_text(f"{chart} .title")
        browser.click("#scope-replica")
        assert int(rows.inner_text()) == mine["distribution"]["rows"]
        assert (
            browser.locator("#versions tbody tr").first.locator("td").nth(8).inner_text() == "\u2013"
        )  # b joined none
        assert browser.get_attribute(chart, "data-series") == "accuracy"
        assert "no data yet" in browser.inner_text(chart)
        browser.click("#scope-fleet")
        assert int(rows.inner_text()) == fleet_rows


def test_another_reference_is_kept_apart_and_a_killed_replica_makes_the_figures_incomplete(
    fleet: Fleet,
) -> None:
    # A fourth replica captures its reference from its own traffic: its windows cannot add to the others'.
    repo = credit_repo(
        fleet.folder / "live", "min_samples = 100\nwindow_s = 3600.0\nreference_period_s = 0.1\n"
    )
    args = ["--admin-token", TOKEN]
    with serve_fleet(repo, fleet.folder, fleet.coordinator, count=1, first=3, args=args) as (fourth,):
        serve_rows(fleet, fourth.url, ROWS[180:280], "live-d")
        # A live reference freezes when rows come after its period (0.1 s) with min_samples captured.
        wait_for(
            lambda: serve_rows(fleet, fourth.url, ROWS[280:281], f"live-d-{len(fleet.served)}")
            and page(fourth.url)["versions"]["1"]["reference"],
            lambda reference: reference["state"] == "ready", 20, "a live reference on the fourth replica",
        )  # fmt: skip
        a = fleet.urls[0]
        monitoring = wait_for(  # listed apart; its predictions still add up
            lambda: page(a), lambda m: m["fleet"]["versions"]["1"]["not_mergeable"] == ["replica-3"]
            and m["fleet"]["versions"]["1"]["distribution"]["rows"] == len(fleet.served),
            20, "the live-captured reference listed apart",
        )  # fmt: skip
        versions = monitoring["fleet"]["versions"]["1"]
        assert versions["reference"]["replicas"] == ["replica-0", "replica-1", "replica-2"]
        assert monitoring["fleet"]["complete"] is True
        fourth.kill()
        monitoring = wait_for(
            lambda: page(a), lambda m: m["fleet"]["missing"] == ["replica-3"], 20, "missing"
        )
        assert monitoring["fleet"]["complete"] is False
        assert status(a)["fleet"]["missing"] == ["replica-3"]
        with chromium(a) as browser:
            browser.wait_for_selector("#fleet-state:has-text('incomplete')", timeout=15_000)
            assert "no recent figures from replica-3" in browser.inner_text("#fleet-state")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_gate_counts_are_every_replicas_labels_and_none_while_one_is_missing(
    tmp_path: Path,
) -> None:
    fleets = []
    for index, name in enumerate(("a", "b", "c")):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        tally = OutcomeTally()
        tally.record_labels("credit", "2", 5 + index, 10, experiment=False)  # a: 5/10, b: 6/10, c: 7/10
        tally.record_labels("credit", "1", 8, 10, experiment=False)
        tally.record_paired("credit", "1", "2", 8, 5 + index, 10)
        monitoring = FleetMonitoring(
            coordinator=coordinator, monitor=Monitor(), tally=tally, replica_id=name,
            config_for=lambda model: MonitorConfig(),
        )  # fmt: skip
        await monitoring.publish()
        await coordinator.put_snapshot("replicas", name, {"models": {}}, ttl_s=30)
        fleets.append((coordinator, monitoring))
    leader = fleets[0][1]
    since = time.time() - 60
    assert leader.labelled_since("credit", "2", since) == (5, 10)  # before reading the others
    await leader.refresh()
    assert leader.labelled_since("credit", "2", since) == (18, 30)
    assert leader.paired_since("credit", "1", "2", since) == (24, 18, 30)
    assert leader.labelled_since("credit", "2", time.time() + 60) == (0, 0)  # labelled before `since`
    # A replica that serves but published nothing: no counts at all, so the accuracy gate holds.
    await fleets[0][0].put_snapshot("replicas", "d", {"models": {}}, ttl_s=30)
    await leader.refresh()
    assert leader.missing() == ["d"]
    assert leader.labelled_since("credit", "2", since) == (0, 0)
    assert leader.paired_since("credit", "1", "2", since) == (0, 0, 0)
    (correct, samples), (base_correct, base_samples) = (
        leader.labelled_since("credit", version, since) for version in ("2", "1")
    )
    evidence = OutcomeEvidence(
        correct=correct, samples=samples, baseline_correct=base_correct, baseline_samples=base_samples
    )
    gate = GateSpec(name="accuracy", metric="accuracy", mode="relative", min_samples=20)
    verdict = evaluate_gate(
        gate, Stage(name="canary", weight=5), Sample(requests=0), Sample(requests=0), outcomes=evidence
    )
    assert verdict.verdict == INCONCLUSIVE and verdict.detail == "candidate has 0 of 20 labelled rows"
    for coordinator, _ in fleets:
        await coordinator.aclose()


@pytest.mark.anyio
async def test_who_was_right_where_live_and_shadow_disagreed_adds_up_over_replicas(tmp_path: Path) -> None:
    fleets = []
    for name, truth in (("a", [0, 0, 0]), ("b", [1, 1, 0])):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        tally = OutcomeTally()
        join = LabelJoin(tally)  # live v1 said [1, 1, 0], shadow v2 said [0, 1, 1]: rows 0 and 2 differ
        join.remember(
            "r", Prediction(model="credit", version="1", kind=ACCURACY, values=np.asarray([1, 1, 0]))
        )
        join.add_shadow("r", "2", np.asarray([0, 1, 1]))
        join.resolve("r", truth)
        monitoring = FleetMonitoring(
            coordinator=coordinator, monitor=Monitor(), tally=tally, labels=join, replica_id=name,
            config_for=lambda model: MonitorConfig(),
        )  # fmt: skip
        await monitoring.publish()
        fleets.append((coordinator, monitoring))
    await fleets[0][1].refresh()
    (pair,) = fleets[0][1].view("credit")["disagreements"]
    # a: truth [0, 0, 0]: v1 right on row 2, v2 on row 0; b: truth [1, 1, 0]: v1 right on both rows.
    assert (pair["disagreeing_rows"], pair["primary_right"], pair["shadow_right"]) == (4, 3, 1)
    for coordinator, _ in fleets:
        await coordinator.aclose()


@pytest.mark.anyio
async def test_candidate_vs_live_outputs_compare_the_fleets_summed_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    served: dict[str, list[np.ndarray]] = {"1": [], "2": []}
    fleets = []
    for name, shift in (("a", 0.0), ("b", 0.8)):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        monitor = Monitor(clock=lambda: 100.0)
        for version, rows in (("1", 300), ("2", 100)):  # candidate scores higher on b only
            logit = rng.normal(size=rows) + (shift if version == "2" else 0.0)
            score = (1 / (1 + np.exp(-logit))).astype(np.float32)  # as a model outputs them
            monitor.submit("credit", version, {"x": score[:, None]}, {"score": score})
            served[version].append(score)
        monitoring = FleetMonitoring(
            coordinator=coordinator, monitor=monitor, tally=OutcomeTally(), replica_id=name,
            config_for=lambda model: MonitorConfig(),
        )  # fmt: skip
        await monitoring.publish()
        fleets.append((coordinator, monitoring))
    await fleets[0][1].refresh()
    (found,) = fleets[0][1].view("credit", [("1", "2")])["output_shift"]
    live, candidate = (histogram(np.concatenate(served[v]).tolist()) for v in ("1", "2"))
    psi, js = psi_and_js(np.asarray(live, dtype=np.float64), np.asarray(candidate, dtype=np.float64))
    assert (found["version"], found["baseline"], found["samples"], found["reference_samples"]) == (
        "2",
        "1",
        200,
        600,
    )
    assert found["psi"] == pytest.approx(psi, rel=1e-9) and found["js"] == pytest.approx(js, rel=1e-9)
    alone = fleets[0][1].monitor.output_shift("credit", "1", "2")[0]
    assert alone.samples == 100 and alone.psi != pytest.approx(psi)  # a's own windows differ
    for coordinator, _ in fleets:
        await coordinator.aclose()


@pytest.mark.anyio
async def test_an_unreadable_snapshot_is_left_out_its_replica_missing_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = SqliteCoordinator(tmp_path / "state.db")
    await coordinator.open()
    monitoring = FleetMonitoring(
        coordinator=coordinator, monitor=Monitor(), tally=OutcomeTally(), replica_id="a",
        config_for=lambda model: MonitorConfig(),
    )  # fmt: skip
    await coordinator.put_snapshot("monitoring", "x", {"replica": "x", "time": "later", "drift": 7}, ttl_s=30)
    await coordinator.put_snapshot("replicas", "x", {"models": {}}, ttl_s=30)
    with caplog.at_level("WARNING", logger="modelserve.monitoring"):
        for _ in range(3):
            await monitoring.refresh()
    assert monitoring.remote == {} and monitoring.missing() == ["x"]
    assert monitoring.view("credit")["complete"] is False
    assert [r.getMessage() for r in caplog.records].count(
        "replica x: monitoring snapshot not readable, left out (it counts as missing)"
    ) == 1
    await coordinator.aclose()


#: A gate that passes on any accuracy once it has 40 labelled candidate rows; stages that never end.
GATE_PLAN = {
    "name": "fleet-accuracy",
    "interval_s": 0.3,
    "window_s": 600.0,
    "gates": [
        {"name": "accuracy", "metric": "accuracy", "mode": "absolute", "threshold": 0.05, "min_samples": 40}
    ],
    "stages": [
        {"name": "canary", "weight": 50, "min_duration_s": 3600, "min_samples": 1, "max_duration_s": 3600}
    ],
}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_accuracy_gate_decides_on_every_replicas_labels_and_holds_when_one_is_killed(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        coordinator = f"sqlite://{tmp_path / 'coordinator.db'}"
    else:
        coordinator = request.getfixturevalue("redis_url").removesuffix("/0") + "/4"
        import redis

        redis.Redis.from_url(coordinator).flushdb()
    repo = credit_repo(tmp_path, "min_samples = 100\n")
    with serve_fleet(
        repo, tmp_path, coordinator, args=["--admin-token", TOKEN, "--leader-lease", "2"]
    ) as three:
        leader = wait_for(lambda: next((p for p in three if status_of(p.url).get("rollout_leader")), None),
                          lambda found: found is not None, 30, "a rollout leader")  # fmt: skip
        rollout = {"version": "2", "plan": GATE_PLAN}
        started = httpx.post(
            f"{three[0].url}/admin/models/credit/rollout", json=rollout, headers=AUTH, timeout=60
        )
        assert started.status_code == 200, started.text
        wait_for(
            lambda: rollout_of(leader.url),
            lambda r: (r["rollout"] or {}).get("state") == "running",
            30,
            "running",
        )
        for process in three:  # every replica routes half the keys to the candidate
            wait_for(
                lambda u=process.url: status_of(u)["policy"]["canary_weight"], lambda w: w == 50, 30, "canary"
            )
        # 40 requests per replica, each labelled on the next replica: about 20 candidate rows each.
        served: list[tuple[str, str, int]] = []  # (request id, version, truth)
        with httpx.Client(timeout=30) as client:
            for r, process in enumerate(three):
                for row in range(40 * r, 40 * r + 40):
                    *_, version = infer(client, process.url, ROWS[row], f"g-{row}", key=f"u{row}")
                    served.append((f"g-{row}", version, TRUTH[row]))
        per_replica = [sum(v == "2" for _, v, _ in served[40 * r : 40 * r + 40]) for r in range(3)]
        candidate_rows = sum(per_replica)
        assert max(per_replica) < 40 <= candidate_rows  # no replica alone has enough
        for r in range(3):
            labels = [{"request_id": rid, "label": t} for rid, _, t in served[40 * r : 40 * r + 40]]
            assert post_labels(three[(r + 1) % 3].url, labels)["accepted"] == 40
        passed = wait_for(
            lambda: accuracy_gate(leader.url), lambda g: g is not None and g["verdict"] == "pass", 30, "pass"
        )
        assert max(per_replica) < 40 <= passed["samples"] <= candidate_rows  # more than one replica's labels
        # A replica that stops publishing: the gate reads no labels at all and holds.
        victim = next(p for p in three if p is not leader)
        victim.kill()
        held = wait_for(
            lambda: accuracy_gate(leader.url), lambda g: g["verdict"] == "inconclusive", 30, "held"
        )
        assert held["samples"] == 0 and held["detail"] == "candidate has 0 of 40 labelled rows"
        assert rollout_of(leader.url)["rollout"]["state"] == "running"
        assert status_of(leader.url)["monitoring"]["fleet"]["missing"] == [victim.env["POD_NAME"]]  # type: ignore[index]


def status_of(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/admin/models/credit", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def rollout_of(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/admin/models/credit/rollout", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def accuracy_gate(base: str) -> dict[str, Any] | None:
    """The accuracy gate's latest result among the rollout's events (on the leader)."""
    results = [g for e in rollout_of(base)["events"] for g in e.get("gates", ()) if g["gate"] == "accuracy"]
    return results[-1] if results else None
