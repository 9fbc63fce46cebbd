"""The web UI's layout: the Gradio Blocks (settings sidebar, chat, input box, buttons) and which
handler each event runs (``webui.handlers``). Built, not launched: ``webui.app`` serves it.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ovr_core.wire import SAMPLING
from webui.example_images import example_paths
from webui.extra_sampling import EXTRA_SAMPLING
from webui.handlers import ChatHandlers
from webui.settings import UISettings
from webui.upstream import Endpoint

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


def build_app(settings: UISettings) -> gr.Blocks:
    """The Gradio Blocks app (not launched), queue set for ``settings.concurrency`` chats."""
    endpoint = Endpoint(settings.endpoint, settings.api_key, idle_timeout=settings.idle_timeout)
    chat = ChatHandlers(endpoint, settings)
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


def _wire_generation(ui: SimpleNamespace, chat: ChatHandlers) -> None:
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


def _wire_the_rest(ui: SimpleNamespace, chat: ChatHandlers, app: gr.Blocks) -> None:
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
    """While a generation runs: the input box shows Stop, the Continue button hides."""
    return gr.update(submit_btn=False, stop_btn=True), gr.update(visible=False)


def _idle():
    """After a generation: the input box shows Send again."""
    return gr.update(submit_btn=True, stop_btn=False)
