# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The ``processor`` arm: the multimodal processors alone, built outside the
engine, in frames per second (Tarsier's uncached and cached, its reference's
preprocessing, LLaVA's on the ``llava`` arm's inputs, then the same for
Tarsier2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .references import tarsier2_reference, tarsier_reference
from .vllm_arms import llava_frames, llava_prompt_ids, llava_view
from .workload import (
    PROMPT,
    BenchConfig,
    make_videos,
    progress,
    sampled_frames,
    tarsier2_kwargs,
    tarsier2_prompt,
)


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

    TarsierReference = tarsier_reference().TarsierReference

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

    reference2_module = tarsier2_reference()
    Request = reference2_module.Request
    Tarsier2Reference = reference2_module.Tarsier2Reference

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
