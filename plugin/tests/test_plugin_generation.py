# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Both families through `LLM` on a stock vLLM with the vllm-tarsier wheel,
as a user writes it: a video file URL in a chat message, no chat template, no
flags beyond the context length. Exact greedy tokens in float32 against the
independent references (their own tokenizers, templates and frame sampling;
the reference decodes every frame of the file with OpenCV)."""

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tarsier2_reference import Request, Tarsier2Reference
from tarsier_reference import TarsierReference, video_frames
from video_files import decode_mp4

from vllm import LLM, SamplingParams

MAX_TOKENS = 12
NUM_LOGPROBS = 5
LOGPROB_ATOL = 1e-3
QUESTION = "Describe the video in detail."
TARSIER, TARSIER2 = "omni-research/Tarsier-7b", "omni-research/Tarsier2-Recap-7b"


@pytest.fixture(scope="module", params=[TARSIER, TARSIER2])
def model_llm(request: pytest.FixtureRequest, media: Path) -> Iterator[tuple[str, LLM]]:
    llm = LLM(
        request.param,
        dtype="float32",
        max_model_len=8192,
        enforce_eager=True,
        allowed_local_media_path=str(media),
        limit_mm_per_prompt={"image": 1, "video": 1},
        seed=0,
    )
    yield request.param, llm
    del llm
    gc.collect()


def vllm_chat(llm: LLM, url: str) -> tuple[list[int], list[int], list[dict]]:
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": url}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    params = SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS
    )
    (output,) = llm.chat(messages, params)
    completion = output.outputs[0]
    assert completion.logprobs is not None
    logprobs = [
        {t: lp.logprob for t, lp in step.items()} for step in completion.logprobs
    ]
    assert output.prompt_token_ids is not None
    return list(output.prompt_token_ids), list(completion.token_ids), logprobs


def reference_output(
    model: str, video: np.ndarray
) -> tuple[list[int], set[int], list[int], list[dict]]:
    """The authors' prompt ids, their visual placeholder ids (vLLM expands
    them into more), output ids and logprobs."""
    if model == TARSIER:
        tarsier = TarsierReference(model)
        # The authors' prompt: a video is 8 <image> tokens, one per frame.
        prompt = f"USER: {'<image>' * 8}\n{QUESTION} ASSISTANT: "
        out = tarsier.generate(
            prompt,
            video_frames(video, 8),
            max_tokens=MAX_TOKENS,
            num_logprobs=NUM_LOGPROBS,
        )
        config = tarsier.config
        visual = {
            config["image_token_index"],
            config["image_newline_idx"],
            config["image_new_idx"],
        }
        return tarsier.tokenizer.encode(prompt), visual, out.token_ids, out.logprobs
    tarsier2 = Tarsier2Reference(model)
    # The checkpoint's own chat template, rendered with Jinja.
    text = tarsier2.tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": QUESTION}],
            }
        ]
    )
    ids, _, logprobs = tarsier2.generate(
        Request(text, [("video", video)]),
        max_tokens=MAX_TOKENS,
        num_logprobs=NUM_LOGPROBS,
    )
    prompt = tarsier2.tokenizer.encode(text)
    return (
        prompt,
        {tarsier2.tokenizer.backend.token_to_id("<|video_pad|>")},
        ids,
        logprobs,
    )


def test_video_file_matches_reference(model_llm: tuple[str, LLM], media: Path) -> None:
    model, llm = model_llm
    path = media / "clip.mp4"
    prompt, ids, logprobs = vllm_chat(llm, path.as_uri())
    ref_prompt, visual, ref_ids, ref_logprobs = reference_output(
        model, decode_mp4(path)
    )
    # The same text tokens around the visuals (the tokenizer mode, the chat
    # template fallback), and visuals where the authors' prompt has them.
    assert [t for t in prompt if t not in visual] == [
        t for t in ref_prompt if t not in visual
    ]

    def first_visual(ids: list[int]) -> int:
        return next(i for i, t in enumerate(ids) if t in visual)

    assert first_visual(prompt) == first_visual(ref_prompt)
    assert ids == ref_ids, "greedy tokens differ"
    diffs = [abs(lp[t] - ref[t]) for t, lp, ref in zip(ids, logprobs, ref_logprobs)]
    assert max(diffs) < LOGPROB_ATOL, diffs
