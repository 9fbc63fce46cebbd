"""The web UI against hostile input, without a browser: rendered text, extra parameters, imports,
the login. (tests/test_webui_browser.py shows the same rules hold in Chromium.)"""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from webui import conversation as conv
from webui import render
from webui.extra_sampling import parse_extra
from webui.settings import auth_check, parse_settings

# Any tag in rendered text that is not one the display itself writes.
FOREIGN_TAG = re.compile(
    r"<(?!mark class=\"ovr-behaviour\"|/mark>|div class=\"ovr-result\"|/div>)[A-Za-z/!?]"
)
HOSTILE_TEXTS = [
    "look: ![x](http://127.0.0.1:9/a.png)",
    "\\`<img src=http://127.0.0.1:9/a.png>\\`",
    "``<img src=http://127.0.0.1:9/a.png>`",
    "| `<img src=http://127.0.0.1:9/a.png> | b` |\n|---|---|",
    "[a]: http://127.0.0.1:9/a.png\n\n![a]",
    "\\boxed{`<img src=http://127.0.0.1:9/a.png>`}",
    "\\boxed{a\n\n![x](http://127.0.0.1:9/a.png)}",
    "<svg/onload=alert(1)>",
    "```\n<img src=x>\n```~\n<img src=http://127.0.0.1:9/a.png>",
    "&lt;img src=http://127.0.0.1:9/a.png&gt;",
]


def shown_texts(text: str) -> list[str]:
    """Every place the chat shows text: the question, the trace (live and tagged), the answer
    with its result callout, an error."""
    turn = conv.AssistantTurn(text, text, "stop", 1.0, 3)
    live = conv.AssistantTurn(text, "", None, 1.0, 3)
    out = render.to_chatbot([conv.UserTurn(text), turn, conv.ErrorTurn(text)])
    out += render.to_chatbot([conv.UserTurn("q"), live], live=True)
    return [m["content"] for m in out if isinstance(m["content"], str)] + [
        c for m in out if isinstance(m["content"], list) for c in m["content"] if isinstance(c, str)
    ]


def assert_inert(text: str) -> None:
    for shown in shown_texts(text):
        assert not FOREIGN_TAG.search(shown), (text, shown)
        assert "![" not in shown, (text, shown)


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_known_hostile_text_renders_inert(text):
    assert_inert(text)


TOKENS = ["<", "img", " src=http://h/x ", "`", "``", "```", "~~~", "\\", "!", "[", "](", ")", "|"]
TOKENS += ["\n", "\n\n", "$", "\\boxed{", "}", "&", "lt;", "#", "- ", "> ", "    ", "a", "Wait,"]


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_generated_text_renders_inert(text):
    assert_inert(text)


def test_an_edited_question_comes_back_as_typed():
    for text in HOSTILE_TEXTS + ["a < b & `x<y` ![alt](data:x)"]:
        assert render.unescape_html(render.escape_html(text)) == text


# --- extra parameters --------------------------------------------------------------------------
def test_extra_parameters_take_sampling_only_and_name_a_refused_key():
    assert parse_extra('{"top_k": 20, "repetition_penalty": 1.05, "stop": ["\\n\\n"]}') == {
        "top_k": 20,
        "repetition_penalty": 1.05,
        "stop": ["\n\n"],
    }
    for key, value in [
        ("messages", []),
        ("model", "x"),
        ("tools", []),
        ("mm_processor_kwargs", {}),
    ]:
        with pytest.raises(ValueError, match=repr(key)):
            parse_extra(json.dumps({key: value}))
    with pytest.raises(ValueError, match="wrong type"):
        parse_extra('{"top_k": "20"}')
    with pytest.raises(ValueError, match="wrong type"):
        parse_extra('{"seed": true}')


# --- imports -----------------------------------------------------------------------------------
def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, "PNG")
    return buf.getvalue()


