"""Scripts through the real router (issue 15 items 5, 7, 8, 9; issue 18 item 2): a policy script on
a huge prompt does not hold others, a crafted script cannot break validation or skip another
user's script, bodies a script did not change pass byte for byte, headers scripts hand over are
validated, and the test context is built like live traffic's."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid

import httpx
import pytest
from aiohttp import web

from tests.conftest import RouterProcess, write_config
from tests.test_hooks import add_script, chat, new_user
from tests.upstream import UpstreamServer

PLAIN_BODY = b"not json <b>at all</b> \xff\xfe"


class PlainUpstream(UpstreamServer):
    """The test upstream, plus model `plain-text` answered as text/plain (not JSON)."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        raw = await request.read()
        if b'"plain-text"' in raw:
            return web.Response(body=PLAIN_BODY, content_type="text/plain", headers={"X-Up": "1"})
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [], "got": len(raw)})


@pytest.fixture(scope="module")
def upstream():
    server = PlainUpstream(name="plain", models=["m", "plain-text"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def router(tmp_path_factory, upstream):
    data = tmp_path_factory.mktemp("script-hardening")
    config = write_config(data / "config.yaml", {"plain": {"url": upstream.base_url}})
    process = RouterProcess(data, {"SCRIPT_TIMEOUT_MS": "200", "SCRIPT_MAX_MEMORY_MB": "64"}, config).start()
    yield process
    process.stop()


def logged_status(router, request_id: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in router.request_logs() if r["request_id"] == request_id]
        if rows:
            return rows[0]["status_code"]
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} was not logged")


# --- item 8: bodies a script did not change pass untouched ------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "function onRequest(c) { return c; }",
        "function onResponse(c) { return c; }",
        "function onResponse(c) { c.response.headers['X-Seen'] = typeof c.response.body; return c; }",
    ],
    ids=["no-op-onRequest", "no-op-onResponse", "onResponse-headers-only"],
)
def test_non_json_upstream_body_passes_byte_for_byte(router, code):
    user_id, key = new_user(router)
    add_script(router, code, user_id=user_id)
    response = chat(router, key, model="plain-text")
    assert response.status_code == 200
    assert response.content == PLAIN_BODY
    content_types = [v for k, v in response.headers.multi_items() if k.lower() == "content-type"]
    assert len(content_types) == 1 and content_types[0].startswith("text/plain"), content_types
    if "X-Seen" in code:
        assert response.headers["x-seen"] == "string"  # the script saw the text, not null


def test_changed_json_body_is_json_with_one_content_type(router):
    user_id, key = new_user(router)
    add_script(router, "function onResponse(c) { c.response.body = {replaced: true}; return c; }", user_id=user_id)
    response = chat(router, key, model="plain-text")
    assert response.json() == {"replaced": True}
    content_types = [v for k, v in response.headers.multi_items() if k.lower() == "content-type"]
    assert content_types == ["application/json"]


def test_unchanged_request_body_goes_upstream_as_the_client_sent_it(router, upstream):
    user_id, key = new_user(router)
    add_script(router, "function onRequest(c) { c.request.headers['X-A'] = '1'; return c; }", user_id=user_id)
    raw = b'{"model": "m",\n "messages": [{"role": "user", "content": "caf\\u00e9"}],  "n": 1.0}'
    response = httpx.post(
        f"{router.v1}/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["got"] == len(raw)


# --- item 6: a deleted script's context is freed at once ---------------------------------------------


def test_deleted_scripts_free_their_contexts(router):
    from pathlib import Path

    user_id, key = new_user(router)

    def tree(pid: int) -> list[int]:  # the server may run its app in worker processes
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid] + [p for child in children for p in tree(int(child))]

    def threads() -> set[str]:  # thread ids, not a count: threads of earlier work (validation's throw-away
        # contexts, closed in the background) may still be ending meanwhile
        return {f"{pid}/{tid.name}" for pid in tree(router.proc.pid) for tid in Path(f"/proc/{pid}/task").iterdir()}

    ids = [add_script(router, "function onRequest(c) { return c; }", user_id=user_id) for _ in range(6)]
    before = threads()
    assert chat(router, key).status_code == 200  # six contexts, each with its own V8 thread
    started = threads() - before  # their isolate threads (and any worker thread the calls started)
    assert len(started) >= 6, (len(before), started)
    for script_id in ids:
        router.gql_ok("mutation($id: ID!) { deleteScript(id: $id) }", {"id": script_id})
    deadline = time.monotonic() + 10
    while len(started & threads()) > len(started) - 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(started & threads()) <= len(started) - 6, (started, threads())  # the six isolate threads ended


