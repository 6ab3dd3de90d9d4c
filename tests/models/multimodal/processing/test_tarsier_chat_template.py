# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The chat API's prompt for Tarsier and Tarsier2 is the authors' prompt, token
for token: the server's own chat path (the one `/tokenize` with `messages` and
chat completions share) against the authors' format tokenized as their code
does. A server test can import `authors_tokenizer`, `authors_prompt_ids` and
`collapse_visual_tokens` to compare `/tokenize` output the same way."""

import asyncio
import base64
import io
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from huggingface_hub import snapshot_download
from PIL import Image
from transformers import PretrainedConfig

from vllm.config import VllmConfig
from vllm.entrypoints.common.offline import OfflineInferenceMixin
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.tokenize.protocol import TokenizeChatRequest
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.renderers.registry import renderer_from_config
from vllm.transformers_utils.chat_templates import get_chat_template_fallback_path

from ...utils import build_model_context
from ..generation.tarsier2_reference import Tarsier2Tokenizer
from ..generation.tarsier_reference import AuthorsTokenizer

Family = Literal["tarsier", "tarsier2"]

TEMPLATES_DIR = Path(__file__).parents[4] / "vllm/transformers_utils/chat_templates"
TEMPLATES: dict[Family, Path] = {
    "tarsier": TEMPLATES_DIR / "template_tarsier.jinja",
    "tarsier2": TEMPLATES_DIR / "template_tarsier2.jinja",
}
MODELS: dict[str, Family] = {
    "omni-research/Tarsier-7b": "tarsier",
    "omni-research/Tarsier-34b": "tarsier",
    "omni-research/Tarsier2-Recap-7b": "tarsier2",
}
# Frames per video; small, so that a Tarsier video fits the fixture's context.
NUM_FRAMES = 3
# The authors' default frame count for Tarsier (v1).
AUTHORS_NUM_FRAMES = 8

IMAGE_PARTS = ("image", "image_url", "image_pil", "image_embeds")
VIDEO_PARTS = ("video", "video_url")

QWEN_VISION = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}


# The authors' prompt


@cache
def authors_tokenizer(model_id: str) -> Any:
    """The tokenizer the authors' code gets from a checkpoint, independent of
    vLLM's tokenizer loading: Tarsier's from SentencePiece with the authors'
    rule (`AuthorsTokenizer`); Tarsier2's from its `tokenizer.json` with the
    `tokenizers` library, which is what its fast tokenizer runs."""
    path = Path(snapshot_download(model_id))
    if "Tarsier2" in model_id:
        return Tarsier2Tokenizer(path)
    return AuthorsTokenizer(path)


def _part_kind(part: Mapping[str, Any]) -> str | None:
    kind = part.get("type")
    if kind in IMAGE_PARTS:
        return "image"
    if kind in VIDEO_PARTS:
        return "video"
    return None


def _split_content(content: str | Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    """A message's visuals (in order) and its text parts joined by a space."""
    if isinstance(content, str):
        return [], content
    visuals = [kind for part in content if (kind := _part_kind(part))]
    texts = [part["text"] for part in content if part.get("type") == "text"]
    return visuals, " ".join(texts)


def authors_prompt_text(
    family: Family,
    conversation: Sequence[Mapping[str, Any]],
    *,
    eos_token: str = "</s>",
    num_frames: int = AUTHORS_NUM_FRAMES,
) -> str:
    """The authors' prompt text, before tokenization, for an OpenAI-style
    conversation ending with a user turn.

    Tarsier: "USER: {visuals}\\n{text} ASSISTANT: ", where an image is one
    `<image>` and a video `num_frames` of them, back to back (the authors
    replace `<video>` so); a past reply is "ASSISTANT: {text}{eos}" and a system
    text comes first followed by a space (their conversation class). The BOS is
    the tokenizer's; the generation prompt keeps the space of the authors'
    inference scripts (their interactive demo writes "ASSISTANT:"). Tarsier2:
    Qwen's ChatML, each turn's visuals before its text, one pad token per
    image or video (the processor expands it; a video's frames sit at video
    pads here and in vLLM, at image pads in the authors' code, which changes
    the ids but not the embeddings there).
    """
    prompt = ""
    for message in conversation:
        role = message["role"]
        visuals, text = _split_content(message["content"])
        if family == "tarsier2":
            vision = "".join(QWEN_VISION[kind] for kind in visuals)
            prompt += f"<|im_start|>{role}\n{vision}{text}<|im_end|>\n"
        elif role == "system":
            prompt += f"{text} "
        elif role == "user":
            frames = sum(num_frames if kind == "video" else 1 for kind in visuals)
            prompt += "USER: " + ("<image>" * frames + "\n" if frames else "")
            prompt += f"{text} "
        elif role == "assistant":
            prompt += f"ASSISTANT: {text}{eos_token}"
    return prompt + (
        "<|im_start|>assistant\n" if family == "tarsier2" else "ASSISTANT: "
    )


