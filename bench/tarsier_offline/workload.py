# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The shared workload: the arms' names and prompts, the configuration every
arm process receives, the synthetic videos, progress reporting and the timed
repetitions, and the Tarsier2 prompt and options that vLLM and its reference
share."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .references import tarsier_reference

# The authors' prompt, trailing space included (the template renders it so).
PROMPT = "USER: <video>\nDescribe the video in detail. ASSISTANT: "
QUESTION = "Describe the video in detail."
ARMS = (
    "tarsier",
    "tarsier-awq",
    "reference",
    "llava",
    "tarsier2",
    "tarsier2-reference",
    "processor",
)
PROGRESS = "@@bench-progress@@"
ARM_NAMES = {
    "tarsier": "vLLM (fork), Tarsier",
    "tarsier-awq": "vLLM (fork), Tarsier, AWQ 4-bit",
    "reference": "Transformers reference, Tarsier",
    "llava": "vLLM (fork), plain LLaVA",
    "tarsier2": "vLLM (fork), Tarsier2",
    "tarsier2-reference": "Transformers reference, Tarsier2",
}
# Arms that must see the same prompt and generated tokens.
FAMILIES = (
    ("tarsier", "tarsier-awq", "reference", "llava"),
    ("tarsier2", "tarsier2-reference"),
)


@dataclasses.dataclass
class BenchConfig:
    model: str
    awq_model: str
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
    return tarsier_reference().video_frames(video, num_frames)


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
