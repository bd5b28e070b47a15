"""End-to-end test of the admin dashboard in a real headless browser.

Debian's `chromium` package driven by Playwright for Python (`executable_path`, never a browser
download). The router and an OpenAI-compatible upstream are the real ones from conftest.py.

Screenshots of the main pages go to test-artifacts/screenshots/ (not committed). With
UPDATE_DOC_SCREENSHOTS=1 the ones used by the README are also copied to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.clients import openai_client
from tests.conftest import ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
DOC_PAGES = (
    "live.png",
    "usage.png",
    "scripts-syntax-error.png",
    "logs.png",
    "request-detail.png",
    "users-new.png",
    "backends.png",
    "backends-test-connection.png",
    "prices.png",
)
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FEED_DEADLINE_S = 2.0
# The dashboard subscribes to usageTicks every 2 s (the Live page's charts, live.js TICK_S) and
# every 5 s (the Usage page's live hour view, usage.js TICK_S, which folds a tick in only once a
# first one has anchored it: 5 to 15 s of waiting per check). In these tests both subscriptions
# ask for 1 s intervals instead (both views fold each tick by the tick's own intervalS, so the
# same code runs); what each page asked for is kept in `window.__ticksAsked`, by operation name.
LIVE_TICK_S = 2
HOUR_TICK_S = 5
ONE_SECOND_TICKS = """
(() => {
  const send = WebSocket.prototype.send;
  window.__ticksAsked = { Ticks: [], UsageLive: [] };
  WebSocket.prototype.send = function (data) {
    const operation = typeof data === "string" && /subscription (Ticks|UsageLive)\\b/.exec(data);
    if (operation) {
      const message = JSON.parse(data);
      if (message.type === "subscribe") {
        window.__ticksAsked[operation[1]].push(message.payload.variables.s);
        message.payload.variables.s = 1;
        data = JSON.stringify(message);
      }
    }
    return send.call(this, data);
  };
})();
"""


def live_ticks_asked(page) -> set[int]:
    """The intervals the Live page's charts asked usageTicks for (before ONE_SECOND_TICKS)."""
    return set(page.evaluate("window.__ticksAsked.Ticks"))


def hour_ticks_asked(page) -> set[int]:
    """The intervals the Usage page's hour view asked usageTicks for (before ONE_SECOND_TICKS)."""
    return set(page.evaluate("window.__ticksAsked.UsageLive"))


def _require_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("dashboard browser test: needs the playwright package (pip install -e '.[test]' installs it)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"dashboard browser test: needs Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium; "
            "or set CHROMIUM_PATH to a Chromium or Chrome binary)"
        )
    return sync_playwright


# --- the static routes, without a browser -------------------------------------------------------


@pytest.fixture
def static_client():
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from router.admin_ui import admin_routes

    with TestClient(Starlette(routes=admin_routes())) as client:
        yield client


def test_admin_assets_are_served_with_types_and_cache_headers(static_client):
    index = static_client.get("/admin")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert '<script src="/admin/app.js" type="module">' in index.text
    again = static_client.get("/admin", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304

    app_js = static_client.get("/admin/app.js")
    assert app_js.headers["content-type"].startswith("text/javascript")
    assert app_js.headers["x-content-type-options"] == "nosniff"
    assert static_client.get("/admin/style.css").headers["content-type"].startswith("text/css")

    vendor = static_client.get("/admin/vendor/codemirror-5.65.21/codemirror.js", headers={"Accept-Encoding": "gzip"})
    assert vendor.status_code == 200
    assert vendor.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert vendor.headers["content-encoding"] == "gzip"
    assert "CodeMirror" in vendor.text  # httpx decompresses

    assert static_client.get("/admin/", follow_redirects=False).headers["location"] == "/admin"


@pytest.mark.parametrize(
    "path", ["/admin/nope.js", "/admin/../admin_ui.py", "/admin/%2e%2e/admin_ui.py", "/admin/views", "/admin/.hidden"]
)
def test_admin_refuses_missing_and_outside_files(static_client, path):
    assert static_client.get(path).status_code == 404


def test_every_module_the_app_imports_is_served(static_client):
    """No asset is fetched from elsewhere: every import and every <script>/<link> is under /admin."""
    import re

    root = ROOT / "router" / "static" / "admin"
    index = (root / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', index)
    assert refs and all(ref.startswith("/admin/") for ref in refs)
    for ref in refs:
        assert static_client.get(ref).status_code == 200, ref
    for module in [*root.glob("*.js"), *root.glob("views/*.js")]:
        for target in re.findall(r'^import .* from "([^"]+)";', module.read_text(), re.M):
            assert (module.parent / target).resolve().is_file(), f"{module.name} imports {target}"
    assert "http://" not in index and "https://" not in index


# --- in a browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (each test gets its own context: its own storage and pages)."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser, router_factory):
    router = router_factory()
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=router.url)
    context.add_init_script(ONE_SECOND_TICKS)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=router.url)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: msg.type == "error" and problems.append(f"console error: {msg.text}"))
    pg.router_process = router
    pg.problems = problems
    yield pg
    context.close()


def shot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelectorAll('#toasts .toast').forEach((t) => t.remove())")
    page.screenshot(path=str(SHOTS / name), full_page=full_page)
    if os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1" and name in DOC_PAGES:
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHOTS / name, DOC_SHOTS / name)


def nav(page, view: str) -> None:
    page.click(f"a.nav-link[data-view={view}]")
    page.wait_for_selector(f".page[data-page={view}]")


