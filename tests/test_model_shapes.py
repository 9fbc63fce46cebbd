"""One place for Qwen2.5-VL's dimensions (ovr_core.model_shapes), checked against upstream: the
closed-form parameter count against transformers' own model built on accelerate's empty weights
from the 7B config the module writes down, and against a real checkpoint's safetensors headers."""

from __future__ import annotations

import json

import pytest

from ovr_core.model_shapes import (
    QWEN2_5_VL_7B,
    QWEN2_5_VL_7B_CONFIG,
    checkpoint_parameters,
    empty_model_parameters,
    known_shape,
    model_shape,
    shape_from_config,
)

# Qwen/Qwen2.5-VL-7B-Instruct's safetensors metadata on the hub (its "total" parameter count)
HUB_7B_PARAMS = 8_292_166_656


def test_7b_count_matches_an_empty_weights_model_built_from_the_config_in_the_module():
    pytest.importorskip("accelerate")
    upstream = empty_model_parameters(QWEN2_5_VL_7B_CONFIG)
    assert upstream == HUB_7B_PARAMS
    assert QWEN2_5_VL_7B.params == upstream


def test_a_checkpoint_is_counted_from_its_safetensors_headers(tiny_model_path):
    config = json.loads((tiny_model_path / "config.json").read_text())
    counted = checkpoint_parameters(tiny_model_path)
    assert counted == empty_model_parameters(config)  # what transformers builds for its config
    assert counted == model_shape(str(tiny_model_path)).params  # and the closed form agrees
    assert checkpoint_parameters(tiny_model_path / "no-such-dir") is None


def test_the_7b_is_known_by_the_names_recipes_and_the_hub_give_it():
    for name in ("Kangheng/OVR-7B-RL", "Qwen/Qwen2.5-VL-7B-Instruct", "ovr-7b-coldstart"):
        assert known_shape(name) is QWEN2_5_VL_7B
    assert known_shape("Qwen/Qwen2.5-VL-3B-Instruct") is None
    assert QWEN2_5_VL_7B.max_positions == 128000 and QWEN2_5_VL_7B.head_dim == 128
    assert QWEN2_5_VL_7B.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2


def test_transformers_4_and_5_config_layouts_give_one_shape():
    flat = dict(QWEN2_5_VL_7B_CONFIG)
    text_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    text_keys += ("num_key_value_heads", "vocab_size", "max_position_embeddings", "torch_dtype")
    nested = {k: v for k, v in flat.items() if k not in text_keys}
    nested["text_config"] = {k: flat[k] for k in text_keys}
    assert shape_from_config(nested, QWEN2_5_VL_7B.name) == QWEN2_5_VL_7B