def _chat_with(*urls) -> str:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return json.dumps([{"role": "user", "content": [*parts, {"type": "text", "text": "q"}]}])


def test_import_keeps_real_images_under_their_real_extension(tmp_path):
    png = base64.b64encode(_png()).decode()
    back, _ = conv.import_json(_chat_with(f"data:text/html;base64,{png}"), tmp_path)
    saved = back[0].images[0]
    assert saved.endswith(".png") and open(saved, "rb").read() == _png()
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    html = base64.b64encode(b"<html><img src=http://127.0.0.1:9/x></html>").decode()
    for url in (f"data:image/svg+xml;base64,{svg}", f"data:image/png;base64,{html}"):
        with pytest.raises(ValueError, match="not a PNG, JPEG"):
            conv.import_json(_chat_with(url), tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png"]


def test_import_caps_image_count_and_size(tmp_path):
    png = f"data:image/png;base64,{base64.b64encode(_png()).decode()}"
    with pytest.raises(ValueError, match="at most"):
        conv.import_json(_chat_with(*[png] * (conv.MAX_IMPORT_IMAGES + 1)), tmp_path)
    huge = "data:image/png;base64," + "A" * (conv.MAX_IMPORT_IMAGE_BYTES * 4 // 3 + 8)
    with pytest.raises(ValueError, match="over"):
        conv.import_json(_chat_with(huge), tmp_path)
    with pytest.raises(ValueError):
        conv.import_json(json.dumps([{"role": "user", "content": 5}]), tmp_path)


# --- the login -----------------------------------------------------------------------------------
def test_listening_beyond_loopback_needs_a_login(monkeypatch, tmp_path):
    monkeypatch.delenv("OVR_UI_USER", raising=False)
    monkeypatch.delenv("OVR_UI_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="OVR_UI_PASSWORD"):
        parse_settings(["--host", "0.0.0.0"])
    assert parse_settings(["--host", "127.0.0.1"]).auth is None
    users = tmp_path / "users"
    users.write_text("ann:secret\n")
    assert parse_settings(["--host", "0.0.0.0", "--auth-file", str(users)]).auth


def test_a_login_in_any_script_is_checked_not_raised():
    check = auth_check([("ann", "secret"), ("zoë", "пароль")])
    assert check("ann", "secret") and check("zoë", "пароль")
    assert not check("ann", "sécret") and not check("日本", "密码") and not check("ann", "\udcff")


def test_extra_parameters_take_no_more_stop_strings_than_vllm():
    """vLLM 0.32 refuses more than VLLM_MAX_STOP_STRINGS (4) stop strings: the box says so first."""
    import importlib.util
    from pathlib import Path

    envs = Path(importlib.util.find_spec("vllm").submodule_search_locations[0]) / "envs.py"
    found = re.search(r'"VLLM_MAX_STOP_STRINGS", "(\d+)"', envs.read_text())
    most = int(found.group(1))  # the installed vLLM's default, read without importing vLLM
    assert parse_extra(json.dumps({"stop": ["a"] * most})) == {"stop": ["a"] * most}
    with pytest.raises(ValueError, match=f"up to {most} items"):
        parse_extra(json.dumps({"stop": ["a"] * (most + 1)}))
    assert len(parse_extra(json.dumps({"stop_token_ids": list(range(16))}))["stop_token_ids"]) == 16


# --- the UI's HTTP rules: Host, Origin, upload caps, the login cookie --------------------------
@pytest.mark.parametrize(
    "login, headers, refused",
    [
        (False, {b"host": "127.0.0.1:7860"}, False),
        (False, {b"host": "evil.example:7860"}, True),  # DNS rebinding
        (True, {b"host": "evil.example:7860"}, False),  # a login: any name (reverse proxies)
        (False, {b"host": "127.0.0.1:7860", b"origin": "http://evil.example"}, True),
        (False, {b"host": "127.0.0.1:7860", b"origin": "null"}, True),
        (False, {b"host": "127.0.0.1:7860", b"origin": "http://127.0.0.1:7860"}, False),
        (False, {b"host": "127.0.0.1:7860", b"sec-fetch-site": "cross-site"}, True),
        (False, {b"host": "127.0.0.1:7860", b"sec-fetch-site": "same-site"}, True),
        (True, {b"host": "ovr.example", b"sec-fetch-site": "Cross-Site"}, True),
        # behind a proxy that rewrites Host: the browser's same-origin word is enough
        (
            False,
            {
                b"host": "127.0.0.1:7860",
                b"origin": "https://ovr.example",
                b"sec-fetch-site": "same-origin",
            },
            False,
        ),
        (False, {b"host": "127.0.0.1:7860", b"content-length": str(2 << 20)}, True),
    ],
)
def test_the_ui_rules_one_request_at_a_time(login, headers, refused):
    from webui.security import UISecurity

    listen = "0.0.0.0" if login else "127.0.0.1"  # a login is required beyond loopback
    rules = UISecurity(None, listen_host=listen, has_login=login, max_body=1 << 20)
    assert (rules.refusal("POST", headers) is not None) == refused, headers
    opened = UISecurity(None, allowed_hosts=("evil.example",), allowed_origins=("null",))
    assert opened.refusal("POST", {b"host": "evil.example", b"origin": "null"}) is None


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A real UI process (no model needed: nothing here chats), uploads capped at 1 MB, its
    upload folder in a temporary directory."""
    from tests.conftest import free_port
    from tests.webui_helpers import running_webui

    uploads = tmp_path_factory.mktemp("gradio")
    port = free_port()
    env = {"GRADIO_TEMP_DIR": str(uploads)}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with running_webui(dead, "ovr", port, args=["--max-upload-mb", "1"], env=env) as url:
        yield url, uploads


def _upload(url: str, size: int, **headers) -> httpx.Response:
    import os

    files = {"files": ("q.png", b"\x89PNG" + os.urandom(16) + b"0" * size, "image/png")}
    return httpx.post(url + "/gradio_api/upload", files=files, headers=headers, timeout=60)


def _stored(uploads) -> list:
    return [p for p in uploads.rglob("*") if p.is_file() and p.name == "q.png"]


@pytest.mark.slow
def test_the_ui_answers_loopback_hosts_only(ui):
    url, _ = ui
    port = httpx.URL(url).port
    assert httpx.get(url + "/", timeout=30).status_code == 200
    assert (
        httpx.get(url + "/", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
    )
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        for path in ("/", "/config", "/gradio_api/info"):
            resp = httpx.get(url + path, headers={"Host": host}, timeout=30)
            assert resp.status_code == 403, (host, path)
            assert "--allowed-hosts" in resp.text
        assert _upload(url, 10, Host=host).status_code == 403


@pytest.mark.slow
def test_cross_site_uploads_are_refused_and_store_nothing(ui):
    url, uploads = ui
    before = len(_stored(uploads))
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": url.replace("127.0.0.1", "localhost")},  # another origin, even if local
    ):
        resp = _upload(url, 10, **headers)
        assert resp.status_code == 403, (headers, resp.status_code)
    assert len(_stored(uploads)) == before
    assert _upload(url, 10, Origin=url, **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert _upload(url, 10).status_code == 200  # no browser, no Origin: a script on this machine
    assert len(_stored(uploads)) == before + 2


@pytest.mark.slow
def test_uploads_over_the_cap_are_refused_whether_declared_or_streamed(ui):
    url, uploads = ui
    before = len(_stored(uploads))
    assert _upload(url, (1 << 20) - 4096).status_code == 200
    assert _upload(url, 2 << 20).status_code == 413  # Content-Length says so: nothing is read

    def chunks():  # no Content-Length: cut once 1 MB has come
        for _ in range(64):
            yield b"0" * (64 << 10)

    body = b"--b\r\nContent-Disposition: form-data; name=files; filename=q.png\r\n\r\n"
    try:
        resp = httpx.post(
            url + "/gradio_api/upload",
            content=iter([body, *chunks(), b"\r\n--b--\r\n"]),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=60,
        )
        assert resp.status_code == 413
    except httpx.TransportError:
        pass  # the server may close while we still send
    sizes = [p.stat().st_size for p in _stored(uploads)]
    assert len(sizes) == before + 1 and max(sizes) < 1 << 20


@pytest.mark.slow
def test_the_login_cookie_is_samesite_lax_and_cross_site_requests_are_refused():
    from tests.conftest import free_port
    from tests.webui_helpers import running_webui

    env = {"OVR_UI_USER": "ann", "OVR_UI_PASSWORD": "pw-1234"}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with running_webui(dead, "ovr", free_port(), env=env, log_name="webui-login") as url:
        resp = httpx.post(url + "/login", data={"username": "ann", "password": "pw-1234"})
        cookies = resp.headers.get_list("set-cookie")
        assert resp.status_code == 200 and cookies
        for cookie in cookies:
            flags = [f.strip().lower() for f in cookie.split(";")]
            assert "samesite=lax" in flags and "samesite=none" not in flags, cookie
        jar = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0] for c in cookies}
        site = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
        resp = httpx.post(
            url + "/gradio_api/upload",
            files={"files": ("q.png", b"x", "image/png")},
            cookies=jar,
            headers=site,
        )
        assert resp.status_code == 403
        resp = httpx.post(
            url + "/gradio_api/upload", files={"files": ("q.png", b"x", "image/png")}, cookies=jar
        )
        assert resp.status_code == 200  # the same user, from the UI's own page


@pytest.mark.slow
def test_a_real_browser_after_dns_rebinding_or_on_another_site_gets_nothing(ui):
    """Headless Chromium, ``evil.example`` resolving to 127.0.0.1: the UI opened by that name
    answers 403; a page of another site that posts an upload to the UI (as any page may, no CORS
    needed) stores nothing; the UI's own page still uploads."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from playwright.sync_api import sync_playwright

    from tests.webui_helpers import CHROMIUM, CHROMIUM_ARGS

    url, uploads = ui
    port = httpx.URL(url).port
    attack = f"""<script>
      const form = new FormData();
      form.append("files", new Blob(["\\x89PNG attack " + Math.random()]), "q.png");
      fetch("{url}/gradio_api/upload", {{method: "POST", body: form, mode: "no-cors"}})
        .then(() => document.title = "sent", () => document.title = "sent");
    </script>"""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(attack.encode())

        def log_message(self, *args):
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    rules = "--host-resolver-rules=MAP evil.example 127.0.0.1, MAP attacker.example 127.0.0.1"
    before = len(_stored(uploads))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, rules], headless=True
            )
            try:
                page = browser.new_page()
                seen: list[int] = []  # the upload's answers, as the browser's network saw them
                page.on(
                    "response",
                    lambda r: seen.append(r.status) if "/gradio_api/upload" in r.url else None,
                )
                resp = page.goto(f"http://evil.example:{port}/")
                assert resp.status == 403 and "--allowed-hosts" in page.content()
                page.goto(f"http://attacker.example:{site.server_address[1]}/")
                page.wait_for_function("document.title === 'sent'", timeout=30_000)
                assert seen == [403], seen  # sent by the browser, refused by the UI
                assert len(_stored(uploads)) == before
                page.goto(url + "/")  # the UI's own page may upload
                status = page.evaluate(
                    """async () => {
                      const form = new FormData();
                      form.append("files", new Blob(["\\x89PNG own " + Math.random()]), "q.png");
                      return (await fetch("/gradio_api/upload", {method: "POST", body: form})).status;
                    }"""
                )
                assert status == 200
                assert len(_stored(uploads)) == before + 1
            finally:
                browser.close()
    finally:
        site.shutdown()
