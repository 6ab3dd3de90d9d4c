# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Compare Tarsier (v1) in vLLM with an independent reference of the
published semantics (`tarsier_reference.py`), token for token, in float32.

One engine serves the module, with prefix caching and chunked prefill (small
batches, so prompts are prefilled in several chunks), and a context raised
for the authors' default of 8 frames per video.
"""

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.tarsier_video import TarsierVideoBackend
from vllm.multimodal.utils import fetch_video

from ....conftest import VllmRunner
from ...utils import check_logprobs_close
from .checkpoint_shards import same_weights, write_sharded_copy
from .tarsier_reference import TarsierReference, video_frames
from .video_files import decode_mp4, write_mp4

MODEL_ID = "omni-research/Tarsier-7b"
TEMPLATES = Path(__file__).parents[4] / "vllm/transformers_utils/chat_templates"
# 8 frames take 4,808 tokens, over the 4,096 positions of the checkpoint.
MAX_MODEL_LEN = 5120
MAX_NUM_BATCHED_TOKENS = 256
MAX_TOKENS = 12
NUM_LOGPROBS = 5
# Both sides run in float32: top logprobs may differ by float noise only.
LOGPROB_ATOL = 1e-3

IMAGE_PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT: "
IMAGES_PROMPT = "USER: <image>\n<image>\n<image>\nCompare the images. ASSISTANT: "
VIDEO_PROMPT = "USER: <video>\nDescribe the video in detail. ASSISTANT: "


def _image(rng: np.random.RandomState, width: int, height: int) -> Image.Image:
    # Smooth random content, closer to natural images than noise.
    coarse = rng.randint(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)


def _video(rng: np.random.RandomState, frames: int, width: int, height: int):
    return np.stack([np.asarray(_image(rng, width, height)) for _ in range(frames)])


@dataclass
class Case:
    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    video: np.ndarray | tuple[np.ndarray, dict[str, Any]] | None = None
    num_frames: int = 8
    pad_to_square: bool = False
    # The whole video the reference samples, when vLLM gets it from a file.
    reference_video: np.ndarray | None = None

    def vllm_input(self) -> dict[str, Any]:
        mm_data: dict[str, Any] = {}
        if self.images:
            mm_data["image"] = self.images
        if self.video is not None:
            mm_data["video"] = self.video
        request: dict[str, Any] = {"prompt": self.prompt, "multi_modal_data": mm_data}
        if self.num_frames != 8 or self.pad_to_square:
            request["mm_processor_kwargs"] = {
                "num_frames": self.num_frames,
                "pad_to_square": self.pad_to_square,
            }
        return request

    def reference_inputs(self) -> tuple[str, list[Image.Image]]:
        if self.video is None:
            return self.prompt, self.images
        # The authors' pipeline expands `<video>` to one `<image>` per frame.
        prompt = self.prompt.replace("<video>", "<image>" * self.num_frames)
        video = self.video if self.reference_video is None else self.reference_video
        return prompt, video_frames(video, self.num_frames)


_RNG = np.random.RandomState(0)
CASES = {
    "non_square_image": Case(IMAGE_PROMPT, images=[_image(_RNG, 320, 180)]),
    "three_images": Case(
        IMAGES_PROMPT,
        images=[_image(_RNG, 200, 400), _image(_RNG, 256, 256), _image(_RNG, 500, 120)],
    ),
    # 12 frames of 16:9 video, the default 8 sampled.
    "video_8_frames": Case(VIDEO_PROMPT, video=_video(_RNG, 12, 128, 72)),
    # A portrait video with per-request processor kwargs.
    "video_3_frames_padded": Case(
        VIDEO_PROMPT,
        video=_video(_RNG, 5, 80, 120),
        num_frames=3,
        pad_to_square=True,
    ),
}


@pytest.fixture(scope="module")
def llm(vllm_runner: type[VllmRunner]) -> Iterator[LLM]:
    with pytest.MonkeyPatch.context() as m:
        m.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        with vllm_runner(
            MODEL_ID,
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            max_num_seqs=4,
            enable_prefix_caching=True,
            enable_chunked_prefill=True,
            max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
            limit_mm_per_prompt={"image": 3, "video": 1},
            enforce_eager=True,
        ) as runner:
            yield runner.llm


@pytest.fixture(scope="module")
def reference() -> TarsierReference:
    return TarsierReference(MODEL_ID)


def _compare(llm: LLM, reference: TarsierReference, cases: list[Case]) -> None:
    sampling_params = SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS
    )
    outputs = llm.generate([case.vllm_input() for case in cases], sampling_params)

    vllm_results = []
    ref_results = []
    for case, output in zip(cases, outputs, strict=True):
        # The prompt really was prefilled in several chunks.
        assert len(output.prompt_token_ids) > MAX_NUM_BATCHED_TOKENS
        sample = output.outputs[0]
        vllm_logprobs = [
            {token: lp.logprob for token, lp in step.items()}
            for step in sample.logprobs
        ]
        prompt, frames = case.reference_inputs()
        ref = reference.generate(
            prompt,
            frames,
            max_tokens=MAX_TOKENS,
            num_logprobs=NUM_LOGPROBS,
            pad=case.pad_to_square,
        )
        vllm_results.append((list(sample.token_ids), sample.text, vllm_logprobs))
        ref_results.append((ref.token_ids, ref.text, ref.logprobs))

    check_logprobs_close(
        outputs_0_lst=ref_results,
        outputs_1_lst=vllm_results,
        name_0="reference",
        name_1="vllm",
        always_check_logprobs=True,
    )
    for (ref_ids, _, ref_lps), (vllm_ids, _, vllm_lps) in zip(
        ref_results, vllm_results, strict=True
    ):
        assert vllm_ids == ref_ids
        # Greedy tokens of a tiny random model can hide a wrong input; the
        # top logprobs do not.
        diffs = [
            abs(ref_lp[token] - vllm_lp[token])
            for ref_lp, vllm_lp in zip(ref_lps, vllm_lps, strict=True)
            for token in ref_lp.keys() & vllm_lp.keys()
        ]
        assert max(diffs) < LOGPROB_ATOL, diffs


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(llm: LLM, reference: TarsierReference, name: str) -> None:
    _compare(llm, reference, [CASES[name]])


def test_mixed_batch_matches_reference(llm: LLM, reference: TarsierReference) -> None:
    # Run after the single cases: prefixes and encoder outputs are now cached.
    _compare(llm, reference, list(CASES.values())[::-1])


def test_video_file_matches_reference(
    llm: LLM, reference: TarsierReference, tmp_path: Path
) -> None:
    # vLLM's tarsier loader decodes only the 8 sampled frames of the file; the
    # reference decodes all of them with the same decoder and samples itself.
    path = tmp_path / "clip.mp4"
    write_mp4(path, _video(np.random.RandomState(1), 30, 128, 72))
    video = fetch_video(path.as_uri(), {"video_backend": "tarsier", "num_frames": 8})
    frames, metadata = video.media
    assert len(frames) == 8 and metadata["total_num_frames"] == 30
    case = Case(VIDEO_PROMPT, video=video.media, reference_video=decode_mp4(path))
    _compare(llm, reference, [case])


def test_questions_about_one_video_decode_it_once(
    llm: LLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video sent once with a `uuid`, then by its `uuid` alone (vLLM's
    cached-input form): the loader runs once, and each answer is the one the
    whole video gives."""
    path = tmp_path / "clip.mp4"
    write_mp4(path, _video(np.random.RandomState(11), 30, 128, 72))
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    loads = []
    load_bytes = TarsierVideoBackend.load_bytes

    def counting_load_bytes(cls: type, *args: Any, **kwargs: Any) -> Any:
        loads.append(1)
        return load_bytes(*args, **kwargs)

    monkeypatch.setattr(
        TarsierVideoBackend, "load_bytes", classmethod(counting_load_bytes)
    )
    template = (TEMPLATES / "template_tarsier.jinja").read_text()
    sampling_params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)

    def ask(video: dict[str, Any], question: str) -> list[int]:
        messages = [
            {"role": "user", "content": [video, {"type": "text", "text": question}]}
        ]
        (output,) = llm.chat(messages, sampling_params, chat_template=template)
        return list(output.outputs[0].token_ids)

    questions = ["What happens?", "Who is there?", "Where is it?"]
    whole = {"type": "video_url", "video_url": {"url": url}}
    expected = [ask(whole, q) for q in questions]
    assert len(loads) == 3

    loads.clear()
    named = ask({**whole, "uuid": "clip-11"}, questions[0])
    again = [
        ask({"type": "video_url", "video_url": {}, "uuid": "clip-11"}, q)
        for q in questions[1:]
    ]
    assert len(loads) == 1
    assert [named, *again] == expected


