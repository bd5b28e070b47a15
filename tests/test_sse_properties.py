"""Property tests (hypothesis, bounded) on the SSE splitter and the usage parser."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.protocols import ADAPTERS, Usage, parse_usage
from router.upstream import SSEEventTooLarge, SSESplitter, sse_data, sse_event_around

_line = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30).map(
    str.encode
)
_event = st.lists(st.tuples(st.sampled_from([b"data: ", b"event: ", b": ", b"id: "]), _line), min_size=1, max_size=4)


def _render(events: list[list[tuple[bytes, bytes]]], crlf: bool) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    return b"".join(b"".join(field + value + nl for field, value in event) + nl for event in events)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=6), st.booleans(), st.lists(st.integers(min_value=0), max_size=12))
def test_any_cutting_of_a_stream_gives_the_same_events(events, crlf, cuts):
    data = _render(events, crlf)
    splitter = SSESplitter()
    out = [event for piece in _cut(data, cuts) for event in splitter.feed(piece)]
    expected = [e + b"\n\n" for e in data.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]]
    assert out == expected
    assert splitter.rest() == b""


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_are_kept_whole_and_in_order(data, cuts):
    splitter = SSESplitter()
    out = b"".join(event for piece in _cut(data, cuts) for event in splitter.feed(piece)) + splitter.rest()
    assert out == data.replace(b"\r\n", b"\n")


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=50))
def test_an_event_beyond_the_bound_raises(limit, chunk_size):
    splitter = SSESplitter(max_event_bytes=limit)
    data = b"data: " + b"x" * (limit + 1)
    with pytest.raises(SSEEventTooLarge):
        for i in range(0, len(data), chunk_size):
            splitter.feed(data[i : i + chunk_size])
    assert splitter.rest() == b""  # and the splitter starts over: nothing of the refused event is kept
    ok = b"data: ok\n\n"
    if len(ok) <= limit:  # a whole event is bounded too (a smaller bound refuses this one as well)
        assert splitter.feed(ok) == [ok]


# Lines that hit what the adapters look for in raw events (usage, a Responses id), among others.
_marked_line = _line | st.sampled_from(
    [b'{"usage": {"prompt_tokens": 1}}', b"response.created", b'{"type": "response.completed"}', b'"usage"']
)
_marked_event = st.lists(
    st.tuples(st.sampled_from([b"data: ", b"event: ", b"", b"\n"]), _marked_line), min_size=1, max_size=4
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_marked_event, min_size=1, max_size=6))
def test_the_events_a_whole_chunk_is_searched_for_are_the_ones_splitting_finds(events):
    """The relay's one pass over a chunk of whole events (`Adapter.wanted_at`, `sse_event_around`)
    reads the events splitting and asking `wants_event` of each would, cut at the same bytes."""
    split = SSESplitter().feed(_render(events, crlf=False))
    chunk = b"".join(split)  # whole events (an odd line break after the last would start the next)
    assert SSESplitter().is_clean(chunk) or not chunk
    spans, start = [], 0
    for event in split:
        spans.append((start, start + len(event)))
        start += len(event)
    for adapter in ADAPTERS.values():
        expected = [span for span, event in zip(spans, split, strict=True) if adapter.wants_event(event)]
        found, done = [], 0
        while (at := adapter.wanted_at(chunk, done)) >= 0:
            found.append(sse_event_around(chunk, done, at))
            done = found[-1][1]
        assert found == expected, adapter.name


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"") + b"\n\n"), st.data())
def test_the_event_around_a_byte_is_the_one_splitting_gives(chunk, data):
    events = SSESplitter().feed(chunk)
    starts = [0]
    for event in events:
        starts.append(starts[-1] + len(event))
    boundary = data.draw(st.sampled_from(starts[:-1]))
    inside = [i for i in range(boundary, len(chunk)) if chunk[i] != 10]
    if not inside:
        return
    at = data.draw(st.sampled_from(inside))
    index = max(i for i, start in enumerate(starts[:-1]) if start <= at)
    assert sse_event_around(chunk, boundary, at) == (starts[index], starts[index + 1])


@settings(max_examples=300, deadline=None)
@given(_marked_event | st.lists(st.tuples(st.just(b"data:"), _line), min_size=1, max_size=1), st.booleans())
def test_an_events_data_is_its_data_lines_joined(event, ended):
    raw = _render([event], crlf=False)
    raw = raw if ended else raw[:-1]
    lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
    assert sse_data(raw) == (b"\n".join(lines) if lines else None)


def test_splitting_is_linear_in_the_event_size():
    """A piece costs the same whether 0 or 16 MB of an event are already pending (a rescanning,
    quadratic splitter pays for the whole pending event on every piece: hundreds of times more)."""
    piece = b"x" * 4096

    def cost_of_pieces(pending_bytes: int) -> float:
        best = float("inf")
        for _ in range(5):
            splitter = SSESplitter(max_event_bytes=64 * 1024 * 1024)
            splitter.feed(b"data: ")
            for _ in range(pending_bytes // len(piece)):
                splitter.feed(piece)
            started = time.process_time()
            for _ in range(256):
                splitter.feed(piece)
            best = min(best, time.process_time() - started)
            assert len(splitter.feed(b"\n\n")[0]) == pending_bytes + 256 * len(piece) + 8
        return best

    empty, full = cost_of_pieces(0), cost_of_pieces(16 * 1024 * 1024)
    assert full < 8 * empty + 0.005, (empty, full)  # linear: ~1x; quadratic: ~500x


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=30), inner, max_size=4),
    max_leaves=12,
)
_usage_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
    ]
)


# The keys the parser reads inside *_tokens_details, or any other: random text alone almost never hit them.
_detail_keys = st.sampled_from(["cached_tokens", "reasoning_tokens"]) | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        _usage_keys,
        _json | st.integers() | st.dictionaries(_detail_keys, _json | st.integers(), max_size=4),
        max_size=8,
    )
)
def test_usage_parser_never_raises_and_counts_only_non_negative_ints(usage):
    parsed = parse_usage(usage)
    assert isinstance(parsed, Usage)
    for value in (parsed.prompt, parsed.completion, parsed.total, parsed.cached, parsed.cache_write, parsed.reasoning):
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0
    for adapter in ADAPTERS.values():
        adapter.usage_of_body({"usage": usage})
        adapter.usage_of_event("response.completed", {"response": {"usage": usage}})


@settings(max_examples=200, deadline=None)
@given(_json)
def test_adapters_accept_any_json_event(data):
    for adapter in ADAPTERS.values():
        adapter.usage_of_event(None, data)
        adapter.response_id_of_event("response.created", data)
        adapter.text_of_event("response.output_text.delta", data)
        adapter.without_usage(None, data)
        adapter.usage_of_body(data)