# --- item 9: headers scripts hand over ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("function onRequest(c) { c.request.headers['Authorization:Bearer'] = 'x'; return c; }", "header name"),
        ("function onRequest(c) { c.request.headers['Host:'] = 'evil'; return c; }", "header name"),
        ("function onRequest(c) { c.request.headers['X-Team '] = 'r'; return c; }", "header name"),
        ("function onRequest(c) { c.request.headers['X-A'] = 'a\\r\\nX-Injected: 1'; return c; }", "invalid value"),
        ("function onRequest(c) { c.request.headers['X-A'] = 'a\\u0000b'; return c; }", "invalid value"),
        ("function onRequest(c) { c.request.headers['Authorization'] = 'Bearer stolen'; return c; }", "controlled"),
        ("function onResponse(c) { c.response.headers['Set-Cookie'] = 'sid=1'; return c; }", "controlled"),
        ("function onResponse(c) { c.response.headers['X-B'] = 'x\\ny'; return c; }", "invalid value"),
        (
            "function onRequest(c) { c.response = {status: 403, headers: {'Set-Cookie': 'a=b'}, body: 'no'};"
            " return c; }",
            "controlled",
        ),
        ("function onRequest(c) { c.response = {status: 42, body: 'no'}; return c; }", "status"),
    ],
    ids=[
        "colon-name",
        "host-colon",
        "trailing-space",
        "crlf-value",
        "nul-value",
        "authorization",
        "set-cookie",
        "lf-response-value",
        "early-set-cookie",
        "early-bad-status",
    ],
)
def test_bad_headers_from_scripts_are_a_script_error_and_logged_so(router, upstream, code, needle):
    user_id, key = new_user(router)
    add_script(router, code, user_id=user_id)
    before = len(upstream.requests_to("/v1/chat/completions"))
    response = chat(router, key)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "script_error" and needle in error["message"], error
    if "onRequest" in code:
        assert len(upstream.requests_to("/v1/chat/completions")) == before  # nothing went upstream
    assert logged_status(router, response.headers["x-request-id"]) == 500


def test_good_headers_still_pass(router, upstream):
    user_id, key = new_user(router)
    add_script(
        router,
        "function onRequest(c) { c.request.headers['X-Team'] = 'r'; c.request.headers['X-N'] = 5; return c; }"
        "\nfunction onResponse(c) { c.response.headers['X-Out'] = 'ok'; c.response.headers['x-up'] = null;"
        " return c; }",
        user_id=user_id,
    )
    response = chat(router, key, model="plain-text")
    assert response.status_code == 200 and response.headers["x-out"] == "ok" and "x-up" not in response.headers
    sent = upstream.requests_to("/v1/chat/completions")[-1].headers
    assert sent["X-Team"] == "r" and sent["X-N"] == "5"


# --- item 7: a crafted script cannot break validation or skip another user's script ----------------


