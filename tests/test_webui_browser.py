"""The web UI in a real headless Chromium against the real ovr-serve endpoint on the tiny model.

Screenshots land in artifacts/screenshots/. Needs Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.webui_helpers import CHROMIUM, chromium_page, prefix_proxy, running_webui, screenshot
from webui.example_images import EXAMPLES_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]

SHAPES = str(EXAMPLES_DIR / "shapes.png")
QUESTION = "How many circles are in the image? Put the final count in \\boxed{}."
# Keeps the tiny model inside its trace for thousands of tokens: something to watch and to stop.
# The tiny model's engine runs far ahead of what it streams back, so 32 parallel samples (the UI
# shows the first) keep it busy long enough for Stop to land mid-generation on a CPU.
N_SAMPLES, MAX_TOKENS = 32, 8000  # n > 1 needs sampling: the default temperature
ENDLESS_TRACE = json.dumps({"ignore_eos": True, "bad_words": ["</think>"], "n": N_SAMPLES})


@pytest.fixture(scope="module")
def ui(ovr_server):
    """The web UI as `ovr-serve --ui` starts it, with the endpoint's API key in its environment."""
    with running_webui(
        ovr_server.base_url, ovr_server.model, free_port(), ovr_server.api_key
    ) as url:
        yield url


@pytest.fixture
def page(ui):
    with chromium_page() as page:
        page.goto(ui + "/")
        page.wait_for_selector("#ovr-input textarea")
        # The model list (and with it the context length) has loaded from /v1/models.
        page.wait_for_function(
            "document.querySelector('#ovr-max-tokens input[type=range]')?.max !== '32768'"
        )
        yield page


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def send(page, text: str, images=()) -> None:
    """Type (and attach) a question and press Enter; returns once the reply has started."""
    replies = page.locator("#ovr-chat .bot-row").count()
    if images:
        page.set_input_files("#ovr-input input[type=file]", list(images))
        page.wait_for_selector("#ovr-input img")  # the upload is in
    page.fill("#ovr-input textarea", text)
    page.press("#ovr-input textarea", "Enter")
    page.wait_for_function(
        f"document.querySelectorAll('#ovr-chat .bot-row').length > {replies}", timeout=60_000
    )


def wait_idle(page, timeout=120_000) -> None:
    """Until the generation ends (the submit button is back)."""
    page.wait_for_selector("#ovr-input .submit-button", timeout=timeout)


def metric(ovr_server, name: str) -> float:
    text = httpx.get(
        ovr_server.root + "/metrics", headers={"Authorization": f"Bearer {ovr_server.api_key}"}
    ).text
    return sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))


def test_image_question_shows_image_thinking_folds_and_answer(page, ovr_server):
    page.wait_for_function(
        "document.querySelector('#ovr-model input')?.value === 'ovr'", timeout=30_000
    )  # the model list came from /v1/models (with the key, server side)
    set_number(page, "ovr-temperature", 0)
    send(page, QUESTION, [SHAPES])

    user_img = page.locator("#ovr-chat .user-row img").first
    user_img.wait_for(timeout=30_000)
    assert user_img.evaluate("img => img.complete && img.naturalWidth") == 320
    wait_idle(page)
    screenshot(page, "webui-answer")

    thought = page.locator("#ovr-chat .bot-row .thought-group").first
    assert "Thinking" in thought.locator(".title").inner_text()
    assert re.search(r"\d+\.\d s · [1-9]\d* tokens", thought.locator(".duration").inner_text())
    # Folded once the answer started: the title is not expanded and its text is hidden.
    assert "expanded" not in (thought.locator(".title").get_attribute("class") or "")
    answer = page.locator("#ovr-chat .bot-row .message-content").last
    assert answer.inner_text().strip()
    if "boxed" in answer.inner_text() or answer.locator(".ovr-result").count():
        assert answer.locator(".ovr-result .katex").count() == 1  # the result, typeset
    # Unfolding shows the trace the model wrote.
    thought.locator(".title").click()
    assert thought.locator(".content").inner_text().strip()
    screenshot(page, "webui-thinking-open")

    # The API key never reaches the browser.
    assert ovr_server.api_key not in page.content()
    config = httpx.get(page.url.rstrip("/") + "/config").text
    assert ovr_server.api_key not in config


