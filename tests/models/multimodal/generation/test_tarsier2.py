# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier2 in vLLM against an independent reference of the authors' pipeline.

The reference is Transformers' ``Qwen2VLForConditionalGeneration`` with the
checkpoint's weights remapped, fed the way Tarsier2's authors feed it: frames
sampled uniformly with both endpoints, capped to a pixel budget, every sampled
frame duplicated, and the frames placed at image-pad tokens with image grid
info. M-RoPE positions are computed here the authors' way (text after a visual
block starts at the largest position so far + 1, the temporal index included):
Transformers' ``get_rope_index`` disagrees for videos with more temporal
patches than max(H, W) / 2, which every video below has.
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLVideoProcessor,
)

from vllm import LLM, SamplingParams
from vllm.distributed import cleanup_dist_env_and_memory

from ...utils import check_logprobs_close

MODEL_ID = "omni-research/Tarsier2-Recap-7b"
MAX_TOKENS = 12
NUM_LOGPROBS = 5
# float32 on CPU: the two implementations differ only in kernels.
LOGPROB_ATOL = 1e-3

# The authors' defaults.
NUM_FRAMES, FRAME_PIXELS, SAMPLE_PIXELS = 16, 1280 * 720 / 2, 128 * 384 * 384

TokensTextLogprobs = tuple[list[int], str, list[dict[int, float]]]


@dataclass
class Request:
    """One prompt: its text parts and visual items, in prompt order."""

    text: str
    visuals: list[tuple[str, Any]]  # ("image", PIL image) | ("video", frames)
    mm_kwargs: dict[str, Any] = field(default_factory=dict)


# --- the reference ----------------------------------------------------------


def sample_indices(total: int, num_frames: int) -> list[int]:
    if total <= num_frames:
        return list(range(total))
    if num_frames == 1:
        return [0]
    return [round(Fraction(i * (total - 1), num_frames - 1)) for i in range(num_frames)]


def prepare_frames(frames: list[Image.Image], **kwargs: Any) -> np.ndarray:
    """Sample, cap (PIL default resize) and duplicate frames."""
    picked = [frames[i] for i in sample_indices(len(frames), kwargs["num_frames"])]
    cap = min(
        kwargs["max_frame_pixels"], kwargs["max_sample_pixels"] / (2 * len(picked))
    )
    width, height = picked[0].size
    if width * height > cap:
        beta = math.sqrt(width * height / cap)
        size = (math.floor(width / beta), math.floor(height / beta))
        picked = [frame.resize(size) for frame in picked]
    return np.stack([np.asarray(frame) for frame in picked for _ in range(2)])


