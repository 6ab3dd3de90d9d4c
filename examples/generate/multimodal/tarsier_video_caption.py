# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Caption a video with Tarsier or Tarsier2, the way the authors' pipeline does.

vLLM's `tarsier` video loader reads the file's frame count T and decodes only
the frames the authors' pipeline samples, `round(i * (T - 1) / (n - 1))` with
n = 8 for Tarsier and 16 for Tarsier2 (first and last included); the model's
processor preprocesses them as the reference does. Memory does not grow with
the length of the video.

Usage:
    python tarsier_video_caption.py --model omni-research/Tarsier-7b \
        --video my_clip.mp4
    python tarsier_video_caption.py --model omni-research/Tarsier2-Recap-7b \
        --video my_clip.mp4 --num-frames 16

Without --video, a short synthetic clip (a square moving across a gradient)
is generated, so the example runs anywhere.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_QUESTION = "Describe the video in detail."


def load_video(path: str, num_frames: int) -> tuple[Any, dict[str, Any]]:
    """The sampled frames of a video file and their metadata, through vLLM's
    `tarsier` loader."""
    from vllm.multimodal.utils import fetch_video

    video = fetch_video(
        Path(path).resolve().as_uri(),
        {"video_backend": "tarsier", "num_frames": num_frames},
    )
    return video.media


def write_mp4(path: str, video: npt.NDArray[np.uint8], fps: int = 8) -> None:
    import cv2

    height, width = video.shape[1:3]
    writer = cv2.VideoWriter(
        path, cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height)
    )
    for frame in video:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def synthetic_video(
    num_frames: int = 24, height: int = 180, width: int = 320
) -> npt.NDArray[np.uint8]:
    """A 16:9 clip of a red square moving left to right over a gradient."""
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    background = np.stack(
        [
            np.tile(ramp, (height, 1)),
            np.full((height, width), 96, np.uint8),
            np.tile(ramp[::-1], (height, 1)),
        ],
        axis=-1,
    )
    video = np.repeat(background[None], num_frames, axis=0)
    side = height // 3
    for t in range(num_frames):
        x = (width - side) * t // max(num_frames - 1, 1)
        video[t, side : 2 * side, x : x + side] = (220, 30, 30)
    return video


def is_tarsier2(model: str) -> bool:
    from vllm.transformers_utils.config import get_config

    config = get_config(model, trust_remote_code=False)
    return "Tarsier2ForConditionalGeneration" in (config.architectures or [])


def build_prompt(tarsier2: bool, question: str) -> str:
    if tarsier2:
        return (
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
            f"{question}<|im_end|>\n<|im_start|>assistant\n"
        )
    # The reference ends with "ASSISTANT: " (trailing space).
    return f"USER: <video>\n{question} ASSISTANT: "


def main(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams

    tarsier2 = is_tarsier2(args.model)
    num_frames = args.num_frames or (16 if tarsier2 else 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video
        if path is None:
            path = os.path.join(tmp, "synthetic.mp4")
            write_mp4(path, synthetic_video())
        frames, metadata = load_video(path, num_frames)
    source = args.video or "synthetic 24-frame 320x180 clip"
    processor_kwargs = {}
    if args.num_frames is not None:
        processor_kwargs["num_frames"] = args.num_frames

    start = time.perf_counter()
    llm = LLM(
        model=args.model,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"video": 1, "image": 0},
        mm_processor_kwargs=processor_kwargs or None,
        dtype=args.dtype,
        seed=0,
    )
    load_s = time.perf_counter() - start

    prompt = build_prompt(tarsier2, args.question)
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    start = time.perf_counter()
    (output,) = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}, sampling
    )
    generate_s = time.perf_counter() - start

    completion = output.outputs[0]
    print("=" * 72)
    print(f"model:       {args.model} ({'Tarsier2' if tarsier2 else 'Tarsier'})")
    print(
        f"video:       {source}, {metadata['total_num_frames']} frames of "
        f"{frames.shape[2]}x{frames.shape[1]}"
    )
    print(f"sampled:     {num_frames} frames, decoded {metadata['frames_indices']}")
    print(f"prompt:      {prompt!r}")
    print(
        f"tokens:      {len(output.prompt_token_ids)} prompt, "
        f"{len(completion.token_ids)} generated"
    )
    print(f"time:        engine start {load_s:.1f} s, caption {generate_s:.2f} s")
    print(f"caption:     {completion.text!r}")
    print("=" * 72)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="omni-research/Tarsier-7b",
        help="Hugging Face id or local checkpoint folder.",
    )
    parser.add_argument("--video", help="Video file (default: synthetic clip).")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="Frames to sample (default: the model's own).",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=8192,
        help="Tarsier's 8 default frames need 4,808 tokens, "
        "over the 4,096 the checkpoint declares.",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    main(parse_args())
