"""The status page in a real headless Chromium: live version, split and non-empty charts are shown."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

EXAMPLES = Path(__file__).parent.parent / "examples"
CHROMIUM = "/usr/bin/chromium"  # the Debian package; `.ci/run` installs it


def test_status_page_shows_the_live_version_the_split_and_charts(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    assert modelserve.services.monitoring is not None
    modelserve.services.monitoring.history_interval_s = 0.2
    rows = [
        json.loads(line)["input"] for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
    ]
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        auth = {"authorization": "Bearer t"}
        assert (
            client.post("/admin/models/credit/stage", json={"version": "2"}, headers=auth).status_code == 200
        )
        assert (
            client.post("/admin/models/credit/canary", json={"percent": 30}, headers=auth).status_code == 200
        )

        def traffic(count: int) -> None:
            for i in range(count):
                body = {
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": rows[i % 300]}]
                }
                response = client.post(
                    "/v2/models/credit/infer", json=body, headers={"x-user-id": f"user{i}"}
                )
                assert response.status_code == 200

        traffic(200)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"{running.url}/ui")
                page.wait_for_selector("#live-version:has-text('v1')", timeout=15_000)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # history needs two points per version: keep traffic on
                    traffic(20)
                    if page.locator("figure[data-metric='requests_per_s'] canvas").count():
                        break
                page.wait_for_selector("figure[data-metric='requests_per_s'] canvas", timeout=10_000)
                page.wait_for_timeout(2500)  # one more poll, so every chart has its latest data
                assert page.inner_text("#live-version").strip() == "v1"
                assert page.inner_text("#candidate-version").strip() == "v2"
                split = page.inner_text("#splitbar")
                assert "v1 70%" in split and "v2 30%" in split
                points = int(page.get_attribute("figure[data-metric='requests_per_s']", "data-points") or 0)
                assert points >= 2
                for metric in ("requests_per_s", "p50_s", "p99_s", "prediction_mean"):
                    chart = page.locator(f"figure[data-metric='{metric}']")
                    assert chart.locator("canvas").count() == 1, metric
                    assert "v1" in chart.inner_text() and "v2" in chart.inner_text(), metric
                assert page.locator("#distribution-svg rect").count() > 0
                assert page.locator("#versions tbody tr").count() == 2
                live_row = page.locator("#versions tbody tr").first.locator("td")
                assert float(live_row.nth(6).inner_text()) > 0  # p50 ms of v1
                page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            finally:
                browser.close()
    assert (tmp_path / "ui.png").stat().st_size > 10_000


def test_past_max_rate_the_page_and_metrics_say_what_share_is_monitored(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    config = repo / "credit" / "config.toml"
    config.write_text(config.read_text() + "\n[monitoring]\nmax_rate = 20\n")
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    rows = [
        json.loads(line)["input"] for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
    ]
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < 2.5:  # well over 20 a second, for more than a second
            body = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": rows[sent % 300]}]
            }
            assert client.post("/v2/models/credit/infer", json=body).status_code == 200
            sent += 1
        status = client.get("/admin/models/credit", headers={"authorization": "Bearer t"}).json()
        sampling = status["monitoring"]["sampling"]
        assert sampling["every"] > 1 and 0 < sampling["skipped"] < sent
        primary = status["monitoring"]["versions"]["1"]["predictions"]["primary"]["rows"]
        assert primary + sampling["skipped"] == sent
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        (sample,) = families["modelserve_monitoring_sampled_out"].samples
        assert sample.labels == {"model": "credit"} and sample.value == sampling["skipped"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"{running.url}/ui")
                note = page.wait_for_selector("#sampling-note", timeout=15_000)
                assert note is not None and f"1 in {sampling['every']} monitored" in note.inner_text()
            finally:
                browser.close()
