"""Server logs: human-readable by default, one JSON object per line with LOG_FORMAT=json.

Both formats are safe to feed with client-chosen text (model names, headers, upstream errors):
messages are cut to MAX_MESSAGE_CHARS, URL credentials are redacted, and in the text format
every control character is escaped (`\\n`, `\\x1b`, ...) so a message is always exactly one line.
Tracebacks keep their lines, each indented, so nothing but a log record starts a line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import TextIO

import orjson

from router.config import Settings
from router.urls import redact_text

MAX_MESSAGE_CHARS = 8192
# C0 and C1 controls, DEL, Unicode line/paragraph separators and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _plain_ascii(text: str) -> bool:
    """ASCII without controls: nothing to escape (one C-level pass; faster than `str.isprintable`)."""
    return text.isascii() and not text.encode().translate(None, _PRINTABLE_ASCII)


def escape_controls(text: str) -> str:
    """`text` on one line: control characters as backslash escapes."""
    if _plain_ascii(text):  # the common case, without the regex
        return text
    return _CONTROL.sub(_escape, text)


def bounded_message(text: str) -> str:
    """A log message cut to MAX_MESSAGE_CHARS, with credentials in URLs redacted."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    return redact_text(text)


def shown_message(text: str) -> str:
    """`escape_controls(bounded_message(text))`; the common case (short, plain ASCII, no URL userinfo) as it is."""
    if len(text) <= MAX_MESSAGE_CHARS and "@" not in text and _plain_ascii(text):
        return text
    return escape_controls(bounded_message(text))


class _SecondCache:
    """`time.strftime(fmt, localtime(t))` computed once per second (the request path logs a line per request)."""

    __slots__ = ("_fmt", "_second", "_text")

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self._fmt, time.localtime(second))
        return self._text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record (plus indented traceback lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._seconds = _SecondCache(self.default_time_format)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # logging's default_msec_format

    def line(self, created: float, level: str, name: str, message: str) -> str:
        """What `format` makes of a record without exception or stack (`direct_handler`'s lines)."""
        msecs = int((created - int(created)) * 1000)  # as logging.LogRecord computes it
        return f"{self._seconds(created)},{msecs:03d} {level} {name}: {shown_message(message)}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = shown_message(record.getMessage())
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
    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self._seconds(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": bounded_message(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()

    def line(self, created: float, level: str, name: str, message: str) -> str:
        """What `format` makes of a record without exception (`direct_handler`'s lines)."""
        entry = {"time": self._seconds(created), "level": level, "logger": name, "message": bounded_message(message)}
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings) -> None:
    # Neither format shows threads, processes or the calling line: a record without them costs
    # ~3 µs less, and the request path logs one per request (benchmarks/README.md).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Tortoise logs every SQL statement at DEBUG, including values: keep it quieter.
    logging.getLogger("tortoise").setLevel(max(logging.INFO, root.level))


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the lines logged during one event-loop turn together.

    On the thread of a running event loop a record's line is kept until the loop's next turn (one
    write and one flush for every line of a turn: the request path logs a line per request);
    anywhere else it is written at once. `flush()` writes what is kept (the app's shutdown and
    `logging.shutdown` call it), so nothing is lost when the loop stops.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._keep(line)

    def info(self, name: str, message: str) -> None:
        """What `logging.getLogger(name).info(message)` has this handler write (see `direct_handler`).

        The line is the formatter's, as for a LogRecord made now; no LogRecord is made.
        """
        formatter: TextFormatter | JsonFormatter = self.formatter  # type: ignore[assignment]  # direct_handler checked
        line = formatter.line(time.time(), "INFO", name, message) + self.terminator
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self._keep(line)

    def _keep(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._pending.append(line)
            self.flush()
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        self.acquire()
        try:
            text, self._pending = "".join(self._pending), []
            try:
                if text:
                    self.stream.write(text)
                super().flush()
            except Exception:  # a closed or broken stream must not break the loop or the caller
                pass
        finally:
            self.release()


def direct_handler(logger: logging.Logger) -> TurnBufferedHandler | None:
    """The handler an INFO record of `logger` reaches, when its `info` may write the line instead.

    That is when it is the only handler on the way (the served set-up: `setup_logging`'s, on the root
    logger), with the router's formatter, no filter on the way and the default LogRecord factory, and
    `logger` is enabled for INFO: logging would then do nothing but have it format and keep the line.
    Anything else (a test's capturing handler, a filter, another formatter): None, and the caller logs.
    """
    if not logger.isEnabledFor(logging.INFO) or logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    found: TurnBufferedHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or type(handler) is not TurnBufferedHandler
                or handler.filters
                or handler.level > logging.INFO
                or type(handler.formatter) not in _LINE_FORMATTERS
            ):
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


_LINE_FORMATTERS = (TextFormatter, JsonFormatter)


def flush_logs() -> None:
    """Write every line the root logger's handlers still keep (before a worker process exits)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