def test_crafted_script_breaks_neither_validation_nor_other_users_scripts(router):
    crafter_id, _ = new_user(router)
    victim_id, victim_key = new_user(router)
    crafted = (
        '})()); Object.defineProperty(JSON, \'stringify\', {value: () => \'["undefined","function","undefined"]\'});'
        " JSON.stringify((function(){"
    )
    router.graphql(  # saved or refused: either way it must not touch anyone else
        "mutation($in: CreateScriptInput!) { createScript(input: $in) { id } }",
        {"in": {"name": f"c-{uuid.uuid4().hex[:6]}", "type": "PER_USER", "userId": crafter_id, "code": crafted}},
    )
    add_script(
        router,
        "function onRequest(c) { c.response = {status: 403, body: {error: {message: 'blocked'}}}; return c; }",
        user_id=victim_id,
    )
    assert chat(router, victim_key).status_code == 403
    broken = router.graphql(
        "mutation($in: CreateScriptInput!) { createScript(input: $in) { id } }",
        {"in": {"name": "nohook", "type": "PER_USER", "userId": victim_id, "code": "function helper() {}"}},
    )
    assert broken["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- item 5: a policy script on a huge prompt holds nobody else ------------------------------------

README_POLICY = """
function onRequest(context) {
  const text = JSON.stringify(context.request.body.messages ?? context.request.body.prompt ?? '');
  if (/project-x/i.test(text)) {
    context.response = {status: 403, body: {error: {message: 'Not allowed here', type: 'policy', code: 'blocked'}}};
  }
  return context;
}"""


def latencies_while(router, key: str, attack, samples: int) -> list[float]:
    """Latencies of another user's small requests while `attack()` runs in a loop."""
    stop = threading.Event()
    under_way = threading.Event()  # one attack went through: the next ones follow back to back

    def loop() -> None:
        try:
            while not stop.is_set():
                attack()
                under_way.set()
        finally:
            under_way.set()

    attacker = threading.Thread(target=loop)
    attacker.start()
    assert under_way.wait(60), "the attack did not start"
    durations = []
    try:
        for _ in range(samples):
            started = time.monotonic()
            assert chat(router, key).status_code == 200
            durations.append(time.monotonic() - started)
    finally:
        stop.set()
        attacker.join(60)
    return durations


def test_policy_script_on_a_30_mb_prompt_does_not_hold_other_users(router):
    policed_id, policed_key = new_user(router)
    _, plain_key = new_user(router)
    _, other_key = new_user(router)
    add_script(router, README_POLICY, user_id=policed_id)
    huge = {"model": "m", "messages": [{"role": "user", "content": "lorem ipsum " * (30 * 1024 * 1024 // 12)}]}
    body = json.dumps(huge).encode()  # once: encoding 30 MB per request took the test's CPU and GIL meanwhile

    def send(key: str) -> httpx.Response:
        return httpx.post(
            f"{router.v1}/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=60,
        )

    # The baseline: the same huge requests from a user without a script (reading and parsing them costs the
    # router the same either way); the script may add only a little on top. Measured in alternating rounds
    # (plain, scripted, scripted, plain) so that a change in the machine's load hits both alike.
    durations: dict[str, list[float]] = {plain_key: [], policed_key: []}
    for attacker in (plain_key, policed_key, policed_key, plain_key):
        durations[attacker] += latencies_while(router, other_key, lambda k=attacker: send(k), 12)
    baseline, with_script = (statistics.quantiles(durations[k], n=10)[-1] for k in (plain_key, policed_key))
    assert with_script < baseline * 1.5 + 0.15, (baseline, with_script)  # 90th percentiles: robust to a hiccup
    response = send(policed_key)
    # The limits held: the script needs more than 64 MB for a 30 MB prompt (it runs with 256 MB), and which
    # limit stops it first depends on how fast the context gets into V8 (JSON.parse: memory, ~150 ms in).
    message = response.json()["error"]["message"]
    assert response.status_code == 500 and ("exceeded 200 ms" in message or "out of memory" in message), message


# --- issue 18 item 2: one context builder for live traffic and for testScript -----------------------


def test_test_context_is_shaped_like_live_traffic(router, upstream):
    user_id, key = new_user(router)
    recorder = """
function onRequest(c) {
  c.request.headers['X-Shape'] = JSON.stringify([Object.keys(c), Object.keys(c.request), Object.keys(c.user),
                                                 Object.keys(c.backend ?? {}), typeof c.request.body.model]);
  return c;
}"""
    script_id = add_script(router, recorder, user_id=user_id)
    live = chat(router, key)
    assert live.status_code == 200
    live_shape = upstream.requests_to("/v1/chat/completions")[-1].headers["X-Shape"]
    logged_status(router, live.headers["x-request-id"])  # rows are written in batches
    test = router.gql_ok(
        "query($id: ID!) { scriptTestContext(scriptId: $id) }",
        {"id": script_id},
    )["scriptTestContext"]
    assert test["user"]["id"] == int(user_id) and test["backend"]["name"] == "plain"
    assert test["request"]["method"] == "POST" and test["request"]["path"] == "/v1/chat/completions"
    assert test["request"]["body"]["model"] == "m" and test["request"]["isStream"] is False
    assert test["response"] is None
    result = router.gql_ok(
        "mutation($id: ID!) { testScript(id: $id, input: {hook: ON_REQUEST}) { ok error context } }",
        {"id": script_id},
    )["testScript"]
    assert result["ok"], result
    assert result["context"]["request"]["headers"]["X-Shape"] == live_shape
    readme = "function onRequest(context) { const body = context.request.body;"
    readme += " body.max_tokens = Math.min(body.max_tokens ?? 1024, 1024); return context; }"
    readme_id = add_script(router, readme, user_id=user_id)
    result = router.gql_ok(
        "mutation($id: ID!) { testScript(id: $id, input: {hook: ON_REQUEST}) { ok error context } }",
        {"id": readme_id},
    )["testScript"]
    assert result["ok"] and result["context"]["request"]["body"]["max_tokens"] == 1024
    for hook in ("ON_RESPONSE", "ON_STREAM_CHUNK"):
        shaped = router.gql_ok(
            "query($id: ID!, $h: ScriptHook!) { scriptTestContext(scriptId: $id, hook: $h) }",
            {"id": script_id, "h": hook},
        )["scriptTestContext"]
        assert shaped["response"]["status"] == 200
        assert (shaped.get("chunk") is not None) == (hook == "ON_STREAM_CHUNK")
