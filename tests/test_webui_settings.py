"""The web UI without a browser: its settings (flags, environment, refusals), the extra-parameters
box (a typed model, checked against vLLM's own request model) and the chat handlers on turns."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket

import gradio as gr
import pytest
from PIL import Image

from webui.conversation import AssistantTurn, ErrorTurn, UserTurn
from webui.extra_sampling import EXTRA_SAMPLING, parse_extra
from webui.handlers import ChatHandlers
from webui.settings import UISettings, parse_settings
from webui.upstream import Endpoint

# Every flag `ovr-webui` took before its settings were a dataclass, with a value and the field it
# sets (README.md, docs/webui.md, docker-compose.yml and ovr_serve.launch use these spellings).
FLAGS_BEFORE = [
    ("--endpoint", ["http://h:1/v1/"], "endpoint", "http://h:1/v1"),
    ("--model", ["ovr"], "model", "ovr"),
    ("--host", ["localhost"], "host", "localhost"),
    ("--port", ["7001"], "port", 7001),
    ("--root-path", ["/ovr"], "root_path", "/ovr"),
    ("--concurrency", ["3"], "concurrency", 3),
    ("--max-tokens", ["512"], "max_tokens", 512),
    ("--idle-timeout", ["9.5"], "idle_timeout", 9.5),
    ("--allowed-hosts", ["a.example", "b.example"], "allowed_hosts", ["a.example", "b.example"]),
    ("--allowed-origins", ["https://x.example"], "allowed_origins", ["https://x.example"]),
    ("--max-upload-mb", ["7"], "max_upload_mb", 7),
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in (
        "OVR_API_KEY",
        "OVR_UI_USER",
        "OVR_UI_PASSWORD",
        "OVR_ENDPOINT",
        "OVR_UI_ROOT_PATH",
    ):
        monkeypatch.delenv(name, raising=False)


# --- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, values, name, expected", FLAGS_BEFORE)
def test_every_flag_of_before_still_sets_its_setting(flag, values, name, expected):
    assert getattr(parse_settings([flag, *values]), name) == expected
    underscored = "--" + flag[2:].replace("-", "_")  # ServeConfig's spelling works too
    assert getattr(parse_settings([underscored, *values]), name) == expected


def test_all_flags_together_and_the_upload_cap_in_bytes(tmp_path):
    users = tmp_path / "users"
    users.write_text("ann:secret\n")
    argv = [x for flag, values, _, _ in FLAGS_BEFORE for x in (flag, *values)]
    s = parse_settings([*argv, "--auth-file", str(users)])
    assert [getattr(s, name) for _, _, name, _ in FLAGS_BEFORE] == [e for *_, e in FLAGS_BEFORE]
    assert s.max_upload_bytes == 7 << 20 and s.auth == [("ann", "secret")]


def test_each_flag_shows_the_help_its_field_carries(capsys):
    with pytest.raises(SystemExit) as done:
        parse_settings(["--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    flags = [f for f in dataclasses.fields(UISettings) if f.init]
    assert len(flags) == len(FLAGS_BEFORE) + 2  # --auth-file, --update-interval
    for f in flags:
        assert f"--{f.name.replace('_', '-')}" in shown
        assert " ".join(f.metadata["help"].split()) in shown, f.name


def test_environment_gives_defaults_that_flags_override(monkeypatch):
    monkeypatch.setenv("OVR_ENDPOINT", "http://env:1/v1/")
    monkeypatch.setenv("OVR_UI_ROOT_PATH", "/from-env")
    s = parse_settings([])
    assert (s.endpoint, s.root_path) == ("http://env:1/v1", "/from-env")
    s = parse_settings(["--endpoint", "http://flag:2/v1", "--root-path", "/flag"])
    assert (s.endpoint, s.root_path) == ("http://flag:2/v1", "/flag")


def test_the_key_and_logins_come_from_the_environment_never_a_flag(monkeypatch, capsys):
    monkeypatch.setenv("OVR_API_KEY", "k-9")
    monkeypatch.setenv("OVR_UI_USER", "eve")
    monkeypatch.setenv("OVR_UI_PASSWORD", "pw")
    s = parse_settings(["--host", "0.0.0.0"])  # a login: listening beyond loopback is allowed
    assert s.api_key == "k-9" and s.auth == [("eve", "pw")] and "k-9" not in repr(s)
    for flag in ("--api-key", "--api_key"):  # a key in argv would show in `ps`
        with pytest.raises(SystemExit) as refused:
            parse_settings([flag, "x"])
        assert refused.value.code == 2
        assert f"unrecognized arguments: {flag} x" in capsys.readouterr().err


def test_listening_beyond_loopback_without_a_login_is_refused_with_what_to_set():
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0 without a login") as e:
        parse_settings(["--host", "0.0.0.0"])
    assert "OVR_UI_USER and OVR_UI_PASSWORD" in str(e.value) and "--auth-file" in str(e.value)


# --- the extra-parameters box -------------------------------------------------------------------
ALLOWED = ", ".join(EXTRA_SAMPLING)


@pytest.mark.parametrize(
    "text, refusal",
    [
        ("{", "Extra sampling parameters are not valid JSON: "),
        ("[1]", 'Extra sampling parameters must be a JSON object, like {"top_k": 20}.'),
        ('{"messages": []}', f"'messages' is not allowed here; allowed: {ALLOWED}."),
        ('{"top_k": 2, "tools": [], "seed": "x"}', "'tools' is not allowed here"),
        ('{"seed": "x", "tools": []}', "'seed' has the wrong type of value."),
        ('{"top_k": true}', "'top_k' has the wrong type of value."),
        ('{"temperature": "1"}', "'temperature' has the wrong type of value."),
        ('{"ignore_eos": 1}', "'ignore_eos' has the wrong type of value."),
        ('{"seed": null}', "'seed' has the wrong type of value."),
        ('{"stop": 5}', "'stop' has the wrong type of value."),
        ('{"n": 0}', "'n' must be between 1 and 64."),
        ('{"n": 65}', "'n' must be between 1 and 64."),
        ('{"stop": ["a", "b", "c", "d", "e"]}', "'stop' takes up to 4 items."),
        ('{"bad_words": ' + json.dumps(["w"] * 17) + "}", "'bad_words' takes up to 16 items."),
    ],
)
def test_the_extra_box_refuses_by_name(text, refusal):
    with pytest.raises(ValueError) as refused:
        parse_extra(text)
    assert refusal in str(refused.value)


def test_the_extra_box_passes_sampling_parameters_on():
    assert parse_extra("") == {} and parse_extra("  ") == {}
    given = {"top_k": 20, "repetition_penalty": 1.05, "stop": ["\n\n"], "ignore_eos": False}
    assert parse_extra(json.dumps(given)) == given
    assert parse_extra('{"temperature": 1, "stop": "x", "n": 2}') == {
        "temperature": 1.0,
        "stop": "x",
        "n": 2,
    }


# What the box takes and what it refuses, each sent to vLLM's own request model as well.
VLLM_ACCEPTS = [
    {"top_k": 20, "min_p": 0.05, "seed": 7, "min_tokens": 3, "length_penalty": 1.0},
    {"stop": ["a", "b", "c", "d"], "stop_token_ids": list(range(16)), "bad_words": ["w"]},
    {"temperature": 1, "top_p": 0.9, "max_tokens": 64, "ignore_eos": True, "n": 2},
    {"presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "stop": "x"},
]
VLLM_REFUSES = [
    {"top_k": 20.5},
    {"stop": [1]},
    {"stop": ["a"] * 5},
    {"stop_token_ids": ["a"]},
    {"ignore_eos": "maybe"},
]


@pytest.mark.slow  # imports vLLM (about 10 s on a 2-core CPU)
def test_the_extra_box_agrees_with_vllms_request_model():
    """vLLM 0.32's ``ChatCompletionRequest`` is the reference: every key the box takes is one of its
    fields, what the box takes it takes, and what it refuses for type or length the box refuses."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    assert set(EXTRA_SAMPLING) <= set(ChatCompletionRequest.model_fields)
    base = {"model": "ovr", "messages": [{"role": "user", "content": "q"}]}
    for params in VLLM_ACCEPTS:
        ChatCompletionRequest.model_validate({**base, **parse_extra(json.dumps(params))})
    for params in VLLM_REFUSES:
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({**base, **params})
        with pytest.raises(ValueError, match="wrong type|takes up to"):
            parse_extra(json.dumps(params))


