"""URLs the router is told about: one validation for backends, config.yaml and PROXY_ALLOWLIST,
the `?proxy=` normalisation and allow-list check, and userinfo redaction for anything shown.

Pure functions; callers turn `UrlError` into their own error shape (ConfigError, ServiceError,
an OpenAI 403).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit, urlunsplit

from router import errors

MAX_URL_LENGTH = 2048  # Backend.base_url's column size
REDACTED = "***"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Anything an http(s) URL must never carry: controls, spaces, backslashes (some servers read them as '/').
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
# "scheme://user[:password]@" anywhere in free text (error messages, exceptions, log lines).
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")
# In a proxy path: an encoded '/', '\', '%' or control character would be decoded by someone after
# our check (the upstream, a reverse proxy in front of it), so such paths are refused.
_ENCODED_SEPARATOR = re.compile(r"(?i)%(2f|5c|25|[01][0-9a-f]|7f)")
_ENCODED_DOT = re.compile(r"(?i)%2e")


class UrlError(ValueError):
    """A refused URL; the message never contains the URL's userinfo."""


def check_http_url(url: object, what: str = "URL") -> str:
    """An absolute http(s) URL with a host, without trailing slashes; raises UrlError otherwise.

    Userinfo (`https://user:pw@host`) is allowed here (some upstreams want it) but never shown.
    """
    if not isinstance(url, str):
        raise UrlError(f"{what}: must be an http(s) URL")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise UrlError(f"{what}: longer than {MAX_URL_LENGTH} characters")
    shown = redact_url(url)
    if _FORBIDDEN.search(url):
        raise UrlError(f"{what}: must be an http(s) URL without spaces, control characters or '\\', got {shown!r}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise UrlError(f"{what}: must be an http(s) URL, got {shown!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UrlError(f"{what}: invalid port, got {shown!r}") from None
    if parts.fragment or url.endswith("#"):
        raise UrlError(f"{what}: must not have a #fragment, got {shown!r}")
    return url.rstrip("/")


def redact_url(url: str) -> str:
    """`https://user:pw@host/v1` -> `https://***@host/v1`; other strings unchanged."""
    return _USERINFO_IN_TEXT.sub(rf"\g<1>{REDACTED}@", url)


def redact_text(text: str) -> str:
    """Free text (an error, an exception message) with the userinfo of every URL in it replaced."""
    return _USERINFO_IN_TEXT.sub(rf"\g<1>{REDACTED}@", text) if "@" in text else text


def normalize_proxy_url(url: str) -> str:
    """A `?proxy=` URL in one canonical form, or UrlError.

    Lower-case scheme and host, default port dropped, `%2e` decoded and `.`/`..` segments resolved
    (RFC 3986 5.2.4), no userinfo, query or fragment, no encoded `/`, `\\`, `%` or controls.
    """
    url = check_http_url(url, "the proxy URL")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise UrlError("a proxy URL must not carry credentials (send them in X-Upstream-Authorization)")
    if parts.query or "?" in url:
        raise UrlError("a proxy URL must not have a query string")
    if _ENCODED_SEPARATOR.search(parts.path):
        raise UrlError("a proxy URL must not contain encoded '/', '\\', '%' or control characters")
    path = _remove_dot_segments(_ENCODED_DOT.sub(".", parts.path))
    return urlunsplit(SplitResult(parts.scheme.lower(), _canonical_netloc(parts), path.rstrip("/"), "", ""))


def allowed_proxy_url(url: str, allowlist: Iterable[str]) -> str:
    """The normalised proxy URL when it lies under one of `allowlist`'s prefixes; else an OpenAI 403."""
    prefixes = [normalize_proxy_url(prefix) for prefix in allowlist]
    if not prefixes:
        raise errors.forbidden("Proxy mode is disabled on this router (PROXY_ALLOWLIST is empty).")
    try:
        target = normalize_proxy_url(url)
    except UrlError as exc:
        raise errors.forbidden(f"Proxy target refused: {exc}.") from None
    if not any(_under(target, prefix) for prefix in prefixes):
        raise errors.forbidden(f"Proxy target '{target}' is not in this router's PROXY_ALLOWLIST.")
    return target


def _under(url: str, prefix: str) -> bool:
    return url == prefix or url.startswith(prefix + "/")


def _canonical_netloc(parts: SplitResult) -> str:
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is None or port == _DEFAULT_PORTS[parts.scheme.lower()]:
        return host
    return f"{host}:{port}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: `/a/b/../c/./d` -> `/a/c/d`; never climbs above `/`."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result