def test_stop_mid_trace_closes_the_upstream_stream(page, ovr_server):
    set_number(page, "ovr-max-tokens", MAX_TOKENS)
    page.fill("#ovr-extra textarea", ENDLESS_TRACE)
    page.locator("#ovr-extra textarea").blur()
    generated_before = metric(ovr_server, "vllm:generation_tokens_total")
    send(page, "How many circles?")

    thought = page.locator("#ovr-chat .bot-row .thought-group").first
    try:
        thought.wait_for(timeout=60_000)
    finally:
        screenshot(page, "webui-thinking-start")
    counts = []
    for _ in range(120):  # the panel is open and its token count grows while the trace streams
        m = re.search(r"(\d+) tokens", thought.locator(".duration").inner_text())
        counts.append(int(m.group(1)) if m else 0)
        if counts[-1] >= 5 and counts[-1] > counts[0]:
            break
        time.sleep(0.25)
    assert counts[-1] > counts[0] and "expanded" in thought.locator(".title").get_attribute("class")
    assert thought.locator(".content").inner_text().strip()
    screenshot(page, "webui-thinking-live")
    assert metric(ovr_server, "vllm:num_requests_running") == N_SAMPLES  # still generating

    page.click("#ovr-input .stop-button")
    wait_idle(page, 30_000)
    page.locator("#ovr-chat").get_by_text("Stopped").wait_for(timeout=10_000)
    # The server stopped generating: no request running, the token counter stands still.
    deadline = time.monotonic() + 10
    while metric(ovr_server, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(ovr_server, "vllm:num_requests_running") == 0
    generated = metric(ovr_server, "vllm:generation_tokens_total")
    time.sleep(1.5)
    assert metric(ovr_server, "vllm:generation_tokens_total") == generated
    # With ignore_eos every sample would run to MAX_TOKENS exactly: fewer means they were aborted.
    assert generated - generated_before < N_SAMPLES * MAX_TOKENS
    shown = int(re.search(r"(\d+) tokens", thought.locator(".duration").inner_text()).group(1))
    assert shown < 5000  # stopped well before max tokens
    assert "expanded" not in (thought.locator(".title").get_attribute("class") or "")
    screenshot(page, "webui-stopped")


def test_truncated_trace_continues_in_one_click_and_exports(page, ovr_server, tmp_path):
    set_number(page, "ovr-temperature", 0)
    page.fill("#ovr-extra textarea", '{"max_tokens": 4}')  # cut the trace short
    page.locator("#ovr-extra textarea").blur()
    send(page, "How many circles?")
    wait_idle(page)
    page.locator("#ovr-chat").get_by_text("cut off by the token limit").wait_for()
    cont = page.locator("#ovr-continue")
    cont.wait_for(state="visible")
    screenshot(page, "webui-truncated")

    page.fill("#ovr-extra textarea", "")
    page.locator("#ovr-extra textarea").blur()
    set_number(page, "ovr-max-tokens", 300)
    thought = page.locator("#ovr-chat .thought-group").last
    cut_stats = thought.locator(".duration").inner_text()
    thought.locator(".title").click()
    cut_reasoning = thought.locator(".content").inner_text().strip()
    cont.click()
    page.wait_for_function(
        "!document.querySelector('#ovr-chat').innerText.includes('cut off by the token limit')"
    )
    wait_idle(page)
    assert thought.locator(".duration").inner_text() != cut_stats
    assert not cont.is_visible()
    send(page, QUESTION, [SHAPES])  # a second turn, with an image
    wait_idle(page)

    page.click("#ovr-export")
    links = page.locator("#ovr-exported a")
    links.first.wait_for(timeout=20_000)
    files = {}
    for i in range(links.count()):
        with page.expect_download() as download:
            links.nth(i).click()
        d = download.value
        files[Path(d.suggested_filename).suffix] = Path(d.path()).read_text()
    exported = json.loads(files[".json"])["messages"]
    assert [m["role"] for m in exported] == ["user", "assistant", "user", "assistant"]
    assert exported[1]["reasoning"].strip().startswith(cut_reasoning) and exported[1]["content"]
    assert exported[2]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "data:image/png;base64," in files[".md"] and "<details>" in files[".md"]

    # Import it back into a fresh page: the same conversation shows, image included.
    path = tmp_path / "chat.json"
    path.write_text(files[".json"])
    page.click("#ovr-clear")
    with page.expect_file_chooser() as chooser:
        page.click("#ovr-import")
    chooser.value.set_files(str(path))
    page.locator("#ovr-chat .user-row img").first.wait_for(timeout=20_000)
    assert page.locator("#ovr-chat .thought-group").count() >= 1
    screenshot(page, "webui-imported")


def test_endpoint_down_shows_error_and_keeps_the_question(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with (
        running_webui(dead, "ovr", free_port(), log_name="webui-dead") as url,
        chromium_page() as page,
    ):
        page.goto(url + "/")
        page.wait_for_selector("#ovr-input textarea")
        send(page, "Is anyone there?")
        error = page.locator("#ovr-chat").get_by_text("Cannot reach the endpoint")
        error.wait_for(timeout=60_000)
        wait_idle(page)
        assert page.input_value("#ovr-input textarea") == "Is anyone there?"
        assert page.locator("#ovr-chat .user-row").get_by_text("Is anyone there?").count() == 1
        screenshot(page, "webui-endpoint-down")


def test_imported_trace_shows_behaviour_tags(page, tmp_path):
    trace = (
        "Add 3 and 4 in <image>. Wait, that is wrong. Let me look at the image again: 3 + 4 = 7."
    )
    chat = {
        "messages": [
            {"role": "user", "content": "What is 3 + 4?"},
            {"role": "assistant", "reasoning": trace, "content": "So \\boxed{7}."},
        ]
    }
    path = tmp_path / "tagged.json"
    path.write_text(json.dumps(chat))
    with page.expect_file_chooser() as chooser:
        page.click("#ovr-import")
    chooser.value.set_files(str(path))
    thought = page.locator("#ovr-chat .bot-row .thought-group").first
    thought.wait_for(timeout=20_000)
    assert "backtracking ×2" in thought.locator(".duration").inner_text()
    marks = page.locator("#ovr-chat mark.ovr-behaviour")
    if not marks.first.is_visible():
        thought.locator(".title").click()  # unfold the trace
    marks.first.wait_for(timeout=10_000)
    page.wait_for_timeout(500)  # the unfolding animation
    screenshot(page, "webui-behaviour-tags")
    tags = {marks.nth(i).get_attribute("title") for i in range(marks.count())}
    assert tags == {"backtracking", "visual_reflection"}
    background = "m => getComputedStyle(m).backgroundColor"
    assert marks.first.evaluate(background) != "rgba(0, 0, 0, 0)"
    page.locator("#ovr-marks input[type=checkbox]").uncheck()  # the settings toggle: plain trace
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('#ovr-chat mark.ovr-behaviour'))"
        ".backgroundColor === 'rgba(0, 0, 0, 0)'",
        timeout=5_000,
    )
    page.locator("#ovr-marks input[type=checkbox]").check()
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('#ovr-chat mark.ovr-behaviour'))"
        ".backgroundColor !== 'rgba(0, 0, 0, 0)'",
        timeout=5_000,
    )
    assert "in <image>." in thought.locator(".content").inner_text()  # escaped, not eaten as a tag
    answer = page.locator("#ovr-chat .bot-row .message-content").last
    assert answer.locator(".katex").count() == 2  # the bare \boxed{7}, and the result callout


