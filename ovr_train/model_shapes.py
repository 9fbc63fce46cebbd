"""The dimensions that set a model's memory and FLOPs, for `ovr_train.plan` and the GPU check:
from a checkpoint's ``config.json``, or for the 7B from its Hugging Face config written down here
(no download)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def decoder_layer_params(self) -> int:
        """q/k/v (with bias) + o projections, SwiGLU MLP, two RMSNorms (Qwen2DecoderLayer)."""
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * (self.hidden + 2 * kv) + (self.hidden + 2 * kv)
        attention += self.hidden * self.hidden
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
        h, i = self.vision_hidden, self.vision_intermediate
        patch = 3 * self.vision_temporal_patch * self.vision_patch**2 * h
        block = (h * 3 * h + 3 * h) + (h * h + h) + (2 * (h * i + i) + (i * h + h)) + 2 * h
        merged = h * self.vision_merge**2
        merger = h + (merged * merged + merged) + (merged * self.vision_out + self.vision_out)
        return patch + self.vision_depth * block + merger

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer in bf16 (vLLM's paged KV cache holds exactly this per token)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


# Qwen/Qwen2.5-VL-7B-Instruct config.json (huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct): hidden_size
# 3584, intermediate_size 18944, num_hidden_layers 28, num_attention_heads 28, num_key_value_heads 4,
# vocab_size 152064, tie_word_embeddings false; vision_config: depth 32, hidden_size 1280,
# intermediate_size 3420, num_heads 16, out_hidden_size 3584, patch_size 14, temporal_patch_size 2,
# spatial_merge_size 2. About 8.29B parameters (7.62B LLM + 0.68B ViT).
QWEN2_5_VL_7B = ModelShape(
    name="Qwen2.5-VL-7B",
    hidden=3584,
    intermediate=18944,
    layers=28,
    heads=28,
    kv_heads=4,
    vocab=152064,
    tied_embeddings=False,
    vision_depth=32,
    vision_hidden=1280,
    vision_intermediate=3420,
    vision_out=3584,
)
# names a recipe may give the 7B before any checkpoint exists (the RL recipe starts from the SFT output)
KNOWN_MODELS = {"qwen2.5-vl-7b": QWEN2_5_VL_7B, "ovr-7b": QWEN2_5_VL_7B}
TINY_MODELS = ("tiny-random", "tiny-coldstarted")


def model_shape(name: str) -> ModelShape:
    """Dimensions from a local checkpoint's config.json, else from the known configs by name."""
    config = Path(name) / "config.json"
    if config.exists():
        return shape_from_config(json.loads(config.read_text()), Path(name).name)
    key = name.lower()
    for known, shape in KNOWN_MODELS.items():
        if known in key:
            return shape
    raise SystemExit(
        f"ovr-train plan: no config.json at {name} and not a known model "
        f"({', '.join(KNOWN_MODELS)}); plan a checkpoint directory or a known name"
    )


def shape_from_config(config: dict, name: str) -> ModelShape:
    """A ModelShape from a Qwen2.5-VL ``config.json`` (transformers 5 nests the text config)."""
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    return ModelShape(
        name=name,
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        layers=text["num_hidden_layers"],
        heads=text["num_attention_heads"],
        kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        vocab=text["vocab_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings"))),
        vision_depth=vision.get("depth", 0),
        vision_hidden=vision.get("hidden_size", 0),
        vision_intermediate=vision.get("intermediate_size", 0),
        vision_out=vision.get("out_hidden_size", text["hidden_size"]),
        vision_patch=vision.get("patch_size", 14),
        vision_temporal_patch=vision.get("temporal_patch_size", 2),
        vision_merge=vision.get("spatial_merge_size", 2),
    )
