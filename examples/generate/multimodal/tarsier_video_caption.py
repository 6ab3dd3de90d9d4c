# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Caption a video with Tarsier or Tarsier2, the way the authors' pipeline does.

The video goes in as a chat message, as to `vllm serve`: vLLM's `tarsier`
video loader reads the file's frame count T and decodes only the frames the
authors' pipeline samples, `round(i * (T - 1) / (n - 1))` with n = 8 for
Tarsier and 16 for Tarsier2 (first and last included); the model's processor
preprocesses them as the reference does, and the chat template (next to these
examples) gives the authors' prompt tokens. Memory does not grow with the
length of the video.

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

import numpy as np
import numpy.typing as npt

DEFAULT_QUESTION = "Describe the video in detail."


def video_info(path: str, num_frames: int) -> tuple[int, int, int, list[int]]:
    """Frame count, width and height from the file's header, and the frames
    the `tarsier` loader samples from them (it decodes only those)."""
    import cv2

    from vllm.multimodal.tarsier_video import TarsierVideoBackend

    cap = cv2.VideoCapture(path)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return total, width, height, TarsierVideoBackend.sample_indices(total, num_frames)


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


def chat_template(tarsier2: bool) -> str:
    """The authors' prompt format, shipped with vLLM's chat templates: vLLM
    falls back to Tarsier's for Tarsier checkpoints, which carry none; Tarsier2
    checkpoints carry Qwen's (with a system prompt), so it is passed here."""
    from vllm.transformers_utils.chat_templates.registry import CHAT_TEMPLATES_DIR

    name = "template_tarsier2.jinja" if tarsier2 else "template_tarsier.jinja"
    return (CHAT_TEMPLATES_DIR / name).read_text()


def main(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams

    tarsier2 = is_tarsier2(args.model)
    num_frames = args.num_frames or (16 if tarsier2 else 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video
        if path is None:
            path = os.path.join(tmp, "synthetic.mp4")
            write_mp4(path, synthetic_video())
        path = str(Path(path).resolve())
        total, width, height, indices = video_info(path, num_frames)
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
            allowed_local_media_path=os.path.dirname(path),
            dtype=args.dtype,
            seed=0,
        )
        load_s = time.perf_counter() - start

        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": Path(path).as_uri()}},
                    {"type": "text", "text": args.question},
                ],
            }
        ]
        sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        start = time.perf_counter()
        (output,) = llm.chat(
            messages, sampling, chat_template=chat_template(tarsier2), use_tqdm=False
        )
        generate_s = time.perf_counter() - start

    completion = output.outputs[0]
    print("=" * 72)
    print(f"model:       {args.model} ({'Tarsier2' if tarsier2 else 'Tarsier'})")
    print(f"video:       {source}, {total} frames of {width}x{height}")
    print(f"sampled:     {num_frames} frames, decoded {indices}")
    print(f"prompt:      {output.prompt!r}")
    print(f"token ids:   {output.prompt_token_ids[:8]}...")
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