def test_editing_an_earlier_question_cuts_the_chat_there_and_asks_again(page):
    set_number(page, "ovr-max-tokens", 200)
    send(page, "How many squares?", [SHAPES])
    wait_idle(page)
    send(page, "And circles?")
    wait_idle(page)
    first = page.locator("#ovr-chat .user-row").get_by_text("How many squares?")
    first.hover()
    page.locator("#ovr-chat button[aria-label=Edit]").first.click()
    box = page.locator("#ovr-chat textarea")
    assert box.input_value() == "How many squares?"
    box.fill(QUESTION)
    page.locator("#ovr-chat button[aria-label=Submit]").click()
    page.wait_for_function(
        "!document.querySelector('#ovr-chat').innerText.includes('And circles?')", timeout=30_000
    )
    # The cut shows before the new generation starts (the submit button is still there): wait for
    # the answer to the edit, then for the end of it.
    page.locator("#ovr-chat .thought-group").first.wait_for(timeout=60_000)
    wait_idle(page)
    users = page.locator("#ovr-chat .user-row")
    assert users.get_by_text(QUESTION).count() == 1
    assert users.get_by_text("How many squares?").count() == 0
    assert users.locator("img").count() == 1  # the image stayed with the edited question
    assert page.locator("#ovr-chat .thought-group").count() == 1  # one answer, to the edit
    screenshot(page, "webui-edited")


