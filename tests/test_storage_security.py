"""Hardening of what the router stores, shows and logs (issue 15 items 3, 12-15; issue 16's URL checks).

Most tests run the real app in-process (httpx's ASGI transport plus the app's lifespan) in front
of a real local upstream; the SIGBUS/-shm one needs a router subprocess.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import sqlite3
import stat
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.config import ConfigError, load_config_file, load_settings
from router.logging_setup import JsonFormatter, TextFormatter
from router.models.core import Backend
from router.urls import UrlError, allowed_proxy_url, check_http_url, normalize_proxy_url, redact_text, redact_url
from tests.conftest import write_config
from tests.inprocess import in_process
from tests.upstream import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    return error


# --- one URL module (issue 16) and ?proxy= normalisation (item 13) -----------------------------


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("http://h/v1", True),
        ("HTTP://H:80/v1/", True),
        ("http://h/v1/./x", True),
        ("http://h/v1/x/../y", True),
        ("http://h/v1/../secret", False),
        ("http://h/v1/../../secret", False),
        ("http://h/v1/%2e%2e/secret", False),
        ("http://h/v1/%2E%2E/%2e%2E/secret", False),
        ("http://h/v1/..%2fsecret", False),
        ("http://h/v1/%252e%252e/secret", False),
        ("http://h/v1\\..\\secret", False),
        ("http://h/v1evil", False),
        ("http://h@evil/v1", False),
        ("http://u:p@h/v1", False),
        ("http://h/v1?x=/../", False),
        ("http://h:81/v1", False),
        ("file:///etc/passwd", False),
        ("http://h/v1/\nx", False),
    ],
)
def test_proxy_urls_are_normalised_before_the_allowlist(target: str, allowed: bool) -> None:
    from router.errors import ApiError

    if allowed:
        assert allowed_proxy_url(target, ["http://h/v1"]).startswith("http://h/v1")
    else:
        with pytest.raises(ApiError) as caught:
            allowed_proxy_url(target, ["http://h/v1"])
        assert caught.value.status == 403
        assert "u:p" not in caught.value.message


def test_url_checks_and_redaction() -> None:
    assert normalize_proxy_url("http://h/a/b/../../../c") == "http://h/c"
    assert check_http_url(" https://h/v1/ ") == "https://h/v1"
    assert redact_url("https://user:secret@h/v1") == "https://***@h/v1"
    assert redact_url("https://user:p@ss@h/v1") == "https://***@h/v1"
    assert (
        redact_text("see http://h/x?to=a@b and postgres://u:pw@db/x") == "see http://h/x?to=a@b and postgres://***@db/x"
    )
    for bad in ("ftp://h", "http://", "http://h:99999/v1", "http://h/v 1", "http://h/#x", 5):
        with pytest.raises(UrlError):
            check_http_url(bad)  # type: ignore[arg-type]
    with pytest.raises(UrlError) as caught:
        check_http_url("ftp://user:secret@h")
    assert "secret" not in str(caught.value)


def test_config_and_allowlist_use_the_same_url_check(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"a": {"url": "http://h:99999/v1"}})
    with pytest.raises(ConfigError, match=r"servers\.a\.url: invalid port"):
        load_config_file(str(path), {})
    with pytest.raises(ConfigError, match="PROXY_ALLOWLIST"):
        load_settings({"DATA_DIR": str(tmp_path), "PROXY_ALLOWLIST": "http://h/v1?x"}, dotenv=False)


async def test_proxy_path_traversal_is_refused(tmp_path: Path, upstream_factory) -> None:
    upstream = upstream_factory(name="target", models=["m"])
    allowed_prefix = f"http://127.0.0.1:{upstream.port}/sub/v1"
    async with in_process(tmp_path, env={"PROXY_ALLOWLIST": allowed_prefix}) as router:
        headers = {"Authorization": f"Bearer {router.api_key}"}
        for escape in ("/../../v1", "/%2e%2e/%2e%2e/v1", "/x/../../../v1"):
            response = await router.client.post(
                "/v1/chat/completions",
                params={"proxy": allowed_prefix + escape},
                json={"model": "m", "messages": MESSAGES},
                headers=headers,
            )
            assert_openai_error(response, 403)
    assert not upstream.requests_to("/v1/chat/completions")


# --- bounded metrics, logs and request-log rows (items 3 and 12) --------------------------------


@contextlib.contextmanager
def text_log() -> Iterator[io.StringIO]:
    """The router's text log format, captured at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(logging.Filter("router"))  # not this test's own HTTP client
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def request_log_rows(data_dir: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(data_dir / "analytics.db")
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute("SELECT * FROM request_logs ORDER BY id"))
    finally:
        conn.close()


