"""The LLMsRouter-compatible `users` CLI and `backends list`, against a real (SQLite) database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ADMIN_PASSWORD, RouterProcess, cli_in_process, in_process_dialect, write_config
from tests.inprocess import RouterThread
from tests.upstream import free_port


def serving(data_dir, env: dict[str, str], config=None) -> RouterProcess:
    """A router on `data_dir` (not started): in this process where its SQLite may be, running `serve`'s own
    start-up (router.cli.start_up: flags, config sync, session secret); else `python -m router serve`."""
    return (RouterThread if in_process_dialect(env) else RouterProcess)(data_dir, env, config)


@pytest.fixture
def cli(tmp_path, upstream):
    """A router data directory with backends alpha and beta synced (the router is not running)."""
    config = write_config(
        tmp_path / "c.yaml",
        {"alpha": {"url": upstream.base_url, "api_key": "upstream-secret"}, "beta": {"url": upstream.base_url}},
    )
    router = serving(tmp_path / "data", {}, config)
    router.start()
    router.stop()
    return router


def names_in_list(cli) -> dict[str, str]:
    lines = cli.cli("users", "list").stdout.strip().splitlines()[1:]
    return {line.split()[0]: line.split()[-1] for line in lines}


def test_add_list_modify_regenerate_delete(cli):
    out = cli.cli("users", "add", "ann", "--email", "ann@example.com").stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk-") and "shown only now" in out
    cli.add_user("ben", permissions="alpha")
    listing = cli.cli("users", "list").stdout
    assert key not in listing and key[:10] in listing
    assert names_in_list(cli) == {"ann": "*", "ben": "alpha"}

    cli.cli("users", "modify", "ben", "--permissions", "alpha,beta")
    assert names_in_list(cli)["ben"] == "alpha,beta"
    cli.cli("users", "modify", "ben", "--deactivate")
    assert " no " in next(line for line in cli.cli("users", "list").stdout.splitlines() if line.startswith("ben"))
    failed = cli.cli("users", "modify", "ben", "--permissions", "gamma", check=False)
    assert failed.returncode == 1 and "no backend named gamma" in failed.stderr

    new_key = cli.cli("users", "regenerate-key", "ann").stdout.strip().splitlines()[-1]
    assert new_key.startswith("sk-") and new_key != key

    cli.cli("users", "delete", "ben")
    assert set(names_in_list(cli)) == {"ann"}
    missing = cli.cli("users", "delete", "ben", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    duplicate = cli.cli("users", "add", "ann", check=False)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr


def test_import_csv_and_json(cli, tmp_path):
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("username,email,permissions\ncat,cat@example.com,alpha\ndan,,*\n")
    out = cli.cli("users", "import", str(csv_file)).stdout
    assert "Imported 2 users" in out and out.count("sk-") == 2
    json_file = tmp_path / "users.json"
    json_file.write_text(json.dumps([{"username": "eve", "email": "eve@example.com", "permissions": "beta"}]))
    cli.cli("users", "import", str(json_file))
    assert names_in_list(cli) == {"cat": "alpha", "dan": "*", "eve": "beta"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("username,email\nok1,ok1@example.com\nbad name,x@example.com\n", "row 2"),
        ("username,email,permissions\nok1,,alpha\nok2,,nosuch\n", "row 2: no backend named nosuch"),
        ("username,email\nok1,\nok1,\n", "row 2: a user named 'ok1' already exists"),
        ("username,email\nok1,not-an-email\n", "row 1"),
        ("name,mail\nok1,\n", "header must be username,email"),
    ],
)
def test_import_with_a_bad_row_imports_nothing(cli, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = cli.cli("users", "import", str(path), check=False)
    assert result.returncode == 1 and message in result.stderr
    assert names_in_list(cli) == {}


def test_backends_list_never_prints_the_upstream_key(cli):
    out = cli.cli("backends", "list").stdout
    assert "alpha" in out and "beta" in out and "upstream-secret" not in out


def test_config_sync_prune_and_unset_variables(tmp_path, upstream):
    """Servers in the file are (re)activated; `--prune` / `prune: true` deactivates the rest, one log line each."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    first = write_config(
        tmp_path / "c.yaml",
        {"alpha": {"url": upstream.base_url}, "beta": {"url": upstream.base_url}, "gamma": {"url": dead}},
    )
    router = serving(tmp_path / "data", {}, first)
    router.start()
    router.stop()
    log = router.log()
    assert "backend alpha: created from the config file" in log
    assert log.count("could not list models of backend gamma") == 1  # once per failure streak, not per caller

    # beta is gone from the file, alpha's key is now an unset variable: without prune, beta stays.
    second = write_config(
        tmp_path / "c.yaml", {"alpha": {"url": upstream.base_url, "api_key": "${ALPHA_KEY}"}, "gamma": {"url": dead}}
    )
    router = serving(tmp_path / "data", {}, second)
    router.start()
    router.stop()
    assert "backend alpha: deactivated: servers.alpha.api_key: ${ALPHA_KEY} not set in the environment" in router.log()
    assert active_backends(router) == {"beta", "gamma"}

    router = serving(tmp_path / "data", {"ALPHA_KEY": "k"}, second)
    router.start(extra_args=["--prune"])
    router.stop()
    assert "backend beta: deactivated (not in the config file; prune)" in router.log()
    assert "backend alpha: updated from the config file (apiKey, reactivated)" in router.log()
    assert active_backends(router) == {"alpha", "gamma"}

    # `prune: true` in the file does the same; a dashboard-made change to a listed server is put back.
    write_config(tmp_path / "c.yaml", {"gamma": {"url": dead}})
    text = (tmp_path / "c.yaml").read_text()
    (tmp_path / "c.yaml").write_text("prune: true\n" + text)
    router = serving(tmp_path / "data", {}, tmp_path / "c.yaml")
    router.start()
    router.stop()
    assert router.log().count("(not in the config file; prune)") == 1  # alpha; beta was already inactive
    assert active_backends(router) == {"gamma"}