def serves_test_model(v1: str, key: str) -> bool:
    """The router knows `key` and lists a backend's test-model to it."""
    r = httpx.get(f"{v1}/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return r.status_code == 200 and any(m["id"].endswith("test-model") for m in r.json()["data"])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_labels_do_not_overlap(page, within: str) -> None:
    """No two x-axis labels of a chart under `within` touch (the live chart's first labels did)."""
    overlaps = page.evaluate(
        """(within) => {
          const out = [];
          document.querySelectorAll(`${within} svg.usage-chart`).forEach((svg) => {
            const labels = [...svg.querySelectorAll("text.xlabel")];
            const boxes = labels.map((t) => [t.getBoundingClientRect(), t.textContent]);
            for (let i = 1; i < boxes.length; i += 1) {
              if (boxes[i][0].left < boxes[i - 1][0].right) out.push(`${boxes[i - 1][1]} / ${boxes[i][1]}`);
            }
            const frame = svg.getBoundingClientRect();
            for (const [box, text] of boxes) {
              if (box.left < frame.left - 1 || box.right > frame.right + 1) out.push(`${text} outside`);
            }
          });
          return out;
        }""",
        within,
    )
    assert not overlaps, overlaps


@pytest.mark.browser
def test_dashboard_end_to_end(page, upstream):
    from playwright.sync_api import expect

    router = page.router_process

    # --- assets are the router's own ---
    index = httpx.get(f"{router.url}/admin")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert httpx.get(f"{router.url}/admin/app.js").headers["content-type"].startswith("text/javascript")

    # --- sign in: a wrong password says so, the right one gets in and the session survives a reload ---
    page.goto("/admin")
    page.fill("#password", "not-the-password")
    page.click("form.login-card button[type=submit]")
    expect(page.locator(".login-message")).to_contain_text("Wrong password")
    shot(page, "sign-in.png")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    expect(page.locator("nav.nav")).to_be_visible()
    page.reload()
    expect(page.locator("nav.nav")).to_be_visible()
    assert page.evaluate("localStorage.getItem('llm-router.admin-session')")

    # --- a backend through the UI ---
    nav(page, "backends")
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "e2e-upstream")
    page.fill(".dialog input[name=baseUrl]", upstream.base_url)
    page.fill(".dialog input[name=apiKey]", "upstream-secret")
    page.click(".dialog button[type=submit]")
    row = page.locator("tr[data-backend-name=e2e-upstream]")
    expect(row).to_be_visible()
    expect(row).to_contain_text("set")  # the key is stored, never shown
    assert "upstream-secret" not in page.content()

    # --- a user through the UI: the key is shown once, with a copy button ---
    nav(page, "users")
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "e2e-user")
    page.fill(".dialog input[name=email]", "e2e@example.com")
    page.click(".dialog button[type=submit]")
    dialog = page.locator(".dialog")
    expect(dialog).to_contain_text("you will not see it again")
    api_key = page.input_value(".dialog input.secret")
    assert len(api_key) > 20
    page.click(".dialog button.copy")
    expect(dialog.locator(".copy-status")).to_contain_text("Copied")
    shot(page, "users-new-key.png")
    page.click(".dialog .actions button")
    expect(page.locator("tr[data-user-name=e2e-user]")).to_be_visible()
    shot(page, "users.png")

    # --- a permission through the UI ---
    nav(page, "permissions")
    box = page.locator("tr[data-user-name=e2e-user] input.perm").first
    box.check()
    expect(page.locator("#toasts")).to_contain_text("e2e-user may now use e2e-upstream")
    shot(page, "permissions.png")
    perms = router.gql_ok("{ users { name permissions { backend { name } } } }")["users"]
    assert {"e2e-upstream"} == {
        p["backend"]["name"] for u in perms if u["name"] == "e2e-user" for p in u["permissions"]
    }

    # The router must have picked up the new user and the backend's models before /v1 is called.
    wait_until(
        lambda: serves_test_model(router.v1, api_key), 20, "the new backend's models to be served to the new key"
    )
    nav(page, "backends")
    expect(page.locator("tr[data-backend-name=e2e-upstream]")).to_contain_text("test-model", timeout=15_000)
    shot(page, "backends.png")

    # --- live feed: a /v1 request through the openai SDK appears within 2 s ---
    nav(page, "live")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("#connection")).to_have_text("● Live")
    live_charts = page.locator("#live-chart")
    wait_until(lambda: int(live_charts.get_attribute("data-ticks") or 0) >= 1, 10, "the first usage tick")
    tokens_panel = page.locator("#live-tokens")
    expect(tokens_panel.locator(".readout")).to_have_text("0 tok/s")  # no chat completion yet
    client = openai_client(router, api_key, timeout=30)
    reply = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi from e2e"}])
    assert reply.choices[0].message.content
    finished = time.monotonic()
    feed_row = page.locator("#feed tr[data-user=e2e-user]").first
    feed_row.wait_for(state="visible", timeout=FEED_DEADLINE_S * 1000)
    assert time.monotonic() - finished <= FEED_DEADLINE_S + 0.25
    expect(feed_row).to_contain_text("e2e-upstream")
    expect(feed_row).to_contain_text("200")
    # a few more, one streamed, for the screenshots and the charts
    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    for _ in stream:
        pass
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "and one more"}])
    expect(page.locator("#feed tr[data-user=e2e-user]")).to_have_count(3)
    # the live charts (usageTicks) count them within a few ticks: the readouts change, every chart draws
    wait_until(lambda: int(live_charts.get_attribute("data-requests") or 0) >= 3, 10, "the live charts to count 3")
    wait_until(lambda: float(tokens_panel.get_attribute("data-value") or 0) > 0, 10, "tokens/s above 0")
    assert page.locator("#live-tokens .readout").text_content() != "0 tok/s"
    expect(page.locator("#live-requests svg rect.bar").first).to_be_visible()
    expect(page.locator("#live-tokens svg rect.bar").first).to_be_visible()
    assert page.locator("#live-latency svg path.line, #live-latency svg circle.dot").count() >= 1
    for metric in ("requests", "tokens", "errors", "latency", "spend"):
        expect(page.locator(f"#live-{metric} svg.usage-chart")).to_be_visible()
    assert_labels_do_not_overlap(page, "#live-chart")
    # filters
    page.fill("#filter-model", "no-such-model")
    expect(page.locator("#feed tr[data-user=e2e-user]")).to_have_count(0)
    page.fill("#filter-model", "")
    expect(page.locator("#feed tr[data-user=e2e-user]")).to_have_count(3)
    # the screenshot shows traffic in the readouts too: two more requests, shot while their tick is the latest
    page.locator("#filter-model").blur()
    for _ in range(2):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "for the picture"}])
    expect(page.locator("#feed tr[data-user=e2e-user]")).to_have_count(5)
    wait_until(lambda: float(tokens_panel.get_attribute("data-value") or 0) > 0, 10, "tokens/s above 0 for the shot")
    shot(page, "live.png")
    assert live_ticks_asked(page) == {LIVE_TICK_S}

    # --- usage chart renders with data, and the last hour updates by itself ---
    nav(page, "usage")
    chart = page.locator("figure[data-metric=requests] svg.usage-chart")
    expect(chart).to_be_visible()
    expect(page.locator("#usage-connection")).to_have_attribute("data-state", "live")

    def chart_total():
        total = float(chart.get_attribute("data-total") or 0)
        if total < 3:
            page.click("#refresh-usage")
        return total >= 3

    wait_until(chart_total, 15, "the usage chart to show the requests", interval=0.5)
    assert page.locator("figure[data-metric=requests] rect.bar").count() >= 1
    expect(page.locator(".legend")).to_contain_text("e2e-user")
    expect(page.locator("#backend-metrics")).to_contain_text("e2e-upstream")
    expect(page.locator(".cards")).to_contain_text("Spend")
    expect(page.locator("figure[data-metric=spend] svg.usage-chart")).to_be_visible()
    expect(page.locator(".totals-table thead")).to_contain_text("Spend")
    # two more requests: the hour view folds them in from usageTicks, without a refresh
    wait_until(lambda: int(page.locator(".charts").get_attribute("data-ticks") or 0) >= 1, 15, "a folded tick")
    before = float(chart.get_attribute("data-total") or 0)
    for _ in range(2):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "while watching"}])
    wait_until(lambda: float(chart.get_attribute("data-total") or 0) >= before + 2, 15, "the hour view to count 2 more")
    assert hour_ticks_asked(page) == {HOUR_TICK_S}
    page.click(".segmented button[data-value=MODEL]")
    expect(page.locator(".legend")).to_contain_text("test-model")
    page.click(".segmented button[data-value=USER]")
    expect(page.locator(".legend")).to_contain_text("e2e-user")
    assert_labels_do_not_overlap(page, ".charts")
    shot(page, "usage.png")

    # --- a script with a syntax error is refused at the right line ---
    nav(page, "scripts")
    page.click("#new-script")
    page.fill("#script-name", "broken-script")
    page.select_option("#script-type", "PER_USER")
    page.select_option("#script-user", label="e2e-user")
    broken = "export function onRequest(context) {\n  const x = 1;\n  return context +* 2;\n}\n"
    page.evaluate("code => document.querySelector('.script-form .CodeMirror').CodeMirror.setValue(code)", broken)
    page.click("#save-script")
    error = page.locator(".script-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-line", "3")
    expect(error).to_contain_text("Line 3")
    expect(page.locator(".script-form .cm-error-line .CodeMirror-linenumber")).to_have_text("3")
    shot(page, "scripts-syntax-error.png")
    assert router.gql_ok("{ scripts { name } }")["scripts"] == []

    # fixed, it saves, and the test panel runs it
    fixed = (
        "export function onRequest(context) {\n"
        "  console.log('model is', context.request.model);\n"
        "  context.request.temperature = 0;\n"
        "  return context;\n"
        "}\n"
    )
    page.evaluate("code => document.querySelector('.script-form .CodeMirror').CodeMirror.setValue(code)", fixed)
    page.click("#save-script")
    expect(page.locator(".script-list")).to_contain_text("broken-script")
    expect(error).to_be_hidden()
    page.click("#run-test")
    result = page.locator("#test-result")
    expect(result).to_contain_text("Returned context")
    expect(result).to_contain_text("model is")
    expect(result.locator("pre.json")).to_contain_text('"temperature": 0')
    shot(page, "scripts.png")

    # --- a phone-sized screen ---
    page.set_viewport_size({"width": 390, "height": 844})
    page.click(".menu-toggle")
    nav(page, "live")
    expect(page.locator("#feed tr[data-user=e2e-user]")).to_have_count(7)
    shot(page, "phone-live.png")
    page.click(".menu-toggle")
    nav(page, "usage")
    expect(page.locator("figure[data-metric=requests] svg.usage-chart")).to_be_visible()
    shot(page, "phone-usage.png")

    # --- sign out ---
    page.set_viewport_size({"width": 1280, "height": 860})
    page.click("button.signout")
    expect(page.locator("#password")).to_be_visible()
    assert page.evaluate("localStorage.getItem('llm-router.admin-session')") is None
    page.reload()
    expect(page.locator("#password")).to_be_visible()

    assert not page.problems, page.problems


