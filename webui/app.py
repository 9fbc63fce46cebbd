"""The OVR web UI: chat with images beside long reasoning traces, against any OpenAI-compatible API.

    ovr-webui --endpoint http://127.0.0.1:8000/v1 --model ovr      # or: ovr-serve --ui

The upstream API key comes from ``OVR_API_KEY`` and stays in this process; an optional login
comes from ``OVR_UI_USER``/``OVR_UI_PASSWORD`` or ``--auth-file`` (lines of ``user:password``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ovr_core.format import THINK_OPEN
from ovr_core.ports import port_in_use
from ovr_core.wire import SAMPLING
from webui import conversation as conv
from webui.example_images import EXAMPLES_DIR, example_paths
from webui.render import to_chatbot, turn_of_message, unescape_html
from webui.security import UISecurity, security_options
from webui.settings import UISettings, auth_check, parse_settings
from webui.stream import TurnStream, UpdateThrottle
from webui.upstream import Endpoint, describe_error, list_models, stream_turn

MAX_TOKENS_CAP = SAMPLING.max_tokens
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
]
CSS = """
#ovr-chat .message-content img, #ovr-chat img.ovr-media { max-height: 280px; width: auto; }
.ovr-result { display: inline-block; margin-top: .4em; padding: .35em .8em; border-radius: 8px;
  border: 2px solid #16a34a; background: rgba(22, 163, 74, .10); font-weight: 600; }
mark.ovr-behaviour { background: rgba(250, 204, 21, .35); border-radius: 3px; padding: 0 2px; }
#ovr-chat.ovr-plain mark.ovr-behaviour { background: none; padding: 0; color: inherit; }
"""
# The behaviour marks toggle in the browser (a class on the chat), so no re-render is needed.
MARKS_JS = """(on) => { document.getElementById('ovr-chat').classList.toggle('ovr-plain', !on); }"""


def main(argv: list[str] | None = None) -> int:
    """Console entry point: check the port, build the app, serve it; the ready banner comes last."""
    settings = parse_settings(argv)
    problem = port_in_use("web UI", settings.host, settings.port, "--port")
    if problem:
        print(f"ovr-webui: {problem}", file=sys.stderr)
        return 2
    note = endpoint_note(settings)
    app = build_app(settings)
    launch(app, settings, quiet=True, prevent_thread_lock=True)
    print(ready_banner(settings, note), flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


def endpoint_note(settings: UISettings) -> str | None:
    """One line when the endpoint does not answer yet (the UI starts anyway and shows the error)."""
    import httpx

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        status = httpx.get(settings.endpoint + "/models", headers=headers, timeout=3.0).status_code
    except httpx.HTTPError as e:
        return f"the endpoint does not answer yet ({type(e).__name__}); chats show the error until it does"
    if status == 401:
        return "the endpoint refuses the key: export OVR_API_KEY=<the server's key>"
    return None if status == 200 else f"the endpoint answers /models with HTTP {status}"


def ready_banner(settings: UISettings, note: str | None = None) -> str:
    """What `ovr-webui` prints once it serves: its URL, the endpoint, the login, how to stop."""
    root = (settings.root_path or "").rstrip("/")
    lines = [f"OVR web UI is ready: http://{settings.host}:{settings.port}{root}"]
    model = f" (model: {settings.model})" if settings.model else ""
    lines.append(f"  endpoint: {settings.endpoint}{model}")
    if note:
        lines.append(f"  note: {note}")
    lines.append(f"  login: {len(settings.auth)} user(s)" if settings.auth else "  login: none")
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


def launch(app: gr.Blocks, settings: UISettings, **kwargs):
    """Start serving ``app`` (blocks unless ``prevent_thread_lock=True`` is passed)."""
    from starlette.middleware import Middleware

    return app.launch(
        app_kwargs={"middleware": [Middleware(UISecurity, **security_options(settings))]},
        max_file_size=settings.max_upload_bytes,
        server_name=settings.host,
        server_port=settings.port,
        root_path=settings.root_path,
        auth=auth_check(settings.auth) if settings.auth else None,
        allowed_paths=[str(EXAMPLES_DIR)],
        show_error=False,
        footer_links=[],
        theme=gr.themes.Soft(),
        css=CSS,
        **kwargs,
    )


def build_app(settings: UISettings) -> gr.Blocks:
    """The Gradio Blocks app (not launched), queue set for ``settings.concurrency`` chats."""
    endpoint = Endpoint(settings.endpoint, settings.api_key, idle_timeout=settings.idle_timeout)
    chat = _Handlers(endpoint, settings)
    with gr.Blocks(title="Open Vision Reasoner") as app:
        ui = SimpleNamespace(conversation=gr.State([]))
        with gr.Sidebar(open=True, position="right"):
            _settings_panel(ui, settings)
            _conversation_panel(ui)
        _chat_area(ui)
        _wire_generation(ui, chat)
        _wire_the_rest(ui, chat, app)
    app.queue(default_concurrency_limit=settings.concurrency)
    return app


def _settings_panel(ui: SimpleNamespace, settings: UISettings) -> None:
    """The sidebar's model and sampling settings (components stored on ``ui``)."""
    gr.Markdown("### Settings")
    ui.model = gr.Dropdown(
        choices=[settings.model] if settings.model else [],
        value=settings.model,
        label="Model",
        allow_custom_value=True,
        elem_id="ovr-model",
    )
    ui.refresh = gr.Button("Refresh model list", size="sm")
    ui.system = gr.Textbox(label="System prompt", lines=3, elem_id="ovr-system")
    ui.temperature = gr.Slider(
        0.0,
        2.0,
        value=SAMPLING.temperature,
        step=0.05,
        label="Temperature",
        elem_id="ovr-temperature",
    )
    ui.top_p = gr.Slider(0.05, 1.0, value=SAMPLING.top_p, step=0.05, label="Top-p")
    ui.max_tokens = gr.Slider(
        64,
        MAX_TOKENS_CAP,
        value=settings.max_tokens,
        step=64,
        label="Max tokens",
        info="Trace and answer together: OVR traces often run to thousands of tokens.",
        elem_id="ovr-max-tokens",
    )
    ui.send_traces = gr.Checkbox(
        False,
        label="Send earlier reasoning back to the model",
        info="Off: earlier turns send their answers only (shorter prompts).",
    )
    ui.show_marks = gr.Checkbox(
        True,
        label="Mark reasoning behaviours in finished traces",
        info="Backtracking, verification, visual reflection … (hover a mark for its name).",
        elem_id="ovr-marks",
    )
    ui.extra = gr.Textbox(
        "",
        label="Extra sampling parameters (JSON)",
        placeholder='{"top_k": 20, "repetition_penalty": 1.05}',
        info="Added to each request; sampling parameters only: " + ", ".join(EXTRA_SAMPLING),
        elem_id="ovr-extra",
    )


def _conversation_panel(ui: SimpleNamespace) -> None:
    """Export and import buttons."""
    gr.Markdown("### Conversation")
    ui.export_btn = gr.Button("Export (Markdown + JSON)", size="sm", elem_id="ovr-export")
    ui.exported = gr.File(
        label="Exported", file_count="multiple", interactive=False, elem_id="ovr-exported"
    )
    ui.import_btn = gr.UploadButton(
        "Import JSON", file_types=[".json"], size="sm", elem_id="ovr-import"
    )


def _chat_area(ui: SimpleNamespace) -> None:
    """The chat, the input box, the buttons under it and the examples."""
    gr.Markdown("## Open Vision Reasoner")
    ui.chatbot = gr.Chatbot(
        elem_id="ovr-chat",
        height="68vh",
        latex_delimiters=LATEX,
        buttons=["copy", "copy_all"],
        placeholder="Ask a question about an image: upload, drop or paste one below.",
        feedback_options=None,
        label="Conversation",
        show_label=False,
        layout="bubble",
        editable="user",
        sanitize_html=True,  # DOMPurify in the browser, behind escape_html: no script, no handler
        # Gradio 6.31 edits a message group part by part and fails on an image part
        # (`.slice is not a function`); ungrouped, the question's text is edited alone.
        # Check by editing a question sent with an image after an upgrade.
        group_consecutive_messages=False,
    )
    ui.box = gr.MultimodalTextbox(
        file_types=["image"],
        file_count="multiple",
        sources=["upload"],
        placeholder="Type a question; drop, paste or upload images…",
        show_label=False,
        submit_btn=True,
        stop_btn=False,
        elem_id="ovr-input",
    )
    with gr.Row():
        ui.continue_btn = gr.Button(
            "Continue the trace", visible=False, variant="primary", elem_id="ovr-continue"
        )
        ui.regen_btn = gr.Button("Regenerate", elem_id="ovr-regenerate")
        ui.edit_btn = gr.Button("Edit last question", elem_id="ovr-edit")
        ui.clear_btn = gr.Button("Clear", elem_id="ovr-clear")
    gr.Examples(
        examples=[[{"text": q, "files": [p]}] for p, q in example_paths()],
        inputs=[ui.box],
        label="Examples (drawn by the project)",
    )


def _wire_generation(ui: SimpleNamespace, chat: _Handlers) -> None:
    """Send, regenerate, continue, edit-in-place and stop: each runs ``generate`` behind a busy box."""
    options = [ui.model, ui.system, ui.temperature, ui.top_p, ui.max_tokens, ui.send_traces]
    options.append(ui.extra)
    gen_out = [ui.conversation, ui.chatbot, ui.continue_btn, ui.box]
    busy = {"fn": _busy, "inputs": None, "outputs": [ui.box, ui.continue_btn], "queue": False}
    idle = {"fn": _idle, "inputs": None, "outputs": [ui.box], "queue": False}
    state = [ui.conversation, ui.chatbot]

    submit = ui.box.submit(chat.add_user, [ui.box, ui.conversation], [*state, ui.box], queue=False)
    submit_gen = submit.success(**busy).then(chat.generate, [ui.conversation, *options], gen_out)
    regen = ui.regen_btn.click(chat.drop_answer, [ui.conversation], state, queue=False)
    regen_gen = regen.success(**busy).then(chat.generate, [ui.conversation, *options], gen_out)
    cont = ui.continue_btn.click(**busy)
    cont_gen = cont.then(chat.continue_trace, [ui.conversation, *options], gen_out)
    edit = ui.chatbot.edit(chat.resend_edited, [ui.conversation], state, queue=False)
    edit_gen = edit.success(**busy).then(chat.generate, [ui.conversation, *options], gen_out)
    ui.running = [submit_gen, regen_gen, cont_gen, edit_gen]
    for event in ui.running:
        event.then(**idle)
    ui.box.stop(None, None, None, cancels=ui.running, queue=False).then(
        chat.mark_stopped, [ui.conversation], [*state, ui.continue_btn], queue=False
    ).then(**idle)


def _wire_the_rest(ui: SimpleNamespace, chat: _Handlers, app: gr.Blocks) -> None:
    """Edit-last, clear, export/import, the marks switch and the model list."""
    ui.edit_btn.click(
        chat.edit_last, [ui.conversation], [ui.conversation, ui.chatbot, ui.box], queue=False
    )
    ui.clear_btn.click(
        lambda: ([], [], gr.update(visible=False)),
        None,
        [ui.conversation, ui.chatbot, ui.continue_btn],
        queue=False,
        cancels=ui.running,
    )
    ui.chatbot.clear(
        lambda: ([], gr.update(visible=False)),
        None,
        [ui.conversation, ui.continue_btn],
        queue=False,
        cancels=ui.running,
    )
    ui.export_btn.click(chat.export, [ui.conversation, ui.system], [ui.exported], queue=False)
    ui.import_btn.upload(  # queued: only a queued event shows a gr.Error's message (Gradio 6.31)
        chat.import_file, [ui.import_btn], [ui.conversation, ui.chatbot, ui.system]
    )
    ui.show_marks.change(None, [ui.show_marks], None, js=MARKS_JS, queue=False)
    models = ([ui.model], [ui.model, ui.max_tokens])
    ui.refresh.click(chat.refresh_models, *models, queue=False)
    app.load(chat.refresh_models, *models, queue=False)


def _busy():
    return gr.update(submit_btn=False, stop_btn=True), gr.update(visible=False)


def _idle():
    return gr.update(submit_btn=True, stop_btn=False)


class _Handlers:
    """The event handlers; each takes and returns plain values (the conversation list)."""

    def __init__(self, endpoint: Endpoint, settings: UISettings):
        self.endpoint = endpoint
        self.settings = settings

    # --- sending ----------------------------------------------------------------------------
    def add_user(self, message: dict | None, conversation: list[dict]):
        """Append the typed text and images as a user turn; refuse an empty message."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = [_path_of(f) for f in message.get("files") or []]
        if not text and not files:
            raise gr.Error("Type a question or add an image first.", print_exception=False)
        conversation = conversation + [conv.user_turn(text, files)]
        return conversation, to_chatbot(conversation), gr.update(value=None)

    def drop_answer(self, conversation: list[dict]):
        """Remove everything after the last user turn, so it can be answered again."""
        last_user = _last_index(conversation, "user")
        if last_user is None:
            raise gr.Error("Nothing to regenerate yet.", print_exception=False)
        conversation = conversation[: last_user + 1]
        return conversation, to_chatbot(conversation)

    def resend_edited(self, conversation: list[dict], edit: gr.EditData):
        """A question edited in the chat: cut the conversation there and ask it again (images kept)."""
        index = edit.index[0] if isinstance(edit.index, (list, tuple)) else edit.index
        at = turn_of_message(conversation, index)
        text = unescape_html(
            edit.value if isinstance(edit.value, str) else conv.text_of(edit.value)
        )
        if at is None or conversation[at]["role"] != "user":
            raise gr.Error("Only your own questions can be edited.", print_exception=False)
        if not text.strip() and not conversation[at]["images"]:
            raise gr.Error("Type a question or add an image first.", print_exception=False)
        conversation = conversation[:at] + [
            conv.user_turn(text.strip(), conversation[at]["images"])
        ]
        return conversation, to_chatbot(conversation)

    def edit_last(self, conversation: list[dict]):
        """Put the last question (text and images) back in the input box and take it out of the chat."""
        last_user = _last_index(conversation, "user")
        if last_user is None:
            return conversation, to_chatbot(conversation), gr.skip()
        turn = conversation[last_user]
        conversation = conversation[:last_user]
        box = {"text": turn["text"], "files": list(turn["images"])}
        return conversation, to_chatbot(conversation), box

    async def generate(
        self, conversation, model, system, temperature, top_p, max_tokens, traces, extra="{}"
    ):
        """Stream an answer to the conversation's last user turn into a new assistant turn."""
        messages = conv.to_openai(conversation, system, include_reasoning=traces)
        turn = conv.assistant_turn()
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
        messages.append({"role": "assistant", "content": THINK_OPEN + turn["reasoning"]})

        def request():
            r = self._request(model, messages, temperature, top_p, max_tokens, extra)
            r["extra_body"] = {
                **r.get("extra_body", {}),
                "continue_final_message": True,
                "add_generation_prompt": False,
            }
            r["logprobs"] = True  # the raw first token: whitespace a server strips is put back
            return r

        turn["finish_reason"] = None
        stream = TurnStream(prior_reasoning=turn["reasoning"])
        async for update in self._stream(
            conversation,
            turn,
            request,
            stream,
            base_tokens=turn["tokens"],
            base_seconds=turn["seconds"],
        ):
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
        throttle = UpdateThrottle(self.settings.update_interval)

        def sync():
            turn["reasoning"], turn["answer"] = stream.reasoning, stream.answer
            turn["tokens"] = base_tokens + stream.reasoning_tokens
            turn["seconds"] = (base_seconds or 0) + stream.elapsed()
            turn["finish_reason"] = stream.finish_reason

        yield conversation, to_chatbot(conversation, live=True), gr.skip(), gr.skip()
        try:
            async with self.endpoint.client() as client:
                async for _ in stream_turn(
                    client, request(), stream, throttle, self.endpoint.idle_timeout
                ):
                    sync()
                    yield (
                        conversation,
                        to_chatbot(conversation, live=True),
                        gr.skip(),
                        gr.skip(),
                    )
        except asyncio.CancelledError:
            sync()
            turn["stopped"] = True  # Stop: the task is cancelled and the HTTP stream closed
            raise
        except Exception as err:  # shown in the chat; the question goes back in the box
            sync()
            if stream.reasoning == stream.prior_reasoning and not stream.answer:
                if stream.prior_reasoning:  # a failed "continue": the cut trace stays continuable
                    turn["finish_reason"] = "length"
                else:
                    conversation.remove(turn)
            else:
                turn["finish_reason"] = turn["finish_reason"] or "error"
            conversation.append(conv.error_turn(describe_error(err, self.endpoint.base_url)))
            last_user = conversation[_last_index(conversation, "user")]
            box = {"text": last_user["text"], "files": list(last_user["images"])}
            yield conversation, to_chatbot(conversation), gr.update(visible=False), box
            return
        sync()
        yield (
            conversation,
            to_chatbot(conversation),
            gr.update(visible=conv.is_truncated(turn)),
            gr.skip(),
        )

    def mark_stopped(self, conversation: list[dict]):
        """After Stop: the cut-off turn is shown as stopped, its panel folded."""
        if conversation and conversation[-1]["role"] == "assistant":
            turn = conversation[-1]
            if turn["finish_reason"] is None:
                turn["stopped"] = True
                turn["finish_reason"] = "stop"
        return conversation, to_chatbot(conversation), gr.update(visible=False)

    # --- conversation files -----------------------------------------------------------------
    def export(self, conversation: list[dict], system: str):
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
        path = Path(_path_of(file))
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

    async def refresh_models(self, current: str | None):
        """Fill the model list from ``/v1/models``; size the max-tokens slider to the context."""
        try:
            models = await list_models(self.endpoint)
        except Exception as err:
            gr.Warning(f"Could not list models: {describe_error(err, self.endpoint.base_url)}")
            return gr.skip(), gr.skip()
        ids = [m.id for m in models]
        value = (
            current
            if current in ids
            else (
                self.settings.model if self.settings.model in ids else (ids[0] if ids else current)
            )
        )
        ctx = next((m.max_model_len for m in models if m.id == value and m.max_model_len), None)
        slider = gr.skip()
        if ctx:
            default = min(self.settings.max_tokens, max(64, ctx // 2))
            slider = gr.update(maximum=ctx, value=default)
        return gr.update(choices=ids, value=value), slider


# What the extra-parameters box may add to a request: vLLM/OpenAI sampling parameters, nothing
# that changes what is asked (messages, model, tools) or how the server reads it.
EXTRA_SAMPLING = {
    "temperature": float,  # these three override their controls
    "top_p": float,
    "max_tokens": int,
    "top_k": int,
    "min_p": float,
    "repetition_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "length_penalty": float,
    "seed": int,
    "min_tokens": int,
    "stop": (str, list),
    "stop_token_ids": list,
    "bad_words": list,
    "ignore_eos": bool,
    "n": int,  # the chat shows the first sample
}


# vLLM 0.32 refuses more stop strings than VLLM_MAX_STOP_STRINGS (default 4; vllm/envs.py).
MAX_STOP_STRINGS = 4


def parse_extra(text: str | None) -> dict:
    """The side panel's extra sampling parameters: a JSON object of ``EXTRA_SAMPLING`` keys, or a
    ValueError that names what is refused."""
    if not (text or "").strip():
        return {}
    try:
        params = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"Extra sampling parameters are not valid JSON: {err}") from err
    if not isinstance(params, dict):
        raise ValueError('Extra sampling parameters must be a JSON object, like {"top_k": 20}.')
    for key, value in params.items():
        kind = EXTRA_SAMPLING.get(key)
        if kind is None:
            raise ValueError(
                f"Extra sampling parameters: {key!r} is not allowed here; allowed:"
                f" {', '.join(EXTRA_SAMPLING)}."
            )
        number = kind in (int, float) and isinstance(value, (int, float))
        if isinstance(value, bool) != (kind is bool) or not (number or isinstance(value, kind)):
            raise ValueError(f"Extra sampling parameters: {key!r} has the wrong type of value.")
        if key == "n" and not 1 <= value <= 64:
            raise ValueError("Extra sampling parameters: 'n' must be between 1 and 64.")
        if isinstance(value, list):
            most = MAX_STOP_STRINGS if key == "stop" else 16
            if len(value) > most or any(not isinstance(v, (str, int)) for v in value):
                raise ValueError(f"Extra sampling parameters: {key!r} takes up to {most} items.")
    return params


def _path_of(file) -> str:
    if isinstance(file, str):
        return file
    if isinstance(file, dict):
        return file.get("path") or file["name"]
    return getattr(file, "path", None) or file.name


def _last_index(conversation: list[dict], role: str) -> int | None:
    for i in range(len(conversation) - 1, -1, -1):
        if conversation[i]["role"] == role:
            return i
    return None


if __name__ == "__main__":
    sys.exit(main())