class Tarsier2Reference:
    """Transformers' Qwen2-VL loaded with a Tarsier2 checkpoint."""

    def __init__(self, model_id: str) -> None:
        path = Path(snapshot_download(model_id, local_files_only=True))
        raw = json.loads((path / "config.json").read_text())
        text = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
        vision = {k: v for k, v in raw["vision_config"].items() if k != "model_type"}
        config = Qwen2VLConfig(**text, vision_config=vision)
        config._attn_implementation = "eager"

        self.model = Qwen2VLForConditionalGeneration(config).float().eval()
        weights = load_file(path / "model.safetensors")
        renamed = {self._rename(name): tensor for name, tensor in weights.items()}
        self.model.load_state_dict(renamed, strict=True)

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        preprocessor = json.loads((path / "preprocessor_config.json").read_text())
        size = preprocessor.pop("size")
        self.pixels = Qwen2VLVideoProcessor(
            **preprocessor,
            size={
                "shortest_edge": size["min_pixels"],
                "longest_edge": size["max_pixels"],
            },
            cap_pixels_per_frame=False,
        )
        self.image_pad = config.image_token_id
        self.pads = {config.image_token_id, config.video_token_id}

    @staticmethod
    def _rename(name: str) -> str:
        for old, new in (
            ("vision_tower.", "model.visual."),
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
        ):
            if name.startswith(old):
                return new + name.removeprefix(old)
        raise AssertionError(f"unexpected checkpoint weight {name}")

    def _encode_visuals(
        self, request: Request
    ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        options = {
            "num_frames": NUM_FRAMES,
            "max_frame_pixels": FRAME_PIXELS,
            "max_sample_pixels": SAMPLE_PIXELS,
        } | request.mm_kwargs
        pixel_values, grids = [], []
        for modality, item in request.visuals:
            frames = [item] if modality == "image" else list(map(Image.fromarray, item))
            processed = self.pixels(
                videos=[prepare_frames(frames, **options)], return_tensors="pt"
            )
            pixel_values.append(processed["pixel_values_videos"])
            grids.append(tuple(processed["video_grid_thw"][0].tolist()))
        return torch.cat(pixel_values), grids

    def _positions(self, ids: list[int], grids: Iterator[tuple[int, int, int]]) -> list:
        """M-RoPE positions the authors' way, one (t, h, w) triple per token."""
        positions, next_pos, i = [], 0, 0
        while i < len(ids):
            if ids[i] != self.image_pad:
                positions.append((next_pos,) * 3)
                next_pos, i = next_pos + 1, i + 1
                continue
            t, h, w = next(grids)
            h, w = h // 2, w // 2
            positions += [
                (next_pos + a, next_pos + b, next_pos + c)
                for a in range(t)
                for b in range(h)
                for c in range(w)
            ]
            next_pos += max(t, h, w)
            i += t * h * w
        return positions

    @torch.inference_mode()
    def generate(self, request: Request) -> TokensTextLogprobs:
        prompt = self.tokenizer(request.text)["input_ids"]
        pixel_values, grids = self._encode_visuals(request)
        # Each placeholder becomes that item's image-pad tokens.
        counts = iter(t * h * w // 4 for t, h, w in grids)
        ids = []
        for token in prompt:
            ids += [self.image_pad] * next(counts) if token in self.pads else [token]
        assert next(counts, None) is None, "more visual items than placeholders"

        image_grid_thw = torch.tensor(grids)
        positions = self._positions(ids, iter(grids))
        embeds = self.model.get_input_embeddings()(torch.tensor([ids]))
        features = torch.cat(
            self.model.get_image_features(pixel_values, image_grid_thw).pooler_output
        )
        mask = torch.tensor([ids]) == self.image_pad
        embeds[mask] = features.to(embeds.dtype)

        output_ids, logprobs = [], []
        for _ in range(MAX_TOKENS):
            position_ids = torch.tensor(positions).T[:, None, :]
            logits = self.model(inputs_embeds=embeds, position_ids=position_ids).logits
            step = torch.log_softmax(logits[0, -1], dim=-1)
            top = step.topk(NUM_LOGPROBS)
            token = int(top.indices[0])
            output_ids.append(token)
            logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
            new_embed = self.model.get_input_embeddings()(torch.tensor([[token]]))
            embeds = torch.cat([embeds, new_embed], dim=1)
            positions.append((max(map(max, positions)) + 1,) * 3)
        return output_ids, self.tokenizer.decode(output_ids), logprobs


# --- inputs -------------------------------------------------------------------


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def noise_video(seed: int, frames: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference() -> Tarsier2Reference:
    return Tarsier2Reference(MODEL_ID)


def chat_prompt(
    reference: Tarsier2Reference, visuals: list[tuple[str, Any]], text: str
):
    """The checkpoint's ChatML template, visual content before the text."""
    content = [{"type": modality} for modality, _ in visuals]
    content.append({"type": "text", "text": text})
    return reference.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        tokenize=False,
        add_generation_prompt=True,
    )


def make_request(
    reference: Tarsier2Reference,
    visuals: list[tuple[str, Any]],
    text: str = "Describe the video in detail.",
    **mm_kwargs: Any,
) -> Request:
    return Request(chat_prompt(reference, visuals, text), visuals, mm_kwargs)


# 20 frames of 84x56: 16 sampled, 16 temporal patches of 2x3 merged patches.
VIDEO = ("video", noise_video(0, 20, 84, 56))
# 11 frames of 160x120 capped to 109x82 px: 6 sampled, 6 temporal patches of 3x4.
CAPPED_VIDEO = ("video", noise_video(1, 11, 160, 120))
CAPPED_VIDEO_KWARGS = {"num_frames": 6, "max_frame_pixels": 9_000}
IMAGE = ("image", noise_image(2, 300, 200))
# 640x480: within the default cap; capped when a request lowers it.
LARGE_IMAGE = ("image", noise_image(3, 640, 480))


@pytest.fixture(scope="module")
def llm():
    llm = LLM(
        model=MODEL_ID,
        dtype="float32",
        max_model_len=2048,
        max_num_seqs=8,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"image": 2, "video": 1},
        seed=0,
    )
    yield llm
    del llm
    cleanup_dist_env_and_memory()


def run_vllm(llm: LLM, requests: list[Request]) -> list[TokensTextLogprobs]:
    prompts = []
    for request in requests:
        mm_data: dict[str, list[Any]] = {}
        for modality, item in request.visuals:
            mm_data.setdefault(modality, []).append(item)
        prompts.append(
            {
                "prompt": request.text,
                "multi_modal_data": mm_data,
                "mm_processor_kwargs": request.mm_kwargs,
            }
        )
    params = SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS
    )
    outputs = llm.generate(prompts, params)
    results = []
    for output in outputs:
        completion = output.outputs[0]
        assert completion.logprobs is not None
        logprobs = [
            {token: lp.logprob for token, lp in step.items()}
            for step in completion.logprobs
        ]
        results.append((list(completion.token_ids), completion.text, logprobs))
    return results