@pytest.mark.browser
def test_dashboard_reports_api_errors_in_words(page):
    """A session the server no longer accepts sends the admin back to sign-in, with a reason."""
    page.goto("/admin")
    page.evaluate("localStorage.setItem('llm-router.admin-session', JSON.stringify({token: 'bogus', expiresAt: null}))")
    page.goto("/admin#/users")
    expect_text = page.locator(".login-message")
    from playwright.sync_api import expect

    expect(expect_text).to_contain_text("Sign in again")
    # console errors from the refused request are expected here


@pytest.mark.browser
def test_live_feed_reconnects_after_router_restart(browser, router_factory, upstream, tmp_path):
    """Live traffic and the Usage hour (in a second tab) keep working across a router restart, and say so."""
    from playwright.sync_api import expect

    from tests.conftest import write_config

    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, env={"ADMIN_SESSION_SECRET": "e2e-session-secret", "SHUTDOWN_GRACE_S": "2"})
    api_key = router.add_user("reconnecting-user")
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=router.url)
    context.clock.install()  # the pages' clock runs on, and the test jumps the 10 s before "disconnected"
    context.add_init_script(ONE_SECOND_TICKS)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto("/admin#/live")
        page.fill("#password", ADMIN_PASSWORD)
        page.click("form.login-card button[type=submit]")
        connection = page.locator("#connection")
        expect(connection).to_have_attribute("data-state", "live")
        charts = page.locator("#live-chart")
        wait_until(lambda: charts.get_attribute("data-last-at"), 10, "the first usage tick")
        usage = context.new_page()  # signed in too (the session is in localStorage)
        usage.set_default_timeout(15_000)
        usage.goto("/admin#/usage")
        usage_connection = usage.locator("#usage-connection")
        expect(usage_connection).to_have_attribute("data-state", "live")
        usage_requests = usage.locator("figure[data-metric=requests] svg.usage-chart")
        expect(usage_requests).to_have_attribute("data-total", "0")

        router.stop()
        expect(connection).to_have_attribute("data-state", "reconnecting")
        expect(connection).to_have_text("● Reconnecting…")
        expect(usage_connection).to_have_attribute("data-state", "reconnecting")
        last_before = int(charts.get_attribute("data-last-at") or 0)
        # down for longer (RECONNECTING_FOR_MS in livestatus.js): it says since when
        context.clock.fast_forward(10_000)
        expect(connection).to_have_attribute("data-state", "disconnected", timeout=5_000)
        expect(connection).to_contain_text("Disconnected since")
        router.start()
        expect(connection).to_have_attribute("data-state", "live", timeout=30_000)
        expect(connection).to_have_text("● Live")
        expect(usage_connection).to_have_attribute("data-state", "live", timeout=30_000)
        expect(page.locator("nav.nav")).to_be_visible()  # still signed in
        # the charts resume: new ticks, the time it was down is a gap, and traffic shows again
        wait_until(lambda: int(charts.get_attribute("data-last-at") or 0) > last_before, 15, "ticks after the restart")

        client = openai_client(router, api_key, timeout=30)
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "after restart"}])
        expect(page.locator("#feed tr[data-user=reconnecting-user]")).to_have_count(1, timeout=5_000)
        requests = page.locator("#live-requests")
        wait_until(
            lambda: float(requests.get_attribute("data-value") or 0) > 0, 15, "requests/s above 0 after the restart"
        )
        assert page.locator("#live-requests .readout").text_content() != "0 req/s"
        # the Usage hour counts it too, without a refresh (re-anchored after the reconnect, then ticks)
        wait_until(lambda: float(usage_requests.get_attribute("data-total") or 0) >= 1, 20, "the hour to count it")
        assert hour_ticks_asked(usage) == {HOUR_TICK_S}
        assert live_ticks_asked(page) == {LIVE_TICK_S}
    finally:
        context.close()


