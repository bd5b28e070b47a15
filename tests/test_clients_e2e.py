"""Today's coding agents, for real, against the router in pass-through: `claude -p` on a Messages
upstream and `codex exec` on a Responses upstream (tests/upstream.py speaks both like vLLM).

The CLIs come from npm (`npm install @anthropic-ai/claude-code @openai/codex`; `.ci/run` installs
them and sets CLAUDE_BIN / CODEX_BIN). The translated variants are in test_translation_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_config

CLAUDE = os.environ.get("CLAUDE_BIN") or shutil.which("claude")
CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")
MODEL = "agent-model"


@pytest.fixture
def env(router_factory, upstream_factory, tmp_path):
    upstream = upstream_factory(name="native", models=[MODEL])
    router = router_factory(config=write_config(tmp_path / "c.yaml", {"native": {"url": upstream.base_url}}))
    return router, upstream, router.add_user("agent")


@pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code not installed (npm install @anthropic-ai/claude-code; CLAUDE_BIN=path)"
)
@pytest.mark.parametrize("key_variable", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
def test_claude_code_on_a_messages_backend(env, tmp_path: Path, key_variable: str) -> None:
    assert CLAUDE is not None
    router, upstream, key = env
    claude_env = {
        **os.environ,
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": router.url,  # the root: Claude Code appends /v1/messages itself
        key_variable: key,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        [CLAUDE, "-p", "say hi", "--model", MODEL],
        env=claude_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert "native says:" in result.stdout
    sent = upstream.requests_to("/v1/messages")[-1]
    assert sent.body["stream"] is True and sent.headers.get("anthropic-version")
    rows = [r for r in router.wait_for_logs(1) if r["endpoint"] == "/v1/messages"]
    assert rows and rows[-1]["status_code"] == 200 and rows[-1]["completion_tokens"] > 0


@pytest.mark.skipif(CODEX is None, reason="Codex CLI not installed (npm install @openai/codex; CODEX_BIN=path)")
def test_codex_exec_on_a_responses_backend(env, tmp_path: Path) -> None:
    assert CODEX is not None
    router, upstream, key = env
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(
        f'model = "{MODEL}"\nmodel_provider = "router"\n[model_providers.router]\nname = "router"\n'
        f'base_url = "{router.v1}"\nenv_key = "ROUTER_KEY"\nwire_api = "responses"\n'
    )
    codex_env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(home / ".codex"), "ROUTER_KEY": key}
    result = subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", "say hi"],
        env=codex_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sent = upstream.requests_to("/v1/responses")[-1]
    assert sent.body["stream"] is True
    rows = [r for r in router.wait_for_logs(1) if r["endpoint"] == "/v1/responses"]
    assert rows and rows[-1]["status_code"] == 200
