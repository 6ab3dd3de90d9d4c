# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier and Tarsier2 for a stock vLLM, as a general plugin.

The model code, the Tarsier2 config, the tokenizer and the video loader in this
package are the fork's files, copied by `forktool plugin` with their imports
rewritten; this module only registers them, through vLLM's public registries.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig

SUPPORTED_VLLM_VERSIONS = ("0.32.0", "0.33.0")
TARSIER = "TarsierForConditionalGeneration"
TARSIER2 = "Tarsier2ForConditionalGeneration"
# The frames each family's pipeline samples from a video by default.
_DEFAULT_NUM_FRAMES = {TARSIER: 8, TARSIER2: 16}


def _vllm_version() -> str:
    import vllm

    return vllm.__version__.split("+")[0]


def _set_video_loader_defaults(vllm_config: "VllmConfig", num_frames: int) -> None:
    """Load video URLs with the `tarsier` loader at the frames the processor
    samples, unless the user configured the loader (`--media-io-kwargs`).

    Stock vLLM passes a request's `mm_processor_kwargs` only to the processor,
    so a request that asks for other frames must also send them in
    `media_io_kwargs`; the processor rejects frames it cannot sample exactly.
    """
    mm_config = vllm_config.model_config.multimodal_config
    if mm_config is None:
        return
    processor_kwargs = mm_config.mm_processor_kwargs or {}
    video = dict(mm_config.media_io_kwargs.get("video", {}))
    video.setdefault("video_backend", "tarsier")
    video.setdefault("num_frames", processor_kwargs.get("num_frames", num_frames))
    mm_config.media_io_kwargs["video"] = video


def _model_config_hooks() -> dict[str, Any]:
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    from .fork_hooks import TarsierConfig

    class TarsierPluginConfig(TarsierConfig):
        @staticmethod
        def verify_and_update_config(vllm_config: "VllmConfig") -> None:
            TarsierConfig.verify_and_update_config(vllm_config)
            _set_video_loader_defaults(vllm_config, _DEFAULT_NUM_FRAMES[TARSIER])

    class Tarsier2PluginConfig(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config: "VllmConfig") -> None:
            _set_video_loader_defaults(vllm_config, _DEFAULT_NUM_FRAMES[TARSIER2])

    return {TARSIER: TarsierPluginConfig, TARSIER2: Tarsier2PluginConfig}


def _register_config_parser() -> None:
    """Read Tarsier2 checkpoints (published as model type "llava" with Qwen2-VL
    sub-configs) as Qwen2-VL; every other config goes to vLLM's own parser."""
    from transformers import PretrainedConfig

    from vllm.transformers_utils.config import HFConfigParser, register_config_parser

    from .tarsier2_config import Tarsier2Config, is_tarsier2_config_dict

    @register_config_parser("hf")
    class TarsierHFConfigParser(HFConfigParser):
        def parse(
            self,
            model: str | Path,
            trust_remote_code: bool,
            revision: str | None = None,
            code_revision: str | None = None,
            **kwargs: Any,
        ) -> tuple[dict, PretrainedConfig]:
            import huggingface_hub

            config_dict, _ = PretrainedConfig.get_config_dict(
                model,
                revision=revision,
                code_revision=code_revision,
                local_files_only=huggingface_hub.constants.HF_HUB_OFFLINE,
            )
            if is_tarsier2_config_dict(config_dict):
                return config_dict, Tarsier2Config.from_llava_dict(
                    config_dict, name_or_path=str(model)
                )
            return super().parse(
                model, trust_remote_code, revision, code_revision, **kwargs
            )


def register() -> None:
    """The `vllm.general_plugins` entry point: safe to call more than once."""
    from vllm.logger import init_logger

    logger = init_logger(__name__)
    version = _vllm_version()
    if version not in SUPPORTED_VLLM_VERSIONS:
        logger.warning_once(
            "vllm-tarsier supports vLLM %s, not %s: Tarsier is not registered.",
            " and ".join(SUPPORTED_VLLM_VERSIONS),
            version,
        )
        return

    from vllm import ModelRegistry

    if TARSIER in ModelRegistry.get_supported_archs():
        return  # this vLLM has Tarsier (the fork), or register() ran already

    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry
    from vllm.transformers_utils.chat_templates.registry import (
        register_chat_template_fallback_path,
    )

    from . import tarsier_video  # noqa: F401  (registers the `tarsier` loader)
    from .fork_hooks import _get_llava_chat_template_fallback

    ModelRegistry.register_model(TARSIER, f"{__name__}.tarsier:{TARSIER}")
    ModelRegistry.register_model(TARSIER2, f"{__name__}.tarsier2:{TARSIER2}")
    TokenizerRegistry.register("tarsier", f"{__name__}.tokenizer", "TarsierTokenizer")
    RENDERER_REGISTRY.register("tarsier", "vllm.renderers.hf", "HfRenderer")
    MODELS_CONFIG_MAP.update(_model_config_hooks())
    _register_config_parser()
    register_chat_template_fallback_path("llava", _get_llava_chat_template_fallback)
    logger.info(
        "vllm-tarsier registered %s and %s on vLLM %s", TARSIER, TARSIER2, version
    )
