# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier and Tarsier2 through `vllm serve` and the OpenAI client.

One server per family (tiny fixtures, float32; Tarsier's chat template is
vLLM's fallback for its checkpoints, Tarsier2's is passed with
--chat-template): videos as file, data and loopback http URLs reach the model as
exactly the authors' frames; images, several items, per-request processor
kwargs, streaming, sampling with n > 1, raw completions and /tokenize work;
every bad input in `BAD_INPUTS` is a 4xx that says what was wrong, and the
server keeps answering.
"""

import asyncio
import base64
import functools
import http.server
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from vllm.transformers_utils.config import get_config

from ....models.multimodal.generation.video_files import decode_mp4
from ....models.multimodal.processing.test_tarsier_chat_template import (
    authors_prompt_ids,
    authors_tokenizer,
    collapse_visual_tokens,
    conversations,
)
from ....utils import RemoteOpenAIServer

TEMPLATES = Path(__file__).parents[4] / "vllm/transformers_utils/chat_templates"
MAX_MODEL_LEN = 8192
MAX_TOKENS = 6
QUESTION = "Describe the video in detail."
# Exact float32 runs of the same frames; batch shapes do not change logprobs
# by more than float noise.
LOGPROB_ATOL = 1e-4


@dataclass(frozen=True)
class Family:
    model: str
    # None: the server picks its chat template (Tarsier's fallback).
    template: str | None
    # Frames sampled by default, and asked for per request in the tests.
    default_frames: int
    num_frames: int

    @property
    def is_tarsier2(self) -> bool:
        return "Tarsier2" in self.model

    def indices(self, total: int, n: int) -> list[int]:
        """The authors' frames: `round(i * (T - 1) / (n - 1))`; Tarsier2 keeps
        every frame of a video no longer than n, Tarsier repeats frames."""
        if self.is_tarsier2 and total <= n:
            return list(range(total))
        if n == 1:
            return [0]
        return [round(i * (total - 1) / (n - 1)) for i in range(n)]

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model)

    def filler(self, num_tokens: int) -> str:
        """Text of about `num_tokens` tokens."""
        per_word = len(self.tokenizer("word " * 100).input_ids) / 100
        return "word " * int(num_tokens / per_word)

    def pad_id(self, modality: str) -> int:
        """The token each patch feature replaces in the prompt."""
        if not self.is_tarsier2:
            return self.tokenizer.convert_tokens_to_ids("<image>")
        pad = "<|video_pad|>" if modality == "video" else "<|image_pad|>"
        return self.tokenizer.convert_tokens_to_ids(pad)

    def visual_tokens(self, width: int, height: int, frames: int = 1) -> int:
        """Patch features of an image or video, from the published layouts:
        Tarsier 24 x 24 per frame at 336/14 (plus a newline per row and a
        frame end, which are not features); Tarsier2 one per 28 x 28 cell of
        the frame as Qwen2-VL resizes it (sizes here are within the pixel
        caps), one temporal patch per sampled frame."""
        if not self.is_tarsier2:
            return frames * 24 * 24
        cells = max(round(height / 28), 1) * max(round(width / 28), 1)
        return frames * cells


FAMILIES = {
    "tarsier": Family("omni-research/Tarsier-7b", None, 8, 4),
    "tarsier2": Family(
        "omni-research/Tarsier2-Recap-7b", "template_tarsier2.jinja", 16, 6
    ),
}


# --------------------------------------------------------------------- media
def smooth_frames(total: int, width: int, height: int, seed: int) -> np.ndarray:
    """RGB frames (T, H, W, 3), each different: smooth random content."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, (total, 4, 4, 3), dtype=np.uint8)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR)
            )
            for c in coarse
        ]
    )


def write_video(path: Path, frames: np.ndarray, fourcc: str) -> Path:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*fourcc), 10, (width, height)
    )
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_all(path: Path) -> np.ndarray:
    """Every frame of a file, with the decoder vLLM's loader uses."""
    if path.suffix == ".gif":
        with Image.open(path) as gif:
            frames = []
            for i in range(getattr(gif, "n_frames", 1)):
                gif.seek(i)
                frames.append(np.asarray(gif.convert("RGB")))
        return np.stack(frames)
    return decode_mp4(path)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_url(image: np.ndarray) -> str:
    return data_url(png_bytes(image), "image/png")


