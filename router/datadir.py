"""What the router keeps in its data directory besides SQLite: the admin session secret."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("router")

SESSION_SECRET_FILE = "session-secret"


def session_secret(data_dir: str) -> str:
    """The secret that signs admin sessions, made once and kept in `data_dir` (mode 0600).

    So a restart (or another worker of this host) accepts the sessions already given out. Two
    processes creating it at once agree: the file appears whole (a link of a finished temporary
    file) or not at all, and the loser reads the winner's.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SESSION_SECRET_FILE
    if not path.exists():
        temporary = directory / f".{SESSION_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
                log.info("admin sessions are signed with a new secret kept in %s", path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users (mode %o): chmod 600 it", path, path.stat().st_mode & 0o777)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds no usable secret: delete it to make a new one, or set ADMIN_SESSION_SECRET")
    return secret