@pytest.mark.browser
def test_dashboard_manages_users_backends_and_scripts(page, upstream):
    """The other admin actions: edit, (de)activate, regenerate key, all-backends, script activation, deletes."""
    from playwright.sync_api import expect

    router = page.router_process
    page.goto("/admin#/users")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")

    # backend: create, edit weight, disable
    nav(page, "backends")
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "b1")
    page.fill(".dialog input[name=baseUrl]", upstream.base_url)
    page.click(".dialog button[type=submit]")
    row = page.locator("tr[data-backend-name=b1]")
    row.get_by_role("button", name="Edit").click()
    page.fill(".dialog input[name=weight]", "7")
    page.click(".dialog button[type=submit]")
    expect(row.locator("td").nth(4)).to_have_text("7")
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    backend = router.gql_ok("{ backends { name weight isActive } }")["backends"][0]
    assert backend == {"name": "b1", "weight": 7, "isActive": False}

    # user: create, edit, deactivate, regenerate key, all backends
    nav(page, "users")
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "u1")
    page.click(".dialog button[type=submit]")
    first_key = page.input_value(".dialog input.secret")
    page.click(".dialog .actions button")
    row = page.locator("tr[data-user-name=u1]")
    row.get_by_role("button", name="Edit").click()
    page.fill(".dialog input[name=email]", "u1@example.com")
    page.click(".dialog button[type=submit]")
    expect(row).to_contain_text("u1@example.com")
    row.get_by_role("button", name="Deactivate").click()
    expect(row).to_contain_text("inactive")
    row.get_by_role("button", name="Activate").click()
    expect(row).not_to_contain_text("inactive")
    row.get_by_role("button", name="New key").click()
    page.locator(".dialog").get_by_role("button", name="Regenerate key").click()
    expect(page.locator(".dialog")).to_contain_text("you will not see it again")
    second_key = page.input_value(".dialog input.secret")
    assert second_key != first_key
    page.click(".dialog .actions button")
    page.fill("input.search", "nobody-matches")
    expect(page.locator("tr[data-user-name=u1]")).to_have_count(0)
    page.fill("input.search", "u1@")
    expect(page.locator("tr[data-user-name=u1]")).to_have_count(1)

    nav(page, "permissions")
    page.locator("tr[data-user-name=u1] .switch").click()
    expect(page.locator("tr[data-user-name=u1] input.perm").first).to_be_disabled()
    user = router.gql_ok("{ users { name email isActive allBackends } }")["users"][0]
    assert user == {"name": "u1", "email": "u1@example.com", "isActive": True, "allBackends": True}

    # script: create active=false, activate, deactivate, delete
    nav(page, "scripts")
    page.fill("#script-name", "s1")
    page.select_option("#script-type", "PER_BACKEND")
    page.select_option("#script-backend", label="b1")
    page.click("#save-script")
    expect(page.locator(".script-list")).to_contain_text("s1")
    page.click("#toggle-script")
    expect(page.locator("#toggle-script")).to_have_text("Deactivate")
    assert router.gql_ok("{ scripts { name isActive backend { name } } }")["scripts"] == [
        {"name": "s1", "isActive": True, "backend": {"name": "b1"}}
    ]
    page.click("#toggle-script")
    expect(page.locator("#toggle-script")).to_have_text("Activate")
    page.click("#delete-script")
    page.locator(".dialog").get_by_role("button", name="Delete script").click()
    expect(page.locator(".script-list")).to_contain_text("No scripts yet")

    # deletes ask first
    nav(page, "users")
    page.locator("tr[data-user-name=u1]").get_by_role("button", name="Delete").click()
    page.locator(".dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("tr[data-user-name=u1]")).to_have_count(1)
    page.locator("tr[data-user-name=u1]").get_by_role("button", name="Delete").click()
    page.locator(".dialog").get_by_role("button", name="Delete user").click()
    expect(page.locator("tr[data-user-name=u1]")).to_have_count(0)
    nav(page, "backends")
    page.locator("tr[data-backend-name=b1]").get_by_role("button", name="Delete").click()
    page.locator(".dialog").get_by_role("button", name="Delete backend").click()
    expect(page.locator("tr[data-backend-name=b1]")).to_have_count(0)
    data = router.gql_ok("{ users { id } backends { id } scripts { id } }")
    assert data == {"users": [], "backends": [], "scripts": []}

    # an API refusal is shown in words: a duplicate backend name
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "dup")
    page.fill(".dialog input[name=baseUrl]", upstream.base_url)
    page.click(".dialog button[type=submit]")
    expect(page.locator("tr[data-backend-name=dup]")).to_have_count(1)
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "dup")
    page.fill(".dialog input[name=baseUrl]", upstream.base_url)
    page.click(".dialog button[type=submit]")
    expect(page.locator(".dialog .alert.error")).to_be_visible()
    assert page.locator(".dialog .alert.error").inner_text().strip()
    assert not page.problems, page.problems