def video_part(url: str) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": url}}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts: dict[str, Any], text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def file_server(media_dir: Path) -> Iterator[str]:
    """A loopback http server for the media folder."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(media_dir)
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def server(family: Family, media_dir: Path) -> Iterator[RemoteOpenAIServer]:
    args = [
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--max-num-seqs", "16",
        "--enforce-eager",
        "--trust-request-mm-kwargs",
        "--allowed-local-media-path", str(media_dir),
        "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 1}),
        "--enable-mm-embeds",
    ]  # fmt: skip
    if family.template is not None:
        args += ["--chat-template", str(TEMPLATES / family.template)]
    # Tarsier's 8 frames take 4,808 tokens, past the checkpoint's 4,096. The
    # utility checks the arguments in this process too.
    with pytest.MonkeyPatch.context() as m:
        m.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        with RemoteOpenAIServer(
            family.model, args, max_wait_seconds=900
        ) as remote_server:
            yield remote_server


@pytest.fixture
def client(server: RemoteOpenAIServer) -> openai.OpenAI:
    return server.get_client()


def chat(
    client: openai.OpenAI, family: Family, messages: list[dict[str, Any]], **kwargs
):
    kwargs.setdefault("max_completion_tokens", MAX_TOKENS)
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("logprobs", True)
    kwargs.setdefault("top_logprobs", 3)
    return client.chat.completions.create(
        model=family.model, messages=messages, **kwargs
    )


def tokens_and_logprobs(completion) -> tuple[list[str], list[float]]:
    content = completion.choices[0].logprobs.content
    return [t.token for t in content], [t.logprob for t in content]


def assert_same_output(actual, expected, what: str) -> None:
    tokens, logprobs = tokens_and_logprobs(actual)
    ref_tokens, ref_logprobs = tokens_and_logprobs(expected)
    assert tokens == ref_tokens, f"{what}: {tokens} != {ref_tokens}"
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=LOGPROB_ATOL, err_msg=what)
    assert actual.usage.prompt_tokens == expected.usage.prompt_tokens, what


def tokenize(server: RemoteOpenAIServer, family: Family, **body) -> list[int]:
    import requests

    response = requests.post(
        server.url_for("tokenize"), json={"model": family.model, **body}, timeout=300
    )
    response.raise_for_status()
    return response.json()["tokens"]


# ------------------------------------------------------- videos as the authors
VIDEO_SIZE = (96, 64)  # width, height


@pytest.mark.parametrize(
    ("fmt", "total", "transport"),
    [
        ("mp4", 30, "file"),
        ("mp4", 30, "data"),
        ("mp4", 30, "http"),
        ("gif", 30, "data"),
        ("mp4", 3, "http"),  # shorter than num_frames
    ],
)
def test_video_url_gives_the_authors_frames(
    server: RemoteOpenAIServer,
    client: openai.OpenAI,
    family: Family,
    media_dir: Path,
    file_server: str,
    fmt: str,
    total: int,
    transport: str,
) -> None:
    """The server's output for a video URL equals its output for a lossless
    video of exactly the authors' frames of it, decoded by the same decoder;
    and differs from the output for neighbouring frames, so that a loader
    that took other frames would fail."""
    n = family.num_frames
    frames = smooth_frames(total, *VIDEO_SIZE, seed=total)
    name = f"clip_{total}.{fmt}"
    path = media_dir / name
    if fmt == "gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    else:
        write_video(path, frames, "mp4v")
    url = {
        "file": path.as_uri(),
        "data": data_url(path.read_bytes(), f"video/{fmt}"),
        "http": f"{file_server}/{name}",
    }[transport]

    decoded = decode_all(path)
    assert len(decoded) == total
    wanted = family.indices(total, n)
    exact = write_video(media_dir / f"exact_{name}.avi", decoded[wanted], "png ")
    # Lossless: the reference frames reach the loader bit for bit.
    np.testing.assert_array_equal(decode_all(exact), decoded[wanted])

    kwargs = {"extra_body": {"mm_processor_kwargs": {"num_frames": n}}}
    output = chat(client, family, user(video_part(url)), **kwargs)
    reference = chat(client, family, user(video_part(exact.as_uri())), **kwargs)
    assert_same_output(output, reference, f"{fmt} via {transport}")

    # The prompt as /tokenize renders it is the one the model got, with the
    # published number of placeholder tokens.
    prompt_ids = tokenize(
        server,
        family,
        messages=user(video_part(url)),
        mm_processor_kwargs={"num_frames": n},
    )
    assert len(prompt_ids) == output.usage.prompt_tokens
    assert prompt_ids.count(family.pad_id("video")) == family.visual_tokens(
        *VIDEO_SIZE, frames=len(wanted)
    )

    if total > n:
        shifted = [min(i + 1, total - 1) for i in wanted]
        other = write_video(media_dir / f"other_{name}.avi", decoded[shifted], "png ")
        moved = chat(client, family, user(video_part(other.as_uri())), **kwargs)
        _, logprobs = tokens_and_logprobs(moved)
        _, ref_logprobs = tokens_and_logprobs(reference)
        assert not np.allclose(logprobs, ref_logprobs, atol=LOGPROB_ATOL)


# ------------------------------------------------------- the authors' prompt
@pytest.mark.parametrize("case", ["image", "video", "two_images", "multi_turn"])
def test_chat_prompt_is_the_authors(
    server: RemoteOpenAIServer,
    client: openai.OpenAI,
    family: Family,
    media_dir: Path,
    case: str,
) -> None:
    """The ids the chat API gives the model (`/tokenize` with the messages,
    and the request's own prompt ids) are the authors' tokenization of the
    same conversation, visuals aside."""
    path = write_video(media_dir / "prompt.mp4", smooth_frames(9, 64, 48, 3), "mp4v")
    messages = conversations(path.as_uri())[case]
    n = family.num_frames
    tokenized = tokenize(
        server, family, messages=messages, mm_processor_kwargs={"num_frames": n}
    )
    output = chat(
        client,
        family,
        messages,
        extra_body={"mm_processor_kwargs": {"num_frames": n}, "return_token_ids": True},
    )
    assert output.prompt_token_ids == tokenized

    name = "tarsier2" if family.is_tarsier2 else "tarsier"
    expected = authors_prompt_ids(
        authors_tokenizer(family.model), name, messages, num_frames=n
    )
    hf_config = get_config(family.model, trust_remote_code=False)
    assert collapse_visual_tokens(tokenized, hf_config) == expected


# ------------------------------------------------------ images, API features
IMAGE_SIZE = (200, 120)


def test_images(
    server: RemoteOpenAIServer,
    client: openai.OpenAI,
    family: Family,
    media_dir: Path,
    file_server: str,
) -> None:
    image = smooth_frames(1, *IMAGE_SIZE, seed=5)[0]
    (media_dir / "image.png").write_bytes(png_bytes(image))
    single = user(image_part(png_url(image)))
    two = user(
        image_part((media_dir / "image.png").as_uri()),
        image_part(f"{file_server}/image.png"),
        text="Compare the images.",
    )
    for messages, count in ((single, 1), (two, 2)):
        output = chat(client, family, messages)
        assert output.choices[0].finish_reason == "length"
        prompt_ids = tokenize(server, family, messages=messages)
        assert len(prompt_ids) == output.usage.prompt_tokens
        assert prompt_ids.count(family.pad_id("image")) == count * (
            family.visual_tokens(*IMAGE_SIZE)
        )


def test_streaming_matches_the_whole_reply(
    client: openai.OpenAI, family: Family, media_dir: Path
) -> None:
    path = write_video(media_dir / "stream.mp4", smooth_frames(9, 64, 48, 9), "mp4v")
    messages = user(video_part(path.as_uri()))
    whole = chat(client, family, messages, logprobs=False, top_logprobs=None)
    chunks = [
        chunk.choices[0].delta.content or ""
        for chunk in chat(
            client, family, messages, stream=True, logprobs=False, top_logprobs=None
        )
        if chunk.choices
    ]
    assert len(chunks) > 1
    assert "".join(chunks) == whole.choices[0].message.content


def test_sampling_several_choices(client: openai.OpenAI, family: Family) -> None:
    image = smooth_frames(1, 64, 64, seed=3)[0]
    output = chat(
        client,
        family,
        user(image_part(png_url(image))),
        n=3,
        temperature=1.0,
        seed=0,
        logprobs=False,
        top_logprobs=None,
    )
    assert len(output.choices) == 3
    assert output.usage.completion_tokens == 3 * MAX_TOKENS


RAW_PROMPTS = {
    # name: (Tarsier's raw prompt, Tarsier2's)
    "text_only": (
        "USER: What is a video? ASSISTANT:",
        "<|im_start|>user\nWhat is a video?<|im_end|>\n<|im_start|>assistant\n",
    ),
    "leading_space": (
        " USER: What  is a video? ASSISTANT: ",
        " <|im_start|>user\nWhat is a video?<|im_end|>\n<|im_start|>assistant\n",
    ),
}
RAW_PLACEHOLDER_PROMPTS = {
    "image": (
        "USER: <image>\nWhat is it? ASSISTANT:",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?"
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "video": (
        "USER: <video>\nDescribe the video in detail. ASSISTANT:",
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe."
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "two_images": (
        "USER: <image><image>\nCompare them. ASSISTANT:",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>Compare them.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
}


def _raw(prompts: tuple[str, str], family: Family) -> str:
    return prompts[1] if family.is_tarsier2 else prompts[0]


@pytest.mark.parametrize("case", list(RAW_PROMPTS))
def test_completions_with_a_raw_prompt(
    client: openai.OpenAI, family: Family, case: str
) -> None:
    """`/v1/completions` sends the authors' ids for a raw prompt."""
    prompt = _raw(RAW_PROMPTS[case], family)
    output = client.completions.create(
        model=family.model,
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        extra_body={"return_token_ids": True},
    )
    prompt_ids = output.choices[0].model_dump()["prompt_token_ids"]
    assert prompt_ids == authors_tokenizer(family.model).encode(prompt)
    assert output.usage is not None
    assert output.usage.completion_tokens == MAX_TOKENS


@pytest.mark.parametrize("case", list(RAW_PLACEHOLDER_PROMPTS))
def test_tokenize_a_raw_prompt(
    server: RemoteOpenAIServer, family: Family, case: str
) -> None:
    """`/tokenize` of a raw prompt with placeholders: the authors' ids, where
    Tarsier's `<video>` is one token that splits the text as `<image>` does."""
    prompt = _raw(RAW_PLACEHOLDER_PROMPTS[case], family)
    got = tokenize(server, family, prompt=prompt)
    expected = authors_tokenizer(family.model).encode(
        prompt.replace("<video>", "<image>")
    )
    if not family.is_tarsier2:
        (video,) = tokenize(server, family, prompt="<video>", add_special_tokens=False)
        got = [family.pad_id("image") if t == video else t for t in got]
    assert got == expected


def test_same_output_alone_and_in_a_batch(
    server: RemoteOpenAIServer, family: Family, media_dir: Path
) -> None:
    path = write_video(media_dir / "batch.mp4", smooth_frames(12, 64, 48, 12), "mp4v")
    probe = user(video_part(path.as_uri()))
    others = [
        user(image_part(png_url(smooth_frames(1, 48, 48, s)[0])))
        for s in range(100, 112)
    ] + [
        user(
            video_part(
                write_video(
                    media_dir / f"batch_{s}.mp4", smooth_frames(5, 48, 32, s), "mp4v"
                ).as_uri()
            )
        )
        for s in range(200, 203)
    ]

    async def run() -> tuple[Any, list[Any]]:
        async with server.get_async_client() as client:

            def send(messages):
                return client.chat.completions.create(
                    model=family.model,
                    messages=messages,
                    max_completion_tokens=MAX_TOKENS,
                    temperature=0.0,
                    logprobs=True,
                    top_logprobs=3,
                )

            alone = await send(probe)
            batch = await asyncio.gather(*(send(m) for m in [*others, probe]))
            return alone, batch

    alone, batch = asyncio.run(run())
    assert all(out.choices[0].finish_reason == "length" for out in batch)
    tokens, logprobs = tokens_and_logprobs(batch[-1])
    ref_tokens, ref_logprobs = tokens_and_logprobs(alone)
    assert tokens == ref_tokens
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=1e-3)