# --- the handlers, on turns -----------------------------------------------------------------------
@pytest.fixture
def image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (8, 6), "red").save(path)
    return str(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.fixture
def chat():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    return ChatHandlers(Endpoint(url, connect_timeout=5), UISettings(endpoint=url, model="ovr"))


def test_sending_regenerating_and_editing_work_on_turns(chat, image):
    talk, shown, _ = chat.add_user({"text": "  How many dots? ", "files": [{"path": image}]}, [])
    assert (
        talk == [UserTurn("How many dots?", [image])] and shown[0]["content"][1] == "How many dots?"
    )
    with pytest.raises(gr.Error, match="Type a question"):
        chat.add_user({"text": " ", "files": []}, talk)
    talk = talk + [AssistantTurn("I count.", "One.", "stop", 1.0, 3)]
    again, _ = chat.drop_answer(talk)
    assert again == talk[:1]
    edit = gr.EditData(None, {"index": 0, "value": "How many &lt;dots>?", "previous_value": ""})
    edited, _ = chat.resend_edited(talk, edit)
    assert edited == [UserTurn("How many <dots>?", [image])]  # unescaped, images kept
    with pytest.raises(gr.Error, match="Only your own questions"):
        chat.resend_edited(
            talk, gr.EditData(None, {"index": 1, "value": "x", "previous_value": ""})
        )
    left, _, box = chat.edit_last(talk)
    assert left == [] and box == {"text": "How many dots?", "files": [image]}
    talk[-1] = AssistantTurn("half a tra")
    stopped, shown, _ = chat.mark_stopped(talk)
    assert stopped[-1].stopped and stopped[-1].finish_reason == "stop"
    assert shown[-1]["content"].endswith("*Stopped.*")


def test_a_failed_generation_adds_an_error_turn_and_gives_the_question_back(chat, image):
    """A real connection to a port nothing listens on: the empty answer goes, the error shows."""
    talk = [UserTurn("How many dots?", [image])]
    updates = asyncio.run(_collect(chat.generate(talk, "ovr", "", 0.6, 0.95, 64, False, "")))
    final, shown, _, box = updates[-1]
    assert [type(t) for t in final] == [UserTurn, ErrorTurn]
    assert "Cannot reach the endpoint" in final[-1].text and shown[-1]["content"].startswith("⚠️")
    assert box == {"text": "How many dots?", "files": [image]}
    bad_box = chat.generate(talk[:1], "ovr", "", 0.6, 0.95, 64, False, "{")
    refused = asyncio.run(_collect(bad_box))[-1][0]  # refused before anything is sent
    assert [type(t) for t in refused] == [UserTurn, ErrorTurn]
    assert refused[-1].text.startswith("Extra sampling parameters are not valid JSON")


async def _collect(updates) -> list:
    return [u async for u in updates]
