# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""An independent reference of Tarsier2's pipeline, written for the tests
from the authors' published semantics with Transformers' Qwen2-VL.

The checkpoint's weights are loaded into Transformers'
``Qwen2VLForConditionalGeneration`` (names remapped) and fed the way
Tarsier2's authors feed it: frames sampled uniformly with both endpoints,
capped to a pixel budget, every sampled frame duplicated, and the frames
placed at image-pad tokens with image grid info. Pixels come from Qwen2-VL's
image processor on the PIL backend, as the authors' Transformers 4.47
computed them (the torchvision backend's resize differs by an 8-bit level or
two). M-RoPE positions are computed here the authors' way (text after a
visual block starts at the largest position so far + 1, the temporal index
included): Transformers' ``get_rope_index`` disagrees for videos with more
temporal patches than max(H, W) / 2. It shares no code with
``vllm.model_executor.models.tarsier2``.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

# The authors' defaults.
NUM_FRAMES, FRAME_PIXELS, SAMPLE_PIXELS = 16, 1280 * 720 / 2, 128 * 384 * 384

TokensTextLogprobs = tuple[list[int], str, list[dict[int, float]]]
Grid = tuple[int, int, int]


class Tarsier2Tokenizer:
    """The checkpoint's Qwen2 tokenizer as its `tokenizer.json` defines it (the
    `tokenizers` library, which its fast tokenizer runs), and its chat template
    rendered with Jinja: nothing of Transformers' or vLLM's tokenizer loading.
    """

    def __init__(self, path: Path) -> None:
        self.backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = json.loads((path / "tokenizer_config.json").read_text())
        self.eos_token: str = config["eos_token"]
        self.eos_token_id = self.backend.token_to_id(self.eos_token)
        self.pad_token_id = self.backend.token_to_id(config["pad_token"])
        # The Jinja options Transformers renders chat templates with.
        environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        self.chat_template = environment.from_string(config["chat_template"])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Qwen2 adds no special tokens of its own."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.backend.decode(token_ids)

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        return [self.backend.id_to_token(t) or "" for t in token_ids]

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return self.chat_template.render(messages=messages, add_generation_prompt=True)


@dataclass
class Request:
    """One prompt: its text parts and visual items, in prompt order."""

    text: str
    visuals: list[tuple[str, Any]]  # ("image", PIL image) | ("video", frames)
    mm_kwargs: dict[str, Any] = field(default_factory=dict)


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
    """Transformers' Qwen2-VL loaded with a Tarsier2 checkpoint (a hub id or
    a local folder), in float32 with eager attention."""

    def __init__(self, model: str) -> None:
        path = Path(model)
        if not path.is_dir():
            path = Path(snapshot_download(model))
        raw = json.loads((path / "config.json").read_text())
        text = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
        vision = {k: v for k, v in raw["vision_config"].items() if k != "model_type"}
        config = Qwen2VLConfig(**text, vision_config=vision)
        config._attn_implementation = "eager"

        self.model = Qwen2VLForConditionalGeneration(config).float().eval()
        # One file, or the shards published checkpoints have.
        weights = {
            name: tensor
            for file in sorted(path.glob("*.safetensors"))
            for name, tensor in load_file(file).items()
        }
        renamed = {self._rename(name): tensor for name, tensor in weights.items()}
        self.model.load_state_dict(renamed, strict=True)

        self.tokenizer = Tarsier2Tokenizer(path)
        preprocessor = json.loads((path / "preprocessor_config.json").read_text())
        size = preprocessor.pop("size")
        self.pixels = Qwen2VLImageProcessorPil(
            **preprocessor,
            size={
                "shortest_edge": size["min_pixels"],
                "longest_edge": size["max_pixels"],
            },
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

    def encode_visuals(self, request: Request) -> tuple[torch.Tensor, list[Grid]]:
        """Pixel patches and (t, h, w) grids of the request's visual items."""
        options = {
            "num_frames": NUM_FRAMES,
            "max_frame_pixels": FRAME_PIXELS,
            "max_sample_pixels": SAMPLE_PIXELS,
        } | request.mm_kwargs
        pixel_values, grids = [], []
        for modality, item in request.visuals:
            frames = [item] if modality == "image" else list(map(Image.fromarray, item))
            fed = prepare_frames(frames, **options)
            # Each temporal patch holds one frame twice: that frame as an
            # image, which the image processor repeats over the patch.
            processed = self.pixels(images=list(fed[::2]), return_tensors="pt")
            _, h, w = processed["image_grid_thw"][0].tolist()
            pixel_values.append(processed["pixel_values"])
            grids.append((len(fed) // 2, h, w))
        return torch.cat(pixel_values), grids

    def expand_placeholders(self, prompt: list[int], grids: list[Grid]) -> list[int]:
        """Each image/video placeholder becomes its item's image-pad tokens."""
        counts = iter(t * h * w // 4 for t, h, w in grids)
        ids = []
        for token in prompt:
            ids += [self.image_pad] * next(counts) if token in self.pads else [token]
        assert next(counts, None) is None, "more visual items than placeholders"
        return ids

    def positions(self, ids: list[int], grids: Iterable[Grid]) -> list[Grid]:
        """M-RoPE positions the authors' way, one (t, h, w) triple per token."""
        grids = iter(grids)
        positions: list[Grid] = []
        next_pos, i = 0, 0
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
    def generate(
        self, request: Request, *, max_tokens: int, num_logprobs: int
    ) -> TokensTextLogprobs:
        """Greedy decoding, the whole sequence recomputed at every step."""
        prompt = self.tokenizer.encode(request.text)
        pixel_values, grids = self.encode_visuals(request)
        ids = self.expand_placeholders(prompt, grids)

        image_grid_thw = torch.tensor(grids)
        positions = self.positions(ids, grids)
        embeds = self.model.get_input_embeddings()(torch.tensor([ids]))
        features = torch.cat(
            self.model.get_image_features(pixel_values, image_grid_thw).pooler_output
        )
        mask = torch.tensor([ids]) == self.image_pad
        embeds[mask] = features.to(embeds.dtype)

        output_ids, logprobs = [], []
        for _ in range(max_tokens):
            position_ids = torch.tensor(positions).T[:, None, :]
            logits = self.model(inputs_embeds=embeds, position_ids=position_ids).logits
            step = torch.log_softmax(logits[0, -1], dim=-1)
            top = step.topk(num_logprobs)
            token = int(top.indices[0])
            output_ids.append(token)
            logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
            new_embed = self.model.get_input_embeddings()(torch.tensor([[token]]))
            embeds = torch.cat([embeds, new_embed], dim=1)
            positions.append((max(map(max, positions)) + 1,) * 3)
        return output_ids, self.tokenizer.decode(output_ids), logprobs