def compare(llm: LLM, reference: Tarsier2Reference, requests: list[Request]) -> None:
    expected = [reference.generate(request) for request in requests]
    actual = run_vllm(llm, requests)

    check_logprobs_close(
        outputs_0_lst=expected,
        outputs_1_lst=actual,
        name_0="reference",
        name_1="vllm",
        # The reference decodes a trailing partial character that vLLM holds back.
        warn_on_mismatch=False,
    )
    for (ref_ids, _, ref_lps), (ids, _, lps) in zip(expected, actual):
        assert ids == ref_ids, "greedy tokens differ"
        diffs = [abs(lp[t] - ref_lp[t]) for t, lp, ref_lp in zip(ids, lps, ref_lps)]
        assert max(diffs) < LOGPROB_ATOL, diffs


def test_videos_need_the_authors_positions(reference):
    """Each video has more temporal patches than max(H, W) / 2."""
    for video, kwargs in ((VIDEO, {}), (CAPPED_VIDEO, CAPPED_VIDEO_KWARGS)):
        _, [(t, h, w)] = reference._encode_visuals(Request("", [video], kwargs))
        assert t > max(h, w) // 2


def test_image(llm, reference):
    compare(llm, reference, [make_request(reference, [IMAGE], "Describe the image.")])


def test_video(llm, reference):
    compare(llm, reference, [make_request(reference, [VIDEO])])


def test_mixed_batch(llm, reference):
    compare(
        llm,
        reference,
        [
            make_request(reference, [CAPPED_VIDEO], **CAPPED_VIDEO_KWARGS),
            make_request(reference, [IMAGE, LARGE_IMAGE], "Compare the images."),
            make_request(reference, [VIDEO, IMAGE], "What happens?"),
            # The same video and prompt with other options: nothing cached
            # for the first options may be reused.
            make_request(reference, [CAPPED_VIDEO], num_frames=4),
            make_request(reference, [LARGE_IMAGE], max_frame_pixels=20_000),
        ],
    )
