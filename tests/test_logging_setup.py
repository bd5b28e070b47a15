"""The server log's handler and formatters: cheaper per request, the same lines written."""

from __future__ import annotations

import asyncio
import io
import logging
import random

import pytest

from router.logging_setup import (
    _CONTROL,
    JsonFormatter,
    TextFormatter,
    TurnBufferedHandler,
    _escape,
    direct_handler,
    escape_controls,
)


def _logger(stream: io.StringIO) -> tuple[logging.Logger, TurnBufferedHandler]:
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.logging_setup.turns")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


async def test_lines_logged_on_the_loop_are_written_together_at_the_next_turn() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream)
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == ""  # kept until the loop's next turn
    await asyncio.sleep(0)
    assert stream.getvalue() == "one\ntwo\n"
    logger.info("three")
    handler.flush()  # what shutdown calls: nothing kept is lost
    assert stream.getvalue() == "one\ntwo\nthree\n"
    await asyncio.sleep(0)
    assert stream.getvalue() == "one\ntwo\nthree\n"  # written once


async def test_lines_logged_off_the_loop_are_written_at_once_and_in_order() -> None:
    stream = io.StringIO()
    logger, _ = _logger(stream)
    logger.info("on the loop")
    await asyncio.to_thread(logger.info, "in a thread")  # writes what the loop kept first
    assert stream.getvalue() == "on the loop\nin a thread\n"
    logger.handlers.clear()
    logger.info("no loop either")  # (no handler: only that nothing breaks)


def test_a_broken_stream_does_not_break_the_caller() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream)
    stream.close()
    logger.info("lost")
    handler.flush()


def test_escape_controls_fast_path_agrees_with_the_regex() -> None:
    rng = random.Random(19)
    alphabet = [chr(c) for c in range(0x00, 0x250)] + ["\u2028", "\u202e", "\u2066", "é", "日"]
    texts = ["request id=abc POST /v1/chat/completions user=bench status=200", "", "plain ~ text"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for text in texts:
        assert escape_controls(text) == _CONTROL.sub(_escape, text), repr(text)


def test_cached_times_match_loggings_own() -> None:
    plain = logging.Formatter("%(asctime)s")
    for created in (0.0, 1_764_460_800.0004, 1_764_460_800.9996, 1_764_460_801.5, 1_764_460_801.999):
        record = logging.LogRecord("router", logging.INFO, "", 0, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert TextFormatter().format(record).split(" INFO ")[0] == plain.format(record)
        assert JsonFormatter().format(record).split('"time":"')[1][:19] == plain.formatTime(record, "%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
async def test_a_direct_info_line_is_the_line_logging_writes(formatter: type[logging.Formatter], monkeypatch) -> None:
    stream = io.StringIO()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(formatter())
    parent = logging.getLogger("test.logging_setup.direct")
    parent.handlers[:] = [handler]
    parent.propagate = False
    parent.setLevel(logging.INFO)
    logger = logging.getLogger("test.logging_setup.direct.requests")
    messages = ["request id=a POST /v1 user=x\nforged", "model=é日\u2028 %s %d", "http://u:p@host/ x" + "z" * 9000, ""]
    for created in (1_764_460_800.0004, 1_764_460_800.9996, 1_764_460_801.5):
        monkeypatch.setattr("time.time", lambda created=created: created)  # logging's LogRecord and the handler's
        for message in messages:
            assert direct_handler(logger) is handler
            logger.info("%s", message)
            handler.info(logger.name, message)
    await asyncio.sleep(0)
    lines = stream.getvalue().split("\n")[:-1]  # (JSON keeps a U+2028 as it is)
    assert len(lines) == 2 * 3 * len(messages) and lines[0::2] == lines[1::2]

    extra = logging.StreamHandler(io.StringIO())
    for change, undo in (
        (lambda: parent.addHandler(extra), lambda: parent.removeHandler(extra)),
        (lambda: logger.addFilter(logging.Filter("x")), lambda: logger.filters.clear()),
        (lambda: handler.addFilter(logging.Filter("x")), lambda: handler.filters.clear()),
        (lambda: handler.setFormatter(logging.Formatter()), lambda: handler.setFormatter(formatter())),
        (lambda: handler.setLevel(logging.WARNING), lambda: handler.setLevel(logging.NOTSET)),
        (lambda: parent.setLevel(logging.WARNING), lambda: parent.setLevel(logging.INFO)),
    ):
        change()
        assert direct_handler(logger) is None  # logging's own way then
        undo()
        assert direct_handler(logger) is handler
