# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Processing tests for Tarsier (v1): token layout, frame sampling and
preprocessing against independent computations, caching and errors."""

from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from huggingface_hub import snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from PIL import Image

from vllm.config import ModelConfig, VllmConfig
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalInput
from vllm.model_executor.models.tarsier import sample_frame_indices
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.cache import MultiModalProcessorOnlyCache
from vllm.multimodal.inputs import batched_tensors_equal
from vllm.multimodal.processing import BaseMultiModalProcessor
from vllm.renderers.hf import _detect_content_format

from ...registry import HF_EXAMPLE_MODELS
from ...utils import build_model_context
from ..generation.tarsier_reference import AuthorsTokenizer
from .test_common import _assert_inputs_equal

TARSIER_7B = "omni-research/Tarsier-7b"
TARSIER_34B = "omni-research/Tarsier-34b"
MODEL_IDS = [TARSIER_7B, TARSIER_34B]

# Image token, row separator, frame separator: published in Tarsier-7b's
# config.json; Tarsier-34b's are inferred (Yi's 64,000-token vocabulary plus
# the same added tokens), not read from its checkpoint.
SPECIAL_IDS = {TARSIER_7B: (32000, 32002, 32003), TARSIER_34B: (64000, 64002, 64003)}
GRID = 24  # 336 / 14
FRAME_TOKENS = GRID * GRID + GRID + 1  # 601
# OpenAI CLIP normalization and the 336 input size, written out by hand.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CLIP_SIZE = 336

TEMPLATE = (
    Path(__file__).parents[4]
    / "vllm/transformers_utils/chat_templates/template_tarsier.jinja"
)


def _build_processor(
    model_id: str, *, enable_mm_embeds: bool = False, **kwargs: Any
) -> BaseMultiModalProcessor:
    ctx = build_model_context(
        model_id,
        dtype="float32",
        limit_mm_per_prompt={"image": 4, "video": 2},
        **kwargs,
    )
    ctx.model_config.get_multimodal_config().enable_mm_embeds = enable_mm_embeds
    return MULTIMODAL_REGISTRY.create_processor(ctx.model_config)


@pytest.fixture(scope="module", params=MODEL_IDS)
def processor(request: pytest.FixtureRequest) -> BaseMultiModalProcessor:
    return _build_processor(request.param)


@pytest.fixture(scope="module")
def processor_7b() -> BaseMultiModalProcessor:
    return _build_processor(TARSIER_7B)


def _process(
    processor: BaseMultiModalProcessor,
    prompt: str,
    mm_data: dict[str, Any],
    mm_kwargs: dict[str, object] | None = None,
    cache: MultiModalProcessorOnlyCache | None = None,
) -> MultiModalInput:
    return processor(
        prompt,
        mm_items=processor.info.parse_mm_data(mm_data),
        hf_processor_mm_kwargs=mm_kwargs or {},
        cache=cache,
    )


def _model_id(processor: BaseMultiModalProcessor) -> str:
    return processor.info.ctx.model_config.model


def _frame_tokens(model_id: str) -> list[int]:
    image, newline, frame_end = SPECIAL_IDS[model_id]
    return ([image] * GRID + [newline]) * GRID + [frame_end]


@cache
def _authors_tokenizer(model_id: str) -> AuthorsTokenizer:
    return AuthorsTokenizer(Path(snapshot_download(model_id)))


def _expected_prompt(
    processor: BaseMultiModalProcessor, prompt: str, num_frames: int = 8
) -> list[int]:
    """Tokenize as the authors' pipeline does (`<video>` becomes `<image>` per
    frame in the text), then expand each `<image>` to its frame tokens."""
    model_id = _model_id(processor)
    text = prompt.replace("<video>", "<image>" * num_frames)
    token_ids = _authors_tokenizer(model_id).encode(text)
    image_token = SPECIAL_IDS[model_id][0]
    expected: list[int] = []
    for token_id in token_ids:
        expected.extend(
            _frame_tokens(model_id) if token_id == image_token else [token_id]
        )
    return expected


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))


def _solid_video(num_frames: int, width: int = 64, height: int = 36) -> np.ndarray:
    """Frame k is filled with grey level 20 * k (mod 260, so distinct for up
    to 13 frames)."""
    return np.stack(
        [
            np.full((height, width, 3), 20 * k % 260, dtype=np.uint8)
            for k in range(num_frames)
        ]
    )


def _grey_levels(pixel_values: torch.Tensor) -> list[int]:
    """Invert the normalization of solid frames back to their grey level."""
    red = pixel_values[:, 0].float().mean(dim=(1, 2)).numpy()
    return np.rint((red * CLIP_STD[0] + CLIP_MEAN[0]) * 255).astype(int).tolist()


def _manual_pixels(image: Image.Image, pad: bool) -> torch.Tensor:
    """The reference preprocessing by hand: square of side max(w, h), PIL
    bicubic resize to 336, rescale and normalize."""
    side = max(image.size)
    if pad:
        square = Image.new("RGB", (side, side), tuple(int(c * 255) for c in CLIP_MEAN))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    else:
        square = image.resize((side, side), Image.Resampling.BICUBIC)
    resized = square.resize((CLIP_SIZE, CLIP_SIZE), Image.Resampling.BICUBIC)
    pixels = (np.asarray(resized, dtype=np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(pixels.transpose(2, 0, 1))


# Token layout


@pytest.mark.parametrize(
    "size",
    [
        (336, 336),
        (1, 1),
        (32, 640),
        (640, 32),
        (1920, 1080),
        (1080, 1920),
        (111, 333),
        (500, 499),
    ],
)
def test_image_tokens(processor: BaseMultiModalProcessor, size: tuple[int, int]):
    model_id = _model_id(processor)
    prompt = "USER: <image>\nWhat is this? ASSISTANT: "
    out = _process(processor, prompt, {"image": _noise(*size)})

    assert out["prompt_token_ids"] == _expected_prompt(processor, prompt)
    (placeholder,) = out["mm_placeholders"]["image"]
    assert placeholder.length == FRAME_TOKENS
    tokens = out["prompt_token_ids"][placeholder.offset : placeholder.offset + 601]
    assert tokens == _frame_tokens(model_id)
    # Patch positions take vision features; separators keep their LM embedding.
    assert placeholder.is_embed is not None
    assert placeholder.is_embed.tolist() == [
        t == SPECIAL_IDS[model_id][0] for t in tokens
    ]
    assert out["mm_kwargs"].get_data()["pixel_values"].shape == (1, 3, 336, 336)
    info = processor.info
    assert info.get_num_image_tokens(image_width=size[0], image_height=size[1]) == 601


@pytest.mark.parametrize("num_total", [1, 2, 5, 8, 30])
@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_video_tokens(
    processor: BaseMultiModalProcessor, num_total: int, num_frames: int
):
    prompt = "USER: <video>\nDescribe the video. ASSISTANT: "
    video = _solid_video(num_total, width=48, height=27)
    out = _process(processor, prompt, {"video": video}, {"num_frames": num_frames})

    assert out["prompt_token_ids"] == _expected_prompt(processor, prompt, num_frames)
    (placeholder,) = out["mm_placeholders"]["video"]
    assert placeholder.length == num_frames * FRAME_TOKENS
    pixel_values = out["mm_kwargs"].get_data()["pixel_values_videos"]
    assert pixel_values.shape == (1, num_frames, 3, 336, 336)


@pytest.mark.parametrize(
    "prompt",
    [
        "<video>\nDescribe.",
        "USER: <video>\nDescribe the video. ASSISTANT: ",
        "USER:\n<video> What happens?",
        "x<video>y",
        "Before <image> and <video>\nafter <image><video> end",
    ],
)
def test_prompt_tokenized_like_reference(
    processor: BaseMultiModalProcessor, prompt: str
):
    num_images = prompt.count("<image>")
    num_videos = prompt.count("<video>")
    mm_data = {
        "image": [_noise(40, 30, seed) for seed in range(num_images)],
        "video": [_solid_video(4) for _ in range(num_videos)],
    }
    out = _process(processor, prompt, mm_data, {"num_frames": 2})
    assert out["prompt_token_ids"] == _expected_prompt(processor, prompt, 2)


def test_placeholder_ranges_in_prompt_order(processor: BaseMultiModalProcessor):
    prompt = "USER: <video> then <image> then <video> then <image> ASSISTANT: "
    mm_data = {
        "image": [_noise(50, 20, 1), _noise(20, 50, 2)],
        "video": [_solid_video(3), _solid_video(7)],
    }
    out = _process(processor, prompt, mm_data, {"num_frames": 3})
    expected = _expected_prompt(processor, prompt, 3)
    assert out["prompt_token_ids"] == expected

    video_0, video_1 = out["mm_placeholders"]["video"]
    image_0, image_1 = out["mm_placeholders"]["image"]
    assert video_0.offset < image_0.offset < video_1.offset < image_1.offset
    assert video_0.length == video_1.length == 3 * FRAME_TOKENS
    assert image_0.length == image_1.length == FRAME_TOKENS
    # Nothing but text between the visual blocks.
    assert video_0.offset + video_0.length < image_0.offset
    assert image_0.offset + image_0.length < video_1.offset
    model_id = _model_id(processor)
    for placeholder in (video_0, video_1, image_0, image_1):
        tokens = expected[placeholder.offset : placeholder.offset + placeholder.length]
        assert tokens == _frame_tokens(model_id) * (placeholder.length // 601)


# Frame sampling


def _reference_indices(num_total: int, num_frames: int) -> list[int]:
    """idx_i = round(i * (T - 1) / (n - 1)) in exact arithmetic, halves to even."""
    if num_frames == 1:
        return [0]
    return [
        round(Fraction(i * (num_total - 1), num_frames - 1)) for i in range(num_frames)
    ]


def _ramp(num_total: int) -> np.ndarray:
    """Frame k is filled with grey level round(k * 255 / (T - 1))."""
    return np.stack(
        [
            np.full((9, 16, 3), round(k * 255 / (num_total - 1)), dtype=np.uint8)
            for k in range(num_total)
        ]
    )


def _frame_ids(pixel_values: torch.Tensor, num_total: int) -> list[int]:
    levels = _grey_levels(pixel_values)
    if num_total <= 13:
        return [level // 20 for level in levels]
    ramp = [round(k * 255 / (num_total - 1)) for k in range(num_total)]
    return [ramp.index(level) for level in levels]


@pytest.mark.parametrize(
    ("num_total", "num_frames", "expected"),
    [
        (6, 3, [0, 2, 5]),
        (3, 8, [0, 0, 1, 1, 1, 1, 2, 2]),
        (10, 1, [0]),
        (1, 4, [0, 0, 0, 0]),
        (8, 8, list(range(8))),
        (100, 8, [0, 14, 28, 42, 57, 71, 85, 99]),
    ],
)
def test_frames_sampled_in_order(
    processor_7b: BaseMultiModalProcessor,
    num_total: int,
    num_frames: int,
    expected: list[int],
):
    assert _reference_indices(num_total, num_frames) == expected
    out = _process(
        processor_7b,
        "<video>",
        {"video": _solid_video(num_total) if num_total <= 13 else _ramp(num_total)},
        {"num_frames": num_frames},
    )
    pixel_values = out["mm_kwargs"].get_data()["pixel_values_videos"][0]
    assert _frame_ids(pixel_values, num_total) == expected


def test_sampling_matches_formula_everywhere():
    for num_total in range(1, 41):
        for num_frames in range(1, 17):
            assert sample_frame_indices(num_total, num_frames) == _reference_indices(
                num_total, num_frames
            ), (num_total, num_frames)


def test_loaded_video_sampled_over_source_frames(
    processor_7b: BaseMultiModalProcessor,
):
    # A loader decoded every 11th of 100 source frames: 0, 11, ..., 99. The
    # wanted frames 0, 14, 28, 42, 57, 71, 85, 99 are not all there: an error
    # that says how to load them, not the nearest frames.
    decoded = _solid_video(10)
    metadata = {"total_num_frames": 100, "frames_indices": list(range(0, 100, 11))}
    with pytest.raises(ValueError, match=r"missing \[14, 28, 42, 57, 71, 85\]"):
        _process(processor_7b, "<video>", {"video": (decoded, metadata)})

    # The 8 wanted frames and 4 others were loaded: taken exactly (sampling 8
    # of the 12 decoded frames would feed other source frames).
    loaded = sorted({*_reference_indices(100, 8), 1, 2, 3, 50})
    metadata = {"total_num_frames": 100, "frames_indices": loaded}
    out = _process(processor_7b, "<video>", {"video": (_solid_video(12), metadata)})
    pixel_values = out["mm_kwargs"].get_data()["pixel_values_videos"][0]
    assert [loaded[i] for i in _frame_ids(pixel_values, 12)] == _reference_indices(
        100, 8
    )

    # When the loader decoded every frame, sampling is exact.
    every = _solid_video(12)
    metadata = {"total_num_frames": 12, "frames_indices": list(range(12))}
    out = _process(processor_7b, "<video>", {"video": (every, metadata)})
    pixel_values = out["mm_kwargs"].get_data()["pixel_values_videos"][0]
    assert _frame_ids(pixel_values, 12) == _reference_indices(12, 8)


# Preprocessing


@pytest.mark.parametrize("size", [(200, 100), (90, 160), (64, 64)])
def test_stretch_to_square(processor_7b: BaseMultiModalProcessor, size):
    image = _noise(size[0], size[1], seed=3)
    out = _process(processor_7b, "<image>", {"image": image})
    pixel_values = out["mm_kwargs"].get_data()["pixel_values"][0]
    torch.testing.assert_close(pixel_values, _manual_pixels(image, pad=False))

    # A video frame goes through the same preprocessing.
    out = _process(
        processor_7b, "<video>", {"video": np.asarray(image)[None]}, {"num_frames": 1}
    )
    frame = out["mm_kwargs"].get_data()["pixel_values_videos"][0, 0]
    torch.testing.assert_close(frame, pixel_values)

    if size[0] != size[1]:
        # The CLIP processor alone would crop the centre instead.
        short = min(size)
        left, top = (size[0] - short) // 2, (size[1] - short) // 2
        cropped = image.crop((left, top, left + short, top + short))
        assert not torch.allclose(
            pixel_values, _manual_pixels(cropped, pad=False), atol=1e-2
        )


@pytest.mark.parametrize("size", [(200, 100), (90, 160)])
def test_pad_to_square(processor_7b: BaseMultiModalProcessor, size):
    image = _noise(size[0], size[1], seed=4)
    out = _process(processor_7b, "<image>", {"image": image}, {"pad_to_square": True})
    pixel_values = out["mm_kwargs"].get_data()["pixel_values"][0]
    torch.testing.assert_close(pixel_values, _manual_pixels(image, pad=True))
    assert not torch.allclose(pixel_values, _manual_pixels(image, pad=False), atol=1e-2)


def _assert_same_processing(a: MultiModalInput, b: MultiModalInput) -> None:
    """Equal outputs, hashes aside (those follow the input's type)."""
    assert a["prompt_token_ids"] == b["prompt_token_ids"]
    assert a["mm_placeholders"] == b["mm_placeholders"]
    assert batched_tensors_equal(a["mm_kwargs"].get_data(), b["mm_kwargs"].get_data())


def test_array_and_pil_inputs_agree(processor_7b: BaseMultiModalProcessor):
    image = _noise(120, 80, seed=5)
    from_pil = _process(processor_7b, "<image>", {"image": image})
    from_array = _process(processor_7b, "<image>", {"image": np.asarray(image)})
    _assert_same_processing(from_pil, from_array)

    frames = [_noise(40, 30, seed) for seed in range(3)]
    from_images = _process(processor_7b, "<video>", {"video": frames})
    from_array = _process(
        processor_7b, "<video>", {"video": np.stack([np.asarray(f) for f in frames])}
    )
    _assert_same_processing(from_images, from_array)


def test_cached_equals_uncached(processor: BaseMultiModalProcessor):
    cache = MultiModalProcessorOnlyCache(processor.info.ctx.model_config)
    prompt = "USER: <image>\n<video>\n<image> Describe. ASSISTANT: "
    mm_data = {
        "image": [_noise(100, 60, 6), _noise(60, 100, 7)],
        "video": (
            _solid_video(9),
            {"total_num_frames": 9, "frames_indices": list(range(9))},
        ),
    }
    for mm_kwargs in ({}, {"num_frames": 3, "pad_to_square": True}):
        uncached = _process(processor, prompt, mm_data, mm_kwargs)
        for _ in range(2):  # a miss, then a hit
            cached = _process(processor, prompt, mm_data, mm_kwargs, cache=cache)
            _assert_inputs_equal(uncached, cached)

    # Processor kwargs are part of an item's identity.
    default = _process(processor, prompt, mm_data, {}, cache=cache)
    fewer = _process(processor, prompt, mm_data, {"num_frames": 3}, cache=cache)
    assert len(fewer["prompt_token_ids"]) == len(default["prompt_token_ids"]) - 5 * 601


# Image embeddings


def test_image_embeddings():
    processor = _build_processor(TARSIER_7B, enable_mm_embeds=True)
    hidden = processor.info.ctx.model_config.get_hidden_size()
    out = _process(processor, "<image>", {"image": torch.zeros(1, 576, hidden)})
    (placeholder,) = out["mm_placeholders"]["image"]
    assert placeholder.length == FRAME_TOKENS
    assert placeholder.get_num_embeds() == 576

    # A 4 x 4 grid: 16 features, 4 row separators, 1 frame separator.
    out = _process(processor, "<image>", {"image": torch.zeros(1, 16, hidden)})
    assert out["mm_placeholders"]["image"][0].length == 21

    with pytest.raises(ValueError, match="perfect square, but got 575"):
        _process(processor, "<image>", {"image": torch.zeros(1, 575, hidden)})


# Errors


def test_wrong_placeholder_count(processor_7b: BaseMultiModalProcessor):
    images = [_noise(30, 30, 1), _noise(30, 30, 2)]
    with pytest.raises(ValueError, match=r"Expected 2 `<image>` .* found 1"):
        _process(processor_7b, "<image> Describe.", {"image": images})
    with pytest.raises(ValueError, match=r"Expected 1 `<image>` .* found 2"):
        _process(processor_7b, "<image><image>", {"image": images[0]})
    with pytest.raises(ValueError, match=r"Expected 1 `<video>` .* found 0"):
        _process(processor_7b, "Describe.", {"video": _solid_video(3)})
    with pytest.raises(ValueError, match=r"Expected 1 `<video>` .* found 2"):
        _process(processor_7b, "<video><video>", {"video": _solid_video(3)})


def test_invalid_inputs(processor_7b: BaseMultiModalProcessor):
    with pytest.raises(ValueError, match="at least one frame"):
        _process(processor_7b, "<video>", {"video": np.zeros((0, 8, 8, 3), np.uint8)})
    for num_frames in (0, -1, "8", 2.0, True):
        with pytest.raises(ValueError, match="`num_frames` must be a positive integer"):
            _process(
                processor_7b,
                "<video>",
                {"video": _solid_video(3)},
                {"num_frames": num_frames},
            )
    with pytest.raises(ValueError, match="`pad_to_square` must be a bool"):
        _process(processor_7b, "<image>", {"image": _noise(8, 8)}, {"pad_to_square": 1})
    # A misspelt option fails instead of running with the defaults, also on a
    # request without a video.
    with pytest.raises(
        ValueError, match=r"does not take the processor kwargs \['num_frame'\]"
    ):
        _process(processor_7b, "<image>", {"image": _noise(8, 8)}, {"num_frame": 2})
    with pytest.raises(ValueError, match="`num_frames` must be a positive integer"):
        _process(processor_7b, "<image>", {"image": _noise(8, 8)}, {"num_frames": 0})
    with pytest.raises(ValueError, match="video embeddings are not supported"):
        processor_7b.info.parse_mm_data({"video": torch.zeros(1, 576, 128)})


def test_more_items_than_limit():
    processor = _build_processor(TARSIER_7B)  # at most 4 images, 2 videos
    with pytest.raises(VLLMValidationError, match="At most 4 image"):
        _process(processor, "<image>" * 5, {"image": [_noise(8, 8)] * 5})
    with pytest.raises(VLLMValidationError, match="At most 2 video"):
        _process(processor, "<video>" * 3, {"video": [_solid_video(2)] * 3})


# Profiling


@pytest.mark.parametrize("max_model_len", [4096, 1000, 500])
def test_dummy_video_fits_context(max_model_len: int):
    processor = _build_processor(
        TARSIER_7B, model_config_kwargs={"max_model_len": max_model_len}
    )
    dummy = processor.get_dummy_mm_inputs({"video": 1})
    (placeholder,) = dummy["mm_placeholders"]["video"]
    num_frames = max(max_model_len // FRAME_TOKENS, 1)
    assert placeholder.length == num_frames * FRAME_TOKENS
    pixel_values = dummy["mm_kwargs"].get_data()["pixel_values_videos"]
    assert pixel_values.shape[1] == num_frames


# Chat template


def test_chat_template_renders_reference_prompt(processor_7b: BaseMultiModalProcessor):
    tokenizer = processor_7b.info.get_tokenizer()
    template = TEMPLATE.read_text()
    # vLLM passes structured content (image and video parts) to this template.
    assert _detect_content_format(template, default="string") == "openai"

    def render(messages: list[dict[str, Any]]) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    video = [{"type": "video"}, {"type": "text", "text": "Describe the video."}]
    assert render([{"role": "user", "content": video}]) == (
        "<s>USER: <video>\nDescribe the video. ASSISTANT: "
    )
    images = [
        {"type": "text", "text": "Compare them."},
        {"type": "image"},
        {"type": "image"},
    ]
    assert render(
        [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": images},
        ]
    ) == (
        "<s>USER: Hi. ASSISTANT: Hello.</s>USER: <image><image>\nCompare them. "
        "ASSISTANT: "
    )


# Tokenizer mode


def _cached_example_ids() -> list[str]:
    """The example checkpoints of vLLM's test registry in the local HF cache."""
    ids = {
        model_id
        for info in HF_EXAMPLE_MODELS.hf_models.values()
        for model_id in (info.default, *info.extras.values())
    }

    def cached(model_id: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
        except HFValidationError:  # a local path or a placeholder
            return False

    return sorted(filter(cached, ids))


@pytest.mark.parametrize("model_id", _cached_example_ids())
def test_tarsier_tokenizer_mode_for_tarsier_only(model_id: str):
    """Tarsier's config hook selects the `tarsier` tokenizer mode for Tarsier
    (v1) checkpoints and leaves every other model's mode (so its tokenizer)
    as vLLM chooses it, Tarsier2 (same `architectures` string) included."""
    info = HF_EXAMPLE_MODELS.find_hf_info(model_id)
    model_config = ModelConfig(
        model_id,
        tokenizer_mode="auto",
        trust_remote_code=info.trust_remote_code,
        hf_overrides=info.hf_overrides,
    )
    default_mode = model_config.tokenizer_mode
    vllm_config = VllmConfig(model_config=model_config)
    expected = "tarsier" if model_id in MODEL_IDS else default_mode
    assert vllm_config.model_config.tokenizer_mode == expected