def test_questions_about_one_video_by_its_uuid(
    client: openai.OpenAI, family: Family, media_dir: Path, file_server: str
) -> None:
    """The documented way to ask about one video again: send it once with a
    `uuid`, then the `uuid` alone. Once the file is gone the later questions
    still get the answers the whole video gives, so the server neither fetches
    nor decodes it again."""
    name = f"qa_{family.model.replace('/', '_')}.mp4"
    path = write_video(media_dir / name, smooth_frames(40, 64, 48, 40), "mp4v")
    questions = ["What happens?", "Who is there?", "Where is it?"]
    whole = video_part(f"{file_server}/{name}")
    expected = [chat(client, family, user(whole, text=q)) for q in questions]

    uuid = f"qa-{name}"
    named = chat(client, family, user({**whole, "uuid": uuid}, text=questions[0]))
    path.unlink()
    by_id = {"type": "video_url", "video_url": {}, "uuid": uuid}
    again = [chat(client, family, user(by_id, text=q)) for q in questions[1:]]
    for question, actual, reference in zip(questions, [named, *again], expected):
        assert_same_output(actual, reference, question)


# ------------------------------------------------------------------ bad input
@dataclass(frozen=True)
class Bad:
    """A bad request, the status it gets and what its message must say;
    `tarsier2` overrides both where that family differs (status 200: the
    request is valid for it, and is served)."""

    messages: Any  # list of messages, or a function of (family, media, http)
    status: int
    message: str
    kwargs: dict[str, Any] | None = None
    tarsier2: tuple[int, str] | None = None

    def expected(self, family: "Family") -> tuple[int, str]:
        if family.is_tarsier2 and self.tarsier2 is not None:
            return self.tarsier2
        return self.status, self.message


