"""Serving settings: one dataclass, rendered into the vLLM command, the guard settings and the env.

The CLI, `--config serve.yaml`, `--dry-run` and the Docker entrypoint all go through
`ServeConfig` → `vllm_command()` / `child_env()`, so they cannot disagree.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ovr_core.ports import is_loopback
from ovr_core.wire import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_UI_PORT,
    SERVED_MODEL_NAME,
)

DEFAULT_MODEL = "Kangheng/OVR-7B-RL"
DEFAULT_MAX_MODEL_LEN = 49152  # the RL curriculum's last stage (paper §4.1): 48k-token traces
GUARD_ENV = "OVR_GUARD_CONFIG"
# The routes the guard lets through; every other path is 404 for every client (vLLM 0.32 also
# registers admin, debug and other-API routes, e.g. /scale_elastic_ep, that OVR does not serve).
OPEN_ROUTES = ("/health", "/ping", "/metrics", "/version")  # GET, reach no model: no key needed
API_ROUTES = (  # "METHOD /path", each needs the API key
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "GET /v1/models",
    "POST /tokenize",
    "POST /detokenize",
)
MAX_JSON_DEPTH = 64  # an OpenAI chat request nests about 6 deep
# vLLM fetches any http(s) media URL when --allowed-media-domains is empty; a name no URL's host
# can have (parentheses are not allowed in host names) makes its own check refuse every URL.
NO_MEDIA_DOMAIN = "(none)"


@dataclass
class ServeConfig:
    """What `ovr-serve` needs to start vLLM for OVR; every field is a flag and a YAML key."""

    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Hub id or local checkpoint directory to serve."}
    )
    served_model_name: str = field(
        default=SERVED_MODEL_NAME,
        metadata={"help": "Model name clients send (`model=` in the openai SDK)."},
    )
    host: str = field(
        default=DEFAULT_HOST,
        metadata={"help": "Address to listen on. Anything beyond loopback requires an API key."},
    )
    port: int = field(
        default=DEFAULT_PORT, metadata={"help": "Port of the OpenAI-compatible endpoint."}
    )
    api_key_env: str = field(
        default=API_KEY_ENV,
        metadata={
            "help": "Environment variable holding the API key (never passed on a command line)."
        },
    )
    max_model_len: int | None = field(
        default=None,
        metadata={
            "help": f"Context length (prompt + trace). Default {DEFAULT_MAX_MODEL_LEN} (OVR's RL"
            " curriculum ends at 48k), capped at the checkpoint's max_position_embeddings."
        },
    )
    max_images: int = field(default=4, metadata={"help": "Most images one request may carry."})
    max_pixels: int = field(
        default=1280 * 28 * 28,
        metadata={"help": "Qwen2.5-VL processor max_pixels: larger images are resized down to it."},
    )
    min_pixels: int = field(
        default=4 * 28 * 28, metadata={"help": "Qwen2.5-VL processor min_pixels."}
    )
    max_image_bytes: int = field(
        default=20 * 1024 * 1024, metadata={"help": "Largest encoded image accepted, in bytes."}
    )
    max_image_input_pixels: int = field(
        default=8192 * 8192,
        metadata={
            "help": "Largest decoded image (width x height) accepted; stops decompression bombs."
        },
    )
    allowed_media_domains: list[str] = field(
        default_factory=list,
        metadata={"help": "Domains whose http(s) image URLs the server may fetch. Default: none."},
    )
    allowed_local_media_path: str | None = field(
        default=None,
        metadata={"help": "Folder whose file:// images the server may read. Default: none."},
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "Chat template file; default: the checkpoint's own."}
    )
    think_in_prompt: str = field(
        default="auto",
        metadata={
            "help": "Does the chat template open <think> in the prompt? auto (render it and look), yes, no."
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per replica (vLLM -tp)."})
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "Fraction of GPU memory vLLM may take (GPU only)."}
    )
    enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Skip graph compilation: faster start, slower tokens. Default: on for CPU."
        },
    )
    cpu_kvcache_gib: int = field(
        default=2, metadata={"help": "KV cache size on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."}
    )
    device: str = field(
        default="auto",
        metadata={"help": "auto, cuda or cpu (which vLLM build is installed decides auto)."},
    )
    ui: bool = field(
        default=False, metadata={"help": "Also start the Gradio web UI against the endpoint."}
    )
    ui_host: str = field(
        default=DEFAULT_HOST,
        metadata={
            "help": "Address of the web UI. Beyond loopback it needs a login"
            " (OVR_UI_USER and OVR_UI_PASSWORD)."
        },
    )
    ui_port: int = field(default=DEFAULT_UI_PORT, metadata={"help": "Port of the web UI."})
    demo: bool = field(
        default=False,
        metadata={
            "help": "Serve the offline tiny test model (built on first use): no download needed."
        },
    )
    startup_timeout: float = field(
        default=1800.0, metadata={"help": "Seconds to wait for /health before giving up."}
    )
    vllm_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra flags passed to `vllm serve` as they are."}
    )
    log_file: str | None = field(
        default=None,
        metadata={
            "help": "Where vLLM's (and the web UI's) full log goes; default"
            " ~/.cache/ovr/logs/ovr-serve-<port>.log (its path is printed)."
        },
    )
    verbose: bool = field(
        default=False,
        metadata={"help": "Stream vLLM's whole log to the terminal instead of the log file."},
    )
    quiet: bool = field(
        default=False, metadata={"help": "After the ready banner, print no line per request."}
    )
    extra_routes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "vLLM routes to open beyond OVR's allowlist, e.g. /v1/embeddings (each still"
            " needs the API key). Default: none."
        },
    )

    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host names clients may reach the server by, besides loopback names and the"
            " listen address ('*': any). Checked on loopback or without a key (DNS rebinding)."
        },
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Browser origins (scheme://host:port, 'null', '*') that may call the API beside"
            " pages served from loopback names. Checked on loopback or without a key."
        },
    )
    max_requests_per_client: int = field(
        default=64,
        metadata={
            "help": "Requests one client (one address) may have in progress at once; more get 429."
            " 0: no limit."
        },
    )
    max_headers: int = field(
        default=100, metadata={"help": "Most header lines one request may send (431 beyond)."}
    )
    max_header_bytes: int = field(
        default=64 * 1024,
        metadata={"help": "Largest request head (request line and headers), in bytes."},
    )
    header_timeout: float = field(
        default=10.0,
        metadata={"help": "Seconds a client has to send a request's headers before it is cut off."},
    )

    def is_loopback(self, host: str | None = None) -> bool:
        """True when the endpoint (or ``host``, e.g. the UI's) listens on this machine only."""
        return is_loopback(self.host if host is None else host)

    def context_length(self, max_positions: int | None) -> int:
        """The max_model_len vLLM gets: the setting, else the default capped at the checkpoint's
        ``max_position_embeddings`` (``max_positions``; None when it names none)."""
        return self.max_model_len or min(DEFAULT_MAX_MODEL_LEN, max_positions or math.inf)

    def api_key(self) -> str | None:
        """The API key from the environment, or None."""
        return os.environ.get(self.api_key_env) or None

    def base_url(self) -> str:
        """The OpenAI base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def guard_settings(self) -> GuardSettings:
        """What the request guard inside the server enforces (no secrets: the key goes by env)."""
        return GuardSettings(
            api_key_env=self.api_key_env,
            open_routes=OPEN_ROUTES,
            api_routes=API_ROUTES,
            extra_routes=tuple(self.extra_routes),
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
            max_image_input_pixels=self.max_image_input_pixels,
            max_json_depth=MAX_JSON_DEPTH,
            allowed_media_domains=tuple(self.allowed_media_domains),
            allowed_local_media_path=self.allowed_local_media_path,
            listen_host=self.host,
            allowed_hosts=tuple(self.allowed_hosts),
            allowed_origins=tuple(self.allowed_origins),
            max_requests_per_client=self.max_requests_per_client,
            max_headers=self.max_headers,
            max_header_bytes=self.max_header_bytes,
            header_timeout=self.header_timeout,
        )


@dataclass(frozen=True)
class GuardSettings:
    """The guard's settings, built by ``ServeConfig.guard_settings`` (no defaults here) and sent to
    the server process as JSON in ``GUARD_ENV``."""

    api_key_env: str
    open_routes: tuple[str, ...]
    api_routes: tuple[str, ...]
    extra_routes: tuple[str, ...]
    max_images: int
    max_image_bytes: int
    max_image_input_pixels: int
    max_json_depth: int
    allowed_media_domains: tuple[str, ...]
    allowed_local_media_path: str | None
    listen_host: str
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    max_requests_per_client: int
    max_headers: int
    max_header_bytes: int
    header_timeout: float

    def to_json(self) -> str:
        """The settings as the JSON the server process reads."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GuardSettings:
        """Parse what ``to_json`` wrote; a missing or unknown key is an error, not a default."""
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"{GUARD_ENV}: expected keys {sorted(names)}, got {sorted(data)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


def vllm_command(
    cfg: ServeConfig, device: str, think_in_prompt: bool, max_model_len: int
) -> list[str]:
    """The exact `vllm serve` command for these settings (argv; python is `python3`)."""
    cmd = ["python3", "-m", "ovr_serve.vllm_entry", "serve", cfg.model]
    cmd += ["--served-model-name", cfg.served_model_name]
    cmd += ["--host", cfg.host, "--port", str(cfg.port)]
    cmd += ["--max-model-len", str(max_model_len)]
    cmd += ["--reasoning-parser-plugin", "ovr_serve.reasoning", "--reasoning-parser", "ovr"]
    cmd += ["--middleware", "ovr_serve.guard.RequestGuard"]
    cmd += ["--middleware", "ovr_serve.request_log.RequestLog"]  # outermost: logs refusals too
    cmd += ["--limit-mm-per-prompt", json.dumps({"image": cfg.max_images, "video": 0})]
    cmd += [
        "--mm-processor-kwargs",
        json.dumps({"max_pixels": cfg.max_pixels, "min_pixels": cfg.min_pixels}),
    ]
    cmd += ["--generation-config", "auto"]
    # vLLM's own media checks stand behind the guard's: no domain, no folder unless allowed.
    cmd += ["--allowed-media-domains", *(cfg.allowed_media_domains or [NO_MEDIA_DOMAIN])]
    if cfg.allowed_local_media_path:
        cmd += ["--allowed-local-media-path", cfg.allowed_local_media_path]
    if cfg.chat_template:
        cmd += ["--chat-template", cfg.chat_template]
    if cfg.tensor_parallel_size != 1:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.gpu_memory_utilization is not None and device == "cuda":
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    eager = cfg.enforce_eager if cfg.enforce_eager is not None else device == "cpu"
    if eager:
        cmd += ["--enforce-eager"]
    return cmd + list(cfg.vllm_args)


def child_env(cfg: ServeConfig, device: str, think_in_prompt: bool) -> dict[str, str]:
    """Environment settings the server process gets on top of ours (no secret values)."""
    env = {
        GUARD_ENV: cfg.guard_settings().to_json(),
        "OVR_THINK_IN_PROMPT": "1" if think_in_prompt else "0",
        "VLLM_NO_USAGE_STATS": "1",
        # vLLM's side of the media policy, whatever the guard saw: an allowed domain may not
        # redirect elsewhere, no fetched media is cached across requests, no image is decoded
        # beyond the pixel limit, and no debug or dev routes are registered at all.
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
        "VLLM_MEDIA_CACHE": "",
        "VLLM_MEDIA_CONNECTOR": "http",
        "VLLM_MAX_IMAGE_PIXELS": str(cfg.max_image_input_pixels),
        "VLLM_SERVER_DEV_MODE": "0",
    }
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_gib)
        env["VLLM_TARGET_DEVICE"] = "cpu"
    return env