async def test_huge_random_model_names_do_not_bloat_metrics_logs_or_rows(tmp_path: Path, upstream) -> None:
    rng = random.Random(15)
    async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
        assert (await router.chat("test-model")).status_code == 200
        baseline = len((await router.client.get("/metrics")).content)
        with text_log() as log_text:
            for _ in range(60):
                junk = "".join(rng.choices(string.ascii_letters, k=100_000))
                response = await router.chat(f"[alpha]{junk}")
                assert response.status_code == 200, response.text[:300]
                response = await router.chat(junk)  # unroutable: a 404 from the router itself
                assert_openai_error(response, 404)
        await router.runtime.writer.flush()
        metrics = (await router.client.get("/metrics")).text
        assert len(metrics) - baseline < 5_000, len(metrics) - baseline
        assert 'model="other"' in metrics and 'model="test-model"' in metrics
    lines = log_text.getvalue().splitlines()
    assert lines and max(len(line) for line in lines) < 10_000
    rows = request_log_rows(tmp_path)
    assert len(rows) == 121
    assert max(len(row["model"]) for row in rows) <= 256
    assert max(len(row["error"] or "") for row in rows) <= 2000


async def test_a_model_name_cannot_forge_a_log_line(tmp_path: Path, upstream) -> None:
    forged = "2030-01-01 00:00:00,000 INFO router.requests: request id=forged user=admin status=200"
    async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
        with text_log() as log_text:
            for separator in ("\n", "\r\n", "\r", "\u2028", "\x1b[2K\r"):
                await router.chat(f"[alpha]x{separator}{forged}")
    lines = log_text.getvalue().splitlines()
    assert not any(line.startswith("2030-") for line in lines), lines
    assert not any("\x1b" in line or "\r" in line for line in log_text.getvalue().split("\n"))
    assert sum("request id=forged" in line for line in lines) == 5  # still visible, escaped, on the real line


def test_log_formatters_escape_truncate_and_redact() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", ("a\nb\x1b" + "z" * 20_000,), None)
    line = TextFormatter().format(record)
    assert "\n" not in line and "a\\nb\\x1b" in line and len(line) < 8_400
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "to %s", ("http://u:pw@h/v1",), None)
    assert "pw" not in TextFormatter().format(record) and "pw" not in JsonFormatter().format(record)


def test_metric_series_stay_bounded_beyond_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from router import metrics
    from router.usage import RequestRecord

    monkeypatch.setattr(metrics, "_MAX_SERIES", 3)
    counts = metrics._InMemoryMetrics(user_labels=True, known_models=lambda _: frozenset({"m"}))
    for i in range(50):
        record = RequestRecord("r", "/v1/chat/completions", backend_id=1, backend_name="b", model="m")
        record.user_name = f"user{i}"
        record.finish(200)
        counts.observe(record)
    assert len(counts._series) == 4 and len(counts._latency) <= 4
    assert counts._series[("other", "other", 200, "other")][0] == 47


# --- secrets: redaction, file modes, encryption at rest (item 14) -------------------------------


