"""Qwen2.5-VL's dimensions, the one place they are written down: what sets a model's memory, FLOPs
and parameter count, for serving's pre-flight (`ovr_serve.preflight`), the training plan and the
GPU check (`ovr_train.plan`).

A checkpoint's shape comes from its ``config.json``; the 7B's from `QWEN2_5_VL_7B_CONFIG`, the
hub's config written down here, so nothing is downloaded. Parameter counts come from upstream where
they can: `checkpoint_parameters()` reads a local checkpoint's safetensors headers (no weights
loaded), `hub_parameters()` the hub's safetensors metadata, `empty_model_parameters()` builds transformers' own model on accelerate's empty weights.
`ModelShape.params` is the closed form the two are checked against (tests/test_model_shapes.py), for
when there is neither a checkpoint nor torch: the pre-flight of a hub id, the plan of a name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# config.json of Qwen/Qwen2.5-VL-7B-Instruct (huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct), the keys
# that size it: what every Kangheng/OVR-7B-* checkpoint is. 8,292,166,656 parameters (the hub's
# safetensors metadata): 7.62B LLM + 0.68B ViT.
QWEN2_5_VL_7B_CONFIG = {
    "model_type": "qwen2_5_vl",
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_chans": 3,
    },
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that set memory and FLOPs (Qwen2.5-VL: a Qwen2.5 LLM plus a ViT)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_out: int
    vision_patch: int = 14
    vision_temporal_patch: int = 2
    vision_merge: int = 2
    vision_channels: int = 3
    head_size: int = 0  # the config's head_dim where it sets one; 0: hidden // heads
    max_positions: int | None = None  # max_position_embeddings
    dtype: str = "bfloat16"  # the checkpoint's torch_dtype

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

    @property
    def decoder_layer_params(self) -> int:
        """q/k/v (with bias) + o projections, SwiGLU MLP, two RMSNorms (Qwen2DecoderLayer)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + (q + 2 * kv) + q * self.hidden
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def llm_params(self) -> int:
        """Embeddings, decoder layers, final norm, LM head (untied in the 7B)."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + self.layers * self.decoder_layer_params + self.hidden + head

    @property
    def vision_params(self) -> int:
        """Qwen2.5-VL's ViT: patch embedding, blocks (qkv/proj/SwiGLU with biases, 2 RMSNorms),
        the patch merger (RMSNorm, 2-layer MLP over 2x2 merged patches)."""
        if not self.vision_depth:
            return 0
        h, i = self.vision_hidden, self.vision_intermediate
        patch = self.vision_channels * self.vision_temporal_patch * self.vision_patch**2 * h
        block = (h * 3 * h + 3 * h) + (h * h + h) + (2 * (h * i + i) + (i * h + h)) + 2 * h
        merged = h * self.vision_merge**2
        merger = h + (merged * merged + merged) + (merged * self.vision_out + self.vision_out)
        return patch + self.vision_depth * block + merger

    @property
    def params(self) -> int:
        """Every parameter, LLM and ViT."""
        return self.llm_params + self.vision_params

    def kv_bytes(self, dtype_bytes: int = 2) -> int:
        """K and V of every layer for one token (what vLLM's paged KV cache holds per token)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """`kv_bytes` in bf16, the dtype OVR serves and trains in."""
        return self.kv_bytes(2)


def shape_from_config(config: dict, name: str) -> ModelShape:
    """A ModelShape from a Qwen2.5-VL ``config.json`` (transformers 5 nests the text config)."""
    text = config.get("text_config") or config

    def get(key, default=None):  # transformers 4 keeps the text keys at the top level
        return text.get(key, config.get(key, default))

    vision = config.get("vision_config") or {}
    return ModelShape(
        name=name,
        hidden=get("hidden_size"),
        intermediate=get("intermediate_size"),
        layers=get("num_hidden_layers"),
        heads=get("num_attention_heads"),
        kv_heads=get("num_key_value_heads") or get("num_attention_heads"),
        vocab=get("vocab_size"),
        tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings"))),
        vision_depth=vision.get("depth", 0),
        vision_hidden=vision.get("hidden_size", 0),
        vision_intermediate=vision.get("intermediate_size", 0),
        vision_out=vision.get("out_hidden_size", get("hidden_size")),
        vision_patch=vision.get("patch_size", 14),
        vision_temporal_patch=vision.get("temporal_patch_size", 2),
        vision_merge=vision.get("spatial_merge_size", 2),
        vision_channels=vision.get("in_chans", vision.get("in_channels", 3)),
        head_size=get("head_dim") or 0,
        max_positions=get("max_position_embeddings"),
        dtype=str(get("torch_dtype") or get("dtype") or "bfloat16"),
    )


QWEN2_5_VL_7B = shape_from_config(QWEN2_5_VL_7B_CONFIG, "Qwen2.5-VL-7B")
# names a recipe or a hub id may give the 7B before any checkpoint is at hand (the RL recipe starts
# from the SFT output; Kangheng/OVR-7B-RL, Qwen/Qwen2.5-VL-7B-Instruct)
KNOWN_MODELS = {"qwen2.5-vl-7b": QWEN2_5_VL_7B, "ovr-7b": QWEN2_5_VL_7B}
TINY_MODELS = ("tiny-random", "tiny-coldstarted")


def known_shape(name: str) -> ModelShape | None:
    """The shape of a known model named (case aside) inside ``name``, else None."""
    key = name.lower()
    return next((shape for known, shape in KNOWN_MODELS.items() if known in key), None)


def model_shape(name: str) -> ModelShape:
    """Dimensions from a local checkpoint's config.json, else from the known configs by name."""
    config = Path(name) / "config.json"
    if config.exists():
        return shape_from_config(json.loads(config.read_text()), Path(name).name)
    shape = known_shape(name)
    if shape is None:
        raise SystemExit(
            f"ovr-train plan: no config.json at {name} and not a known model "
            f"({', '.join(KNOWN_MODELS)}); plan a checkpoint directory or a known name"
        )
    return shape


def checkpoint_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in a local checkpoint, from its safetensors headers (no weight is read);
    None when it has no safetensors files."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(file, framework="numpy") as weights:
            total += sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    return total


def hub_parameters(repo_id: str, endpoint: str | None = None) -> int | None:
    """Parameters of a hub checkpoint from the hub's safetensors metadata (the header of each file,
    read with a range request; no weights); None when the hub cannot say (no safetensors files)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        NotASafetensorsRepoError,
        SafetensorsParsingError,
    )

    try:
        meta = HfApi(endpoint=endpoint).get_safetensors_metadata(repo_id)
    except (NotASafetensorsRepoError, SafetensorsParsingError, HfHubHTTPError, OSError):
        return None  # the caller's closed form from config.json stands, and says so
    return sum(meta.parameter_count.values())


def empty_model_parameters(config: dict) -> int:
    """Parameters of transformers' own model for ``config``, built on accelerate's empty weights
    (no memory taken): upstream's count, to check the closed form against. Needs the train extra."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    rest = {k: v for k, v in config.items() if k != "model_type"}
    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(
            AutoConfig.for_model(config["model_type"], **rest)
        )
    return sum(p.numel() for p in model.parameters())
