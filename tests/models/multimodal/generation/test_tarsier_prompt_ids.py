# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Raw prompts reach the model as the authors' token ids, for every Tarsier id
and for LLaVA-1.5, through vLLM's tokenizer and through `LLM.generate`.

The expected ids come from tokenizers independent of vLLM's loading:
Tarsier's and LLaVA's from the SentencePiece model with the authors' rule
(`AuthorsTokenizer`), Tarsier2's from its `tokenizer.json` with the
`tokenizers` library. Visual blocks are collapsed to one token per image or
frame before comparing.
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import snapshot_download
from PIL import Image

from vllm import LLM, SamplingParams
from vllm.transformers_utils.config import get_config

from ....conftest import VllmRunner
from ..processing.test_tarsier_chat_template import collapse_visual_tokens
from .tarsier2_reference import Tarsier2Tokenizer
from .tarsier_reference import AuthorsTokenizer

NUM_FRAMES = 4


@dataclass(frozen=True)
class Model:
    model_id: str
    family: str  # "tarsier", "tarsier2" or "llava"

    def authors_tokenizer(self) -> AuthorsTokenizer | Tarsier2Tokenizer:
        path = Path(snapshot_download(self.model_id))
        if self.family == "tarsier2":
            return Tarsier2Tokenizer(path)
        return AuthorsTokenizer(path)


MODELS = [
    Model("omni-research/Tarsier-7b", "tarsier"),
    Model("omni-research/Tarsier-34b", "tarsier"),
    Model("omni-research/Tarsier2-Recap-7b", "tarsier2"),
    Model("omni-research/Tarsier2-7b-0115", "tarsier2"),
    Model("llava-hf/llava-1.5-7b-hf", "llava"),
]

_VISION = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}


def _prompt(family: str, visuals: list[str], text: str) -> str:
    """The documented raw prompt of each family."""
    if family == "tarsier2":
        vision = "".join(_VISION[kind] for kind in visuals)
        return f"<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n"
    marks = "".join(f"<{kind}>" for kind in visuals)
    return f"USER: {marks}\n{text} ASSISTANT:" if marks else f"USER: {text} ASSISTANT:"


CASES: dict[str, tuple[list[str], str, str]] = {
    # name: (visuals, text, prefix)
    "image": (["image"], "What is in the image?", ""),
    "video": (["video"], "Describe the video in detail.", ""),
    "two_images": (["image", "image"], "Compare the two images.", ""),
    "text_only": ([], "Who wrote  this, and why?", ""),
    "leading_space": (["image"], "What is it?", " "),
}


def _cases(model: Model) -> list[str]:
    # LLaVA-1.5 has no video input.
    return [c for c in CASES if not (model.family == "llava" and c == "video")]


def _frames(num: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, (num, 4, 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((64, 48))) for f in coarse])


def _request(model: Model, case: str) -> dict[str, Any]:
    visuals, text, prefix = CASES[case]
    mm_data: dict[str, Any] = {}
    images = [
        Image.fromarray(_frames(1, i)[0]) for i, k in enumerate(visuals) if k == "image"
    ]
    if images:
        mm_data["image"] = images
    if "video" in visuals:
        mm_data["video"] = _frames(6, 7)
    request: dict[str, Any] = {
        "prompt": prefix + _prompt(model.family, visuals, text),
        "multi_modal_data": mm_data,
    }
    if "video" in visuals:
        request["mm_processor_kwargs"] = {"num_frames": NUM_FRAMES}
    return request


def _authors_ids(model: Model, prompt: str, num_frames: int) -> list[int]:
    """The authors' ids, one token per image or frame (Tarsier's pipeline
    writes `<image>` once per frame for `<video>` before tokenizing)."""
    if model.family == "tarsier":
        prompt = prompt.replace("<video>", "<image>" * num_frames)
    return model.authors_tokenizer().encode(prompt)


def _collapse(model: Model, token_ids: list[int]) -> list[int]:
    hf_config = get_config(model.model_id, trust_remote_code=False)
    if model.family == "llava":
        # Each image is (image_size / patch_size)^2 image tokens, back to back.
        vision = hf_config.vision_config
        per_image = (vision.image_size // vision.patch_size) ** 2
        image = hf_config.image_token_id
        out: list[int] = []
        for key, run in itertools.groupby(token_ids):
            count = len(list(run))
            if key == image:
                assert count % per_image == 0, count
                count //= per_image
            out += [key] * count
        return out
    return collapse_visual_tokens(token_ids, hf_config)


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: m.model_id)
def model(request: pytest.FixtureRequest) -> Model:
    return request.param


@pytest.fixture(scope="module")
def llm(model: Model, vllm_runner: type[VllmRunner]) -> Iterator[LLM]:
    with pytest.MonkeyPatch.context() as m:
        # Tarsier's frames past the checkpoint's 4,096 positions.
        m.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        with vllm_runner(
            model.model_id,
            dtype="float32",
            max_model_len=5120,
            max_num_seqs=8,
            limit_mm_per_prompt={"image": 2, "video": 1},
            enforce_eager=True,
        ) as runner:
            yield runner.llm


def test_tokenizer_gives_the_authors_ids(model: Model, llm: LLM) -> None:
    """The tokenizer the engine loads, on the text alone. A Tarsier video
    placeholder is one token that splits the text as an image token does."""
    tokenizer = llm.get_tokenizer()
    for case in _cases(model):
        prompt = _request(model, case)["prompt"]
        got = tokenizer.encode(prompt)
        if model.family == "tarsier":
            video, image = tokenizer.convert_tokens_to_ids(["<video>", "<image>"])
            got = [image if t == video else t for t in got]
        assert got == _authors_ids(model, prompt, num_frames=1), case


def test_generate_sends_the_authors_ids(model: Model, llm: LLM) -> None:
    """`LLM.generate`'s prompt ids, visuals expanded by the processor."""
    cases = _cases(model)
    requests = [_request(model, case) for case in cases]
    outputs = llm.generate(requests, SamplingParams(max_tokens=1, temperature=0.0))
    for case, request, output in zip(cases, requests, outputs, strict=True):
        got = _collapse(model, list(output.prompt_token_ids))
        expected = _authors_ids(model, request["prompt"], NUM_FRAMES)
        assert got == expected, (case, got[:16], expected[:16])