def _in_media(name: str):
    return lambda f, media, http: user(video_part((media / name).as_uri()))


UNKNOWN_KWARG = r"does not take the processor kwargs"
BAD_INPUTS: dict[str, Bad] = {
    "file_missing": Bad(_in_media("nope.mp4"), 400, "Cannot read the file"),
    "file_outside_allowed_path": Bad(
        user(video_part("file:///etc/hostname")), 400, "must be a subpath"
    ),
    "file_path_traversal": Bad(
        lambda f, media, http: user(
            video_part(f"file://{media}/../../../../etc/passwd")
        ),
        400,
        "must be a subpath",
    ),
    "url_scheme_unsupported": Bad(
        user(video_part("ftp://127.0.0.1/clip.mp4")), 400, "HTTP, data or file URL"
    ),
    "http_not_found": Bad(
        lambda f, media, http: user(video_part(f"{http}/nope.mp4")), 422, "HTTP 404"
    ),
    "data_url_bad_base64": Bad(
        user(video_part("data:video/mp4;base64,@@@")), 400, "base64|Incorrect"
    ),
    "video_empty": Bad(_in_media("empty.mp4"), 400, "video is empty"),
    "video_corrupt": Bad(_in_media("corrupt.mp4"), 400, "Could not open the video"),
    "video_truncated": Bad(_in_media("truncated.mp4"), 400, "Could not open the video"),
    "video_is_text": Bad(_in_media("text.mp4"), 400, "Could not open the video"),
    "image_decompression_bomb": Bad(
        lambda f, media, http: user(image_part((media / "bomb.png").as_uri())),
        400,
        "exceeds limit.*Send a smaller image",
    ),
    "too_many_images": Bad(
        lambda f, media, http: user(*[image_part((media / "small.png").as_uri())] * 3),
        400,
        "At most 2 image",
    ),
    "num_frames_zero": Bad(_in_media("ok.mp4"), 400, "num_frames", {"num_frames": 0}),
    "num_frames_negative": Bad(
        _in_media("ok.mp4"), 400, "num_frames", {"num_frames": -5}
    ),
    "num_frames_string": Bad(
        _in_media("ok.mp4"), 400, "num_frames", {"num_frames": "abc"}
    ),
    "num_frames_fraction": Bad(
        _in_media("ok.mp4"), 400, "num_frames", {"num_frames": 2.5}
    ),
    "num_frames_on_an_image_only_request": Bad(
        lambda f, media, http: user(image_part((media / "small.png").as_uri())),
        400,
        "num_frames",
        {"num_frames": 0},
    ),
    "kwarg_unknown": Bad(
        _in_media("ok.mp4"), 400, r"does not take.*'num_frame'", {"num_frame": 2}
    ),
    "pad_to_square_not_bool": Bad(
        _in_media("ok.mp4"),
        400,
        "pad_to_square",
        {"pad_to_square": "yes"},
        tarsier2=(400, UNKNOWN_KWARG),
    ),
    "num_frames_over_context": Bad(
        _in_media("ok.mp4"),
        400,
        "A video of 1000 frames takes 601000 tokens",
        {"num_frames": 1000},
        # Tarsier2 uses a video shorter than num_frames whole.
        tarsier2=(200, ""),
    ),
    "max_frame_pixels_negative": Bad(
        _in_media("ok.mp4"),
        400,
        UNKNOWN_KWARG,
        {"max_frame_pixels": -1},
        tarsier2=(400, "max_frame_pixels"),
    ),
    "max_frame_pixels_string": Bad(
        _in_media("ok.mp4"),
        400,
        UNKNOWN_KWARG,
        {"max_frame_pixels": "big"},
        tarsier2=(400, "max_frame_pixels"),
    ),
    "max_pixels_string": Bad(
        _in_media("ok.mp4"),
        400,
        UNKNOWN_KWARG,
        {"max_pixels": "big"},
        tarsier2=(400, "max_pixels"),
    ),
    "aspect_ratio_over_200": Bad(
        # Tarsier stretches every frame to a square, as the authors do.
        _in_media("thin.mp4"),
        200,
        "",
        tarsier2=(400, "aspect ratio"),
    ),
    "image_embeds_not_square": Bad(
        lambda f, media, http: user(
            {"type": "image_embeds", "image_embeds": (media / "embeds.b64").read_text()}
        ),
        400,
        "perfect square",
        # Qwen2-VL takes embeddings with their grid (a dict); a bare tensor
        # is read as one image per row.
        tarsier2=(400, "At most 2 image"),
    ),
    "more_placeholders_than_images": Bad(
        lambda f, media, http: user(
            image_part((media / "small.png").as_uri()),
            text=(
                "<|vision_start|><|image_pad|><|vision_end|>"
                if f.is_tarsier2
                else "<image>\n"
            )
            + "What is in both images?",
        ),
        400,
        "placeholder",
    ),
    "prompt_over_context_with_video": Bad(
        # The text alone fits; with the video's ~4,800 tokens it does not.
        lambda f, media, http: user(
            video_part((media / "big.mp4").as_uri()), text=f.filler(4000)
        ),
        400,
        r"longer than the maximum model length.*1 video item\(s\) take",
    ),
    "prompt_over_context_text_only": Bad(
        user(text="word " * MAX_MODEL_LEN), 400, "maximum context length"
    ),
    "max_tokens_zero": Bad(
        _in_media("ok.mp4"), 400, "max_tokens", {"max_completion_tokens": 0}
    ),
    "max_tokens_over_context": Bad(
        _in_media("ok.mp4"),
        400,
        "cannot be greater than max_model_len",
        {"max_completion_tokens": MAX_MODEL_LEN + 1},
    ),
}


