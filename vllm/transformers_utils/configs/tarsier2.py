# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier2 configuration support.

The published Tarsier2 checkpoints (Qwen2-VL-7B derivatives) describe themselves
as LLaVA: top-level ``model_type "llava"``, the Tarsier v1 architecture string
``TarsierForConditionalGeneration``, a flat Qwen2-VL ``text_config`` and a
Qwen2-VL ``vision_config``. Transformers v5 reads that as a ``LlavaConfig``
whose nested Qwen2-VL configs keep their default sizes, so vLLM cannot use it.

This module reads such a ``config.json`` into the Qwen2-VL layout that vLLM's
Qwen2-VL code expects. It is chosen per checkpoint by
:func:`is_tarsier2_config_dict` and is never registered with ``AutoConfig``:
registering anything under ``"llava"`` would change how every other LLaVA
checkpoint (Tarsier v1, llava-hf, ...) loads in the same process.
"""

from collections.abc import Mapping
from typing import Any

from transformers import Qwen2VLConfig

TARSIER2_ARCHITECTURE = "Tarsier2ForConditionalGeneration"
# Tarsier2 checkpoints carry the v1 string; an explicit override gives the v2 one.
TARSIER_ARCHITECTURES = ("TarsierForConditionalGeneration", TARSIER2_ARCHITECTURE)


def is_tarsier2_config_dict(config_dict: Mapping[str, Any]) -> bool:
    """Whether a raw ``config.json`` dict is a Tarsier2 checkpoint.

    Tarsier v1 and Tarsier2 share ``model_type`` and architecture string; only
    the text sub-config tells them apart (Llama for v1, Qwen2-VL for v2).
    """
    if config_dict.get("model_type") != "llava":
        return False
    architectures = config_dict.get("architectures") or ()
    if not any(arch in TARSIER_ARCHITECTURES for arch in architectures):
        return False
    text_config = config_dict.get("text_config")
    return isinstance(text_config, Mapping) and (
        text_config.get("model_type") == "qwen2_vl"
    )


class Tarsier2Config(Qwen2VLConfig):
    """Qwen2-VL configuration of a Tarsier2 checkpoint.

    Identical to ``Qwen2VLConfig`` except for its ``model_type`` and its
    architecture, so that vLLM's Qwen2-VL code paths apply unchanged.
    """

    model_type = "tarsier2"

    @classmethod
    def from_llava_dict(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> "Tarsier2Config":
        """Build the config from a Tarsier2 checkpoint's LLaVA-layout dict.

        The flat ``text_config`` is exactly a Qwen2-VL ``config.json`` without
        its vision part, so it is read the way Transformers reads one.
        """
        text_config = config_dict.get("text_config")
        vision_config = config_dict.get("vision_config")
        if not isinstance(text_config, Mapping) or not isinstance(
            vision_config, Mapping
        ):
            raise ValueError(
                "Expected a Tarsier2 config with `text_config` and "
                "`vision_config` dicts, but got "
                f"text_config={type(text_config).__name__} and "
                f"vision_config={type(vision_config).__name__}"
            )

        # The sub-dicts' model_type names the composite ("qwen2_vl"); the
        # Qwen2-VL text and vision classes carry their own.
        flat = {k: v for k, v in text_config.items() if k != "model_type"}
        flat["vision_config"] = {
            k: v for k, v in vision_config.items() if k != "model_type"
        }
        if "image_token_index" in config_dict:
            flat.setdefault("image_token_id", config_dict["image_token_index"])
        for key in ("torch_dtype", "dtype"):
            if key in config_dict:
                flat[key] = config_dict[key]
        flat["architectures"] = [TARSIER2_ARCHITECTURE]

        return cls.from_dict(flat, **kwargs)
