"""router/catalog.py: model filters, override/append lists and backend-prefixed aliases."""

from __future__ import annotations

import pytest

from router.catalog import model_matches_filter, resolve_models, split_alias


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