@pytest.fixture(scope="module")
def bad_media(media_dir: Path) -> Path:
    ok = write_video(media_dir / "ok.mp4", smooth_frames(10, 64, 48, 1), "mp4v")
    # 16 frames of 640 x 360: Tarsier 8 x 601 tokens, Tarsier2 16 x 299.
    write_video(media_dir / "big.mp4", smooth_frames(16, 640, 360, 2), "mp4v")
    (media_dir / "empty.mp4").write_bytes(b"")
    (media_dir / "corrupt.mp4").write_bytes(np.random.RandomState(0).bytes(4096))
    (media_dir / "truncated.mp4").write_bytes(ok.read_bytes()[:300])
    (media_dir / "text.mp4").write_text("This is not a video. " * 50)
    write_video(media_dir / "thin.mp4", smooth_frames(2, 14, 3000, 2), "mp4v")
    (media_dir / "small.png").write_bytes(png_bytes(smooth_frames(1, 32, 32, 4)[0]))
    # Over PIL's decompression-bomb limit (2 x 89.5 Mpx); 1 bit per pixel.
    Image.new("1", (15000, 15000)).save(media_dir / "bomb.png")
    # 575 patch features: not a square grid.
    buffer = io.BytesIO()
    torch.save(torch.zeros(575, 128), buffer)
    (media_dir / "embeds.b64").write_text(base64.b64encode(buffer.getvalue()).decode())
    return media_dir


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_4xx(
    client: openai.OpenAI,
    family: Family,
    bad_media: Path,
    file_server: str,
    case: str,
) -> None:
    bad = BAD_INPUTS[case]
    status, pattern = bad.expected(family)
    messages = bad.messages
    if callable(messages):
        messages = messages(family, bad_media, file_server)
    kwargs = dict(bad.kwargs or {})
    request: dict[str, Any] = {}
    if "max_completion_tokens" in kwargs:
        request["max_completion_tokens"] = kwargs.pop("max_completion_tokens")
    if kwargs:
        request["extra_body"] = {"mm_processor_kwargs": kwargs}

    if status == 200:
        assert chat(client, family, messages, **request).choices[0].message.content
    else:
        with pytest.raises(openai.APIStatusError) as exc_info:
            chat(client, family, messages, **request)
        error = exc_info.value
        assert error.status_code == status, error.message
        assert len(error.message) < 1000, error.message
        assert re.search(pattern, error.message), error.message

    # The server answers the next good request.
    good = chat(client, family, user(video_part((bad_media / "ok.mp4").as_uri())))
    assert good.usage.completion_tokens == MAX_TOKENS


