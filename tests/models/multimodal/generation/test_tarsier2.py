# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier2 in vLLM against an independent reference of the authors' pipeline
(``tarsier2_reference.py``), token for token, in float32."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vllm import LLM, SamplingParams
from vllm.multimodal.utils import fetch_video

from ....conftest import VllmRunner
from ...utils import check_logprobs_close
from .checkpoint_shards import same_weights, write_sharded_copy
from .tarsier2_reference import Request, Tarsier2Reference, TokensTextLogprobs
from .video_files import decode_mp4, write_mp4

MODEL_ID = "omni-research/Tarsier2-Recap-7b"
MAX_TOKENS = 12
NUM_LOGPROBS = 5
# float32 on CPU: the two implementations differ only in kernels.
LOGPROB_ATOL = 1e-3


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
        [{"role": "user", "content": content}]
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
def llm(vllm_runner: type[VllmRunner]) -> Iterator[LLM]:
    with vllm_runner(
        MODEL_ID,
        dtype="float32",
        max_model_len=2048,
        max_num_seqs=8,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"image": 2, "video": 1},
        seed=0,
    ) as runner:
        yield runner.llm


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


def compare(
    llm: LLM,
    reference: Tarsier2Reference,
    requests: list[Request],
    vllm_requests: list[Request] | None = None,
) -> None:
    expected = [
        reference.generate(request, max_tokens=MAX_TOKENS, num_logprobs=NUM_LOGPROBS)
        for request in requests
    ]
    actual = run_vllm(llm, vllm_requests or requests)

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
        _, [(t, h, w)] = reference.encode_visuals(Request("", [video], kwargs))
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


def test_video_file(llm, reference, tmp_path):
    # vLLM's tarsier loader decodes only the 16 sampled frames of the file;
    # the reference decodes all 40 with the same decoder and samples itself.
    path = tmp_path / "clip.mp4"
    write_mp4(path, noise_video(7, 40, 56, 42))
    video = fetch_video(path.as_uri(), {"video_backend": "tarsier", "num_frames": 16})
    frames, metadata = video.media
    assert len(frames) == 16 and metadata["total_num_frames"] == 40
    request = make_request(reference, [("video", decode_mp4(path))])
    compare(llm, reference, [request], [Request(request.text, [("video", video)], {})])


def test_reference_reads_a_sharded_checkpoint(
    reference: Tarsier2Reference, tmp_path: Path
) -> None:
    """Published checkpoints are sharded; the tiny fixture is one file."""
    sharded = Tarsier2Reference(str(write_sharded_copy(MODEL_ID, tmp_path)))
    assert len(list(tmp_path.glob("model-*-of-00002.safetensors"))) == 2
    assert same_weights(reference, sharded)
