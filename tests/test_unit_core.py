"""Unit tests of the router's pure decisions, and of upstream HTTP with respx."""

from __future__ import annotations

import httpx
import pytest
import respx

from router.auth import AdminTokens, api_key_prefix, bearer_token, generate_api_key, hash_api_key
from router.catalog import BackendEntry, Snapshot, UserEntry, model_matches_filter, resolve_models, split_alias
from router.config import ConfigError, load_config_file, load_settings, settings_from_json, settings_to_json
from router.errors import ApiError
from router.model_lists import ModelDirectory
from router.protocols import ADAPTERS, DROP, Usage, parse_usage
from router.proxy import parse_payload
from router.routing import HealthTracker, WeightedRoundRobin, candidate_backends, order_least_busy
from router.upstream import HttpxUpstream, SSESplitter, sse_data
from router.urls import allowed_proxy_url
from router.usage import new_log_id


def backend(id_: int, name: str = "", weight: int = 1, active: bool = True, override=None) -> BackendEntry:
    return BackendEntry(id_, name or f"b{id_}", f"http://b{id_}/v1", None, None, override, None, weight, active)


def user(all_backends: bool = False, permitted=()) -> UserEntry:
    return UserEntry(1, "u", None, True, all_backends, frozenset(permitted))


# --- model lists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "model_filter", "expected"),
    [
        ("llama-3-70b", None, True),
        ("llama-3-70b", "", True),
        ("llama-3-70b", "llama", True),
        ("llama-3-70b", "LLAMA 70b", True),
        ("llama-3-70b", "llama 8b", False),
        ("meta/llama-3-70b-instruct", "llama*70b", True),
        ("llama-3-8b", "llama*70b", False),
        ("gpt-4o", "gpt-4*", True),
        ("a.b", "a.b", True),
        ("axb", "a.b", False),
    ],
)
def test_model_filter(model, model_filter, expected):
    assert model_matches_filter(model, model_filter) is expected


def test_resolve_models_override_filter_append():
    upstream = ["a-1", "a-2", "b-1"]
    assert resolve_models(upstream, "a", None, None) == ("a-1", "a-2")
    assert resolve_models(upstream, "a", None, ["b-1", "x", "a-1"]) == ("a-1", "a-2", "b-1", "x")
    assert resolve_models(upstream, "a", ["fixed"], ["x"]) == ("fixed", "x")  # override: upstream ignored
    assert resolve_models(None, None, None, ["x"]) == ("x",)


def test_split_alias():
    assert split_alias("[local]llama-3") == ("local", "llama-3")
    assert split_alias("[http://h:1/v1]m") == ("http://h:1/v1", "m")
    assert split_alias("gpt-4o") == (None, "gpt-4o")


def test_model_directory_fetches_filters_and_keeps_last_good_list():
    async def scenario():
        client = HttpxUpstream(1, 1)
        directory = ModelDirectory(client)
        entry = BackendEntry(7, "up", "http://up.test/v1", "k", "chat", None, ("extra",), 1, True)
        directory._snapshot = Snapshot(backends_by_id={7: entry})
        with respx.mock(using="httpx") as mock:
            route = mock.get("http://up.test/v1/models").mock(
                return_value=httpx.Response(200, json={"data": [{"id": "chat-1"}, {"id": "embed-1"}]})
            )
            assert await directory.refresh_backend(entry)
            assert route.calls.last.request.headers["Authorization"] == "Bearer k"
            assert directory.ordered_models_of(7) == ("chat-1", "extra")
            route.mock(return_value=httpx.Response(500))
            assert not await directory.refresh_backend(entry)
            assert directory.models_of(7) == {"chat-1", "extra"}  # last good list kept
            route.mock(side_effect=httpx.ConnectError("down"))
            assert not await directory.refresh_backend(entry)
        await client.aclose()

    import asyncio

    asyncio.run(scenario())


# --- routing ---------------------------------------------------------------------------------


def test_candidates_respect_activity_models_and_permissions():
    backends = [backend(1), backend(2), backend(3, active=False)]
    models = {1: {"m"}, 2: {"m"}, 3: {"m"}}
    permitted, forbidden = candidate_backends(backends, models.get, user(permitted={1}), "m")
    assert [b.id for b in permitted] == [1] and forbidden
    permitted, forbidden = candidate_backends(backends, models.get, user(all_backends=True), "m")
    assert [b.id for b in permitted] == [1, 2] and not forbidden
    assert candidate_backends(backends, models.get, user(True), "other") == ([], False)