@pytest.mark.browser
def test_new_user_dialog_picks_backends_and_says_what_the_key_can_do(page, upstream):
    """Issue 18 item 5: backends are picked in the dialog; the note never claims access that is not there."""
    from playwright.sync_api import expect

    router = page.router_process
    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "pick-a", "baseUrl": upstream.base_url}},
    )
    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "pick-b", "baseUrl": upstream.base_url}},
    )
    page.goto("/admin#/users")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=users]")

    # no backend picked: the dialog says the key cannot call anything yet
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "nobackend")
    labels = page.locator(".dialog .check")
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    tops = [b["y"] for b in boxes if b]
    assert len(tops) == len(set(tops)), "checkboxes share a line"
    page.click(".dialog button[type=submit]")
    note = page.locator(".dialog p").first
    expect(note).to_contain_text("no backend yet")
    assert "can now call" not in note.inner_text()
    page.click(".dialog .actions button")

    # one backend picked: granted, and named in the note
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "picker")
    page.locator("#backend-picker label", has_text="pick-b").locator("input").check()
    shot(page, "users-new.png")
    page.click(".dialog button[type=submit]")
    expect(page.locator(".dialog p").first).to_contain_text("can now call /v1 with this key, on: pick-b")
    page.click(".dialog .actions button")
    expect(page.locator("tr[data-user-name=picker] td.backends")).to_have_text("pick-b")

    # all backends: the picker is disabled and the note says every backend
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "everything")
    page.check(".dialog input[name=allBackends]")
    expect(page.locator("#backend-picker input").first).to_be_disabled()
    page.click(".dialog button[type=submit]")
    expect(page.locator(".dialog p").first).to_contain_text("on every backend")
    page.click(".dialog .actions button")

    users = {
        u["name"]: u for u in router.gql_ok("{ users { name allBackends permissions { backend { name } } } }")["users"]
    }
    assert users["nobackend"]["permissions"] == [] and not users["nobackend"]["allBackends"]
    assert [p["backend"]["name"] for p in users["picker"]["permissions"]] == ["pick-b"]
    assert users["everything"]["allBackends"]
    assert not page.problems, page.problems


@pytest.mark.browser
def test_logs_page_filters_pages_exports_and_opens_request_detail(page, upstream, tmp_path):
    """Issue 18 item 4: server-side filters, cursor paging, CSV/JSONL export, the request detail view."""
    from playwright.sync_api import expect

    router = page.router_process
    backend_id = router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "logs-upstream", "baseUrl": upstream.base_url}},
    )["createBackend"]["id"]
    keys = {}
    for name in ("alice", "bob"):
        created = router.gql_ok(
            "mutation($i: CreateUserInput!) { createUser(input: $i) { apiKey user { id } } }",
            {"i": {"name": name, "allBackends": True}},
        )["createUser"]
        keys[name] = created["apiKey"]
    assert backend_id

    def served(key: str) -> bool:
        r = httpx.get(f"{router.v1}/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return r.status_code == 200 and bool(r.json()["data"])

    wait_until(lambda: served(keys["bob"]), 20, "the new users and backend to be served")
    for i in range(5):
        openai_client(router, keys["alice"]).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": f"alice {i}"}]
        )
    openai_client(router, keys["bob"]).embeddings.create(model="test-model", input="bob")
    wait_until(
        lambda: router.gql_ok("{ requestLogs { totalCount } }")["requestLogs"]["totalCount"] >= 6, 15, "6 log rows"
    )

    page.goto("/admin#/logs")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=logs]")
    expect(page.locator("#logs-info")).to_have_attribute("data-total", "6")

    # server-side filter by user, then by endpoint
    page.select_option("#logs-user", label="alice")
    expect(page.locator("#logs-info")).to_have_attribute("data-total", "5")
    expect(page.locator("#logs tr[data-user=bob]")).to_have_count(0)
    page.select_option("#logs-user", "")
    page.fill("#logs-endpoint", "/v1/embeddings")
    page.click("#logs-apply")
    expect(page.locator("#logs-info")).to_have_attribute("data-total", "1")
    expect(page.locator("#logs tr[data-user=bob]")).to_have_count(1)
    page.fill("#logs-endpoint", "")
    # a date range in the future matches nothing
    page.fill("#logs-since", "2099-01-01T00:00")
    page.click("#logs-apply")
    expect(page.locator("#logs-info")).to_have_attribute("data-total", "0")
    page.fill("#logs-since", "")
    page.click("#logs-apply")

    # cursor paging: 25 per page is the smallest choice; ask the server for pages of 2 through the select's value
    page.evaluate("() => { const s = document.querySelector('#logs-page-size'); s.add(new Option('2 / page', '2')); }")
    page.select_option("#logs-page-size", "2")
    expect(page.locator("#logs tr.clickable")).to_have_count(2)
    expect(page.locator("#logs-info")).to_contain_text("1 to 2 of 6")
    first_ids = page.locator("#logs tr.clickable").evaluate_all("rows => rows.map(r => r.dataset.logId)")
    page.click("#logs-next")
    expect(page.locator("#logs-info")).to_contain_text("3 to 4 of 6")
    second_ids = page.locator("#logs tr.clickable").evaluate_all("rows => rows.map(r => r.dataset.logId)")
    assert not set(first_ids) & set(second_ids)
    page.click("#logs-next")
    expect(page.locator("#logs-info")).to_contain_text("5 to 6 of 6")
    expect(page.locator("#logs-next")).to_be_disabled()
    page.click("#logs-prev")
    expect(page.locator("#logs-info")).to_contain_text("3 to 4 of 6")

    # export of the current filter (all pages), CSV and JSONL
    page.select_option("#logs-user", label="alice")
    with page.expect_download() as dl:
        page.click("#export-csv")
    csv_text = Path(dl.value.path()).read_text()
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("id,requestId,createdAt") and len(lines) == 6
    with page.expect_download() as dl:
        page.click("#export-jsonl")
    import json

    records = [json.loads(line) for line in Path(dl.value.path()).read_text().splitlines()]
    assert len(records) == 5 and {r["userName"] for r in records} == {"alice"}
    assert all("cachedTokens" in r and "attemptErrors" in r for r in records)

    # the detail view of a row
    page.select_option("#logs-page-size", "50")
    page.locator("#logs tr.clickable").first.click()
    detail = page.locator("#request-detail[data-loaded=true]")
    expect(detail).to_be_visible()
    expect(detail.locator("dd[data-field=user]")).to_have_text("alice")
    expect(detail.locator("dd[data-field=backend]")).to_have_text("logs-upstream")
    expect(detail.locator("dd[data-field=endpoint]")).to_have_text("/v1/chat/completions")
    expect(detail.locator("dd[data-field=attempts]")).to_have_text("1")
    expect(detail.locator("dd[data-field=cachedTokens]")).to_be_visible()
    expect(detail.locator("dd[data-field=reasoningTokens]")).to_be_visible()
    expect(detail.locator("dd[data-field=costUsd]")).to_contain_text("no matching price")
    shot(page, "request-detail.png")
    page.keyboard.press("Escape")
    page.select_option("#logs-user", "")
    shot(page, "logs.png")

    # and from Live traffic
    nav(page, "live")
    page.locator("#feed tr[data-user=bob]").first.click()
    expect(page.locator("#request-detail[data-loaded=true] dd[data-field=endpoint]")).to_have_text("/v1/embeddings")
    page.keyboard.press("Escape")
    assert not page.problems, page.problems


