"""Upstream API keys at rest: Fernet-encrypted with SECRETS_KEY when it is set.

Stored form: `fernet:<token>` (AES-128-CBC + HMAC-SHA256, from `cryptography`); a value without
the prefix is plaintext (SECRETS_KEY unset, or written before it was set). Keys are decrypted only
into the in-memory catalog; the database, GraphQL, logs and the CLI never see them in clear.

Rotation: SECRETS_KEY is a comma-separated list. The first key encrypts, every key decrypts, and
at start-up every stored key not encrypted with the first one is re-encrypted with it. So set
`SECRETS_KEY=new,old`, start once, then drop `old`.
"""

from __future__ import annotations

import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("router.crypto")

PREFIX = "fernet:"


class SecretError(Exception):
    """A stored secret cannot be decrypted (no SECRETS_KEY, or not the key it was written with)."""


def check_secrets_key(value: list[str]) -> None:
    """Raise ValueError unless every entry is a Fernet key (32 url-safe base64-encoded bytes)."""
    for number, key in enumerate(value, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(
                f"key {number} is not a Fernet key (make one with: python -c "
                '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
            ) from None


class SecretBox:
    """Seals values for storage and opens them again; without keys it stores plaintext."""

    def __init__(self, keys: list[str] | None = None) -> None:
        self._keys = [Fernet(key) for key in keys or ()]
        self._fernet = MultiFernet(self._keys) if self._keys else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, value: str | None) -> str | None:
        """The form to store: encrypted when a key is configured, else as given."""
        if not value or self._fernet is None:
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str | None) -> str | None:
        """The clear value of a stored one; raises SecretError when it cannot be decrypted."""
        if not stored or not stored.startswith(PREFIX):
            return stored
        if self._fernet is None:
            raise SecretError("it is encrypted and SECRETS_KEY is not set")
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretError("it was encrypted with a key that is not in SECRETS_KEY") from None

    def restored(self, stored: str | None) -> str | None:
        """What `stored` should become: sealed with the first key (None when it already is)."""
        if not stored or self._fernet is None:
            return None
        if not stored.startswith(PREFIX):
            return self.seal(stored)
        token = stored[len(PREFIX) :].encode()
        try:
            self._keys[0].decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return PREFIX + self._fernet.rotate(token).decode()
        except InvalidToken:
            raise SecretError("it was encrypted with a key that is not in SECRETS_KEY") from None


async def seal_stored_keys(box: SecretBox) -> int:
    """At start-up: encrypt plaintext keys, re-encrypt those of an older key; refuse undecryptable ones.

    Returns how many rows changed. A SecretError names each backend whose key cannot be read.
    """
    from router.models.core import Backend

    problems, changed = [], 0
    for backend_id, name, stored in await Backend.filter(api_key__not_isnull=True).values_list("id", "name", "api_key"):
        try:
            box.open(stored)
            new = box.restored(stored)
        except SecretError as exc:
            problems.append(f"backend {name!r}: {exc}")
            continue
        if new is not None:
            changed += await Backend.filter(id=backend_id, api_key=stored).update(api_key=new)
    if problems:
        raise SecretError("cannot read stored upstream API keys (SECRETS_KEY): " + "; ".join(problems))
    if changed:
        log.info("encrypted %d stored upstream API keys with the first SECRETS_KEY", changed)
    return changed