async def test_userinfo_in_backend_urls_is_never_shown(tmp_path: Path, upstream, upstream_factory) -> None:
    secret_url = upstream.base_url.replace("http://", "http://someone:pa55word@")
    async with in_process(tmp_path, {"alpha": {"url": secret_url}}, {"PROXY_ALLOWLIST": upstream.base_url}) as router:
        with text_log() as log_text:
            backends = (await router.gql("{ backends { id baseUrl } }"))["data"]["backends"]
            assert backends[0]["baseUrl"] == upstream.base_url.replace("http://", "http://***@")
            # A form sending the shown URL back keeps the real credentials.
            update = (
                "mutation($id: ID!, $url: String!) "
                "{ updateBackend(id: $id, input: {baseUrl: $url, weight: 2}) { weight } }"
            )
            result = await router.gql(update, {"id": backends[0]["id"], "url": backends[0]["baseUrl"]})
            assert result["data"]["updateBackend"]["weight"] == 2, result
            headers = {"Authorization": f"Bearer {router.api_key}"}
            for proxy in (secret_url, secret_url.replace("127.0.0.1", "127.0.0.1.nip.io")):
                response = await router.client.post(
                    "/v1/chat/completions",
                    params={"proxy": proxy},
                    json={"model": "m", "messages": MESSAGES},
                    headers=headers,
                )
                assert "pa55word" not in assert_openai_error(response, 403)["message"]
            response = await router.chat(f"[{secret_url}]m")
            assert "pa55word" not in assert_openai_error(response, 403)["message"]
            result = await router.gql(
                'mutation { createBackend(input: {name: "b", baseUrl: "ftp://x:pa55word@h"}) { id } }'
            )
            assert "pa55word" not in str(result) and result["errors"]
            failing = upstream_factory(name="failing", fail_status=404)
            url = failing.base_url.replace("http://", "http://someone:pa55word@")
            create = 'mutation($u: String!) { createBackend(input: {name: "f", baseUrl: $u}) { id } }'
            created = (await router.gql(create, {"u": url}))["data"]["createBackend"]
            test = "mutation($id: ID!) { testBackendConnection(id: $id) { ok error } }"
            tested = (await router.gql(test, {"id": created["id"]}))["data"]["testBackendConnection"]
            assert "HTTP 404 from http://***@" in tested["error"] and "pa55word" not in tested["error"]
            await router.runtime.writer.flush()
        stored = await Backend.get(name="alpha")
        assert stored.base_url == secret_url
    assert "pa55word" not in log_text.getvalue()
    rows = request_log_rows(tmp_path)
    assert len(rows) == 3 and not any("pa55word" in str(dict(row)) for row in rows)


async def test_database_files_are_private(tmp_path: Path, upstream) -> None:
    data_dir = tmp_path / "new" / "data"
    async with in_process(data_dir, {"alpha": {"url": upstream.base_url}}) as router:
        assert (await router.chat("test-model")).status_code == 200
        await router.runtime.writer.flush()
        files = [p for p in data_dir.iterdir() if p.name.startswith(("core.db", "analytics.db"))]
        assert {p.name for p in files} >= {"core.db", "analytics.db"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def core_db_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("core.db"))


async def test_upstream_keys_are_encrypted_at_rest_and_rotate(tmp_path: Path, upstream_factory) -> None:
    from cryptography.fernet import Fernet

    secret = "sk-upstream-" + "s3cr3t" * 4
    upstream = upstream_factory(name="alpha", models=["test-model"], required_key=secret)
    servers = {"alpha": {"url": upstream.base_url, "api_key": secret}}
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    # Written in plaintext without a key, encrypted at the first start with one.
    async with in_process(tmp_path, servers) as router:
        assert (await router.chat("test-model")).status_code == 200
    assert secret.encode() in core_db_bytes(tmp_path)
    async with in_process(tmp_path, servers, {"SECRETS_KEY": old}) as router:
        assert (await router.chat("test-model")).status_code == 200
        created = await router.gql(
            'mutation($k: String!) { createBackend(input: {name: "beta", baseUrl: "http://127.0.0.1:1/v1", apiKey: $k})'
            " { hasApiKey } }",
            {"k": secret + "-beta"},
        )
        assert created["data"]["createBackend"]["hasApiKey"] is True
        stored = await Backend.all().values_list("api_key", flat=True)
        assert all(value.startswith("fernet:") for value in stored)
    with sqlite3.connect(tmp_path / "core.db") as conn:
        conn.execute("VACUUM")  # the plaintext's old pages are gone too
    assert secret.encode() not in core_db_bytes(tmp_path)

    # Missing or wrong key: the router refuses to start, naming the backend.
    for env in ({}, {"SECRETS_KEY": new}):
        with pytest.raises(ConfigError, match="backend 'alpha'"):
            async with in_process(tmp_path, env=env):
                pass
    # Rotation: new first, old still readable; afterwards new alone is enough.
    async with in_process(tmp_path, env={"SECRETS_KEY": f"{new},{old}"}) as router:
        assert (await router.chat("test-model")).status_code == 200
    async with in_process(tmp_path, env={"SECRETS_KEY": new}) as router:
        assert (await router.chat("test-model")).status_code == 200
        assert router.runtime.catalog.snapshot.backends_by_name["beta"].api_key == secret + "-beta"
    with pytest.raises(ConfigError, match="SECRETS_KEY: key 1 is not a Fernet key"):
        load_settings({"DATA_DIR": str(tmp_path), "SECRETS_KEY": "short"}, dotenv=False)


