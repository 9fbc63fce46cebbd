"""What each event of the web UI does: the chat's handlers, on plain values.

Each handler takes the conversation (a list of ``webui.conversation`` turns, kept in ``gr.State``)
and the settings the event reads, and returns the new conversation with what the chat shows; the
layout (``webui.layout``) wires them to buttons. Generation streams through ``webui.upstream`` to
any OpenAI-compatible endpoint, one update per ``UpdateThrottle`` interval.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import gradio as gr

from ovr_core.format import THINK_OPEN
from webui import conversation as conv
from webui.conversation import AssistantTurn, ErrorTurn, Turn, UserTurn
from webui.extra_sampling import parse_extra
from webui.render import to_chatbot, turn_of_message, unescape_html
from webui.settings import UISettings
from webui.stream import TurnStream, UpdateThrottle
from webui.upstream import Endpoint, describe_error, list_models, stream_turn

EMPTY_QUESTION = "Type a question or add an image first."


class ChatHandlers:
    """The event handlers of one app: sending, regenerating, continuing, stopping, files, models."""

    def __init__(self, endpoint: Endpoint, settings: UISettings):
        self.endpoint = endpoint
        self.settings = settings

    # --- sending ----------------------------------------------------------------------------
    def add_user(self, message: dict | None, conversation: list[Turn]):
        """Append the typed text and images as a user turn; refuse an empty message."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = [path_of(f) for f in message.get("files") or []]
        if not text and not files:
            raise gr.Error(EMPTY_QUESTION, print_exception=False)
        conversation = conversation + [UserTurn(text, files)]
        return conversation, to_chatbot(conversation), gr.update(value=None)

    def drop_answer(self, conversation: list[Turn]):
        """Remove everything after the last user turn, so it can be answered again."""
        last = conv.last_user(conversation)
        if last is None:
            raise gr.Error("Nothing to regenerate yet.", print_exception=False)
        conversation = conversation[: last + 1]
        return conversation, to_chatbot(conversation)

    def resend_edited(self, conversation: list[Turn], edit: gr.EditData):
        """A question edited in the chat: cut the conversation there and ask it again (images kept)."""
        index = edit.index[0] if isinstance(edit.index, (list, tuple)) else edit.index
        at = turn_of_message(conversation, index)
        text = unescape_html(
            edit.value if isinstance(edit.value, str) else conv.text_of(edit.value)
        )
        if at is None or not isinstance(conversation[at], UserTurn):
            raise gr.Error("Only your own questions can be edited.", print_exception=False)
        if not text.strip() and not conversation[at].images:
            raise gr.Error(EMPTY_QUESTION, print_exception=False)
        conversation = conversation[:at] + [UserTurn(text.strip(), list(conversation[at].images))]
        return conversation, to_chatbot(conversation)

    def edit_last(self, conversation: list[Turn]):
        """Put the last question (text and images) back in the input box and take it out of the chat."""
        last = conv.last_user(conversation)
        if last is None:
            return conversation, to_chatbot(conversation), gr.skip()
        box = _box_of(conversation[last])
        conversation = conversation[:last]
        return conversation, to_chatbot(conversation), box

    async def generate(
        self, conversation, model, system, temperature, top_p, max_tokens, traces, extra="{}"
    ):
        """Stream an answer to the conversation's last user turn into a new assistant turn."""
        messages = conv.to_openai(conversation, system, include_reasoning=traces)
        turn = AssistantTurn()
        conversation.append(turn)
        request = lambda: self._request(model, messages, temperature, top_p, max_tokens, extra)  # noqa: E731
        async for update in self._stream(conversation, turn, request, TurnStream()):
            yield update

    async def continue_trace(
        self, conversation, model, system, temperature, top_p, max_tokens, traces, extra="{}"
    ):
        """Continue a trace the token limit cut off, in the same assistant turn."""
        if not conversation or not conv.is_truncated(conversation[-1]):
            yield conversation, to_chatbot(conversation), gr.update(visible=False), gr.skip()
            return
        turn = conversation[-1]
        messages = conv.to_openai(conversation[:-1], system, include_reasoning=traces)
        # The cut-off trace goes back as the start of the reply; vLLM continues it in place.
        messages.append({"role": "assistant", "content": THINK_OPEN + turn.reasoning})

        def request():
            r = self._request(model, messages, temperature, top_p, max_tokens, extra)
            r["extra_body"] = {
                **r.get("extra_body", {}),
                "continue_final_message": True,
                "add_generation_prompt": False,
            }
            r["logprobs"] = True  # the raw first token: whitespace a server strips is put back
            return r

        turn.finish_reason = None
        stream = TurnStream(prior_reasoning=turn.reasoning)
        base = (turn.tokens, turn.seconds)
        async for update in self._stream(conversation, turn, request, stream, *base):
            yield update

    def _request(self, model, messages, temperature, top_p, max_tokens, extra) -> dict:
        request = {
            "model": model or self.settings.model or "",
            "messages": messages,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
        }
        params = parse_extra(extra)
        if params:
            request["extra_body"] = params
        return request

    async def _stream(
        self, conversation, turn, request, stream: TurnStream, base_tokens=0, base_seconds=None
    ):
        """Run one request into ``turn``, yielding (conversation, chat, continue button, box)."""
        throttle = UpdateThrottle(self.settings.update_interval)

        def sync():
            turn.reasoning, turn.answer = stream.reasoning, stream.answer
            turn.tokens = base_tokens + stream.reasoning_tokens
            turn.seconds = (base_seconds or 0) + stream.elapsed()
            turn.finish_reason = stream.finish_reason

        yield conversation, to_chatbot(conversation, live=True), gr.skip(), gr.skip()
        try:
            async with self.endpoint.client() as client:
                async for _ in stream_turn(
                    client, request(), stream, throttle, self.endpoint.idle_timeout
                ):
                    sync()
                    yield conversation, to_chatbot(conversation, live=True), gr.skip(), gr.skip()
        except asyncio.CancelledError:
            sync()
            turn.stopped = True  # Stop: the task is cancelled and the HTTP stream closed
            raise
        except Exception as err:  # shown in the chat; the question goes back in the box
            sync()
            box = self._after_failure(conversation, turn, stream, err)
            yield conversation, to_chatbot(conversation), gr.update(visible=False), box
            return
        sync()
        shown = gr.update(visible=conv.is_truncated(turn))
        yield conversation, to_chatbot(conversation), shown, gr.skip()

    def _after_failure(self, conversation, turn, stream: TurnStream, err: Exception) -> dict:
        """Keep what streamed (or drop an empty turn), add the error; the question for the box."""
        if stream.reasoning == stream.prior_reasoning and not stream.answer:
            if stream.prior_reasoning:  # a failed "continue": the cut trace stays continuable
                turn.finish_reason = "length"
            else:
                conversation.remove(turn)
        else:
            turn.finish_reason = turn.finish_reason or "error"
        conversation.append(ErrorTurn(describe_error(err, self.endpoint.base_url)))
        return _box_of(conversation[conv.last_user(conversation)])

    def mark_stopped(self, conversation: list[Turn]):
        """After Stop: the cut-off turn is shown as stopped, its panel folded."""
        if conversation and isinstance(conversation[-1], AssistantTurn):
            turn = conversation[-1]
            if turn.finish_reason is None:
                turn.stopped = True
                turn.finish_reason = "stop"
        return conversation, to_chatbot(conversation), gr.update(visible=False)

    # --- conversation files -----------------------------------------------------------------
    def export(self, conversation: list[Turn], system: str):
        """Write the conversation as Markdown and as OpenAI-format JSON; return both paths."""
        if not conversation:
            raise gr.Error("Nothing to export yet.", print_exception=False)
        out = Path(tempfile.mkdtemp(prefix="ovr-export-"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        md, js = out / f"ovr-chat-{stamp}.md", out / f"ovr-chat-{stamp}.json"
        md.write_text(conv.export_markdown(conversation, system), encoding="utf-8")
        js.write_text(conv.export_json(conversation, system), encoding="utf-8")
        return [str(md), str(js)]

    def import_file(self, file):
        """Load a JSON conversation (ours or any OpenAI-format list of messages)."""
        path = Path(path_of(file))
        if path.stat().st_size > conv.MAX_IMPORT_BYTES:
            raise gr.Error(
                f"Cannot import that file: over {conv.MAX_IMPORT_BYTES >> 20} MB",
                print_exception=False,
            )
        try:
            conversation, system = conv.import_json(
                path.read_text(encoding="utf-8"),
                Path(gr.utils.get_upload_folder()) / "ovr-import",
            )
        except (ValueError, UnicodeDecodeError, RecursionError, TypeError, KeyError) as err:
            raise gr.Error(f"Cannot import that file: {err}", print_exception=False) from err
        return conversation, to_chatbot(conversation), system

    # --- the model list ---------------------------------------------------------------------
    async def refresh_models(self, current: str | None):
        """Fill the model list from ``/v1/models``; size the max-tokens slider to the context."""
        try:
            models = await list_models(self.endpoint)
        except Exception as err:
            gr.Warning(f"Could not list models: {describe_error(err, self.endpoint.base_url)}")
            return gr.skip(), gr.skip()
        ids = [m.id for m in models]
        if current in ids:
            value = current
        elif self.settings.model in ids:
            value = self.settings.model
        else:
            value = ids[0] if ids else current
        ctx = next((m.max_model_len for m in models if m.id == value and m.max_model_len), None)
        slider = gr.skip()
        if ctx:
            default = min(self.settings.max_tokens, max(64, ctx // 2))
            slider = gr.update(maximum=ctx, value=default)
        return gr.update(choices=ids, value=value), slider


def path_of(file) -> str:
    """The local path of an uploaded file, whichever shape Gradio hands it in."""
    if isinstance(file, str):
        return file
    if isinstance(file, dict):
        return file.get("path") or file["name"]
    return getattr(file, "path", None) or file.name


def _box_of(turn: UserTurn) -> dict:
    """A question as the input box holds it (text and images)."""
    return {"text": turn.text, "files": list(turn.images)}