def authors_prompt_ids(
    tokenizer: Any,
    family: Family,
    conversation: Sequence[Mapping[str, Any]],
    *,
    num_frames: int = AUTHORS_NUM_FRAMES,
) -> list[int]:
    """The token ids the authors' code feeds its model for `conversation`.

    Pass the tokenizer from `authors_tokenizer`. Tarsier's ids hold one image
    token per image or video frame and Tarsier2's one pad token per image or
    video, as before the model (Tarsier) or processor (Tarsier2) expands them;
    compare a vLLM prompt after `collapse_visual_tokens`. Tarsier's authors
    tokenize with `tokenizer.encode`, which adds the BOS; Tarsier2's render the
    chat template and tokenize without special tokens.
    """
    text = authors_prompt_text(
        family, conversation, eos_token=tokenizer.eos_token, num_frames=num_frames
    )
    return tokenizer.encode(text, add_special_tokens=family == "tarsier")


def collapse_visual_tokens(
    token_ids: Sequence[int], hf_config: PretrainedConfig
) -> list[int]:
    """A vLLM prompt with its expanded visuals put back as the authors' ids
    hold them (see `authors_prompt_ids`).

    Tarsier: each frame's block (grid rows of image tokens, each followed by
    the row separator, then the frame separator) becomes one image token; a
    malformed block fails. Tarsier2: each run of image or video pads becomes
    one pad."""
    if hasattr(hf_config, "image_newline_idx"):
        image = hf_config.image_token_index
        row_end, frame_end = hf_config.image_newline_idx, hf_config.image_new_idx
        vision = hf_config.vision_config
        grid = vision.image_size // vision.patch_size
        block = ([image] * grid + [row_end]) * grid + [frame_end]
        ids, out, i = list(token_ids), list[int](), 0
        while i < len(ids):
            if ids[i] in (image, row_end, frame_end):
                assert ids[i : i + len(block)] == block, f"bad frame at {i}"
                out.append(image)
                i += len(block)
            else:
                out.append(ids[i])
                i += 1
        return out

    pads = {hf_config.image_token_id, hf_config.video_token_id}
    return [
        t
        for i, t in enumerate(token_ids)
        if t not in pads or i == 0 or token_ids[i - 1] != t
    ]


# vLLM's chat path


def _png_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _mp4_url(path: Path) -> str:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 4, (64, 48))
    for t in range(6):
        frame: np.ndarray = np.full((48, 64, 3), 30, np.uint8)
        frame[:, 8 * t : 8 * t + 10] = (40, 190, 220)
        writer.write(frame)
    writer.release()
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def _image(seed: int) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _png_url(seed)}}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def conversations(video_url: str) -> dict[str, list[dict[str, Any]]]:
    video = {"type": "video_url", "video_url": {"url": video_url}}
    return {
        "image": [
            {"role": "user", "content": [_image(0), _text("Describe the image.")]}
        ],
        "video": [
            {"role": "user", "content": [_text("Describe the video in detail."), video]}
        ],
        "two_images": [
            {
                "role": "user",
                "content": [_image(1), _image(2), _text("What changed between them?")],
            }
        ],
        "multi_turn": [
            {"role": "user", "content": [_image(3), _text("What is shown?")]},
            {"role": "assistant", "content": "A red square on a grey field."},
            {"role": "user", "content": "And what colour is the field?"},
        ],
    }


