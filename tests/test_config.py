"""router/config.py: config.yaml (with ${VAR} references) and settings from the environment."""

from __future__ import annotations

import pytest

from router.config import ConfigError, load_config_file, load_settings, settings_from_json, settings_to_json


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
