"""The status page behind a read token, in a real headless Chromium: a sign-in form, the token kept in
the tab's sessionStorage and sent as an Authorization header, never in a URL."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from playwright.sync_api import Request, sync_playwright

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

EXAMPLES = Path(__file__).parent.parent / "examples"
CHROMIUM = "/usr/bin/chromium"
READ = "read-secret-123"


def test_the_page_signs_in_with_a_form_and_keeps_the_token_out_of_urls(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    config = ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="admin", read_token=READ)
    with testing.serve(ModelServe(config).app()) as running:
        page_response = httpx.get(f"{running.url}/ui/", timeout=30)
        assert page_response.status_code == 200  # the page itself is static: it holds no data
        assert page_response.headers["referrer-policy"] == "no-referrer"
        assert "script-src 'self'" in page_response.headers["content-security-policy"]
        assert httpx.get(f"{running.url}/ui/api/models", timeout=30).status_code == 401

        requests: list[Request] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("request", lambda request: requests.append(request))
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{running.url}/ui")
                page.wait_for_selector("#signin:not([hidden])", timeout=15_000)
                assert "needs a read token" in page.inner_text("#signin-message")
                assert page.locator("#main").is_hidden()

                page.fill("#token-input", "wrong")
                page.click("#signin button[type=submit]")
                page.wait_for_selector("#signin-message:has-text('not accepted')", timeout=15_000)

                page.fill("#token-input", READ)
                page.click("#signin button[type=submit]")
                page.wait_for_selector("#live-version:has-text('v1')", timeout=15_000)
                assert page.locator("#signin").is_hidden() and page.locator("#signout").is_visible()
                assert page.evaluate("sessionStorage.getItem('modelserve.readToken')") == READ
                assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []

                page.reload()  # the same tab keeps it: no second sign-in
                page.wait_for_selector("#live-version:has-text('v1')", timeout=15_000)
                assert page.locator("#signin").is_hidden()

                page.click("#signout")
                page.wait_for_selector("#signin:not([hidden])", timeout=15_000)
                assert page.evaluate("sessionStorage.getItem('modelserve.readToken')") is None

                # An old link with the token in the address: stripped at once, not used.
                other = browser.new_page()
                other.on("request", lambda request: requests.append(request))
                other.goto(f"{running.url}/ui/?token={READ}#credit")
                other.wait_for_selector("#signin:not([hidden])", timeout=15_000)
                assert READ not in other.url and other.url.endswith("/ui/#credit")
                assert "not used" in other.inner_text("#signin-message")
                assert other.evaluate("sessionStorage.getItem('modelserve.readToken')") is None
                other.screenshot(path=str(tmp_path / "signin.png"))
            finally:
                browser.close()
        assert not [e for e in errors if "Content Security Policy" in e]

    api = [r for r in requests if "/ui/api/" in r.url]
    signed = [r for r in api if r.headers.get("authorization") == f"Bearer {READ}"]
    assert len(signed) >= 2  # the listing and the model's snapshot, after signing in and after the reload
    # Only the old link's own navigation had it; the page's files and data requests never did.
    assert [r.url for r in requests if READ in r.url] == [f"{running.url}/ui/?token={READ}"]
    assert all("referer" not in r.headers or READ not in r.headers["referer"] for r in requests)
