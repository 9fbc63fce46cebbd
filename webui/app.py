"""The OVR web UI: chat with images beside long reasoning traces, against any OpenAI-compatible API.

    ovr-webui --endpoint http://127.0.0.1:8000/v1 --model ovr      # or: ovr-serve --ui

The upstream API key comes from ``OVR_API_KEY`` and stays in this process; an optional login
comes from ``OVR_UI_USER``/``OVR_UI_PASSWORD`` or ``--auth-file`` (lines of ``user:password``).
"""

from __future__ import annotations

import sys

import gradio as gr

from ovr_core.ports import port_in_use
from webui.example_images import EXAMPLES_DIR
from webui.layout import CSS, build_app
from webui.security import UISecurity, security_options
from webui.settings import UISettings, auth_check, parse_settings


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


if __name__ == "__main__":
    sys.exit(main())
