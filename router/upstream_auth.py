"""Which header a backend's upstream key goes in (a backend setting, `authHeader`).

Stored as a lower-case header name, or null:

* null: chosen from the base URL, as before the setting existed: ``x-api-key`` for Anthropic's
  own API (``anthropic.com`` and its subdomains), ``Authorization: Bearer <key>`` everywhere else;
* ``authorization``: ``Authorization: Bearer <key>``;
* any other name (``x-api-key``, ``api-key`` for Azure OpenAI, ...): ``<name>: <key>``, the bare key.

Names are HTTP tokens of at most 64 characters; headers that frame or route the request (``host``,
``content-length``, hop-by-hop headers, ...) or that the router sets itself are refused. Keys must
be printable ASCII without surrounding blanks, so they cannot split or smuggle headers.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_NAME_LENGTH = 64
BEARER = "authorization"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
# Framing, routing and hop-by-hop headers, and those the router sets on every upstream request.
REFUSED = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "accept",
        "accept-encoding",
        "x-request-id",
    }
)


def auth_header_problem(name: str) -> str | None:
    """Why `name` cannot carry an upstream key, to follow the field's name (None: it can; "" is 'from the URL')."""
    if name and (len(name) > MAX_NAME_LENGTH or not _TOKEN.fullmatch(name)):
        return (
            f"must be an HTTP header name such as authorization, x-api-key or api-key "
            f"(letters, digits and !#$%&'*+-.^_`|~; at most {MAX_NAME_LENGTH} characters)"
        )
    if name.lower() in REFUSED:
        return f"{name.lower()!r} cannot carry the key: the router or HTTP itself sets that header"
    return None


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be sent in a header, to follow the field's name (None: it can)."""
    if key and not _KEY.fullmatch(key):
        return "must be printable ASCII without line breaks, control characters or surrounding blanks"
    return None


def normal_auth_header(name: str | None) -> str | None:
    """The stored form: lower case; None and "" both mean 'from the URL'."""
    return name.lower() or None if name is not None else None


def upstream_key_header(base_url: str) -> str:
    """The header chosen from the URL: x-api-key for Anthropic's API, a Bearer token everywhere else."""
    host = (urlsplit(base_url).hostname or "").lower()
    return "x-api-key" if host == "anthropic.com" or host.endswith(".anthropic.com") else "Authorization"


def effective_auth_header(base_url: str, auth_header: str | None) -> str:
    """The header the key is sent in (lower case)."""
    return auth_header or upstream_key_header(base_url).lower()


def upstream_auth(base_url: str, auth_header: str | None, api_key: str | None) -> tuple[str, str] | None:
    """(header name, value) carrying `api_key` to the backend; None without a key."""
    if not api_key:
        return None
    name = effective_auth_header(base_url, auth_header)
    if name == BEARER:
        return "Authorization", f"Bearer {api_key}"
    return name, api_key