def process_env(
    cfg: ServeConfig, device: str, think_in_prompt: bool, base: Mapping[str, str]
) -> dict[str, str]:
    """The server process's whole environment: ``base`` plus ``child_env``, minus ``VLLM_API_KEY``
    (our guard checks the key on every route; vLLM's own check would guard only some of them)."""
    env = {**base, **child_env(cfg, device, think_in_prompt)}
    env.pop("VLLM_API_KEY", None)
    # Start-up phases and the log file read vLLM's INFO lines. TRL 1.16 sets VLLM_LOGGING_LEVEL=ERROR
    # in any process that imports it (trl/_compat.py), and a server started from there (a test
    # session, a training script) would start blind; DEBUG, asked for by a person, is kept.
    if env.get("VLLM_LOGGING_LEVEL", "INFO").upper() != "DEBUG":
        env["VLLM_LOGGING_LEVEL"] = "INFO"
    return env


def render_dry_run(cfg: ServeConfig, device: str, think_in_prompt: bool, max_model_len: int) -> str:
    """Shell text of the command `ovr-serve` would run, env included (secrets by name only)."""
    env = child_env(cfg, device, think_in_prompt)
    lines = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(
        f"# API key: read from ${cfg.api_key_env} ({'set' if cfg.api_key() else 'not set'})"
    )
    lines.append(shlex.join(vllm_command(cfg, device, think_in_prompt, max_model_len)))
    return "\n".join(lines)


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a serve.yaml into ServeConfig field values, rejecting unknown keys by name."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    known = set(asdict(ServeConfig()))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    return data
