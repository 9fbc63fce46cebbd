"""The web UI's stream reading: every wire shape of the trace gives the same reasoning and answer."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletionChunk

from ovr_core.format import split_reasoning
from webui.stream import TurnStream, UpdateThrottle, delta_fields

TRACE = "The image shows 3 circles </thi and 2 squares; count the circles: 3."
ANSWER = "There are three circles, so the count is $\\boxed{3}$."
INLINE = f"<think>\n{TRACE}\n</think>\n\n{ANSWER}"


def chunk(content=None, reasoning=None, field="reasoning", finish=None) -> dict:
    delta = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta[field] = reasoning
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def replay(chunks: list[dict], **kw) -> TurnStream:
    turn = TurnStream(**kw)
    for c in chunks:
        turn.feed(c)
    turn.finish()
    return turn


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_inline_tags_split_across_chunks_give_the_whole_text_split(size):
    whole = split_reasoning(INLINE)
    turn = replay([chunk(p) for p in pieces(INLINE, size)] + [chunk(finish="stop")])
    assert (turn.reasoning, turn.answer) == (whole.reasoning, whole.answer)
    assert turn.answer == ANSWER and "</think>" not in turn.answer + turn.reasoning


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_server_split_fields_and_inline_tags_read_the_same(field):
    split_chunks = [chunk(reasoning=p, field=field) for p in pieces("\n" + TRACE + "\n", 4)]
    split_chunks += [chunk(p) for p in pieces("\n\n" + ANSWER, 4)] + [chunk(finish="stop")]
    by_field = replay(split_chunks)
    inline = replay([chunk(p) for p in pieces(INLINE, 4)] + [chunk(finish="stop")])
    assert (by_field.reasoning, by_field.answer) == (inline.reasoning, inline.answer)


def test_trace_that_never_closes_is_all_reasoning_and_marked_truncated():
    cut = INLINE[: INLINE.index("</think>") - 3]  # cut mid-trace by the token limit
    turn = replay([chunk(p) for p in pieces(cut, 3)] + [chunk(finish="length")])
    assert turn.answer == "" and turn.truncated
    assert turn.reasoning == split_reasoning(cut).reasoning
    assert TRACE[:20] in turn.reasoning


def test_partial_closing_tag_at_the_end_of_a_cut_trace_is_released_as_reasoning():
    turn = replay([chunk("<think>abc</thi"), chunk(finish="length")])
    assert turn.reasoning == "abc</thi" and turn.answer == "" and turn.truncated


def test_empty_answer_after_closed_trace_is_not_truncated():
    turn = replay([chunk("<think>look</think>"), chunk("\n\n"), chunk(finish="stop")])
    assert turn.reasoning == "look" and turn.answer == "" and not turn.truncated
    assert not turn.thinking


def test_closing_tag_without_opening_one_reads_the_prompt_opened_trace():
    # A template that opens <think> in the prompt, with a server that does not split.
    text = TRACE + "\n</think>\n\n" + ANSWER
    turn = replay([chunk(p) for p in pieces(text, 2)] + [chunk(finish="stop")])
    assert turn.reasoning == split_reasoning(text, think_in_prompt=True).reasoning
    assert turn.answer == ANSWER


def test_plain_answer_without_any_tags_is_all_answer():
    turn = replay([chunk(p) for p in pieces(ANSWER, 3)] + [chunk(finish="stop")])
    assert turn.reasoning == "" and turn.answer == ANSWER


@pytest.mark.parametrize("server_splits", [True, False])
def test_continuing_a_cut_trace_appends_to_it(server_splits):
    more = " and one more look.\n"
    if server_splits:
        chunks = [chunk(reasoning=more), chunk("\n\n" + ANSWER)]
    else:  # the continuation arrives as content, closing tag inside
        chunks = [chunk(more + "</thi"), chunk("nk>\n\n" + ANSWER)]
    turn = replay(chunks + [chunk(finish="stop")], prior_reasoning="So far" + "\n")
    assert turn.reasoning == "So far\n" + more and turn.answer == ANSWER


def test_openai_chunk_objects_carry_both_reasoning_names():
    for field in ("reasoning", "reasoning_content"):
        obj = ChatCompletionChunk.model_validate(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "ovr",
                "choices": [{"index": 0, "delta": {field: "hmm", "content": None}}],
            }
        )
        assert delta_fields(obj).reasoning == "hmm"


def test_only_the_first_choice_is_read_when_several_interleave():
    turn = TurnStream()
    for i, text in [(1, "<think>other"), (0, "<think>mine</think>A"), (1, "</think>B")]:
        turn.feed({"choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]})
    turn.finish()
    assert (turn.reasoning, turn.answer) == ("mine", "A")


def test_usage_chunk_without_choices_is_read():
    d = delta_fields({"choices": [], "usage": {"completion_tokens": 42}})
    assert d.completion_tokens == 42 and d.content == "" and d.reasoning == ""


def test_token_count_and_thinking_time_freeze_when_the_answer_starts():
    now = [0.0]
    turn = TurnStream(clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 0.5
        turn.feed(chunk(reasoning=f"step {i} "))
    assert turn.thinking and turn.reasoning_tokens == 10 and turn.elapsed() == 4.5
    now[0] = 6.0
    turn.feed(chunk("The answer"))
    now[0] = 60.0
    turn.feed(chunk(" is 3.", finish="stop"))
    assert not turn.thinking and turn.elapsed() == 6.0 and turn.answer_tokens == 2


def test_throttle_batches_a_fast_stream_to_the_interval():
    now = [0.0]
    throttle = UpdateThrottle(0.08, clock=lambda: now[0])
    for i in range(20_000):  # 20k tokens in 2 s
        now[0] = i * 1e-4
        throttle.due()
    assert 24 <= throttle.sent <= 27
    naive = UpdateThrottle(0.0, clock=lambda: now[0])
    assert all(naive.due() for _ in range(100))


def with_tokens(c: dict, *tokens: str) -> dict:
    c["choices"][0]["logprobs"] = {"content": [{"token": t, "logprob": -0.1} for t in tokens]}
    return c


@pytest.mark.parametrize("server_splits", [False, True])
def test_continuation_gets_back_the_leading_space_the_server_stripped(server_splits):
    # The server read " circles" as the start of an answer and stripped its space.
    part = (lambda t: chunk(reasoning=t)) if server_splits else chunk
    chunks = [with_tokens(part("circles"), " circles"), with_tokens(part(" here"), " here")]
    turn = replay(chunks + [chunk(finish="stop")], prior_reasoning="I count three")
    assert turn.reasoning.startswith("I count three circles here")
    mid_word = [with_tokens(chunk("cles"), "cles")]  # a word cut in two needs no space
    assert replay(mid_word, prior_reasoning="I count three cir").reasoning == (
        "I count three circles"
    )
    no_logprobs = replay([chunk("circles")], prior_reasoning="three ")
    assert no_logprobs.reasoning == "three circles"  # nothing to restore, nothing doubled
