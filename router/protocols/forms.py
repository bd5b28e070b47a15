"""Multipart uploads routed by a form field: `/v1/audio/transcriptions` and `/v1/audio/translations`.

The body (already bounded by MAX_REQUEST_BODY_MB) is sent upstream as the client sent it, with
its own `Content-Type` (boundary included). Only the small text fields are read (`model`,
`stream`, `language`...), so routing, scripts and logs see them; the file part is never copied.
When routing changes the model (`[alias]model`), the `model` part is rewritten in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from router import errors
from router.protocols.generic import ModelRouted

MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]{1,200})"', re.IGNORECASE)


def boundary_of(content_type: str) -> bytes:
    match = _BOUNDARY.search(content_type) if content_type.lower().startswith("multipart/form-data") else None
    if match is None:
        raise errors.bad_request("This endpoint takes a multipart/form-data upload.", "invalid_content_type")
    return match.group(1).encode("latin-1")


def _parts(body: bytes, boundary: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(start, end, headers, value) of each part, positions in `body`; linear in the body's size."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    while position >= 0:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":
            return
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            return
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end >= 0:
            yield start, end, body[start:head_end], body[head_end + 4 : end]
        position = end + 2


def form_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """The text fields of a multipart body (files skipped), bounded in number and size, or a 400."""
    fields: dict[str, Any] = {}
    for _, _, head, value in _parts(body, boundary_of(content_type)):
        name = _NAME.search(head)
        if name is None or b"filename=" in head.lower():
            continue
        if len(fields) >= MAX_FIELDS or len(value) > MAX_FIELD_BYTES:
            raise errors.bad_request("Too many or too large form fields.", "invalid_form")
        fields[name.group(1).decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return fields


def with_field(body: bytes, content_type: str, field: str, value: str) -> bytes:
    """`body` with the text field `field` set to `value` (the rest byte for byte)."""
    for _, end, head, old in _parts(body, boundary_of(content_type)):
        name = _NAME.search(head)
        if name is not None and name.group(1) == field.encode() and b"filename=" not in head.lower():
            value_start = end - len(old)
            return body[:value_start] + value.encode() + body[end:]
    return body


class AudioUpload(ModelRouted):
    """Speech to text: a multipart upload, answered with JSON (or text, or SSE when `stream=true`)."""

    form_body: ClassVar[bool] = True
    streamable: ClassVar[bool] = True

    def form_payload(self, body: bytes, content_type: str) -> dict[str, Any]:
        payload = form_fields(body, content_type)
        if payload.get("stream") in ("true", "True", "1"):
            payload["stream"] = True
        return payload

    def encode_form(self, body: bytes, content_type: str, payload: dict[str, Any]) -> bytes:
        return with_field(body, content_type, "model", str(payload.get("model", "")))

    def passed_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {"Content-Type": headers.get("content-type", "")}


FORM_ADAPTERS = {
    "/v1/audio/transcriptions": AudioUpload("transcriptions", "/audio/transcriptions"),
    "/v1/audio/translations": AudioUpload("translations", "/audio/translations"),
}
