"""Server logs: human-readable by default, one JSON object per line with LOG_FORMAT=json.

Both formats are safe to feed with client-chosen text (model names, headers, upstream errors):
messages are cut to MAX_MESSAGE_CHARS, URL credentials are redacted, and in the text format
every control character is escaped (`\\n`, `\\x1b`, ...) so a message is always exactly one line.
Tracebacks keep their lines, each indented, so nothing but a log record starts a line.
"""

from __future__ import annotations

import logging
import re
import sys

import orjson

from router.config import Settings
from router.urls import redact_text

MAX_MESSAGE_CHARS = 8192
# C0 and C1 controls, DEL, Unicode line/paragraph separators and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line: control characters as backslash escapes."""
    return _CONTROL.sub(_escape, text)


def bounded_message(text: str) -> str:
    """A log message cut to MAX_MESSAGE_CHARS, with credentials in URLs redacted."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    return redact_text(text)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record (plus indented traceback lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(bounded_message(record.getMessage()))
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for detail in details:
            lines = redact_text(detail).splitlines()
            line += "".join(f"\n    {escape_controls(text)}" for text in lines)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": bounded_message(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings) -> None:
    # Neither format shows threads, processes or the calling line: a record without them costs
    # ~3 µs less, and the request path logs one per request (benchmarks/README.md).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Tortoise logs every SQL statement at DEBUG, including values: keep it quieter.
    logging.getLogger("tortoise").setLevel(max(logging.INFO, root.level))
