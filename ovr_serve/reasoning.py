"""vLLM reasoning parser plugin ``ovr``: splits ``<think>…</think>`` by text, not by token id.

Loaded by vLLM with ``--reasoning-parser-plugin ovr_serve.reasoning --reasoning-parser ovr``.
vLLM's own ``<think>`` parsers look the tags up as single vocabulary entries and refuse to start
when a tokenizer lacks them (Qwen2.5-VL's added tokens do not include them), and they cannot
handle a chat template that opens ``<think>`` in the prompt. This parser works from the text with
``ovr_core.format.ReasoningStream``, so streaming and non-streaming give the same split, and a
tag streamed in pieces is held back until it is whole.

Whether the prompt already opened ``<think>`` is a server-wide fact of the chat template, decided
by the launcher and passed in ``OVR_THINK_IN_PROMPT`` ("1"/"0").

The server emits the trace in the ``reasoning`` field (vLLM ≥ 0.13 name; clients we write also
read the older ``reasoning_content``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.reasoning import ReasoningParser, ReasoningParserManager

from ovr_core.format import THINK_CLOSE, THINK_OPEN, ReasoningStream, split_reasoning

THINK_IN_PROMPT_ENV = "OVR_THINK_IN_PROMPT"


def _think_in_prompt() -> bool:
    return os.environ.get(THINK_IN_PROMPT_ENV, "0") == "1"


@ReasoningParserManager.register_module("ovr")
class OVRReasoningParser(ReasoningParser):
    """Text-based ``<think>`` parser; one instance per request stream."""

    # "Engine-based" in vLLM's sense: we decide the end of reasoning ourselves
    # (has_engine_confirmed_reasoning_end) and release held-back text in finish_streaming().
    engine_based_streaming = True

    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(tokenizer, *args, **kwargs)
        self._think_in_prompt = _think_in_prompt()
        self._stream = ReasoningStream(think_in_prompt=self._think_in_prompt)

    @property
    def reasoning_start_str(self) -> str:
        return THINK_OPEN

    @property
    def reasoning_end_str(self) -> str:
        return THINK_CLOSE

    # Whole output (non-streaming).
    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        split = split_reasoning(model_output, self._think_in_prompt)
        return (split.reasoning if split.had_reasoning else None), (split.answer or None)

    # Streaming.
    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> DeltaMessage | None:
        delta = self._stream.feed(delta_text)
        return _to_message(delta)

    def has_engine_confirmed_reasoning_end(self) -> bool:
        # Only once answer text has started: after this vLLM passes deltas through unparsed, and
        # the answer's leading whitespace must still go through our stream to match non-streaming.
        return self._stream.answer_started

    def finish_streaming(self) -> DeltaMessage | None:
        return _to_message(self._stream.finish())

    # Token-level checks, used on the prompt and by structured outputs.
    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        # vLLM also asks this of the prompt: only the turn being generated counts, so an earlier
        # assistant turn's "</think>" in the history does not switch the parser off.
        text = self._decode(input_ids).rsplit("<|im_start|>", 1)[-1]
        return THINK_CLOSE in text and text.rfind(THINK_CLOSE) > text.rfind(THINK_OPEN)

    def is_reasoning_end_streaming(
        self, input_ids: Sequence[int], delta_ids: Iterable[int]
    ) -> bool:
        window = list(input_ids[-(len(list(delta_ids)) + 8) :])
        return THINK_CLOSE in self._decode(window)

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        text = ""
        for i in range(len(input_ids)):  # first token after which "</think>" is complete
            text = self._decode(input_ids[: i + 1])
            if THINK_CLOSE in text:
                return input_ids[i + 1 :]
        return []

    def _decode(self, ids: Sequence[int]) -> str:
        return self.model_tokenizer.decode(list(ids), skip_special_tokens=False)


def _to_message(delta) -> DeltaMessage | None:
    if not delta:
        return None
    return DeltaMessage(reasoning=delta.reasoning or None, content=delta.answer or None)