def test_an_unreachable_media_host_is_a_server_error_that_hides_addresses(
    client: openai.OpenAI, family: Family, bad_media: Path
) -> None:
    # Transient (the server's network), so a 5xx as upstream has it; the
    # message names the client's URL and what failed, not the address tried.
    url = "http://localhost:9/clip.mp4?token=secret"
    with pytest.raises(openai.InternalServerError) as exc_info:
        chat(client, family, user(video_part(url)))
    message = exc_info.value.message
    assert re.search(
        r"http://localhost:9/clip\.mp4: the connection (was refused|failed)", message
    ), message
    for leak in ("127.0.0.1", "::1", "secret", "Connect call failed"):
        assert leak not in message, message

    good = chat(client, family, user(video_part((bad_media / "ok.mp4").as_uri())))
    assert good.usage.completion_tokens == MAX_TOKENS


def test_a_rejected_video_does_not_break_the_next_request(
    client: openai.OpenAI, family: Family, media_dir: Path
) -> None:
    # The same video, first in a prompt too long for the context, then in one
    # that fits: the second must not hit the processor cache's drift (500).
    path = write_video(media_dir / "drift.mp4", smooth_frames(16, 640, 360, 7), "mp4v")
    with pytest.raises(openai.BadRequestError, match="video item"):
        chat(client, family, user(video_part(path.as_uri()), text=family.filler(4000)))
    for _ in range(2):
        output = chat(client, family, user(video_part(path.as_uri())))
        assert output.usage.completion_tokens == MAX_TOKENS
