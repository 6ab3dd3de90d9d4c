# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""A multimodal prompt rejected as too long once its items are expanded never
reaches the engine (P1), so the renderer must leave the P0 processor cache as
it was before the prompt: same items, same LRU order."""

import numpy as np
import pytest
from PIL import Image

from vllm.config import ModelConfig, VllmConfig
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.cache import LruKeyReplicatedSenderCache
from vllm.renderers.hf import HfRenderer
from vllm.tokenizers.registry import cached_tokenizer_from_config

MODEL = "llava-hf/llava-1.5-7b-hf"
# 576 tokens per image: one image fits, two do not.
MAX_MODEL_LEN = 1000
# pixel_values of one 336 x 336 image in float32, a little over 1.3 MB: the
# cache holds three.
CACHE_GB = 3.5 * 3 * 336 * 336 * 4 / 2**30


def _image(seed: int) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (336, 336, 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def renderer() -> HfRenderer:
    model_config = ModelConfig(
        model=MODEL, max_model_len=MAX_MODEL_LEN, mm_processor_cache_gb=CACHE_GB
    )
    return HfRenderer(
        VllmConfig(model_config=model_config),
        cached_tokenizer_from_config(model_config),
    )


def _render(renderer: HfRenderer, *images: Image.Image):
    prompt = {
        "prompt": "USER: " + "<image>" * len(images) + "\nWhat is it? ASSISTANT:",
        "multi_modal_data": {"image": list(images)},
    }
    return renderer.render_cmpl([prompt])[0]


def _p0_state(renderer: HfRenderer) -> list[str]:
    cache = renderer.mm_processor_cache
    assert isinstance(cache, LruKeyReplicatedSenderCache)
    return list(cache._cache.order)


def test_a_prompt_too_long_leaves_the_p0_cache_as_it_was(renderer: HfRenderer):
    renderer.clear_mm_cache()
    for seed in (1, 2, 3):
        _render(renderer, _image(seed))
    before = _p0_state(renderer)
    assert len(before) == 3

    # Touches image 1 and inserts image 4, which evicts image 2 on P0.
    with pytest.raises(VLLMValidationError) as exc_info:
        _render(renderer, _image(1), _image(4))

    message = str(exc_info.value)
    assert f"longer than the maximum model length of {MAX_MODEL_LEN}" in message
    assert "2 image item(s) take 1152" in message
    assert _p0_state(renderer) == before


def test_a_later_rejection_after_another_render_clears_the_p0_cache(
    renderer: HfRenderer,
):
    renderer.clear_mm_cache()
    rejected = _render(renderer, _image(5))
    _render(renderer, _image(6))
    assert len(_p0_state(renderer)) == 2

    # Rejected by a later check: other requests were rendered since, so its
    # updates cannot be undone exactly; a cleared cache is a subset of P1's.
    renderer.discard_mm_cache_items(rejected)
    assert _p0_state(renderer) == []


def test_a_later_rejection_of_the_last_render_is_undone(renderer: HfRenderer):
    renderer.clear_mm_cache()
    _render(renderer, _image(7))
    rejected = _render(renderer, _image(8))

    renderer.discard_mm_cache_items(rejected)
    assert len(_p0_state(renderer)) == 1
