# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier under processor-cache pressure, with rejected prompts interleaved.

A processor cache that holds four images, a few hundred requests over many
distinct images and videos through the chat and Responses APIs (completions
take no media; text-only ones are interleaved) and through `LLM.chat`, a
quarter of them too long for the context once their items are expanded. Every
rejected request must be a 400, every other one must reach the engine with
the data its items need (no engine-cache miss, which is a 5xx), and the
outputs must be those of the same requests with the cache disabled.
"""

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError

from ....utils import RemoteOpenAIServer
from .test_tarsier_serving import (
    image_part,
    png_bytes,
    smooth_frames,
    user,
    video_part,
    write_video,
)

MODEL = "omni-research/Tarsier-7b"
# An image takes 601 tokens (24 x 24 patches, a newline per row, a frame
# end), a frame of a video as many: three images or frames fit, with a short
# question; with a long one (`LONG_QUESTION`) two do, three do not.
MAX_MODEL_LEN = 2048
MAX_TOKENS = 2
# An image's pixel values take 3 x 336 x 336 float32 (1.35 MB): the cache
# holds four images, or two videos of two frames.
CACHE_GB = 4.5 * 3 * 336 * 336 * 4 / 2**30
NUM_IMAGES = 24
NUM_VIDEOS = 8
NUM_REQUESTS = 240
LOGPROB_ATOL = 1e-4
QUESTION = "What is shown?"
LONG_QUESTION = "What is shown?" + " Say it in a word." * 40


@dataclass(frozen=True)
class Request:
    api: str
    images: tuple[int, ...] = ()
    video: int | None = None
    num_frames: int = 2
    long_question: bool = False

    @property
    def num_items(self) -> int:
        return len(self.images) + (self.num_frames if self.video is not None else 0)

    @property
    def too_long(self) -> bool:
        # Rejected only once the items are processed and expanded: the video
        # frames alone always fit (Tarsier checks those before reading).
        return self.num_items > 3 or (self.num_items == 3 and self.long_question)

    @property
    def question(self) -> str:
        return LONG_QUESTION if self.long_question else QUESTION


def workload(seed: int = 0) -> list[Request]:
    """Chat with images or a video, Responses with images, text-only
    completions; about a fifth too long for the context."""
    rng = random.Random(seed)
    requests: list[Request] = []
    for _ in range(NUM_REQUESTS):
        api = rng.choices(["chat", "responses", "completions"], [6, 3, 1])[0]
        long_question = rng.random() < 0.4
        if api == "chat" and rng.random() < 0.4:
            video = rng.randrange(NUM_VIDEOS)
            frames = rng.choice([2, 3])
            requests.append(Request(api, (), video, frames, long_question))
        elif api != "completions":
            count = rng.choices([1, 2, 3, 4], [3, 3, 3, 2])[0]
            images = tuple(rng.sample(range(NUM_IMAGES), count))
            requests.append(Request(api, images, long_question=long_question))
        else:
            requests.append(Request(api))

    return requests


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    media_dir = tmp_path_factory.mktemp("pressure")
    for i in range(NUM_IMAGES):
        frame = smooth_frames(1, 64, 48, 100 + i)[0]
        (media_dir / f"image{i}.png").write_bytes(png_bytes(frame))
    for i in range(NUM_VIDEOS):
        write_video(media_dir / f"video{i}.mp4", smooth_frames(6, 64, 48, i), "mp4v")
    return media_dir


def chat_messages(request: Request, media_dir: Path) -> list[dict[str, Any]]:
    parts = [image_part((media_dir / f"image{i}.png").as_uri()) for i in request.images]
    if request.video is not None:
        parts.append(video_part((media_dir / f"video{request.video}.mp4").as_uri()))
    return user(*parts, text=request.question)


def responses_input(request: Request, media_dir: Path) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "input_image", "image_url": (media_dir / f"image{i}.png").as_uri()}
        for i in request.images
    ]
    return [
        {
            "role": "user",
            "content": [*parts, {"type": "input_text", "text": request.question}],
        }
    ]


def send(client: openai.OpenAI, request: Request, media_dir: Path) -> tuple[int, Any]:
    """The HTTP status and, on success, what the output is compared by."""
    try:
        if request.api == "chat":
            output = client.chat.completions.create(
                model=MODEL,
                messages=chat_messages(request, media_dir),  # type: ignore[arg-type]
                max_completion_tokens=MAX_TOKENS,
                temperature=0.0,
                logprobs=True,
                extra_body={
                    "mm_processor_kwargs": {"num_frames": request.num_frames},
                    "return_token_ids": True,
                },
            )
            choice = output.choices[0]
            assert choice.logprobs is not None and choice.logprobs.content
            logprobs = [t.logprob for t in choice.logprobs.content]
            return 200, (choice.model_dump()["token_ids"], logprobs)
        if request.api == "responses":
            response = client.responses.create(
                model=MODEL,
                input=responses_input(request, media_dir),  # type: ignore[arg-type]
                max_output_tokens=MAX_TOKENS,
                temperature=0.0,
            )
            return 200, response.output_text
        completion = client.completions.create(
            model=MODEL,
            prompt=f"USER: {QUESTION} ASSISTANT:",
            max_tokens=MAX_TOKENS,
            temperature=0.0,
        )
        return 200, completion.choices[0].text
    except openai.APIStatusError as e:
        return e.status_code, str(e)


def serve(cache_gb: float, media_dir: Path) -> RemoteOpenAIServer:
    args = [
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--trust-request-mm-kwargs",
        "--allowed-local-media-path", str(media_dir),
        "--limit-mm-per-prompt", json.dumps({"image": 4, "video": 1}),
        "--mm-processor-cache-gb", str(cache_gb),
    ]  # fmt: skip
    return RemoteOpenAIServer(MODEL, args, max_wait_seconds=900)


def run(server: RemoteOpenAIServer, media_dir: Path) -> list[tuple[int, Any]]:
    client = server.get_client()
    return [send(client, request, media_dir) for request in workload()]


@pytest.fixture(scope="module")
def uncached(media: Path) -> list[tuple[int, Any]]:
    with serve(0, media) as server:
        return run(server, media)


def assert_same_outputs(
    requests: list[Request], results: list[tuple[int, Any]], expected: list
) -> None:
    for i, (request, (status, output), (_, reference)) in enumerate(
        zip(requests, results, expected)
    ):
        if status != 200:
            continue
        what = f"request {i} ({request})"
        if request.api == "chat":
            assert output[0] == reference[0], what
            np.testing.assert_allclose(
                output[1], reference[1], atol=LOGPROB_ATOL, err_msg=what
            )
        else:
            assert output == reference, what


def test_the_server_under_cache_pressure(
    media: Path, uncached: list[tuple[int, Any]]
) -> None:
    requests = workload()
    with serve(CACHE_GB, media) as server:
        results = run(server, media)

    statuses = Counter(status for status, _ in results)
    print(f"{len(requests)} requests, cache {CACHE_GB * 2**30 / 1e6:.1f} MB:", statuses)
    assert [status for status, _ in results] == [
        400 if request.too_long else 200 for request in requests
    ], statuses
    for request, (status, message) in zip(requests, results):
        if status == 400:
            assert "longer than the maximum model length" in message, message
    assert statuses[400] >= 30
    # The workload is one the cache disabled runs the same way.
    assert [status for status, _ in uncached] == [s for s, _ in results]
    assert_same_outputs(requests, results, uncached)


@pytest.fixture(scope="module")
def llm(media: Path) -> Iterator[LLM]:
    with pytest.MonkeyPatch.context() as m:
        m.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield LLM(
            MODEL,
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            allowed_local_media_path=str(media),
            limit_mm_per_prompt={"image": 4, "video": 1},
            mm_processor_cache_gb=CACHE_GB,
        )


def test_llm_chat_under_cache_pressure(
    llm: LLM, media: Path, uncached: list[tuple[int, Any]]
) -> None:
    sampling_params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, logprobs=0)
    requests = workload()
    rejected = 0
    for i, request in enumerate(requests):
        if request.api != "chat":
            continue
        try:
            (output,) = llm.chat(
                chat_messages(request, media),  # type: ignore[arg-type]
                sampling_params,
                mm_processor_kwargs={"num_frames": request.num_frames},
                use_tqdm=False,
            )
        except VLLMValidationError as e:
            assert request.too_long, f"request {i} ({request}): {e}"
            assert "longer than the maximum model length" in str(e)
            rejected += 1
            continue

        assert not request.too_long, f"request {i} ({request})"
        completion = output.outputs[0]
        assert completion.logprobs is not None
        token_ids, logprobs = uncached[i][1]
        assert list(completion.token_ids) == token_ids, f"request {i} ({request})"
        np.testing.assert_allclose(
            [next(iter(lp.values())).logprob for lp in completion.logprobs],
            logprobs,
            atol=LOGPROB_ATOL,
        )

    assert rejected >= 10
