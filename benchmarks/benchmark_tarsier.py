# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Offline throughput of Tarsier and Tarsier2 video captioning: vLLM against
independent Transformers references, on the same machine, models and workload.

Arms, each run in its own subprocess so that peak memory does not mix:

- ``tarsier``: vLLM's ``LLM.generate`` on ``TarsierForConditionalGeneration``
  with ``<video>`` prompts (frame sampling, stretch to square, CLIP processor,
  split tokens all inside vLLM).
- ``reference``: the test reference (Transformers' ``CLIPVisionModel`` and
  ``LlamaForCausalLM`` with Tarsier's row/frame separators), batched here with
  left padding as the authors' batch inference does, then
  ``LlamaForCausalLM.generate(inputs_embeds=...)``.
- ``llava``: the same weights run as plain ``LlavaForConditionalGeneration``,
  to price Tarsier's split-token layout. Construction: each frame's pixels are
  those Tarsier sees (sampled and stretched to a square outside the timed
  region), sent as one image per frame, and each ``<image>`` is followed in the
  token prompt by Tarsier's own separator ids (sqrt(P) x ``image_newline_idx``,
  one ``image_new_idx``). The LM therefore runs the same tokens per frame
  (P + sqrt(P) + 1), the tower the same frames, and the only differences are
  where the separators sit (after the patch grid instead of after each row)
  and Tarsier's video path (sampling, stretching, re-tokenizing ``<video>``,
  the interleaved placeholder mask). LLaVA cannot instead get P + sqrt(P) + 1
  patches: that is never a square grid.
- ``tarsier2``: vLLM's ``LLM.generate`` on ``Tarsier2ForConditionalGeneration``
  (a Qwen2-VL layout checkpoint) with the same videos and number of frames,
  in the checkpoint's ChatML prompt.
- ``tarsier2-reference``: the Tarsier2 test reference (Transformers'
  ``Qwen2VLForConditionalGeneration`` fed the authors' way: sampling, pixel
  caps, duplicated frames, the authors' M-RoPE positions), batched with left
  padding into one ``generate`` call per batch.
- ``processor``: the multimodal processors alone (built outside the engine),
  in frames per second: Tarsier's (stretch + CLIP + prompt update) uncached
  and with vLLM's processor cache warm, the reference's preprocessing, and
  LLaVA's on the ``llava`` arm's inputs, which splits the Tarsier/LLaVA gap
  into preprocessing and the rest; then Tarsier2's processor (uncached,
  cached) and its reference's preprocessing.

Fairness: both generation arms decode greedily exactly ``--max-new-tokens``
tokens (``ignore_eos`` in vLLM, ``min_new_tokens`` in Transformers, checked),
vLLM's prefix and processor caches are off so that every repetition does the
same work, timings cover raw frames to generated tokens on both sides, and
both get all CPU cores (vLLM's CPU worker otherwise keeps one core per rank
for its front-end; ``--vllm-reserved-cpus -1`` restores that). "Prefill
tokens/s" is prompt tokens (visual tokens included) over wall time, as in
``vllm bench throughput``; peak memory is the largest sum of resident memory
over the arm's process tree, sampled every 0.2 s (vLLM's includes the
preallocated ``VLLM_CPU_KVCACHE_SPACE``). vLLM runs eagerly unless
``--compile`` is given, like the reference: on a cold cache its torch.compile
adds about 45 s of start-up to each vLLM arm (the default run would then
exceed 15 minutes on 2 cores). At these sizes it left Tarsier unchanged and
sped Tarsier2 up somewhat (medians per repetition on the 2-core machine:
Tarsier 14.5 s compiled vs 14.1 and 13.5 s eager, Tarsier2 10.5 s vs 11.9 and
13.3 s), so the default understates vLLM's Tarsier2 figures a little.

