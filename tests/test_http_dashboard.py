"""The web dashboard at ``/`` in a real browser: Debian's headless Chromium, driven by
Playwright's Python package (its own browser download is not used: ``executable_path`` is
/usr/bin/chromium, with the flags tests/support/browser.py uses), against a real daemon
with real paho-mqtt clients.

The page asks for an API key, shows the node, sees a client connect and the message rate
rise, filters the clients table, kicks a client (the client is disconnected), streams a
client's packets in the trace view, and a screenshot of it is saved under the test's
``tmp_path`` (its path is printed). With ``[http] allow_anonymous`` it needs no key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from support import WAIT, uid
from support.browser import CHROMIUM
from support.clients import Clients
from support.httpapi import HttpApi, ctl_json, http_port
from support.process import checked_broker

pytest_plugins = ["support.fixtures"]

CONFIG = """
[http]
enabled = true
port = 0
{extra}

[listeners.default]
bind = "127.0.0.1"
port = 0
"""

#: The flags support/browser.py starts Chromium with (Playwright adds --headless itself).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Milliseconds Playwright waits for one thing on the page (the page polls every second).
PAGE_WAIT = int(4 * WAIT * 1000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Browser, port: int) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(PAGE_WAIT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def rate(page: Page, name: str) -> float | None:
    text = page.text_content(f"#rate-{name}") or ""
    return float(text) if re.fullmatch(r"[0-9.]+", text) else None


def test_dashboard_with_an_api_key(browser: Browser, tmp_path: Path) -> None:
    with checked_broker(CONFIG.format(extra="")) as broker:
        key = ctl_json(broker, "apikey", "add", "dashboard")["key"]
        port = http_port(broker)
        clients = Clients(broker)
        page = open_page(browser, port)
        try:
            # no key yet: the page asks for one; a wrong one is refused with the reason
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#login-key", "mqttd_wrong")
            page.click("#login-form button")
            page.wait_for_function(
                "document.getElementById('login-error').textContent.includes('unknown')")
            assert page.evaluate("sessionStorage.getItem('mqttd.apikey')") is None
            page.fill("#login-key", key)
            page.click("#login-form button")
            page.wait_for_selector("#main:not([hidden])")
            page.wait_for_function("document.getElementById('conn-state').textContent "
                                   "=== 'live'")
            assert page.evaluate("sessionStorage.getItem('mqttd.apikey')") == key
            assert "started" in (page.text_content("#status-list") or "")

            # a client connects: the clients table shows it
            cid, other = uid("dash-"), uid("other-")
            pub = clients(cid, username="dashboard-user")
            clients(other)
            page.wait_for_selector(f"button.kick[data-clientid='{cid}']")
            row = page.text_content(f"tr:has(button.kick[data-clientid='{cid}'])") or ""
            assert "dashboard-user" in row
            # the search filters by client id prefix
            page.fill("#client-search", "dash-")
            page.wait_for_selector(f"button.kick[data-clientid='{other}']", state="detached")
            assert page.is_visible(f"button.kick[data-clientid='{cid}']")

            # the message rate rises while the client publishes
            page.wait_for_function("/^[0-9.]+$/.test(document.getElementById("
                                   "'rate-received').textContent)")
            before = rate(page, "received")
            assert before is not None
            for _ in range(200):
                for i in range(50):
                    pub.c.publish("dash/load", str(i).encode(), 0)
                now = rate(page, "received")
                if now is not None and now > before and now > 0:
                    break
                page.wait_for_timeout(100)
            else:
                raise AssertionError("the page never showed the message rate rise")
            # the chart has drawn something: some canvas pixels are not blank
            painted = page.evaluate("""() => {
                const c = document.getElementById('chart-messages');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                return n; }""")
            assert painted > 100
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"dashboard screenshot: {shot}")

            # kick through the page: the client is disconnected and leaves the table
            page.click(f"button.kick[data-clientid='{cid}']")
            pub.wait_disconnected()
            page.wait_for_selector(f"button.kick[data-clientid='{cid}']", state="detached")
            assert cid not in {c["clientid"] for c in HttpApi(broker, key).get(
                "/api/v1/clients")}
            # the connection chart counts the disconnect (one second's sample shows it)
            page.wait_for_function("state.series.disconnects.some((v) => v > 0)")

            # the other tabs render their listings
            sub = clients(uid("subber-"))
            sub.subscribe("dash/sub/#", 1)
            sub.publish("dash/retained", b"kept", 1, retain=True)
            for tab, text in (("subscriptions", "dash/sub/#"), ("topics", "dash/sub/#"),
                              ("retained", "dash/retained")):
                page.click(f"#tabs button[data-tab='{tab}']")
                page.wait_for_selector(f"#{tab}-table td:text-is('{text}')")

            # the trace view streams a client's packets live, from its CONNECT on
            traced = uid("traced-")
            page.click("#tabs button[data-tab='trace']")
            page.fill("#trace-client", traced)
            page.click("#trace-start")
            page.wait_for_function("document.getElementById('trace-state').textContent"
                                   ".includes('not connected')")
            t = clients(traced)
            t.publish("dash/traced", b"seen-in-the-browser", 1)
            page.wait_for_function("document.getElementById('trace-log').textContent"
                                   ".includes('seen-in-the-browser')")
            log = page.text_content("#trace-log") or ""
            assert "RECV CONNECT" in log and "SEND CONNACK" in log, log
            # the page still polls: the node's figures follow (other, subber, traced)
            page.wait_for_function("document.getElementById('connections-count')"
                                   ".textContent === '3'")
            shot2 = tmp_path / "dashboard-trace.png"
            page.screenshot(path=str(shot2), full_page=True)
            print(f"dashboard trace screenshot: {shot2}")
            page.click("#trace-stop")
            api = HttpApi(broker, key)
            for _ in range(100):  # the stream's end is noticed within a second or so
                if not api.get("/api/v1/trace"):
                    break
                page.wait_for_timeout(100)
            else:
                raise AssertionError("the trace outlived the page's stream")
            errors: Any = page.errors  # type: ignore[attr-defined]
            assert not errors, errors
        finally:
            page.close()
            clients.close_all()


def test_dashboard_anonymous_when_allowed(browser: Browser) -> None:
    with checked_broker(CONFIG.format(extra="allow_anonymous = true")) as broker:
        page = open_page(browser, http_port(broker))
        try:
            page.wait_for_function("document.getElementById('conn-state').textContent "
                                   "=== 'live'")
            assert page.is_hidden("#login") and page.is_hidden("#logout")
            assert not page.errors  # type: ignore[attr-defined]
        finally:
            page.close()


def test_page_is_served_without_credentials_and_fetches_nothing_from_elsewhere() -> None:
    """The page's files are public (they hold no data); the API behind them is not. The
    files name no other host: no CDN, no fonts, nothing fetched from the internet."""
    from mqttd.http.server import STATIC

    names = sorted(p.name for p in STATIC.iterdir())
    assert names == ["app.js", "index.html", "style.css"]
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path
    with checked_broker(CONFIG.format(extra="")) as broker:
        anon = HttpApi(broker)
        for path, ctype in (("/", "text/html"), ("/static/app.js", "javascript"),
                            ("/static/style.css", "text/css")):
            r = anon.call("GET", path)
            assert r.status == 200 and ctype in r.headers["Content-Type"], (path, r.status)
        assert anon.call("GET", "/api/v1/status").status == 401
        assert anon.call("GET", "/static/nothing.js").status == 404
