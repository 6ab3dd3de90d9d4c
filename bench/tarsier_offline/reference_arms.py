# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The Transformers reference arms: ``reference`` (Tarsier's test reference,
batched with left padding, ``LlamaForCausalLM.generate(inputs_embeds=...)``)
and ``tarsier2-reference`` (Tarsier2's, one Qwen2-VL ``generate`` call per
batch with the authors' M-RoPE positions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .references import tarsier2_reference, tarsier_reference
from .workload import (
    PROMPT,
    BenchConfig,
    make_videos,
    progress,
    sampled_frames,
    tarsier2_kwargs,
    tarsier2_prompt,
    timed_reps,
)


def load_reference(cfg: BenchConfig) -> Any:
    """The test reference on the benchmark checkpoint, in the benchmark dtype."""
    import torch

    ref = tarsier_reference().TarsierReference(cfg.model)
    dtype = getattr(torch, cfg.dtype)
    for module in (ref.vision, ref.lm, ref.projector):
        module.to(dtype)
    ref.lm.set_attn_implementation(cfg.reference_attn)
    return ref


def reference_batch(
    ref: Any, cfg: BenchConfig, videos: list[np.ndarray]
) -> dict[str, Any]:
    """Batched greedy generation: per-sample embeddings, left padding, one
    `generate` call per batch."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    image_token = ref.config["image_token_index"]
    text = PROMPT.replace("<video>", "<image>" * cfg.num_frames)
    input_ids = ref.tokenizer.encode(text)
    embed = ref.lm.get_input_embeddings()
    pad_id = ref.lm.config.pad_token_id or 0

    # One tower call for the frames of the whole batch.
    pixels = torch.cat(
        [ref.preprocess(sampled_frames(v, cfg.num_frames)) for v in videos]
    )
    frame_embeds = iter(ref.frame_embeddings(pixels.to(dtype)))
    samples = []
    with torch.no_grad():
        text_embeds = embed(torch.tensor(input_ids))
        for _ in videos:
            pieces = [
                next(frame_embeds) if token == image_token else text_embeds[i, None]
                for i, token in enumerate(input_ids)
            ]
            samples.append(torch.cat(pieces))
        length = max(len(s) for s in samples)
        pad = embed(torch.tensor(pad_id))
        inputs_embeds = pad.expand(len(samples), length, pad.shape[-1]).clone()
        attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
        for i, sample in enumerate(samples):
            inputs_embeds[i, length - len(sample) :] = sample
            attention_mask[i, length - len(sample) :] = 1
        out = ref.lm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=ref.tokenizer.eos_token_id,
        )
    outputs = _greedy_outputs(out, cfg)
    return {
        "prompt_tokens": sum(len(s) for s in samples),
        "generated_tokens": sum(len(o) for o in outputs),
        "outputs": outputs,
    }


def _greedy_outputs(out: Any, cfg: BenchConfig) -> list[list[int]]:
    outputs = [row.tolist() for row in out]
    if any(len(o) != cfg.max_new_tokens for o in outputs):
        raise RuntimeError(f"unequal output lengths: {[len(o) for o in outputs]}")
    return outputs


def _time_reference(
    cfg: BenchConfig, batch: Callable[[list[np.ndarray]], dict[str, Any]]
) -> dict[str, Any]:
    """Warm up on the first videos, then time whole-workload repetitions of
    `batch` over consecutive batches."""
    videos = make_videos(cfg)
    if cfg.warmup_videos:
        batch(videos[: cfg.warmup_videos])
    progress("warm-up done")

    def run() -> dict[str, Any]:
        total: dict[str, Any] = {"prompt_tokens": 0, "generated_tokens": 0}
        total["outputs"] = []
        for i in range(0, len(videos), cfg.reference_batch_size):
            part = batch(videos[i : i + cfg.reference_batch_size])
            for key in ("prompt_tokens", "generated_tokens", "outputs"):
                total[key] += part[key]
        return total

    return {"reps": timed_reps(cfg, run)}


def run_reference(cfg: BenchConfig) -> dict[str, Any]:
    ref = load_reference(cfg)
    progress("model loaded")
    return _time_reference(cfg, lambda videos: reference_batch(ref, cfg, videos))


def load_tarsier2_reference(cfg: BenchConfig) -> Any:
    """The Tarsier2 test reference in the benchmark dtype, its rope index
    replaced by the authors' positions so that Transformers' `generate`
    (left padding, KV cache) decodes with them."""
    import torch

    ref = tarsier2_reference().Tarsier2Reference(cfg.tarsier2_model)
    ref.model.to(getattr(torch, cfg.dtype))
    ref.model.set_attn_implementation(cfg.reference_attn)

    def rope_index(
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        attention_mask: torch.Tensor,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grids = iter(map(tuple, image_grid_thw.tolist()))
        positions = torch.zeros(3, *input_ids.shape, dtype=torch.long)
        deltas = []
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask.bool())):
            pos = torch.tensor(ref.positions(ids[mask].tolist(), grids)).T
            positions[:, row, mask] = pos
            deltas.append(int(pos.max()) + 1 - int(mask.sum()))
        return positions, torch.tensor(deltas)[:, None]

    ref.model.model.get_rope_index = rope_index
    return ref


def tarsier2_reference_batch(
    ref: Any, cfg: BenchConfig, text: str, videos: list[np.ndarray]
) -> dict[str, Any]:
    """Batched greedy generation of the chat prompt `text`: the reference's
    frame handling per video, left padding, one `generate` call per batch."""
    import torch

    Request = tarsier2_reference().Request
    prompt = ref.tokenizer.encode(text)
    kwargs = tarsier2_kwargs(cfg)
    pixels, grids, samples = [], [], []
    for video in videos:
        request = Request("", [("video", video)], kwargs)
        pixel_values, video_grids = ref.encode_visuals(request)
        pixels.append(pixel_values)
        grids += video_grids
        samples.append(ref.expand_placeholders(prompt, video_grids))
    length = max(len(s) for s in samples)
    pad_id = ref.tokenizer.pad_token_id
    input_ids = torch.full((len(samples), length), pad_id)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    for i, sample in enumerate(samples):
        input_ids[i, length - len(sample) :] = torch.tensor(sample)
        attention_mask[i, length - len(sample) :] = 1
    with torch.inference_mode():
        out = ref.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=(input_ids == ref.image_pad).int(),
            pixel_values=torch.cat(pixels).to(ref.model.dtype),
            image_grid_thw=torch.tensor(grids),
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=ref.tokenizer.eos_token_id,
        )
    outputs = _greedy_outputs(out[:, length:], cfg)
    return {
        "prompt_tokens": sum(len(s) for s in samples),
        "generated_tokens": sum(len(o) for o in outputs),
        "outputs": outputs,
    }


def run_tarsier2_reference(cfg: BenchConfig) -> dict[str, Any]:
    ref = load_tarsier2_reference(cfg)
    # Rendered once, outside the timed region: it loads a tokenizer.
    text = tarsier2_prompt(cfg.tarsier2_model)
    progress("model loaded")
    return _time_reference(
        cfg, lambda videos: tarsier2_reference_batch(ref, cfg, text, videos)
    )
