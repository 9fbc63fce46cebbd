"""The conversation's views: the chat display, the request sent upstream, export and import."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from webui import conversation as conv
from webui import render
from webui.example_images import EXAMPLES, example_paths
from webui.settings import parse_settings, read_auth


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (8, 6), "red").save(path)
    return str(path)


@pytest.fixture
def talk(image):
    return [
        conv.UserTurn("How many dots?", [image]),
        conv.AssistantTurn("I see one red dot.", "One: $\\boxed{1}$", "stop", 2.0, 7),
        conv.UserTurn("And now?"),
        conv.ErrorTurn("Cannot reach the endpoint"),
        conv.UserTurn("Again?"),
    ]


def test_request_sends_images_inline_and_leaves_earlier_traces_out(talk, image):
    messages = conv.to_openai(talk, system_prompt="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    first = messages[1]["content"]
    assert first[0]["type"] == "image_url"
    raw = base64.b64decode(first[0]["image_url"]["url"].split(",", 1)[1])
    assert raw == open(image, "rb").read()
    assert messages[2]["content"] == "One: $\\boxed{1}$"  # no trace
    assert messages[3]["content"] == [{"type": "text", "text": "Again?"}]  # failed turn skipped


def test_request_sends_traces_back_when_asked(talk):
    messages = conv.to_openai(talk, include_reasoning=True)
    assert messages[1]["content"].startswith("<think>\nI see one red dot.\n</think>")


def test_chat_display_folds_thinking_once_the_answer_starts(talk):
    turn = conv.AssistantTurn("counting", "", None, 1.0, 3)
    live = render.to_chatbot(talk[:1] + [turn], live=True)
    assert live[-1]["metadata"]["status"] == "pending"
    assert live[-1]["metadata"]["log"] == "1.0 s · 3 tokens"
    turn.answer = "Two"
    shown = render.to_chatbot(talk[:1] + [turn], live=True)
    assert shown[-2]["metadata"]["status"] == "done" and shown[-1]["content"] == "Two"


def test_chat_display_shows_image_then_text_and_highlights_the_boxed_result(talk, image):
    shown = render.to_chatbot(talk)
    assert shown[0]["content"][0]["path"] == image and shown[0]["content"][1] == "How many dots?"
    assert "ovr-result" in shown[2]["content"] and "\\boxed{1}" in shown[2]["content"]
    assert shown[-2]["content"].startswith("⚠️")


def test_truncated_trace_is_labelled_and_invites_continue():
    turn = conv.AssistantTurn("long trace", "", "length", 5.0, 4096)
    shown = render.to_chatbot([conv.UserTurn("q"), turn])
    assert conv.is_truncated(turn)
    assert shown[1]["metadata"]["title"] == conv.TRUNCATED_TITLE
    assert "Continue" in shown[2]["content"]


def test_json_export_is_openai_format_and_imports_back(talk, tmp_path):
    talk = talk[:3]
    exported = json.loads(conv.export_json(talk, "Be brief."))
    assert exported["messages"][2]["reasoning"] == "I see one red dot."
    back, system = conv.import_json(json.dumps(exported), tmp_path / "imported")
    assert system == "Be brief."
    assert [t.role for t in back] == ["user", "assistant", "user"]
    assert back[1].reasoning == talk[1].reasoning and back[1].answer == talk[1].answer
    assert open(back[0].images[0], "rb").read() == open(talk[0].images[0], "rb").read()
    assert (back[1].seconds, back[1].tokens) == (2.0, 7)
    assert render.to_chatbot(back)[1]["metadata"]["log"].startswith("2.0 s · 7 tokens")


def test_a_trace_without_timing_shows_no_made_up_figures(tmp_path):
    """A conversation from another tool has no time or token count: show none, not "0.0 s"."""
    other = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>R</think>A"},
    ]
    back, _ = conv.import_json(json.dumps(other), tmp_path)
    assert (back[1].seconds, back[1].tokens) == (None, 0)
    assert render.to_chatbot(back)[1]["metadata"]["log"] == ""
    assert "<summary>Thinking</summary>" in conv.export_markdown(back)


@pytest.mark.parametrize(
    "assistant",
    [
        {"role": "assistant", "content": "A", "reasoning_content": "R"},
        {"role": "assistant", "content": "<think>R</think>\n\nA"},
    ],
)
def test_import_reads_either_reasoning_name_and_inline_tags(assistant, tmp_path):
    back, _ = conv.import_json(json.dumps([{"role": "user", "content": "q"}, assistant]), tmp_path)
    assert (back[1].reasoning, back[1].answer) == ("R", "A")


def test_import_refuses_links_and_garbage(tmp_path):
    link = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    with pytest.raises(ValueError, match="data: URLs"):
        conv.import_json(json.dumps(link), tmp_path)
    with pytest.raises(ValueError):
        conv.import_json('{"nothing": 1}', tmp_path)


def test_markdown_export_embeds_images_and_folds_traces(talk):
    md = conv.export_markdown(talk[:2], "Be brief.")
    assert "![dot.png](data:image/png;base64," in md
    assert "<details><summary>Thinking (2.0 s, 7 tokens)</summary>" in md
    assert "One: $\\boxed{1}$" in md


def test_examples_ship_small_and_loadable():
    paths = example_paths()
    assert len(paths) == len(EXAMPLES) >= 2
    for path, question in paths:
        with Image.open(path) as img:
            assert img.size == (320, 240)
        assert "\\boxed{}" in question
        assert len(open(path, "rb").read()) < 20_000


def test_settings_read_key_and_login_from_environment(monkeypatch, tmp_path):
    auth = tmp_path / "users"
    auth.write_text("# users\nann:secret\n\nbob:pa:ss\n")
    monkeypatch.setenv("OVR_API_KEY", "k-123")
    monkeypatch.setenv("OVR_UI_USER", "eve")
    monkeypatch.setenv("OVR_UI_PASSWORD", "pw")
    s = parse_settings(
        ["--endpoint", "http://h:1/v1/", "--auth-file", str(auth), "--root-path", "/ovr"]
    )
    assert s.api_key == "k-123" and s.endpoint == "http://h:1/v1" and s.root_path == "/ovr"
    assert s.auth == [("ann", "secret"), ("bob", "pa:ss"), ("eve", "pw")]
    assert "k-123" not in repr(s)
    bad = tmp_path / "bad"
    bad.write_text("nocolon\n")
    with pytest.raises(SystemExit):
        read_auth(str(bad))


def test_finished_trace_tags_behaviours_and_counts_them_live_trace_does_not():
    trace = "Add 3 and 4. Wait, that is wrong. Let me double-check: 3 + 4 = 7."
    turn = conv.AssistantTurn(trace, "$\\boxed{7}$", "stop", 1.0, 20)
    thought = render.to_chatbot([conv.UserTurn("3+4?"), turn])[1]
    assert '<mark class="ovr-behaviour" title="backtracking">Wait,</mark>' in thought["content"]
    assert 'title="verification">Let me double-check</mark>' in thought["content"]
    assert "backtracking ×2" in thought["metadata"]["log"]  # "Wait" and "that is wrong"
    assert "verification ×1" in thought["metadata"]["log"]
    live = conv.AssistantTurn(trace, "", None, 1.0, 20)
    streaming = render.to_chatbot([conv.UserTurn("3+4?"), live], live=True)[1]
    assert streaming["content"] == trace  # not while it streams: the text would jump about
    plain = conv.AssistantTurn("3 + 4 = 7.", "$\\boxed{7}$", "stop", 1.0, 9)
    assert render.to_chatbot([conv.UserTurn("3+4?"), plain])[1]["metadata"]["log"] == (
        "1.0 s · 9 tokens"
    )
    assert conv.export_json([conv.UserTurn("3+4?"), turn]).count("<mark") == 0  # display only


def test_model_text_is_escaped_so_angle_brackets_do_not_swallow_it():
    trace = "Compare <image> and x<y & z. Wait, `a<b` stays code."
    turn = conv.AssistantTurn(trace, "Since $x<y$, \\boxed{x<y}", "stop", 1.0, 9)
    thought, answer = render.to_chatbot([conv.UserTurn("q"), turn])[1:]
    assert "Compare &lt;image> and x&lt;y &amp; z." in thought["content"]
    assert "`a<\u2060b`" in thought["content"]  # code is shown verbatim; no tag can open
    assert 'title="backtracking">Wait,</mark>' in thought["content"]
    assert "$x&lt;y$" in answer["content"] and "<image>" not in thought["content"]
    assert render.escape_html("```\n<b>\n```\n<b>") == "```\n<\u2060b>\n```\n&lt;b>"


def test_bare_boxed_result_is_typeset_and_boxes_in_math_are_left_alone():
    assert render.typeset_bare_boxes("So \\boxed{4}.") == "So $\\boxed{4}$."
    for inside in ["$\\boxed{4}$", "$$x = \\boxed{4}$$", "\\[\\boxed{4}\\]", "\\(\\boxed{4}\\)"]:
        assert render.typeset_bare_boxes(inside) == inside
    shown = render.decorate_answer("First \\boxed{1}, then $2$ and \\boxed{\\frac{1}{2}}")
    assert shown.startswith("First $\\boxed{1}$, then $2$ and $\\boxed{\\frac{1}{2}}$")
    assert 'class="ovr-result">Final answer: $\\boxed{\\frac{1}{2}}$</div>' in shown


def test_each_chat_message_maps_back_to_its_turn(talk):
    shown = render.to_chatbot(talk)  # user, thought, answer, user, error, user
    turns = [render.turn_of_message(talk, i) for i in range(len(shown))]
    assert turns == [0, 1, 1, 2, 3, 4]
    assert render.turn_of_message(talk, len(shown)) is None