@pytest.fixture
def fast_health_page(browser, router_factory):
    """A signed-in page on a router whose active health checks run every second."""
    router = router_factory(env={"HEALTH_CHECK_INTERVAL_S": "1", "HEALTH_CHECK_TIMEOUT_S": "1"})
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=router.url)
    context.clock.install()  # runs on; the test jumps to the page's next 10 s refresh
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.router_process = router
    pg.problems = problems
    pg.goto("/admin#/backends")
    pg.fill("#password", ADMIN_PASSWORD)
    pg.click("form.login-card button[type=submit]")
    pg.wait_for_selector(".page[data-page=backends]")
    yield pg
    context.close()


@pytest.mark.browser
def test_backends_page_health_test_connection_apis_limits_and_user_spend(fast_health_page, upstream):
    """Health reason and since, Test connection, apis, (de)activate, backend and user limits, spend vs budget."""
    from playwright.sync_api import expect

    from tests.upstream import free_port

    page = fast_health_page
    router = page.router_process

    # a live backend, created with two APIs and limits in the form
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "alive")
    page.fill(".dialog input[name=baseUrl]", upstream.base_url)
    for api in ("COMPLETIONS", "RESPONSES", "MESSAGES"):
        page.uncheck(f"#backend-apis input[value={api}]")
    page.fill(".dialog input[name=rpm]", "60")
    page.fill(".dialog input[name=maxConcurrent]", "4")
    page.click(".dialog button[type=submit]")
    alive = page.locator("tr[data-backend-name=alive]")
    expect(alive).to_contain_text("0/60 rpm")
    data = router.gql_ok("{ backends { name apis limits { rpm tpm maxConcurrent } } }")["backends"][0]
    assert data == {
        "name": "alive",
        "apis": ["CHAT_COMPLETIONS", "EMBEDDINGS"],
        "limits": {"rpm": 60, "tpm": None, "maxConcurrent": 4},
    }

    alive.get_by_role("button", name="Test").click()
    result = page.locator("#connection-test")
    expect(result).to_have_attribute("data-ok", "true")
    expect(result.locator("dd.reachable")).to_have_text("yes")
    expect(result.locator("dd.models")).to_contain_text("test-model")
    expect(result.locator("dd.latency")).to_contain_text("ms")
    page.click(".dialog .actions button")

    # a dead one: the test says unreachable, and the health column says why and since when
    page.click("#new-backend")
    page.fill(".dialog input[name=name]", "dead")
    page.fill(".dialog input[name=baseUrl]", f"http://127.0.0.1:{free_port()}/v1")
    page.fill(".dialog textarea[name=modelOverride]", "ghost-model")
    page.click(".dialog button[type=submit]")
    dead = page.locator("tr[data-backend-name=dead]")
    dead.get_by_role("button", name="Test").click()
    expect(result).to_have_attribute("data-reachable", "false")
    expect(result.locator("dd.err-text")).not_to_be_empty()
    shot(page, "backends-test-connection.png")
    page.click(".dialog .actions button")

    # active checks (every second here) turn it unhealthy; the page refreshes health every 10 s (REFRESH_MS)
    def dead_is_unhealthy() -> bool:
        backends = router.gql_ok("{ backends { name healthy } }")["backends"]
        return not next(b["healthy"] for b in backends if b["name"] == "dead")

    wait_until(dead_is_unhealthy, 15, "the router to find the dead backend unhealthy")
    page.clock.fast_forward(10_000)
    expect(dead.locator(".health-reason")).to_be_visible(timeout=5_000)
    expect(dead.locator(".health-since")).to_contain_text("since")
    expect(dead).to_contain_text("unhealthy")
    shot(page, "backends.png")

    # deactivate / activate through their own mutations
    dead.get_by_role("button", name="Disable").click()
    expect(dead).to_contain_text("disabled")
    dead.get_by_role("button", name="Enable").click()
    expect(dead).not_to_contain_text("disabled")

    # a user with a budget: spend against budget in the list
    nav(page, "users")
    page.click("#new-user")
    page.fill(".dialog input[name=name]", "budgeted")
    page.fill(".dialog input[name=budgetUsd]", "5")
    page.select_option(".dialog select[name=budgetPeriod]", "WEEK")
    page.fill(".dialog input[name=tpm]", "1000")
    page.click(".dialog button[type=submit]")
    page.click(".dialog .actions button")
    row = page.locator("tr[data-user-name=budgeted]")
    expect(row.locator(".spend")).to_contain_text("$0 / $5.00 per week")
    expect(row).to_contain_text("0/1,000 tpm")
    row.get_by_role("button", name="Edit").click()
    expect(page.locator(".dialog input[name=budgetUsd]")).to_have_value("5")
    page.fill(".dialog input[name=budgetUsd]", "")
    page.click(".dialog button[type=submit]")
    expect(row.locator(".spend")).to_contain_text("no budget")
    user = router.gql_ok("{ users { limits { tpm budgetUsd budgetPeriod } } }")["users"][0]
    assert user["limits"] == {"tpm": 1000, "budgetUsd": None, "budgetPeriod": None}
    assert not page.problems, page.problems


@pytest.mark.browser
def test_backends_page_keeps_a_local_change_when_an_earlier_refresh_answers_late(fast_health_page, upstream):
    """The 10 s refresh asked before a Disable and answered after it: its (older) backends must not
    draw the disabled backend as enabled again."""
    from playwright.sync_api import expect

    page = fast_health_page
    page.router_process.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "alive", "baseUrl": upstream.base_url}},
    )
    page.reload()
    alive = page.locator("tr[data-backend-name=alive]")
    expect(alive).not_to_contain_text("disabled")

    held = []

    def hold_the_refresh(route) -> None:
        if not held and "query Backends" in (route.request.post_data or ""):
            held.append((route, route.fetch()))  # the answer as it is now (enabled), given after the Disable
            return
        route.continue_()

    page.route("**/graphql", hold_the_refresh)
    page.clock.fast_forward(10_000)  # the page's quiet refresh (REFRESH_MS)
    for _ in range(100):  # route handlers run while Playwright is called: wait through it
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the refresh was not asked for"
    alive.get_by_role("button", name="Disable").click()
    expect(alive).to_contain_text("disabled")
    route, answer = held[0]
    with page.expect_response(lambda r: r.request == route.request):
        route.fulfill(response=answer)
    page.evaluate("() => new Promise((done) => setTimeout(done, 100))")  # its answer handled
    expect(alive).to_contain_text("disabled", timeout=1)
    assert not page.problems, page.problems


