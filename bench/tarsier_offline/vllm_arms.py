# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The vLLM arms: ``tarsier``, ``tarsier-awq`` and ``tarsier2`` (``LLM.generate``
on the video prompts) and ``llava`` (the Tarsier checkpoint seen as plain LLaVA,
one image per frame followed by Tarsier's separator ids)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _llm(cfg: BenchConfig, model: str, limits: dict[str, int], **kwargs: Any) -> Any:
    from vllm import LLM

    return LLM(
        model=model,
        dtype=kwargs.pop("dtype", cfg.dtype),
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


def awq_dtype(dtype: str) -> str:
    """vLLM's AWQ layers take float16 or bfloat16 activations, not float32."""
    return "float16" if dtype == "float32" else dtype


def run_tarsier(cfg: BenchConfig, awq: bool = False) -> dict[str, Any]:
    from vllm import SamplingParams

    videos = make_videos(cfg)
    model, dtype = (
        (cfg.awq_model, awq_dtype(cfg.dtype)) if awq else (cfg.model, cfg.dtype)
    )
    llm = _llm(cfg, model, {"image": 0, "video": 1}, dtype=dtype)
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
    if cfg.warmup_videos:
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
