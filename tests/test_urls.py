"""router/urls.py: URL checks (proxy allowlist prefixes end at a path boundary)."""

from __future__ import annotations

import pytest

from router.errors import ApiError
from router.urls import allowed_proxy_url


def test_proxy_prefix_needs_a_path_boundary():
    assert allowed_proxy_url("http://a.test/v1", ["http://a.test/v1"])
    assert allowed_proxy_url("http://a.test/v1/x", ["http://a.test/v1/"])
    for outside, prefix in (("http://a.test/v1evil", "http://a.test/v1"), ("http://a.test.evil/v1", "http://a.test")):
        with pytest.raises(ApiError):
            allowed_proxy_url(outside, [prefix])
