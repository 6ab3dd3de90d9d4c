"""The project venv imports vLLM from the materialized fork, kernels included."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

FORK = Path(__file__).resolve().parents[2] / "build" / "fork"


def test_vllm_is_the_forks_source() -> None:
    import vllm

    assert Path(vllm.__file__).resolve().is_relative_to(FORK.resolve())
    assert importlib.metadata.version("vllm") == "0.32.0+cpu"


def test_forks_own_model_registry_is_live() -> None:
    from vllm.model_executor.models.registry import (
        _MULTIMODAL_MODELS,
        _PREVIOUSLY_SUPPORTED_MODELS,
    )

    # Only the fork has these entries; upstream 0.32.0 lists both as removed.
    assert _MULTIMODAL_MODELS["TarsierForConditionalGeneration"][0] == "tarsier"
    assert "TarsierForConditionalGeneration" not in _PREVIOUSLY_SUPPORTED_MODELS
    assert "Tarsier2ForConditionalGeneration" not in _PREVIOUSLY_SUPPORTED_MODELS


def test_cpu_kernels_load() -> None:
    import torch

    import vllm._C  # noqa: F401
    from vllm.platforms import current_platform

    assert current_platform.is_cpu()
    assert hasattr(torch.ops._C, "rms_norm")
