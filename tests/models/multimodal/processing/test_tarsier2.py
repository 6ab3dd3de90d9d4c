# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier2 feeds images and videos the way its authors' pipeline does.

Expected values are derived here from the published recipe, independently of
the implementation: uniform sampling with both endpoints (Python rounding), a
per-frame cap at factor 1, every sampled frame fed twice, then Qwen2-VL's own
resize (factor 28). Pixel values are computed here with PIL and NumPy, as the
authors' Transformers 4.47 image processor computed them.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vllm.config import ModelConfig
from vllm.inputs import MultiModalInput
from vllm.model_executor.models.tarsier2 import (
    Tarsier2ForConditionalGeneration,
    Tarsier2FrameOptions,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.cache import MultiModalProcessorOnlyCache
from vllm.multimodal.inputs import batched_tensors_equal
from vllm.multimodal.processing import BaseMultiModalProcessor
from vllm.renderers.hf import _detect_content_format

from ...utils import build_model_context
from ..generation.tarsier2_reference import sample_indices as ref_indices

MODEL_ID = "omni-research/Tarsier2-Recap-7b"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_PAD_ID, VIDEO_PAD_ID = 151655, 151656

# The authors' defaults: 16 frames, 1280 * 720 / 2 px per frame and
# 128 * 384 * 384 px per sample; the checkpoint's min/max pixels.
NUM_FRAMES, FRAME_PIXELS, SAMPLE_PIXELS = 16, 460_800, 128 * 384 * 384
MIN_PIXELS, MAX_PIXELS = 3136, 12_845_056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def ref_capped(height: int, width: int, cap: float) -> tuple[int, int]:
    if height * width <= cap:
        return height, width
    beta = math.sqrt(height * width / cap)
    return int(height / beta), int(width / beta)


def ref_grid(height: int, width: int) -> tuple[int, int]:
    h, w = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    return h // 14, w // 14


def ref_video_grid(
    total: int,
    height: int,
    width: int,
    num_frames: int = NUM_FRAMES,
    max_frame_pixels: float = FRAME_PIXELS,
    max_sample_pixels: float = SAMPLE_PIXELS,
) -> list[int]:
    sampled = len(ref_indices(total, num_frames))
    cap = min(max_frame_pixels, max_sample_pixels / (2 * sampled))
    return [sampled, *ref_grid(*ref_capped(height, width, cap))]


def ref_image_grid(
    height: int,
    width: int,
    max_frame_pixels: float = FRAME_PIXELS,
    max_sample_pixels: float = SAMPLE_PIXELS,
) -> list[int]:
    cap = min(max_frame_pixels, max_sample_pixels / 2)
    return [1, *ref_grid(*ref_capped(height, width, cap))]


@pytest.fixture(scope="module")
def ctx():
    return build_model_context(
        MODEL_ID,
        limit_mm_per_prompt={"image": 3, "video": 3},
        mm_processor_cache_gb=1,
    )


@pytest.fixture(scope="module")
def processor(ctx) -> BaseMultiModalProcessor:
    return MULTIMODAL_REGISTRY.create_processor(
        ctx.model_config, tokenizer=ctx.tokenizer
    )


def run(
    processor: BaseMultiModalProcessor,
    prompt: str,
    mm_data: dict[str, Any],
    mm_kwargs: dict[str, Any] | None = None,
    cache: MultiModalProcessorOnlyCache | None = None,
) -> MultiModalInput:
    return processor(
        prompt,
        mm_items=processor.info.parse_mm_data(mm_data),
        hf_processor_mm_kwargs=mm_kwargs or {},
        cache=cache,
    )


def grids(result: MultiModalInput, modality: str) -> list[list[int]]:
    return [
        item[f"{modality}_grid_thw"].data.tolist()
        for item in result["mm_kwargs"][modality]
    ]


def raw_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """0..255 values, whether or not normalisation was left to the model."""
    if pixel_values.dtype == torch.uint8:
        return pixel_values.float()
    mean = torch.tensor(CLIP_MEAN).repeat_interleave(2 * 14 * 14)
    std = torch.tensor(CLIP_STD).repeat_interleave(2 * 14 * 14)
    return ((pixel_values * std + mean) * 255).round()


def blank_video(num_frames: int, height: int, width: int) -> np.ndarray:
    return np.zeros((num_frames, height, width, 3), dtype=np.uint8)


def solid_video(values: list[int], height: int = 120, width: int = 160) -> np.ndarray:
    """A video whose frame i is filled with values[i]."""
    frames = blank_video(len(values), height, width)
    return frames + np.asarray(values, dtype=np.uint8)[:, None, None, None]


@pytest.mark.parametrize(
    ("total", "num_frames", "expected"),
    [
        (6, 3, [0, 2, 5]),  # 2.5 rounds to even
        (4, 3, [0, 2, 3]),  # 1.5 rounds to even
        (12, 5, [0, 3, 6, 8, 11]),
        # 14.5 rounds to 14; a precomputed float step would give 15
        (30, 15, [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]),
        (10, 4, [0, 3, 6, 9]),
        (100, 1, [0]),
        (3, 16, [0, 1, 2]),  # a shorter video is used whole
        (16, 16, list(range(16))),
    ],
)
def test_sample_indices(total: int, num_frames: int, expected: list[int]):
    assert ref_indices(total, num_frames) == expected
    options = Tarsier2FrameOptions(num_frames=num_frames)
    assert options.sample_indices(total) == expected


def test_preprocessor_size_form(processor):
    """The checkpoint's old {min_pixels, max_pixels} form reaches both."""
    hf_processor = processor.info.get_hf_processor()
    for sub in (hf_processor.image_processor, hf_processor.video_processor):
        assert sub.size.shortest_edge == MIN_PIXELS
        assert sub.size.longest_edge == MAX_PIXELS


@pytest.mark.parametrize(
    "hf_overrides", [{}, {"architectures": ["Tarsier2ForConditionalGeneration"]}]
)
def test_resolves_to_tarsier2(hf_overrides: dict[str, Any]):
    """No --hf-overrides needed; the explicit one keeps working."""
    model_config = ModelConfig(MODEL_ID, hf_overrides=hf_overrides)

    assert model_config.architecture == "Tarsier2ForConditionalGeneration"
    assert model_config.uses_mrope
    model_cls = MULTIMODAL_REGISTRY._get_model_cls(model_config)
    assert model_cls is Tarsier2ForConditionalGeneration


@pytest.mark.parametrize(
    ("width", "height"),
    [(1920, 1080), (300, 200), (28, 28), (1000, 1000), (4000, 64), (100, 5000)],
)
def test_image_tokens(processor, width: int, height: int):
    image = Image.new("RGB", (width, height), color=(200, 30, 90))
    result = run(processor, IMAGE, {"image": image})

    expected = ref_image_grid(height, width)
    assert grids(result, "image") == [expected]
    num_tokens = math.prod(expected) // 4
    assert result["prompt_token_ids"].count(IMAGE_PAD_ID) == num_tokens
    info = processor.info
    assert num_tokens == info.get_num_image_tokens(
        image_width=width,
        image_height=height,
        image_processor=info.get_image_processor(),
        mm_kwargs={},
    )


def test_720p_frames_give_576_tokens(processor):
    video = blank_video(3, 720, 1280)
    result = run(processor, VIDEO, {"video": video})

    assert grids(result, "video") == [[3, 36, 64]]
    assert result["prompt_token_ids"].count(VIDEO_PAD_ID) == 3 * 576
    info = processor.info
    assert (
        info.get_num_video_tokens(
            image_width=1280,
            image_height=720,
            num_frames=300,
            image_processor=info.get_image_processor(),
            mm_kwargs={},
        )
        == 16 * 576
    )


@pytest.mark.parametrize("total", [1, 2, 7, 16, 17, 40])
@pytest.mark.parametrize("mm_kwargs", [{}, {"num_frames": 5}])
def test_video_tokens(processor, total: int, mm_kwargs: dict[str, Any]):
    video = blank_video(total, 120, 160)
    result = run(processor, VIDEO, {"video": video}, mm_kwargs)

    expected = ref_video_grid(total, 120, 160, **mm_kwargs)
    assert grids(result, "video") == [expected]
    num_tokens = math.prod(expected) // 4
    assert result["prompt_token_ids"].count(VIDEO_PAD_ID) == num_tokens
    info = processor.info
    assert num_tokens == info.get_num_video_tokens(
        image_width=160,
        image_height=120,
        num_frames=total,
        image_processor=info.get_image_processor(),
        mm_kwargs=mm_kwargs,
    )


@pytest.mark.parametrize(("total", "num_frames"), [(23, 6), (5, 16), (9, 1)])
def test_frames_sampled_and_duplicated(processor, total: int, num_frames: int):
    """Each temporal patch holds one sampled frame, twice."""
    values = [10 * i for i in range(total)]
    result = run(
        processor,
        VIDEO,
        {"video": solid_video(values)},
        {"num_frames": num_frames},
    )

    [item] = result["mm_kwargs"]["video"]
    grid_t, grid_h, grid_w = item["video_grid_thw"].data.tolist()
    # Qwen2-VL patch layout: (t, h, w) patches of (channel, time, 14, 14)
    patches = raw_pixels(item["pixel_values_videos"].data)
    red = patches.reshape(grid_t, -1, 3, 2, 14 * 14)[:, :, 0]

    assert grid_t == len(ref_indices(total, num_frames))
    assert torch.equal(red[:, :, 0], red[:, :, 1])
    fed = [values[i] for i in ref_indices(total, num_frames)]
    assert red.amin(dim=(1, 2, 3)).tolist() == fed
    assert red.amax(dim=(1, 2, 3)).tolist() == fed


def fed_values(result: MultiModalInput) -> list[int]:
    """The fill value of each temporal patch's frame."""
    [item] = result["mm_kwargs"]["video"]
    grid_t = item["video_grid_thw"].data.tolist()[0]
    patches = raw_pixels(item["pixel_values_videos"].data)
    red = patches.reshape(grid_t, -1, 3, 2, 14 * 14)[:, :, 0]
    return red.amin(dim=(1, 2, 3)).int().tolist()


def test_loaded_video_sampled_over_source_frames(processor):
    """A loader that decoded some frames of a 100-frame video says which: the
    request's frames are sampled from the source video, exactly or not at all."""
    # The 8 frames and 4 others were loaded: sampling 8 of the 12 decoded
    # frames would feed 0, 2, 3, 28, 42, 57, 71, 99.
    loaded = sorted({*ref_indices(100, 8), 1, 2, 3, 50})
    values = [2 * i for i in range(len(loaded))]
    metadata = {"total_num_frames": 100, "frames_indices": loaded}
    result = run(
        processor, VIDEO, {"video": (solid_video(values), metadata)}, {"num_frames": 8}
    )
    assert [loaded[values.index(v)] for v in fed_values(result)] == ref_indices(100, 8)

    # Loaded for 16 frames (0, 7, 13, ...): frame 14 of the 8 is not there.
    loaded = ref_indices(100, 16)
    metadata = {"total_num_frames": 100, "frames_indices": loaded}
    video = solid_video([2 * i for i in range(16)])
    with pytest.raises(ValueError, match=r"missing \[14, 28, 42, 57, 71, 85\]"):
        run(processor, VIDEO, {"video": (video, metadata)}, {"num_frames": 8})


@pytest.mark.parametrize(
    "mm_kwargs",
    [
        {},
        {"max_frame_pixels": 100_000},
        {"max_sample_pixels": 16 * 50_000},
        {"max_sample_pixels": 16 * 50_000, "num_frames": 4},
        {"max_frame_pixels": 5_000, "num_frames": 3},
    ],
)
def test_pixel_caps(processor, mm_kwargs: dict[str, Any]):
    video = blank_video(8, 480, 640)
    image = Image.new("RGB", (640, 480))
    result = run(processor, VIDEO + IMAGE, {"video": video, "image": image}, mm_kwargs)

    image_kwargs = {k: v for k, v in mm_kwargs.items() if k != "num_frames"}
    assert grids(result, "video") == [ref_video_grid(8, 480, 640, **mm_kwargs)]
    assert grids(result, "image") == [ref_image_grid(480, 640, **image_kwargs)]


def ref_pixel_values(frames: list[Image.Image], cap: float, raw: bool) -> np.ndarray:
    """Qwen2-VL patches of one image or video, with PIL and NumPy only.

    Each frame is capped (PIL's default filter), resized to Qwen2-VL's size
    with PIL's bicubic filter, rescaled by 1/255 and normalised (unless
    ``raw``), and fed twice: one temporal patch per frame. Patches are in
    Qwen2-VL's order, (t, h / 2, w / 2, 2, 2) blocks of (channel, time, 14, 14).
    """
    height, width = ref_capped(frames[0].height, frames[0].width, cap)
    if (height, width) != (frames[0].height, frames[0].width):
        frames = [frame.resize((width, height)) for frame in frames]
    grid_h, grid_w = ref_grid(height, width)
    size = (grid_w * 14, grid_h * 14)
    pixels = np.stack(
        [np.asarray(f.resize(size, Image.Resampling.BICUBIC)) for f in frames]
    ).astype(np.float32)
    if not raw:
        mean, std = np.float32(CLIP_MEAN), np.float32(CLIP_STD)
        pixels = (pixels / np.float32(255) - mean) / std

    t = len(frames)
    pixels = np.repeat(pixels[:, None], 2, axis=1)  # (t, time, H, W, channel)
    pixels = pixels.reshape(t, 2, grid_h // 2, 2, 14, grid_w // 2, 2, 14, 3)
    pixels = pixels.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return pixels.reshape(t * grid_h * grid_w, 3 * 2 * 14 * 14)


@pytest.fixture(scope="module")
def host_normalising_processor() -> BaseMultiModalProcessor:
    ctx = build_model_context(
        MODEL_ID,
        dtype="float32",  # pixel values come in the model's dtype
        model_config_kwargs={"mm_device_do_normalize": False},
        limit_mm_per_prompt={"image": 1, "video": 1},
    )
    return MULTIMODAL_REGISTRY.create_processor(
        ctx.model_config, tokenizer=ctx.tokenizer
    )


@pytest.mark.parametrize("device_normalize", [True, False])
@pytest.mark.parametrize("max_frame_pixels", [FRAME_PIXELS, 5_000])
def test_pixels_as_the_authors_computed_them(
    processor,
    host_normalising_processor,
    device_normalize: bool,
    max_frame_pixels: int,
):
    """Images and video frames are resized with PIL, as by the authors'
    Transformers 4.47, not by Transformers 5's torchvision backend; capped
    frames are PIL-resized (default filter) first."""
    if not device_normalize:
        processor = host_normalising_processor
    config = processor.info.ctx.get_hf_image_processor_config()
    assert config["image_mean"] == CLIP_MEAN and config["image_std"] == CLIP_STD

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    video = rng.integers(0, 256, (7, 90, 150, 3), dtype=np.uint8)
    mm_kwargs = {"num_frames": 4, "max_frame_pixels": max_frame_pixels}
    result = run(processor, IMAGE + VIDEO, {"image": image, "video": video}, mm_kwargs)

    sampled = [Image.fromarray(video[i]) for i in ref_indices(7, 4)]
    expected = {
        "image": ref_pixel_values(
            [image], min(max_frame_pixels, SAMPLE_PIXELS / 2), device_normalize
        ),
        "video": ref_pixel_values(
            sampled, min(max_frame_pixels, SAMPLE_PIXELS / 8), device_normalize
        ),
    }
    for modality, key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        [item] = result["mm_kwargs"][modality]
        actual = item[key].data
        # Raw bytes for on-device normalisation; else normalised float32.
        assert actual.dtype == (torch.uint8 if device_normalize else torch.float32)
        torch.testing.assert_close(
            actual.float(), torch.from_numpy(expected[modality]), rtol=0, atol=1e-6
        )


def test_configured_kwargs_and_request_override():
    ctx = build_model_context(MODEL_ID, mm_processor_kwargs={"num_frames": 4})
    processor = MULTIMODAL_REGISTRY.create_processor(
        ctx.model_config, tokenizer=ctx.tokenizer
    )
    video = blank_video(10, 120, 160)

    assert grids(run(processor, VIDEO, {"video": video}), "video")[0][0] == 4
    result = run(processor, VIDEO, {"video": video}, {"num_frames": 6})
    assert grids(result, "video")[0][0] == 6


@pytest.mark.parametrize(
    ("mm_kwargs", "match"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"max_frame_pixels": -1}, "max_frame_pixels"),
        ({"max_sample_pixels": "many"}, "max_sample_pixels"),
        ({"max_pixels": "big"}, "max_pixels"),
        ({"num_frame": 2}, r"does not take the processor kwargs \['num_frame'\]"),
    ],
)
def test_invalid_kwargs(processor, mm_kwargs: dict[str, Any], match: str):
    video = blank_video(4, 56, 56)
    with pytest.raises(ValueError, match=match):
        run(processor, VIDEO, {"video": video}, mm_kwargs)