def test_weighted_round_robin_is_smooth_and_proportional():
    rr = WeightedRoundRobin()
    backends = [backend(1, weight=5), backend(2, weight=1), backend(3, weight=1)]
    firsts = [rr.order(backends)[0].id for _ in range(70)]
    assert firsts.count(1) == 50 and firsts.count(2) == 10 and firsts.count(3) == 10
    assert "1111111" not in "".join(map(str, firsts))  # smooth: never 7 in a row
    order = rr.order(backends)
    assert sorted(b.id for b in order) == [1, 2, 3]  # the rest follow as fallbacks


def test_zero_weight_backend_is_only_a_fallback():
    rr = WeightedRoundRobin()
    backends = [backend(1, weight=0), backend(2, weight=1)]
    assert all(rr.order(backends)[0].id == 2 for _ in range(5))
    assert rr.order(backends)[1].id == 1


def test_least_busy_orders_by_in_flight_per_weight():
    counts = {1: 4, 2: 1, 3: 2}
    order = order_least_busy([backend(1, weight=4), backend(2), backend(3)], counts.get)
    assert [b.id for b in order] == [1, 2, 3]  # 4/4 == 1/1 < 2/1; ties keep the given order
    counts[1] = 5
    assert [b.id for b in order_least_busy([backend(1, weight=4), backend(2), backend(3)], counts.get)] == [2, 1, 3]


def test_health_cooldown_and_probe():
    now = [0.0]
    health = HealthTracker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    assert not health.record_failure(1) and health.is_available(1)
    assert health.record_failure(1)
    assert not health.is_available(1) and not health.is_healthy(1)
    now[0] = 11
    assert health.is_available(1)  # one probe after the cooldown
    assert not health.is_available(1)  # ... only one
    health.record_failure(1)  # the probe failed: a new cooldown
    now[0] = 15
    assert not health.is_available(1)
    now[0] = 22
    assert health.is_available(1)
    health.record_success(1)
    assert health.is_healthy(1) and health.is_available(1)


# --- usage and SSE -----------------------------------------------------------------------------


def test_usage_parsing():
    chat = ADAPTERS["/v1/chat/completions"]
    usage_of = chat.usage_of_body
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}) == Usage(3, 4, 7)
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).total_tokens == 7
    assert usage_of({"usage": {"input_tokens": 2, "output_tokens": 1}}).total_tokens == 3
    assert usage_of({"usage": None}) is None and usage_of([1]) is None and usage_of(None) is None
    assert parse_usage(
        {
            "prompt_tokens": 9,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    ) == Usage(9, 5, 0, cached=4, reasoning=2)
    # Anthropic's input_tokens leaves the cached part out; the router's prompt counts it (OpenAI's convention).
    assert parse_usage({"input_tokens": 3, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 1}) == Usage(
        11, 0, 0, cached=7, cache_write=1
    )
    assert chat.without_usage(None, {"choices": [], "usage": {"total_tokens": 1}}) is DROP
    kept = {"choices": [{"delta": {}}], "usage": {"total_tokens": 1}}
    assert chat.without_usage(None, kept) is not DROP


def test_sse_splitter_handles_split_and_joined_events():
    splitter = SSESplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b": 1}\n\ndata: [DONE]\n\n") == [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]
    assert splitter.feed(b"data: x\r\n\r\n") == [b"data: x\n\n"]
    assert splitter.feed(b"data: tail") == [] and splitter.rest() == b"data: tail"
    assert sse_data(b"event: x\ndata: a\ndata: b\n\n") == b"a\nb"
    assert sse_data(b": comment\n\n") is None


def test_log_ids_are_time_ordered_and_unique():
    ids = [new_log_id(1_800_000_000.0) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert new_log_id(1_800_000_001.0) > max(ids)
    assert max(ids) < 2**63


# --- auth -------------------------------------------------------------------------------------


def test_api_keys():
    key = generate_api_key()
    assert key.startswith("sk-") and len(key) >= 3 + 43
    assert hash_api_key(key) == hash_api_key(key) != hash_api_key(generate_api_key())
    assert key.startswith(api_key_prefix(key)) and len(api_key_prefix(key)) < 12
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None


def test_admin_tokens_expire_and_die_with_the_password():
    tokens = AdminTokens("pw", ttl_s=60, session_secret="s")
    token, expires = tokens.issue(now=1000)
    assert expires == 1060
    assert tokens.verify(token, now=1030) and not tokens.verify(token, now=1061)
    assert tokens.verify("pw") and not tokens.verify("wrong") and not tokens.verify(token + "x", now=1030)
    assert not AdminTokens("new-pw", 60, "s").verify(token, now=1030)
    assert not AdminTokens(None, 60).verify("anything")


# --- request parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_json"),
        (b'{"messages": []}', "missing_required_parameter"),
        (b'{"model": "m"}', "missing_required_parameter"),
        (b'{"model": 3, "messages": []}', "missing_required_parameter"),
    ],
)
def test_parse_payload_errors(body, code):
    with pytest.raises(ApiError) as error:
        parse_payload(body, "/v1/chat/completions")
    assert error.value.status == 400 and error.value.code == code