@pytest.fixture(scope="module")
def video_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _mp4_url(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module", params=list(MODELS))
def served(request: pytest.FixtureRequest) -> tuple[str, OnlineRenderer]:
    """A model's renderer behind the server's chat preprocessing, with the
    example chat template as `--chat-template` would set it."""
    model_id = request.param
    ctx = build_model_context(
        model_id, dtype="float32", limit_mm_per_prompt={"image": 2, "video": 1}
    )
    renderer = renderer_from_config(VllmConfig(model_config=ctx.model_config))
    online = OnlineRenderer(
        model_config=ctx.model_config,
        renderer=renderer,
        request_logger=None,
        chat_template=TEMPLATES[MODELS[model_id]].read_text(),
        chat_template_content_format="auto",
        trust_request_mm_kwargs=True,
    )
    return model_id, online


def _server_ids(
    online: OnlineRenderer,
    model_id: str,
    messages: list[dict[str, Any]],
    request_cls: type[TokenizeChatRequest] | type[ChatCompletionRequest],
) -> list[int]:
    """The prompt ids as `/tokenize` (messages) and chat completions make them."""
    request = request_cls(
        model=model_id,
        messages=messages,
        mm_processor_kwargs={"num_frames": NUM_FRAMES},
    )
    _, (engine_input,) = asyncio.run(
        online.preprocess_chat(
            request,
            request.messages,
            default_template=online.chat_template,
            default_template_content_format=online.chat_template_content_format,
            default_template_kwargs=None,
            skip_mm_cache=True,
        )
    )
    return list(engine_input["prompt_token_ids"])


class _OfflineChat(OfflineInferenceMixin):
    """`LLM.chat`'s preprocessing without an engine."""

    def __init__(self, online: OnlineRenderer) -> None:
        self.renderer = online.renderer
        self.model_config = online.model_config
        self.chat_template = online.chat_template


def _offline_ids(online: OnlineRenderer, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids as `LLM.chat` makes them."""
    (engine_input,) = _OfflineChat(online)._preprocess_chat(
        [messages], mm_processor_kwargs={"num_frames": NUM_FRAMES}
    )
    return list(engine_input["prompt_token_ids"])


def _expected(model_id: str, messages: list[dict[str, Any]]) -> list[int]:
    return authors_prompt_ids(
        authors_tokenizer(model_id), MODELS[model_id], messages, num_frames=NUM_FRAMES
    )


def _describe(model_id: str, ids: Sequence[int]) -> list[str]:
    return authors_tokenizer(model_id).convert_ids_to_tokens(list(ids))


CASES = ["image", "video", "two_images", "multi_turn"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("request_cls", [TokenizeChatRequest, ChatCompletionRequest])
def test_server_chat_prompt_is_the_authors(
    served: tuple[str, OnlineRenderer],
    video_url: str,
    case: str,
    request_cls: type[TokenizeChatRequest] | type[ChatCompletionRequest],
) -> None:
    model_id, online = served
    messages = conversations(video_url)[case]
    ids = _server_ids(online, model_id, messages, request_cls)
    got = collapse_visual_tokens(ids, online.model_config.hf_config)
    expected = _expected(model_id, messages)
    assert got == expected, (_describe(model_id, got), _describe(model_id, expected))


@pytest.mark.parametrize("case", CASES)
def test_offline_chat_prompt_is_the_authors(
    served: tuple[str, OnlineRenderer], video_url: str, case: str
) -> None:
    model_id, online = served
    messages = conversations(video_url)[case]
    ids = _offline_ids(online, messages)
    got = collapse_visual_tokens(ids, online.model_config.hf_config)
    expected = _expected(model_id, messages)
    assert got == expected, (_describe(model_id, got), _describe(model_id, expected))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("omni-research/Tarsier-7b", "template_tarsier.jinja"),
        ("omni-research/Tarsier-34b", "template_tarsier.jinja"),
        ("llava-hf/llava-1.5-7b-hf", None),
    ],
)
def test_llava_chat_template_fallback_is_tarsiers_only(
    model: str, expected: str | None
):
    """Tarsier checkpoints ship no chat template: vLLM falls back to the
    authors' format for them, and to none for other LLaVA checkpoints."""
    path = get_chat_template_fallback_path("llava", model)
    assert (path.name if path is not None else None) == expected
    if path is not None:
        assert path == TEMPLATES["tarsier"]
