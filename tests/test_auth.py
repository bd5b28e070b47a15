"""router/auth.py: /v1 API keys and admin tokens."""

from __future__ import annotations

import pytest

from router.auth import AdminTokens, api_key_prefix, authenticate, bearer_token, generate_api_key, hash_api_key
from router.catalog import Snapshot, UserEntry
from router.errors import ApiError


def test_api_keys():
    key = generate_api_key()
    assert key.startswith("sk-") and len(key) >= 3 + 43
    assert hash_api_key(key) == hash_api_key(key) != hash_api_key(generate_api_key())
    assert key.startswith(api_key_prefix(key)) and len(api_key_prefix(key)) < 12
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None


def test_authenticate_reads_the_key_as_bearer_token_does():
    key = generate_api_key()
    user = UserEntry(1, "u", None, True, True, frozenset())
    snapshot = Snapshot(users_by_key_hash={hash_api_key(key): user})
    for authorization in (f"Bearer {key}", f"bearer {key}", f"BEARER  {key} ", f"Bearer {key}\t"):
        assert authenticate({"authorization": authorization}, snapshot) is user
    assert authenticate({"authorization": "Bearer  ", "x-api-key": key}, snapshot) is user
    assert authenticate({"authorization": f"Basic {key}", "x-api-key": key}, snapshot) is user
    for headers in ({"authorization": f"Basic {key}"}, {"authorization": "Bearer "}, {"authorization": f"Bearer{key}"}):
        with pytest.raises(ApiError) as refused:
            authenticate(headers, snapshot)
        assert refused.value.status == 401


def test_admin_tokens_expire_and_die_with_the_password():
    tokens = AdminTokens("pw", ttl_s=60, session_secret="s")
    token, expires = tokens.issue(now=1000)
    assert expires == 1060
    assert tokens.verify(token, now=1030) and not tokens.verify(token, now=1061)
    assert tokens.verify("pw") and not tokens.verify("wrong") and not tokens.verify(token + "x", now=1030)
    assert not AdminTokens("new-pw", 60, "s").verify(token, now=1030)
    assert not AdminTokens(None, 60).verify("anything")