def test_proxy_prefix_needs_a_path_boundary():
    assert allowed_proxy_url("http://a.test/v1", ["http://a.test/v1"])
    assert allowed_proxy_url("http://a.test/v1/x", ["http://a.test/v1/"])
    for outside, prefix in (("http://a.test/v1evil", "http://a.test/v1"), ("http://a.test.evil/v1", "http://a.test")):
        with pytest.raises(ApiError):
            allowed_proxy_url(outside, [prefix])


# --- configuration ------------------------------------------------------------------------------


def test_config_file_with_env_references(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "servers:\n"
        "  local:\n    url: http://127.0.0.1:8000/v1/\n    filter: llama\n"
        "  openai:\n    url: https://api.openai.com/v1\n    api_key: ${OPENAI_KEY}\n    override: [gpt-4o]\n"
        "    append: gpt-extra\n    weight: 3\n"
    )
    local, openai_ = load_config_file(str(path), {"OPENAI_KEY": "sk-upstream"}).servers
    assert local.base_url == "http://127.0.0.1:8000/v1" and local.model_filter == "llama"
    assert openai_.api_key == "sk-upstream" and openai_.model_override == ["gpt-4o"]
    assert openai_.model_append == ["gpt-extra"] and openai_.weight == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers: [1]", "'servers' must be a mapping"),
        ("servers:\n  a:\n    url: ftp://x\n", "servers.a.url: must be an http(s) URL"),
        ("servers:\n  a:\n    url: http://x\n    weight: -1\n", "servers.a.weight"),
        ("servers:\n  a:\n    url: http://x\n    colour: red\n", "servers.a: unknown key(s) colour"),
        ("prune: yes please\nservers:\n  a:\n    url: http://x\n", "prune: must be true or false"),
        ("servers:\n  a:\n    url: http://x\n    override: [1]\n", "servers.a.override"),
        ("servers: {a: [", "not valid YAML"),
    ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config_file(str(path), {})
    assert str(path) in str(error.value) and message in str(error.value)


def test_config_file_server_with_an_unset_variable_is_disabled_not_an_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "prune: true\nprun: false\nservers:\n  local:\n    url: http://127.0.0.1:8000/v1\n"
        "  paid:\n    url: ${PAID_URL}/v1\n    api_key: ${PAID_KEY}\n    weight: oops\n"
    )
    config = load_config_file(str(path), {"PAID_URL": "https://paid.test"})
    assert [s.name for s in config.servers] == ["local"] and config.prune
    assert [(d.name, d.reason) for d in config.disabled] == [
        ("paid", "servers.paid.api_key: ${PAID_KEY} not set in the environment")
    ]
    assert config.names == {"local", "paid"} and config.warnings == ["unknown top-level key 'prun' ignored"]
    # Once the variable is set, the server is validated (and synced) like any other.
    with pytest.raises(ConfigError, match=r"servers\.paid\.weight"):
        load_config_file(str(path), {"PAID_URL": "https://paid.test", "PAID_KEY": "k"})


def test_settings_from_environment(tmp_path):
    settings = load_settings(
        {"SERVER_PORT": "8080", "DATA_DIR": str(tmp_path), "PROXY_ALLOWLIST": "http://a/v1, "}, dotenv=False
    )
    assert settings.port == 8080 and settings.proxy_allowlist == ["http://a/v1"]
    assert settings.core_db_url.startswith(f"sqlite://{tmp_path}/core.db")
    assert not settings.host_explicit
    with pytest.raises(ConfigError, match="ROUTING_STRATEGY"):
        load_settings({"ROUTING_STRATEGY": "random"}, dotenv=False)
    environ = {"DATA_DIR": "/env", "GRAPHQL_MAX_PAGE": "50", "LOG_BUFFER_MAX": "7"}
    limits = load_settings(environ, dotenv=False, overrides={"DATA_DIR": "/flag"})
    assert (limits.graphql_max_page, limits.log_buffer_max, limits.data_dir) == (50, 7, "/flag")
    # What `serve` hands its workers comes back whole.
    assert settings_from_json(settings_to_json(settings)) == settings
    with pytest.raises(ConfigError, match="ENABLE_ACCOUNT_MANAGEMENT"):
        load_settings({"ENABLE_ACCOUNT_MANAGEMENT": "maybe"}, dotenv=False)
