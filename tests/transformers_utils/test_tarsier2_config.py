# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier2's LLaVA-layout config loads as Qwen2-VL, and only Tarsier2's does."""

from typing import Any

import pytest
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)

from vllm.transformers_utils.config import get_config, get_hf_text_config, uses_mrope
from vllm.transformers_utils.configs.tarsier2 import (
    Tarsier2Config,
    is_tarsier2_config_dict,
)
from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

from ..utils import create_new_process_for_each_test

TARSIER2_IDS = ["omni-research/Tarsier2-Recap-7b", "omni-research/Tarsier2-7b-0115"]
# Other LLaVA checkpoints (same top-level model_type) that must load unchanged.
LLAVA_IDS = ["omni-research/Tarsier-7b", "llava-hf/llava-1.5-7b-hf"]

TEXT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "rms_norm_eps",
    "max_position_embeddings",
)
VISION_KEYS = (
    "depth",
    "embed_dim",
    "hidden_size",
    "num_heads",
    "mlp_ratio",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
)
TOKEN_KEYS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


def _raw(model_id: str) -> dict[str, Any]:
    raw = get_hf_file_to_dict("config.json", model_id)
    assert raw is not None, f"{model_id} is not in the HF cache"
    return raw


def _check_tarsier2(model_id: str, **kwargs: Any) -> Tarsier2Config:
    raw = _raw(model_id)
    config = get_config(model_id, trust_remote_code=False, **kwargs)

    assert isinstance(config, Tarsier2Config)
    assert config.architectures == ["Tarsier2ForConditionalGeneration"]
    text_config = get_hf_text_config(config)
    assert text_config is config.text_config
    assert isinstance(text_config, Qwen2VLTextConfig)
    for key in TEXT_KEYS:
        assert getattr(text_config, key) == raw["text_config"][key], key
    rope: dict[str, Any] = dict(text_config.rope_parameters or {})
    raw_text = raw["text_config"]
    assert rope["rope_theta"] == raw_text["rope_theta"]
    assert rope["mrope_section"] == raw_text["rope_scaling"]["mrope_section"]
    assert uses_mrope(config)
    vision_config = config.vision_config
    assert isinstance(vision_config, Qwen2VLVisionConfig)
    for key in VISION_KEYS:
        assert getattr(vision_config, key) == raw["vision_config"][key], key
    for key in TOKEN_KEYS:
        assert getattr(config, key) == raw["text_config"][key], key
    assert config.image_token_id == raw["image_token_index"]
    assert str(config.dtype).removeprefix("torch.") == raw["torch_dtype"]
    return config


def _check_llava(model_id: str) -> dict[str, Any]:
    raw = _raw(model_id)
    config = get_config(model_id, trust_remote_code=False)

    assert type(config) is LlavaConfig
    assert config.architectures == raw["architectures"]
    assert type(config.text_config) is LlamaConfig
    assert type(config.vision_config) is CLIPVisionConfig
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers"):
        assert getattr(config.text_config, key) == raw["text_config"][key], key
        assert getattr(config.vision_config, key) == raw["vision_config"][key], key
    assert type(AutoConfig.from_pretrained(model_id)) is LlavaConfig
    return config.to_dict()


@pytest.mark.parametrize("model_id", TARSIER2_IDS)
def test_published_layout_loads(model_id: str):
    assert is_tarsier2_config_dict(_raw(model_id))
    _check_tarsier2(model_id)


def test_explicit_architecture_override_still_works():
    _check_tarsier2(
        TARSIER2_IDS[0],
        hf_overrides_kw={"architectures": ["Tarsier2ForConditionalGeneration"]},
    )


@pytest.mark.parametrize("model_id", LLAVA_IDS)
def test_other_llava_layouts_are_not_tarsier2(model_id: str):
    assert not is_tarsier2_config_dict(_raw(model_id))


def test_from_llava_dict_rejects_missing_vision_config():
    raw = _raw(TARSIER2_IDS[0])
    del raw["vision_config"]
    with pytest.raises(ValueError, match="vision_config"):
        Tarsier2Config.from_llava_dict(raw)


@create_new_process_for_each_test("spawn")
def test_other_llava_configs_unaffected_in_one_process():
    """Loading Tarsier2 must not change how other LLaVA configs load.

    In a fresh process: Tarsier2 first, then the others; then the other way
    round (a second Tarsier2 after the others), then the others again.
    """
    _check_tarsier2(TARSIER2_IDS[0])
    before = {model_id: _check_llava(model_id) for model_id in LLAVA_IDS}
    _check_tarsier2(TARSIER2_IDS[1])
    after = {model_id: _check_llava(model_id) for model_id in LLAVA_IDS}
    assert after == before