@pytest.mark.browser
def test_prices_page_creates_edits_and_deletes_prices(page, upstream):
    """The Prices page over modelPrices / createModelPrice / updateModelPrice / deleteModelPrice."""
    from playwright.sync_api import expect

    router = page.router_process
    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "priced", "baseUrl": upstream.base_url}},
    )
    page.goto("/admin#/prices")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=prices]")
    expect(page.locator("#prices")).to_contain_text("No prices yet")

    page.click("#new-price")
    page.fill(".dialog input[name=model]", "test-*")
    page.fill(".dialog input[name=inputPerMTok]", "2.5")
    page.fill(".dialog input[name=outputPerMTok]", "10")
    page.fill(".dialog input[name=cachedInputPerMTok]", "1.25")
    page.click(".dialog button[type=submit]")
    row = page.locator("#prices tr[data-model='test-*']")
    expect(row).to_contain_text("all backends")
    expect(row).to_contain_text("$1.25")

    page.click("#new-price")
    page.fill(".dialog input[name=model]", "test-model")
    page.select_option(".dialog select[name=backendId]", label="priced")
    page.fill(".dialog input[name=inputPerMTok]", "1")
    page.fill(".dialog input[name=outputPerMTok]", "2")
    page.click(".dialog button[type=submit]")
    exact = page.locator("#prices tr[data-model=test-model]")
    expect(exact).to_contain_text("priced")
    exact.get_by_role("button", name="Edit").click()
    page.fill(".dialog input[name=outputPerMTok]", "3")
    page.click(".dialog button[type=submit]")
    expect(exact.locator("td").nth(5)).to_have_text("$3")
    shot(page, "prices.png")

    # a bad price is refused in words
    page.click("#new-price")
    page.fill(".dialog input[name=model]", "x")
    page.fill(".dialog input[name=inputPerMTok]", "-1")
    page.fill(".dialog input[name=outputPerMTok]", "1")
    page.evaluate("document.querySelector('.dialog form').noValidate = true")
    page.click(".dialog button[type=submit]")
    expect(page.locator(".dialog .alert.error")).to_be_visible()
    page.keyboard.press("Escape")

    row.get_by_role("button", name="Delete").click()
    page.locator(".dialog").get_by_role("button", name="Delete price").click()
    expect(row).to_have_count(0)
    prices = router.gql_ok("{ modelPrices { model outputPerMTok backend { name } } }")["modelPrices"]
    assert prices == [{"model": "test-model", "outputPerMTok": 3.0, "backend": {"name": "priced"}}]


@pytest.mark.browser
def test_scripts_test_panel_uses_the_live_context_shape(page, upstream):
    """Issue 18 item 2: the template and the Test panel use the context live hooks get."""
    from playwright.sync_api import expect

    router = page.router_process
    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "ctx-upstream", "baseUrl": upstream.base_url}},
    )
    api_key = router.gql_ok(
        "mutation($i: CreateUserInput!) { createUser(input: $i) { apiKey } }",
        {"i": {"name": "ctx-user", "email": "ctx@example.com", "allBackends": True}},
    )["createUser"]["apiKey"]

    def served() -> bool:
        r = httpx.get(f"{router.v1}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
        return r.status_code == 200 and bool(r.json()["data"])

    wait_until(served, 20, "the user and backend to be served")
    openai_client(router, api_key).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "secret prompt"}]
    )
    wait_until(
        lambda: router.gql_ok("{ requestLogs { totalCount } }")["requestLogs"]["totalCount"] >= 1, 15, "a log row"
    )

    page.goto("/admin#/scripts")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=scripts]")
    page.click("#new-script")
    page.fill("#script-name", "template-script")
    page.select_option("#script-type", "PER_USER")
    page.select_option("#script-user", label="ctx-user")
    code = page.evaluate("document.querySelector('.script-form .CodeMirror').CodeMirror.getValue()")
    assert "context.request.body.model" in code and "context.request.model" not in code
    page.click("#run-test")  # saves, loads scriptTestContext, runs testScript
    result = page.locator("#test-result")
    expect(result).to_contain_text("Returned context")
    expect(result.locator(".result-head")).to_contain_text("ok")
    expect(result.locator("pre.logs")).to_contain_text("ctx-user POST /v1/chat/completions model: test-model")
    context = page.evaluate("JSON.parse(document.querySelector('.test-panel .CodeMirror').CodeMirror.getValue())")
    assert set(context) >= {"user", "backend", "request"}
    assert context["user"]["name"] == "ctx-user" and context["user"]["email"] == "ctx@example.com"
    assert context["backend"]["name"] == "ctx-upstream" and "base_url" in context["backend"]
    assert set(context["request"]) >= {"method", "path", "headers", "body", "isStream"}
    assert "secret prompt" not in page.content()
    shot(page, "scripts.png")

    # onResponse: the context now carries a response; the README's example reads the request body
    page.select_option("#test-hook", "ON_RESPONSE")
    expect(page.locator(".test-panel .editor-host")).to_have_attribute("data-source", "live")
    wait_until(
        lambda: (
            "response"
            in page.evaluate("JSON.parse(document.querySelector('.test-panel .CodeMirror').CodeMirror.getValue())")
            and page.evaluate("JSON.parse(document.querySelector('.test-panel .CodeMirror').CodeMirror.getValue())")[
                "response"
            ]
        ),
        5,
        "an onResponse context",
    )
    readme_like = (
        "export function onRequest(context) {\n"
        "  context.request.body.max_tokens = Math.min(context.request.body.max_tokens ?? 512, 512);\n"
        "  return context;\n"
        "}\n"
    )
    page.evaluate("code => document.querySelector('.script-form .CodeMirror').CodeMirror.setValue(code)", readme_like)
    page.select_option("#test-hook", "ON_REQUEST")
    page.click("#run-test")
    expect(result.locator(".result-head")).to_contain_text("ok")
    expect(result.locator("pre.json")).to_contain_text('"max_tokens": 512')
    assert not page.problems, page.problems