The models are random-weight checkpoints in the Tarsier-7b layout at reduced
sizes (ViT-B/16-224 and a 768-wide Llama, both shallow, so that compute
dominates while the default run of six arms finishes within 15 minutes on a
2-core CPU) and in the Tarsier2-7b layout at the same widths and depths (a
Qwen2-VL tower, a Qwen2 LM with GQA and Qwen's vocabulary); write them with
``python -m fixtures.bench --out build/bench-model [--family tarsier2]``
(this script does so itself when a folder is missing and that package is
importable from the working directory). bfloat16 is used where the CPU has
native support, else float32, for every arm alike.

Example::

    python benchmarks/benchmark_tarsier.py --num-videos 2 --repetitions 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The authors' prompt, trailing space included (the template renders it so).
PROMPT = "USER: <video>\nDescribe the video in detail. ASSISTANT: "
QUESTION = "Describe the video in detail."
ARMS = ("tarsier", "reference", "llava", "tarsier2", "tarsier2-reference", "processor")
PROGRESS = "@@bench-progress@@"
ARM_NAMES = {
    "tarsier": "vLLM (fork), Tarsier",
    "reference": "Transformers reference, Tarsier",
    "llava": "vLLM (fork), plain LLaVA",
    "tarsier2": "vLLM (fork), Tarsier2",
    "tarsier2-reference": "Transformers reference, Tarsier2",
}
# Arms that must see the same prompt and generated tokens.
FAMILIES = (("tarsier", "reference", "llava"), ("tarsier2", "tarsier2-reference"))


@dataclasses.dataclass
class BenchConfig:
    model: str
    tarsier2_model: str
    tarsier2_max_frame_pixels: int
    num_videos: int
    num_frames: int
    source_frames: int
    width: int
    height: int
    max_new_tokens: int
    repetitions: int
    warmup_videos: int
    dtype: str
    reference_batch_size: int
    reference_attn: str
    vllm_reserved_cpus: int
    compile: bool
    seed: int


# ---------------------------------------------------------------- workload


def make_videos(cfg: BenchConfig) -> list[np.ndarray]:
    """Deterministic RGB videos: smooth colour fields plus noise (content does
    not change the compute, but it keeps resizing realistic)."""
    rng = np.random.default_rng(cfg.seed)
    shape = (cfg.source_frames, cfg.height, cfg.width, 3)
    ys = np.linspace(0, 1, cfg.height, dtype=np.float32)[None, :, None, None]
    xs = np.linspace(0, 1, cfg.width, dtype=np.float32)[None, None, :, None]
    ts = np.linspace(0, 1, cfg.source_frames, dtype=np.float32)[:, None, None, None]
    videos = []
    for _ in range(cfg.num_videos):
        phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
        field = 127 + 80 * np.sin(6 * xs + 4 * ys + 3 * ts + phase)
        noise = rng.normal(0, 20, size=shape).astype(np.float32)
        videos.append(np.clip(field + noise, 0, 255).astype(np.uint8))
    return videos


def sampled_frames(video: np.ndarray, num_frames: int) -> list[Any]:
    """The frames the authors' pipeline feeds, via the reference's sampler."""
    from tests.models.multimodal.generation.tarsier_reference import video_frames

    return video_frames(video, num_frames)


def progress(step: str) -> None:
    print(f"{PROGRESS} {step}", flush=True)


def timed_reps(
    cfg: BenchConfig, run: Callable[[], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run `run()` `cfg.repetitions` times, reporting progress after each."""
    reps = []
    for i in range(cfg.repetitions):
        start = time.perf_counter()
        stats = run()
        stats["wall_s"] = time.perf_counter() - start
        reps.append(stats)
        progress(f"rep {i + 1}/{cfg.repetitions} {stats['wall_s']:.1f}s")
    return reps


# ---------------------------------------------------------------- vLLM arms


def _llm(cfg: BenchConfig, model: str, limits: dict[str, int], **kwargs: Any) -> Any:
    from vllm import LLM

    return LLM(
        model=model,
        dtype=cfg.dtype,
        seed=cfg.seed,
        limit_mm_per_prompt=limits,
        mm_processor_cache_gb=0,
        enable_prefix_caching=False,
        max_num_seqs=max(cfg.num_videos, 1),
        enforce_eager=not cfg.compile,
        **kwargs,
    )


def _vllm_stats(outputs: list[Any], cfg: BenchConfig) -> dict[str, Any]:
    gen = [len(o.outputs[0].token_ids) for o in outputs]
    if any(n != cfg.max_new_tokens for n in gen):
        raise RuntimeError(f"unequal output lengths: {gen}")
    return {
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
        "generated_tokens": sum(gen),
        "outputs": [list(o.outputs[0].token_ids) for o in outputs],
    }


def run_tarsier(cfg: BenchConfig) -> dict[str, Any]:
    from vllm import SamplingParams

    videos = make_videos(cfg)
    llm = _llm(cfg, cfg.model, {"image": 0, "video": 1})
    progress("engine up")
    params = SamplingParams(
        temperature=0.0, max_tokens=cfg.max_new_tokens, ignore_eos=True
    )
    kwargs = {"num_frames": cfg.num_frames}
    prompts = [
        {
            "prompt": PROMPT,
            "multi_modal_data": {"video": v},
            "mm_processor_kwargs": kwargs,
        }
        for v in videos
    ]
    return _time_vllm(llm, prompts, params, cfg)


def tarsier2_prompt(model: str) -> str:
    """The checkpoint's ChatML prompt with one video before the question."""
    from transformers import AutoTokenizer

    content = [{"type": "video"}, {"type": "text", "text": QUESTION}]
    return AutoTokenizer.from_pretrained(model).apply_chat_template(
        [{"role": "user", "content": content}],
        tokenize=False,
        add_generation_prompt=True,
    )


def tarsier2_kwargs(cfg: BenchConfig) -> dict[str, int]:
    """Tarsier2's per-request options, the same for vLLM and the reference."""
    return {
        "num_frames": cfg.num_frames,
        "max_frame_pixels": cfg.tarsier2_max_frame_pixels,
    }


def run_tarsier2(cfg: BenchConfig) -> dict[str, Any]:
    from vllm import SamplingParams

    videos = make_videos(cfg)
    # Tarsier2's 32k context is not needed: 8 frames of 640x360 are ~2.4k tokens.
    llm = _llm(cfg, cfg.tarsier2_model, {"image": 0, "video": 1}, max_model_len=4096)
    progress("engine up")
    params = SamplingParams(
        temperature=0.0, max_tokens=cfg.max_new_tokens, ignore_eos=True
    )
    prompt = tarsier2_prompt(cfg.tarsier2_model)
    prompts = [
        {
            "prompt": prompt,
            "multi_modal_data": {"video": v},
            "mm_processor_kwargs": tarsier2_kwargs(cfg),
        }
        for v in videos
    ]
    return _time_vllm(llm, prompts, params, cfg)


def _time_vllm(
    llm: Any, prompts: list[Any], params: Any, cfg: BenchConfig
) -> dict[str, Any]:
    """Warm up on the first videos, then time whole-workload repetitions."""
    llm.generate(prompts[: cfg.warmup_videos], params, use_tqdm=False)
    progress("warm-up done")
    reps = timed_reps(
        cfg,
        lambda: _vllm_stats(llm.generate(prompts, params, use_tqdm=False), cfg),
    )
    return {"reps": reps}


def llava_view(model: Path, out: Path) -> Path:
    """The checkpoint seen as plain LLaVA: same weights and tokenizer, a LLaVA
    config and processor config (vLLM builds LLaVA's HF processor)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in model.iterdir():
        if src.name not in ("config.json", "preprocessor_config.json"):
            dst = out / src.name
            if not dst.exists():
                dst.symlink_to(src.resolve())
    cfg = json.loads((model / "config.json").read_text())
    vision = cfg["vision_config"]
    side = vision["image_size"] // vision["patch_size"]
    for key in ("image_newline_idx", "image_new_idx"):
        cfg.pop(key)
    cfg |= {"architectures": ["LlavaForConditionalGeneration"]}
    cfg |= {"image_seq_length": side * side}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    pre = json.loads((model / "preprocessor_config.json").read_text())
    pre["processor_class"] = "LlavaProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    processor = {
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
        "patch_size": vision["patch_size"],
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": "default",
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def llava_prompt_ids(model: Path, num_frames: int) -> list[int]:
    """Tarsier's prompt tokens with one `<image>` per frame followed by that
    frame's separators, so LLaVA's LM sees as many tokens as Tarsier's."""
    from transformers import AutoTokenizer

    cfg = json.loads((model / "config.json").read_text())
    vision = cfg["vision_config"]
    side = vision["image_size"] // vision["patch_size"]
    image = cfg["image_token_index"]
    separators = [cfg["image_newline_idx"]] * side + [cfg["image_new_idx"]]
    tokenizer = AutoTokenizer.from_pretrained(model)
    text = PROMPT.replace("<video>", "<image>" * num_frames)
    ids = []
    for token in tokenizer(text).input_ids:
        ids += [token, *separators] if token == image else [token]
    return ids


def llava_frames(cfg: BenchConfig) -> list[list[Any]]:
    """Per video, the frames Tarsier feeds its tower, stretched to squares
    (outside any timed region) for LLaVA's centre-cropping processor."""
    frames = []
    for video in make_videos(cfg):
        sampled = sampled_frames(video, cfg.num_frames)
        frames.append([f.resize((max(f.size),) * 2) for f in sampled])
    return frames


def run_llava(cfg: BenchConfig, scratch: Path) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    model = Path(cfg.model)
    ids = llava_prompt_ids(model, cfg.num_frames)
    frames = llava_frames(cfg)
    llm = _llm(cfg, str(llava_view(model, scratch)), {"image": cfg.num_frames})
    progress("engine up")
    params = SamplingParams(
        temperature=0.0, max_tokens=cfg.max_new_tokens, ignore_eos=True
    )
    prompts = [
        TokensPrompt(prompt_token_ids=ids, multi_modal_data={"image": f})
        for f in frames
    ]
    return _time_vllm(llm, prompts, params, cfg)


# ---------------------------------------------------------------- reference


def load_reference(cfg: BenchConfig) -> Any:
    """The test reference on the benchmark checkpoint, in the benchmark dtype."""
    import torch

    from tests.models.multimodal.generation.tarsier_reference import (
        TarsierReference,
    )

    ref = TarsierReference(cfg.model)
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
    input_ids = ref.tokenizer(text).input_ids
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

    from tests.models.multimodal.generation.tarsier2_reference import (
        Tarsier2Reference,
    )

    ref = Tarsier2Reference(cfg.tarsier2_model)
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

    from tests.models.multimodal.generation.tarsier2_reference import Request

    prompt = ref.tokenizer(text).input_ids
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


# ---------------------------------------------------------------- processor


def run_processor(cfg: BenchConfig, scratch: Path) -> dict[str, Any]:
    """Frames/s of vLLM's Tarsier processor (uncached, cache warm), of the
    reference's preprocessing, and of vLLM's LLaVA processor on the llava
    arm's inputs (to split the llava comparison into preprocessing and the
    rest)."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.cache import MultiModalProcessorOnlyCache

    videos = make_videos(cfg)
    model_config = ModelConfig(
        cfg.model,
        dtype=cfg.dtype,
        seed=cfg.seed,
        limit_mm_per_prompt={"image": 0, "video": 1},
    )
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    kwargs = {"num_frames": cfg.num_frames}
    frames = cfg.num_frames * len(videos)

    def process(cache: MultiModalProcessorOnlyCache | None) -> None:
        for video in videos:
            processor(
                PROMPT,
                mm_items=processor.info.parse_mm_data({"video": video}),
                hf_processor_mm_kwargs=kwargs,
                cache=cache,
            )

    def fps(run: Callable[[], None]) -> list[float]:
        run()  # warm-up: lazy imports, tokenizer and processor caches
        rates = []
        for _ in range(cfg.repetitions):
            start = time.perf_counter()
            run()
            rates.append(frames / (time.perf_counter() - start))
        return rates

    uncached = fps(lambda: process(None))
    progress("uncached")
    cache = MultiModalProcessorOnlyCache(model_config)
    cached = fps(lambda: process(cache))  # the warm-up fills the cache
    progress("cached")

    from transformers import CLIPImageProcessorPil

    from tests.models.multimodal.generation.tarsier_reference import (
        TarsierReference,
    )

    # Only `preprocess` runs, which needs nothing but the image processor:
    # skip loading the weights.
    ref = TarsierReference.__new__(TarsierReference)
    ref.image_processor = CLIPImageProcessorPil.from_pretrained(cfg.model)

    def reference() -> None:
        for video in videos:
            ref.preprocess(sampled_frames(video, cfg.num_frames))

    ref_fps = fps(reference)
    progress("reference")

    llava_config = ModelConfig(
        str(llava_view(Path(cfg.model), scratch)),
        dtype=cfg.dtype,
        seed=cfg.seed,
        limit_mm_per_prompt={"image": cfg.num_frames},
    )
    llava = MULTIMODAL_REGISTRY.create_processor(llava_config)
    ids = llava_prompt_ids(Path(cfg.model), cfg.num_frames)
    squares = llava_frames(cfg)

    def process_llava() -> None:
        for video_frames in squares:
            llava(
                ids,
                mm_items=llava.info.parse_mm_data({"image": video_frames}),
                hf_processor_mm_kwargs={},
            )

    llava_fps = fps(process_llava)
    progress("llava")

    tarsier2_config = ModelConfig(
        cfg.tarsier2_model,
        dtype=cfg.dtype,
        seed=cfg.seed,
        limit_mm_per_prompt={"image": 0, "video": 1},
        max_model_len=4096,
    )
    tarsier2 = MULTIMODAL_REGISTRY.create_processor(tarsier2_config)
    prompt2 = tarsier2_prompt(cfg.tarsier2_model)

    def process_tarsier2(cache: MultiModalProcessorOnlyCache | None) -> None:
        for video in videos:
            tarsier2(
                prompt2,
                mm_items=tarsier2.info.parse_mm_data({"video": video}),
                hf_processor_mm_kwargs=tarsier2_kwargs(cfg),
                cache=cache,
            )

    tarsier2_uncached = fps(lambda: process_tarsier2(None))
    progress("tarsier2 uncached")
    cache2 = MultiModalProcessorOnlyCache(tarsier2_config)
    tarsier2_cached = fps(lambda: process_tarsier2(cache2))
    progress("tarsier2 cached")

    from tests.models.multimodal.generation.tarsier2_reference import (
        Request,
        Tarsier2Reference,
    )

    ref2 = Tarsier2Reference(cfg.tarsier2_model)

    def reference2() -> None:
        for video in videos:
            ref2.encode_visuals(Request("", [("video", video)], tarsier2_kwargs(cfg)))

    ref2_fps = fps(reference2)
    progress("tarsier2 reference")
    return {
        "fps": {
            "vLLM Tarsier processor, uncached": uncached,
            "vLLM Tarsier processor, cache hit": cached,
            "Tarsier reference preprocessing": ref_fps,
            "vLLM LLaVA processor (llava arm), uncached": llava_fps,
            "vLLM Tarsier2 processor, uncached": tarsier2_uncached,
            "vLLM Tarsier2 processor, cache hit": tarsier2_cached,
            "Tarsier2 reference preprocessing": ref2_fps,
        }
    }


# ---------------------------------------------------------------- driver


def worker_main(arm: str, cfg: BenchConfig, out: Path) -> None:
    if cfg.vllm_reserved_cpus >= 0:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.vllm_reserved_cpus)
    import vllm

    # The reference lives in the fork's tests/ tree, beside the vllm package.
    sys.path.insert(0, str(Path(vllm.__file__).resolve().parents[1]))
    if arm == "tarsier":
        result = run_tarsier(cfg)
    elif arm == "reference":
        result = run_reference(cfg)
    elif arm == "tarsier2":
        result = run_tarsier2(cfg)
    elif arm == "tarsier2-reference":
        result = run_tarsier2_reference(cfg)
    elif arm == "llava":
        result = run_llava(cfg, out.parent / "llava-view")
    else:
        result = run_processor(cfg, out.parent / "llava-view")
    out.write_text(json.dumps(result))


def tree_rss(proc: Any) -> int:
    """Resident bytes of a process and its descendants."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_arm(
    arm: str, cfg: BenchConfig, results: Path, bar: Any
) -> tuple[dict[str, Any], int, float]:
    """Run one arm in a subprocess; return its result, peak tree RSS and wall
    time (model load included). Its output goes to `<arm>.log`."""
    import psutil

    out = results / f"{arm}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        arm,
        "--worker-config",
        json.dumps(dataclasses.asdict(cfg)),
        "--worker-out",
        str(out),
    ]
    start = time.perf_counter()
    peak = 0
    with (results / f"{arm}.log").open("w") as log:
        popen = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        proc = psutil.Process(popen.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, tree_rss(proc))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert popen.stdout is not None
        for line in popen.stdout:
            log.write(line)
            if line.startswith(PROGRESS):
                bar.set_postfix_str(f"{arm}: {line[len(PROGRESS) :].strip()}")
                bar.update(1)
        rc = popen.wait()
        done.set()
        sampler.join()
    if rc != 0 or not out.exists():
        raise RuntimeError(f"arm {arm!r} failed (exit {rc}); see {log.name}")
    return json.loads(out.read_text()), peak, time.perf_counter() - start


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median [min, max]`."""
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def arm_metrics(result: dict[str, Any], cfg: BenchConfig) -> dict[str, list[float]]:
    reps = result["reps"]
    return {
        "wall time (s)": [r["wall_s"] for r in reps],
        "videos/s": [cfg.num_videos / r["wall_s"] for r in reps],
        "generated tokens/s": [r["generated_tokens"] / r["wall_s"] for r in reps],
        "prefill tokens/s": [r["prompt_tokens"] / r["wall_s"] for r in reps],
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    """Share of videos with the same first token and with identical outputs."""
    first = sum(x[:1] == y[:1] for x, y in zip(a, b))
    same = sum(x == y for x, y in zip(a, b))
    return f"first token {first}/{len(a)}, all tokens {same}/{len(a)}"


def pick_dtype(requested: str) -> tuple[str, str]:
    """bfloat16 where the CPU runs it natively (both vLLM's CPU backend and
    Transformers then do), else float32 for both."""
    if requested != "auto":
        return requested, "requested"
    import torch

    if (
        torch.cuda.is_available()
        or torch.backends.mkldnn.is_available()
        and (torch.ops.mkldnn._is_mkldnn_bf16_supported())
    ):
        return "bfloat16", "the CPU supports bfloat16 natively"
    return "float32", "no native bfloat16 on this CPU"


def write_report(
    cfg: BenchConfig,
    meta: dict[str, str],
    results: dict[str, dict[str, Any]],
    peaks: dict[str, int],
    walls: dict[str, float],
) -> str:
    gen_arms = [a for a in ARM_NAMES if a in results]
    metrics = {a: arm_metrics(results[a], cfg) for a in gen_arms}
    lines = [
        "# Tarsier offline throughput",
        "",
        f"- machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU; "
        f"load average at start {meta['load_start']}, at end {meta['load_end']}",
        f"- Tarsier model: `{cfg.model}` ({meta['model']})",
        f"- Tarsier2 model: `{cfg.tarsier2_model}` ({meta['tarsier2_model']})",
        f"- dtype {cfg.dtype} ({meta['dtype_reason']})",
        f"- vLLM: {meta['vllm']}",
        f"- workload: {cfg.num_videos} videos of {cfg.source_frames} frames "
        f"{cfg.width}x{cfg.height}, {cfg.num_frames} sampled, greedy, "
        f"{cfg.max_new_tokens} new tokens each (equal lengths checked); prompt "
        f"`{PROMPT!r}` (Tarsier), `{meta['tarsier2_prompt']!r}` (Tarsier2); "
        f"Tarsier2 `max_frame_pixels` {cfg.tarsier2_max_frame_pixels}; "
        f"reference batch size {cfg.reference_batch_size}, attention "
        f"`{cfg.reference_attn}`",
        f"- {cfg.repetitions} repetitions per arm after a {cfg.warmup_videos}-video "
        "warm-up; cells are median [min, max]; total run "
        f"{meta['total_min']} min",
        "",
    ]
    if gen_arms:
        cols = list(next(iter(metrics.values())))
        lines += [
            "| arm | " + " | ".join(cols) + " | peak RSS (GiB) | arm total (s) |",
            "|---" * (len(cols) + 3) + "|",
        ]
        for arm in gen_arms:
            cells = [spread(metrics[arm][c]) for c in cols]
            rss = f"{peaks[arm] / 2**30:.2f}"
            lines.append(
                f"| {ARM_NAMES[arm]} | "
                + " | ".join(cells)
                + f" | {rss} | {walls[arm]:.0f} |"
            )
        lines.append("")
        for family in FAMILIES:
            counts = {
                ARM_NAMES[a]: (r["prompt_tokens"], r["generated_tokens"])
                for a in family
                if a in results
                for r in results[a]["reps"][:1]
            }
            if not counts:
                continue
            same = len(set(counts.values())) == 1
            prompt, generated = next(iter(counts.values()))
            lines += [
                f"Tokens per repetition, {' / '.join(counts)}: {prompt} prompt "
                f"(visual included), {generated} generated, "
                + ("the same in each." if same else f"NOT equal: {counts}."),
                "",
            ]

    def ratio_rows(num: str, den: str, label: str) -> list[str]:
        rows = [
            f"**{label}** (per repetition i, {ARM_NAMES[num]} / {ARM_NAMES[den]}):",
            "",
        ]
        for col in metrics[num]:
            pairs = zip(metrics[num][col], metrics[den][col])
            rows.append(f"- {col}: {spread([a / b for a, b in pairs])}x")
        rows.append(f"- peak RSS: {peaks[num] / peaks[den]:.2f}x")
        outputs = results[num]["reps"][-1]["outputs"]
        ref_outputs = results[den]["reps"][-1]["outputs"]
        rows += [f"- greedy outputs: {agreement(outputs, ref_outputs)}", ""]
        return rows

    if {"tarsier", "reference"} <= set(gen_arms):
        lines += ratio_rows("tarsier", "reference", "Speed-up of the fork")
    if {"tarsier2", "tarsier2-reference"} <= set(gen_arms):
        lines += ratio_rows(
            "tarsier2", "tarsier2-reference", "Speed-up of the fork, Tarsier2"
        )
    if {"tarsier", "llava"} <= set(gen_arms):
        lines += ratio_rows("tarsier", "llava", "Tarsier vs plain LLaVA")
        if "processor" in results:
            fps = results["processor"]["fps"]
            frames = cfg.num_videos * cfg.num_frames
            tarsier_s = frames / statistics.median(
                fps["vLLM Tarsier processor, uncached"]
            )
            llava_s = frames / statistics.median(
                fps["vLLM LLaVA processor (llava arm), uncached"]
            )
            # vLLM's front-end preprocesses while the engine computes, so the
            # difference bounds its share of the wall time rather than adds up.
            lines[-1:] = [
                f"- preprocessing alone (processor benchmark below), per "
                f"repetition: Tarsier {tarsier_s:.2f} s, LLaVA {llava_s:.2f} s; "
                "vLLM's front-end overlaps it with the model, so the difference "
                "bounds its share of the wall-time gap",
                "",
            ]
    if "processor" in results:
        lines += [
            "| preprocessing | frames/s | peak RSS (GiB) |",
            "|---|---|---|",
        ]
        for name, rates in results["processor"]["fps"].items():
            lines.append(
                f"| {name} | {spread(rates, '{:.1f}')} | "
                f"{peaks['processor'] / 2**30:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(cfg: BenchConfig, results: dict[str, dict[str, Any]], path: Path) -> None:
    """Bar charts (median, min-max whiskers): end-to-end generated tokens/s
    of each arm and preprocessing frames/s (log scale: the cache hit is much
    faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, list[float]], bool]] = []
    gen = {
        ARM_NAMES[arm]: arm_metrics(results[arm], cfg)["generated tokens/s"]
        for arm in ARM_NAMES
        if arm in results
    }
    if gen:
        panels.append(("generated tokens/s, end to end", gen, False))
    if "processor" in results:
        panels.append(("preprocessing frames/s", results["processor"]["fps"], True))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5))
    for ax, (title, data, log) in zip(np.atleast_1d(axes), panels):
        labels = [textwrap.fill(k, 14) for k in data]
        med = [statistics.median(v) for v in data.values()]
        err = [
            [m - min(v) for m, v in zip(med, data.values())],
            [max(v) - m for m, v in zip(med, data.values())],
        ]
        bars = ax.bar(labels, med, yerr=err, capsize=6, color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", label_type="center", color="white")
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7.5)
    fig.suptitle(
        f"Tarsier and Tarsier2: {cfg.num_videos} videos x {cfg.num_frames} frames, "
        f"{cfg.max_new_tokens} new tokens, {cfg.dtype}, {os.cpu_count()} CPU cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ensure_model(model: Path, family: str) -> None:
    """Write the benchmark checkpoint with the fixtures package if missing."""
    if (model / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "fixtures.bench", "--out", str(model)]
    cmd += ["--family", family]
    print(f"{model} is missing; running: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"could not write {model}; run `python -m fixtures.bench` first")


def model_summary(model: Path) -> str:
    if not (model / "config.json").exists():
        return "not written"
    cfg = json.loads((model / "config.json").read_text())
    v, t = cfg["vision_config"], cfg["text_config"]
    lm = (
        f"{t['num_hidden_layers']}L/{t['hidden_size']}, "
        f"{t['num_attention_heads']} heads ({t['num_key_value_heads']} KV), "
        f"ffn {t['intermediate_size']}, vocab {t['vocab_size']}"
    )
    if "depth" in v:  # Qwen2-VL
        return (
            f"Qwen2-VL tower {v['depth']}L/{v['embed_dim']}, patch "
            f"{v['patch_size']}, {v['spatial_merge_size']}x"
            f"{v['spatial_merge_size']} merge; Qwen2 {lm}"
        )
    side = v["image_size"] // v["patch_size"]
    return (
        f"CLIP {v['num_hidden_layers']}L/{v['hidden_size']}, "
        f"{v['image_size']}px/{v['patch_size']} -> {side * side + side + 1} "
        f"tokens per frame; Llama {lm}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("build/bench-model"))
    parser.add_argument(
        "--tarsier2-model", type=Path, default=Path("build/bench-model-tarsier2")
    )
    parser.add_argument("--results-dir", type=Path, default=Path("build/bench-results"))
    parser.add_argument(
        "--num-videos",
        type=int,
        default=16,
        help="videos per repetition; 16 keeps the default run of six arms "
        "within 15 minutes on 2 cores (32: about 18 minutes)",
    )
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument(
        "--source-frames", type=int, default=16, help="frames per input video"
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument(
        "--tarsier2-max-frame-pixels",
        type=int,
        default=640 * 360 // 4,
        help="Tarsier2's per-frame pixel cap (the authors' option, applied by "
        "both arms); the default quarters the default frames, ~66 visual tokens "
        "per frame, to keep the default run within 15 minutes on 2 cores "
        "(the authors' default, 460800, leaves them at 299)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--warmup-videos", type=int, default=2)
    parser.add_argument(
        "--dtype", choices=("auto", "bfloat16", "float32"), default="auto"
    )
    parser.add_argument(
        "--reference-batch-size",
        type=int,
        default=8,
        help="videos per Transformers generate call",
    )
    parser.add_argument(
        "--reference-attn",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="attention kernel of the reference's Llama",
    )
    parser.add_argument(
        "--vllm-reserved-cpus",
        type=int,
        default=0,
        help="cores vLLM's CPU worker leaves to its front-end; the default 0 "
        "gives the model all cores, as the reference has; -1: vLLM's default "
        "(one per rank)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="let vLLM torch.compile the model, its default (off here: see the "
        "docstring)",
    )
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="what to run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker_main(
            args.worker, BenchConfig(**json.loads(args.worker_config)), args.worker_out
        )
        return

    from tqdm import tqdm

    start = time.perf_counter()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if {"tarsier", "reference", "llava", "processor"} & set(args.arms):
        ensure_model(args.model, "tarsier")
    if {"tarsier2", "tarsier2-reference", "processor"} & set(args.arms):
        ensure_model(args.tarsier2_model, "tarsier2")
    dtype, dtype_reason = pick_dtype(args.dtype)
    cfg = BenchConfig(
        model=str(args.model.resolve()),
        tarsier2_model=str(args.tarsier2_model.resolve()),
        tarsier2_max_frame_pixels=args.tarsier2_max_frame_pixels,
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        source_frames=args.source_frames,
        width=args.width,
        height=args.height,
        max_new_tokens=args.max_new_tokens,
        repetitions=args.repetitions,
        warmup_videos=min(args.warmup_videos, args.num_videos),
        dtype=dtype,
        reference_batch_size=args.reference_batch_size,
        reference_attn=args.reference_attn,
        vllm_reserved_cpus=args.vllm_reserved_cpus,
        compile=args.compile,
        seed=args.seed,
    )
    results_dir = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    # Progress steps per arm: start-up, warm-up, repetitions (processor: 4).
    steps = {a: (7 if a == "processor" else 2 + cfg.repetitions) for a in args.arms}
    results: dict[str, dict[str, Any]] = {}
    peaks: dict[str, int] = {}
    walls: dict[str, float] = {}
    with tqdm(total=sum(steps.values()), desc="benchmark", unit="step") as bar:
        for arm in args.arms:
            results[arm], peaks[arm], walls[arm] = run_arm(arm, cfg, results_dir, bar)
    reserved = (
        "vLLM's default" if cfg.vllm_reserved_cpus < 0 else str(cfg.vllm_reserved_cpus)
    )
    meta = {
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "model": model_summary(args.model),
        "tarsier2_model": model_summary(args.tarsier2_model),
        "tarsier2_prompt": tarsier2_prompt(cfg.tarsier2_model)
        if (args.tarsier2_model / "config.json").exists()
        else "",
        "dtype_reason": dtype_reason,
        "vllm": f"offline `LLM.generate`, all requests at once, "
        f"torch.compile {'on' if cfg.compile else 'off (eager)'}; cores "
        f"reserved for the front-end: {reserved}; "
        f"VLLM_CPU_KVCACHE_SPACE={os.environ.get('VLLM_CPU_KVCACHE_SPACE', 'unset')} "
        "GiB (preallocated, part of the peak RSS)",
        "total_min": f"{(time.perf_counter() - start) / 60:.1f}",
    }
    report = write_report(cfg, meta, results, peaks, walls)
    (results_dir / "results.md").write_text(report + "\n")
    (results_dir / "results.json").write_text(
        json.dumps(
            {"config": dataclasses.asdict(cfg), "results": results, "peak_rss": peaks}
        )
    )
    plot(cfg, results, results_dir / "results.png")
    print()
    print(report)
    print(f"Wrote {results_dir}/results.md, results.json, results.png")


if __name__ == "__main__":
    main()
