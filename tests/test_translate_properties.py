"""Property tests of the stream translators: any chat stream, cut into chunks anywhere, must be
rebuilt by the official SDKs' stream helpers into exactly the answer it carried."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.protocols import translate as t
from tests.test_translate import anthropic_final, chunk, openai_responses_final, run

# A segment of an answer: ("text", s), ("reasoning", s) or ("tool", name, arguments object).
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
arguments = st.dictionaries(
    st.sampled_from(["city", "n", "flag"]), st.one_of(st.integers(-(2**53), 2**53), texts, st.booleans()), max_size=3
)
segments = st.lists(
    st.one_of(
        st.tuples(st.just("text"), texts),
        st.tuples(st.just("reasoning"), texts),
        st.tuples(st.just("tool"), st.sampled_from(["get_weather", "search"]), arguments),
    ),
    min_size=1,
    max_size=6,
)


def cut(value: str, cuts: list[int]) -> list[str]:
    """`value` in pieces at the given offsets (every piece non-empty)."""
    points = sorted({c % len(value) for c in cuts if c % len(value)})
    return [value[a:b] for a, b in zip([0, *points], [*points, len(value)], strict=True)]


def chat_chunks(answer: list[Any], cuts: list[int], finish: str) -> list[dict[str, Any]]:
    chunks = [chunk("", role="assistant")]
    tools = 0
    for segment in answer:
        if segment[0] == "tool":
            raw = orjson.dumps(segment[2]).decode()
            call_id = f"call_{tools}"
            first = {
                "index": tools,
                "id": call_id,
                "type": "function",
                "function": {"name": segment[1], "arguments": ""},
            }
            chunks.append(chunk(tool_calls=[first]))
            chunks += [chunk(tool_calls=[{"index": tools, "function": {"arguments": p}}]) for p in cut(raw, cuts)]
            tools += 1
        else:
            key = "content" if segment[0] == "text" else "reasoning"
            chunks += [chunk(p) if key == "content" else chunk(reasoning=p) for p in cut(segment[1], cuts)]
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    return [*chunks, chunk(finish=finish), chunk(no_choices=True, usage=usage)]


def expected_blocks(answer: list[Any]) -> list[tuple[str, Any]]:
    """Adjacent text (or reasoning) pieces form one block; each tool call is its own."""
    blocks: list[tuple[str, Any]] = []
    for segment in answer:
        if segment[0] != "tool" and blocks and blocks[-1][0] == segment[0]:
            blocks[-1] = (segment[0], blocks[-1][1] + segment[1])
        else:
            blocks.append((segment[0], segment[1] if segment[0] != "tool" else (segment[1], segment[2])))
    return blocks


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(answer=segments, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=4))
def test_any_chat_stream_is_rebuilt_by_the_anthropic_sdk(answer: list[Any], cuts: list[int]) -> None:
    has_tools = any(s[0] == "tool" for s in answer)
    message = anthropic_final(
        run(t.ChatToMessagesStream("m"), chat_chunks(answer, cuts, "tool_calls" if has_tools else "stop"))
    )
    rebuilt: list[tuple[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            rebuilt.append(("text", block.text))
        elif block.type == "thinking":
            rebuilt.append(("reasoning", block.thinking))
        elif block.type == "tool_use":
            rebuilt.append(("tool", (block.name, block.input)))
    assert rebuilt == expected_blocks(answer)
    assert message.stop_reason == ("tool_use" if has_tools else "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 5)


@SETTINGS
@given(answer=segments, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=4))
def test_any_chat_stream_is_rebuilt_by_the_openai_responses_sdk(answer: list[Any], cuts: list[int]) -> None:
    response = openai_responses_final(run(t.ChatToResponsesStream({"model": "m"}), chat_chunks(answer, cuts, "stop")))
    rebuilt: list[tuple[str, Any]] = []
    for item in response.output:
        if item.type == "message":
            rebuilt.append(("text", "".join(part.text for part in item.content if part.type == "output_text")))
        elif item.type == "reasoning":
            rebuilt.append(("reasoning", "".join(part.text for part in item.content or [])))
        elif item.type == "function_call":
            rebuilt.append(("tool", (item.name, orjson.loads(item.arguments))))
    assert rebuilt == expected_blocks(answer)
    assert response.status == "completed" and response.usage.total_tokens == 8