def test_login_refuses_a_wrong_password_and_then_lets_you_chat(ovr_server):
    env = {"OVR_UI_USER": "ann", "OVR_UI_PASSWORD": "s3cret"}
    with (
        running_webui(
            ovr_server.base_url, ovr_server.model, free_port(), ovr_server.api_key, env=env
        ) as url,
        chromium_page() as page,
    ):
        page.goto(url + "/")
        login = page.locator("input[type=password]")
        login.wait_for(timeout=30_000)
        assert page.locator("#ovr-input").count() == 0  # nothing of the app before logging in
        page.locator("input[type=text]").first.fill("ann")
        login.fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
        screenshot(page, "webui-login-refused")
        page.locator("input[type=text]").first.fill("zoë")  # another script: refused, no crash
        page.locator("input[type=password]").fill("пароль")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
        assert page.locator("#ovr-input").count() == 0
        page.locator("input[type=text]").first.fill("ann")
        page.locator("input[type=password]").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        try:
            page.wait_for_selector("#ovr-input textarea", timeout=30_000)
        finally:
            screenshot(page, "webui-logged-in")
        send(page, "What is 2 + 2?")
        wait_idle(page)
        assert page.locator("#ovr-chat .bot-row").count() >= 1
        assert "Error" not in page.locator("#ovr-chat").inner_text()


def test_app_served_behind_a_reverse_proxy_prefix(ovr_server):
    with (
        running_webui(
            ovr_server.base_url,
            ovr_server.model,
            port := free_port(),
            ovr_server.api_key,
            args=["--root-path", "/ovr"],
            log_name="webui-prefix",
        ),
        prefix_proxy(f"http://127.0.0.1:{port}", "/ovr", free_port()) as url,
        chromium_page() as page,
    ):
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        page.goto(url + "/")
        page.wait_for_selector("#ovr-input textarea", timeout=30_000)
        send(page, QUESTION, [SHAPES])
        wait_idle(page)
        page.locator("#ovr-chat .user-row img").first.wait_for(timeout=20_000)
        assert "Error" not in page.locator("#ovr-chat").inner_text()
        assert not [u for u in failed if "/ovr/" not in u and "127.0.0.1" in u], failed
        screenshot(page, "webui-behind-proxy")


class _Canary(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        _Canary.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hostile_chat_text_loads_nothing_and_runs_no_html(page, ui, tmp_path):
    """An imported chat full of remote images and raw HTML (in the question, the trace and the
    answer's result callout): the browser shows them as text and asks the canary for nothing."""
    canary = ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{canary.server_address[1]}"
    hostile = [
        f"![a]({remote}/md.png)",
        f"\\`<img src={remote}/escaped.png>\\`",
        f"``<img src={remote}/runs.png>`",
        f"| `<img src={remote}/cell.png> | b` |\n|---|---|",
        f'<img src="{remote}/raw.png" onerror="document.title=\'pwned\'">',
    ]
    text = "\n\n".join(hostile)
    answer = f"So \\boxed{{`<img src={remote}/boxed.png onerror=\\\"document.title='pwned'\\\">`}}."
    chat = {
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "reasoning": text, "content": text + "\n\n" + answer},
        ]
    }
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(chat))
    try:
        with page.expect_file_chooser() as chooser:
            page.click("#ovr-import")
        chooser.value.set_files(str(path))
        page.locator("#ovr-chat .ovr-result").wait_for(timeout=20_000)
        thought = page.locator("#ovr-chat .bot-row .thought-group").first
        thought.locator(".title").click()  # unfold the trace too
        page.wait_for_timeout(1500)
        screenshot(page, "webui-hostile-text")
        chat_html = page.locator("#ovr-chat").inner_html()
        assert page.locator("#ovr-chat img[src*='127.0.0.1']").count() == 0, chat_html[-2000:]
        assert page.locator("#ovr-chat [onerror]").count() == 0
        assert page.title() != "pwned" and _Canary.hits == []
        assert "src=" in page.locator("#ovr-chat").inner_text()  # shown as text instead
        policy = httpx.get(ui + "/").headers["content-security-policy"]
        assert "img-src 'self' data: blob:" in policy
    finally:
        canary.shutdown()


def test_extra_box_and_import_refuse_what_is_not_theirs(page, tmp_path):
    page.fill("#ovr-extra textarea", '{"messages": [{"role": "user", "content": "other"}]}')
    send(page, "What is 2 + 2?")
    wait_idle(page)
    chat = page.locator("#ovr-chat").inner_text()
    assert "'messages' is not allowed here" in chat and "top_k" in chat
    fake = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{fake}"}}
    path = tmp_path / "fake-image.json"
    path.write_text(json.dumps([{"role": "user", "content": [part]}]))
    with page.expect_file_chooser() as chooser:
        page.click("#ovr-import")
    chooser.value.set_files(str(path))
    page.get_by_text("not a PNG, JPEG, WebP or GIF image").first.wait_for(timeout=20_000)
    screenshot(page, "webui-import-refused")