def active_backends(router: RouterProcess) -> set[str]:
    rows = [line.split() for line in router.cli("backends", "list").stdout.splitlines()[1:]]
    return {row[0] for row in rows if row[1] == "yes"}


def run_cli(cwd, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`llm-router ...` in `cwd`: its `main` in this process where its SQLite may be, else `python -m router`."""
    if RouterThread.active is None and in_process_dialect(env):
        return cli_in_process(list(args), env, cwd)
    return subprocess.run(
        [sys.executable, "-m", "router", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_data_dir_flag_and_environment_and_the_database_is_named(tmp_path):
    """`--data-dir` (before or after the command) beats DATA_DIR; every command says which database it used."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "CORE_DB_URL", "CORE_DB_PATH")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "team-data"

    added = run_cli(elsewhere, env, "users", "add", "ann", "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    assert f"database {data / 'core.db'} (new, empty)" in added.stderr and "sk-" in added.stdout
    listed = run_cli(elsewhere, env, "--data-dir", str(data), "users", "list")
    assert "ann" in listed.stdout and f"database {data / 'core.db'}\n" in listed.stderr
    assert not (elsewhere / "data").exists()

    from_env = run_cli(elsewhere, {**env, "DATA_DIR": str(data)}, "users", "list")
    assert "ann" in from_env.stdout
    flag_wins = run_cli(elsewhere, {**env, "DATA_DIR": str(data)}, "users", "list", "--data-dir", str(tmp_path / "x"))
    assert "ann" not in flag_wins.stdout and "(new, empty)" in flag_wins.stderr
    # Without anything, ./data of the working directory, said out loud.
    default = run_cli(elsewhere, env, "users", "list")
    assert f"database {elsewhere / 'data' / 'core.db'} (new, empty)" in default.stderr


def test_admin_sessions_survive_a_restart_without_session_secret(tmp_path):
    env = {"ADMIN_SESSION_SECRET": ""}
    router = serving(tmp_path / "data", env).start()
    token = router.gql_ok(f'mutation {{ login(password: "{ADMIN_PASSWORD}") {{ token }} }}')["login"]["token"]
    router.stop()
    secret_file = tmp_path / "data" / "session-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    router = serving(tmp_path / "data", env).start()
    try:
        assert "errors" not in router.graphql("{ users { id } }", token=token)
        assert secret_file.read_text().strip() not in router.log()
    finally:
        router.stop()
    # Another data directory, another secret: that session is not valid there.
    other = serving(tmp_path / "other", env).start()
    try:
        assert other.graphql("{ users { id } }", token=token)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        other.stop()