def test_prompt_over_context_names_the_fixes(llm: LLM) -> None:
    case = Case(VIDEO_PROMPT, video=CASES["video_8_frames"].video, num_frames=9)
    with pytest.raises(VLLMValidationError) as exc_info:
        llm.generate(case.vllm_input(), SamplingParams(max_tokens=1))

    message = str(exc_info.value)
    assert f"maximum model length of {MAX_MODEL_LEN}" in message
    assert "1 video item(s) take 5409" in message
    assert "fewer frames" in message
    assert "`max_model_len`" in message


def test_rejected_prompt_leaves_the_cache_consistent(
    llm: LLM, reference: TarsierReference
) -> None:
    # The same video (same processed item) first in a prompt too long for the
    # context, then in one that fits: the second must get its data to the
    # engine although the first was processed and rejected. A video no other
    # test sent, so that neither cache holds it yet.
    video = _video(np.random.RandomState(7), 12, 128, 72)
    too_long = Case(VIDEO_PROMPT.replace("Describe", "Describe " * 400), video=video)
    with pytest.raises(VLLMValidationError, match="1 video item"):
        llm.generate(too_long.vllm_input(), SamplingParams(max_tokens=1))

    _compare(llm, reference, [Case(VIDEO_PROMPT, video=video)])


def test_reference_reads_a_sharded_checkpoint(
    reference: TarsierReference, tmp_path: Path
) -> None:
    """Published checkpoints are sharded; the tiny fixture is one file."""
    sharded = TarsierReference(str(write_sharded_copy(MODEL_ID, tmp_path)))
    assert len(list(tmp_path.glob("model-*-of-00002.safetensors"))) == 2
    assert same_weights(reference, sharded)