# --- a broken analytics database degrades like a stopped one (item 15) --------------------------


def test_broken_analytics_database_keeps_v1_answering_and_rows_wait(router_factory, upstream, tmp_path) -> None:
    """A truncated -shm index, then failing writes: /v1 answers, rows wait (bounded), then are written."""
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, env={"LOG_BUFFER_MAX": "15", "LOG_FLUSH_INTERVAL_S": "0.05"}, process=True)
    if router.env.get("ANALYTICS_DB_URL"):
        pytest.skip("breaks a SQLite file on purpose: nothing to break with TEST_DB=postgres")
    key = router.add_user("alice")
    body = {"model": "test-model", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{router.v1}/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
    assert len(router.wait_for_logs(1)) == 1
    data = router.data_dir
    shm = data / "analytics.db-shm"
    if shm.exists():
        os.truncate(shm, 0)  # what a full disk or a stray tool can do: a mapped -shm here means SIGBUS
    else:
        shm.write_bytes(b"")
    shm.chmod(0o400)
    journal = data / "analytics.db-journal"
    journal.mkdir()  # from now on no write can open its journal: every batch fails

    for _ in range(20):
        response = httpx.post(f"{router.v1}/chat/completions", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
    assert router.proc.poll() is None, router.log()[-2000:]
    deadline = time.monotonic() + 15
    while "request log rows failed (will retry)" not in router.log():
        assert time.monotonic() < deadline, router.log()[-2000:]
        time.sleep(0.05)
    assert "request log buffer full (15 rows)" in router.log()
    assert len(router.request_logs()) <= 1

    journal.rmdir()
    shm.unlink()
    rows = router.wait_for_logs(16, timeout=30)
    assert len(rows) == 16, len(rows)  # the first, then the newest 15 of the 20
    assert router.proc.poll() is None


async def test_a_wal_database_of_an_earlier_version_is_switched_when_free(tmp_path: Path, upstream) -> None:
    analytics = tmp_path / "analytics.db"
    older = sqlite3.connect(analytics, isolation_level=None)  # an older router, still running
    assert older.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    older.execute("CREATE TABLE unrelated (x)")
    try:
        with text_log() as log_text:
            async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
                assert (await router.chat("test-model")).status_code == 200
                await router.runtime.writer.flush()
        assert "stays in WAL mode for now" in log_text.getvalue()
    finally:
        older.close()
    async with in_process(tmp_path) as router:
        pass
    with sqlite3.connect(analytics) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM request_logs").fetchone()[0] == 1


async def test_serve_without_the_key_stops_before_any_worker(tmp_path: Path, upstream) -> None:
    from cryptography.fernet import Fernet

    servers = {"alpha": {"url": upstream.base_url, "api_key": "sk-x"}}
    async with in_process(tmp_path, servers, {"SECRETS_KEY": Fernet.generate_key().decode()}):
        pass
    env = {**os.environ, "DATA_DIR": str(tmp_path), "SECRETS_KEY": ""}
    args = [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run([*args, "--workers", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "backend 'alpha': it is encrypted and SECRETS_KEY is not set" in result.stderr


def test_every_request_log_string_fits_its_column() -> None:
    """A longer value fails the whole batch on PostgreSQL (and so every row behind it)."""
    from tortoise import fields

    from router.models.analytics import RequestLog
    from router.usage import RequestRecord

    record = RequestRecord("r" * 128, "/v1/" + "e" * 10_000)
    columns = {
        name: column.max_length
        for name, column in RequestLog._meta.fields_map.items()
        if isinstance(column, fields.CharField) and name != "request_id"
    }
    assert {"model", "response_id", "backend_name", "user_name", "translated_to", "endpoint"} <= set(columns)
    for name in columns:
        if name != "endpoint":
            setattr(record, name, "x" * 10_000)
    record.finish(200, "e" * 100_000)
    for name, limit in columns.items():
        assert len(getattr(record, name)) <= limit, name
    assert len(record.error) <= 2000