def test_cached_equals_uncached(ctx, processor):
    rng = np.random.default_rng(1)
    mm_data = {
        "image": [
            Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)),
        ],
        "video": [
            rng.integers(0, 256, (9, 84, 112, 3), dtype=np.uint8),
            rng.integers(0, 256, (20, 56, 84, 3), dtype=np.uint8),
        ],
    }
    prompt = (IMAGE + VIDEO) * 2
    cache = MultiModalProcessorOnlyCache(ctx.model_config)
    baseline = run(processor, prompt, mm_data, {"num_frames": 8})

    for _ in range(2):  # miss, then hit
        cached = run(processor, prompt, mm_data, {"num_frames": 8}, cache=cache)
        assert cached["prompt_token_ids"] == baseline["prompt_token_ids"]
        assert cached["mm_placeholders"] == baseline["mm_placeholders"]
        assert batched_tensors_equal(
            cached["mm_kwargs"].get_data(), baseline["mm_kwargs"].get_data()
        )

    # Options are part of the cache key: other options, other result.
    other = run(processor, prompt, mm_data, {"num_frames": 4}, cache=cache)
    assert [g[0] for g in grids(other, "video")] == [4, 4]


@pytest.mark.parametrize("seq_len", [32768, 4096])
def test_max_tokens_match_dummy_inputs(processor, seq_len: int):
    """Profiling's per-item maxima are reached by the dummy inputs."""
    info = processor.info
    mm_counts = {"image": 1, "video": 1}
    max_tokens = info.get_mm_max_tokens_per_item(seq_len, mm_counts)
    dummy = processor.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, {})
    result = run(processor, IMAGE + VIDEO, dummy)

    assert result["prompt_token_ids"].count(IMAGE_PAD_ID) == max_tokens["image"]
    assert result["prompt_token_ids"].count(VIDEO_PAD_ID) == max_tokens["video"]
    assert max_tokens["video"] <= seq_len
    # No frame within the cap gets more tokens than the dummy frame.
    rng = np.random.default_rng(2)
    for _ in range(200):
        height = int(rng.integers(30, 2000))
        width = int(rng.integers(max(30, height // 150), min(150 * height, 20000)))
        assert math.prod(ref_image_grid(height, width)) // 4 <= max_tokens["image"]


# Chat template

TEMPLATE = (
    Path(__file__).parents[4]
    / "vllm/transformers_utils/chat_templates/template_tarsier2.jinja"
)


def test_chat_template_puts_visuals_before_text(processor):
    tokenizer = processor.info.get_tokenizer()
    template = TEMPLATE.read_text()
    # vLLM passes structured content (image and video parts) to this template.
    assert _detect_content_format(template, default="string") == "openai"

    content = [
        {"type": "text", "text": "Describe the video."},
        {"type": "video"},
        {"type": "image"},
    ]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>Describe the video.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