@pytest.mark.browser
def test_usage_legend_colours_are_stable_and_no_user_is_not_red(page, upstream):
    """Issue 18 item 12: a group keeps its colour between views; "(no user)" is grey, not an alarm."""
    from playwright.sync_api import expect

    router = page.router_process
    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "colour-upstream", "baseUrl": upstream.base_url}},
    )
    keys = {}
    for name, count in (("busy-user", 3), ("quiet-user", 1)):
        keys[name] = router.gql_ok(
            "mutation($i: CreateUserInput!) { createUser(input: $i) { apiKey } }",
            {"i": {"name": name, "allBackends": True}},
        )["createUser"]["apiKey"]
        wait_until(  # the key is known and the new backend's models are listed: a 200 alone is only the first
            lambda k=keys[name]: serves_test_model(router.v1, k), 20, "the user to be served test-model"
        )
        for _ in range(count):
            openai_client(router, keys[name]).chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}]
            )
    refused = httpx.post(f"{router.v1}/chat/completions", headers={"Authorization": "Bearer sk-wrong"}, json={})
    assert refused.status_code == 401
    wait_until(lambda: router.gql_ok("{ requestLogs { totalCount } }")["requestLogs"]["totalCount"] >= 4, 15, "logs")

    page.goto("/admin#/usage")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=usage]")
    legend = page.locator(".legend")
    expect(legend).to_contain_text("quiet-user")

    def colours() -> dict[str, str]:
        return page.eval_on_selector_all(
            ".legend .legend-item",
            "items => Object.fromEntries(items.map(i => "
            "[i.textContent.trim(), getComputedStyle(i.querySelector('i')).backgroundColor]))",
        )

    before = colours()
    assert before["busy-user"] != before["quiet-user"]
    assert before["(no user)"] == "rgb(148, 163, 184)"  # the refused request, logged without a user
    assert "rgb(220, 38, 38)" not in before.values()
    page.click(".segmented button[data-value=day]")
    page.click(".segmented button[data-value=MODEL]")
    expect(legend).to_contain_text("test-model")
    page.click(".segmented button[data-value=USER]")
    expect(legend).to_contain_text("quiet-user")
    after = colours()
    assert after["busy-user"] == before["busy-user"] and after["quiet-user"] == before["quiet-user"]
    page.reload()
    expect(legend).to_contain_text("quiet-user")
    assert colours()["quiet-user"] == before["quiet-user"]

    # a date range (issue 18 item 4): today has the requests, a day long ago has none
    import datetime as dt

    page.click(".segmented button[data-value=custom]")
    today = dt.date.today().isoformat()
    page.fill("#usage-from", today)
    page.fill("#usage-until", today)
    page.click("#refresh-usage")
    chart = page.locator("figure[data-metric=requests] svg.usage-chart")
    wait_until(lambda: float(chart.get_attribute("data-total") or 0) >= 5, 10, "today's requests in the chart")
    page.fill("#usage-from", "2020-01-01")
    page.fill("#usage-until", "2020-01-02")
    page.click("#refresh-usage")
    expect(page.locator(".legend")).to_contain_text("No requests between those days")
    page.fill("#usage-until", "2019-12-31")
    page.click("#refresh-usage")
    expect(page.locator(".alert.error")).to_contain_text("on or before")
    assert not page.problems, page.problems


def user_of_a_dead_backend(router, name: str) -> str:
    """A backend "down" serving `ghost-model` where nothing listens, and the API key of a new user `name`."""
    from tests.upstream import free_port

    router.gql_ok(
        "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id } }",
        {"i": {"name": "down", "baseUrl": f"http://127.0.0.1:{free_port()}/v1", "modelOverride": ["ghost-model"]}},
    )
    return router.gql_ok(
        "mutation($i: CreateUserInput!) { createUser(input: $i) { apiKey } }",
        {"i": {"name": name, "allBackends": True}},
    )["createUser"]["apiKey"]


@pytest.mark.browser
def test_request_detail_shows_failed_attempts_and_their_errors(page):
    """A request whose upstream is down: the detail view lists why each attempt failed."""
    from playwright.sync_api import expect

    router = page.router_process
    api_key = user_of_a_dead_backend(router, "unlucky")

    def failed_upstream() -> bool:
        r = httpx.post(
            f"{router.v1}/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={"model": "ghost-model", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        return r.status_code >= 500

    wait_until(failed_upstream, 20, "a request that reached the dead backend")
    logs = lambda: router.gql_ok(  # noqa: E731
        '{ requestLogs(filter: {model: "ghost-model"}) { items { id attemptErrors } } }'
    )["requestLogs"]["items"]
    wait_until(lambda: any(item["attemptErrors"] for item in logs()), 15, "a log row with attempt errors")

    page.goto("/admin#/logs")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=logs]")
    page.fill("#logs-model", "ghost-model")
    page.click("#logs-apply")
    page.locator("#logs tr.clickable").first.click()
    detail = page.locator("#request-detail[data-loaded=true]")
    expect(detail.locator("ol.attempt-errors li").first).to_contain_text("down")
    expect(detail.locator("dd[data-field=error]")).not_to_be_empty()
    expect(detail.locator("dd[data-field=status] .badge")).to_have_class(re.compile(r"\bbad\b"))
    assert not page.problems, page.problems


@pytest.mark.browser
def test_logs_page_shows_the_latest_query_when_an_earlier_answer_comes_late(page):
    """Changing a filter while the previous page is still loading: the older answer, arriving last,
    must not replace the newer one (it did, and a CI run saw 6 rows where 2 per page were asked)."""
    from playwright.sync_api import expect

    router = page.router_process
    api_key = user_of_a_dead_backend(router, "paged")
    for _ in range(3):  # three log rows, whatever their status
        httpx.post(
            f"{router.v1}/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={"model": "ghost-model", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
    total = lambda: router.gql_ok("{ requestLogs { totalCount } }")["requestLogs"]["totalCount"]  # noqa: E731
    wait_until(lambda: total() >= 3, 15, "3 log rows")

    page.goto("/admin#/logs")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("form.login-card button[type=submit]")
    page.wait_for_selector(".page[data-page=logs]")
    expect(page.locator("#logs tr.clickable")).to_have_count(3)

    held = []

    def hold_the_next_full_page(route) -> None:
        if not held and '"first":50' in (route.request.post_data or ""):
            held.append(route)  # answered below, after the newer query's answer
            return
        route.continue_()

    page.route("**/graphql", hold_the_next_full_page)
    page.click("#logs-apply")  # 50 per page: held
    wait_until(lambda: bool(held), 10, "the first query to be held")
    page.evaluate("() => { const s = document.querySelector('#logs-page-size'); s.add(new Option('2 / page', '2')); }")
    page.select_option("#logs-page-size", "2")
    expect(page.locator("#logs tr.clickable")).to_have_count(2)
    with page.expect_response(lambda r: r.request == held[0].request):
        held[0].continue_()
    page.evaluate("() => new Promise((done) => setTimeout(done, 100))")  # its answer handled
    assert page.locator("#logs tr.clickable").count() == 2
    expect(page.locator("#logs-info")).to_contain_text("1 to 2 of 3")
