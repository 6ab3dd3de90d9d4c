# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Tarsier and Tarsier2 split over two ranks give the results of one rank.

Tensor parallelism shards the vision tower, Tarsier's projector or Tarsier2's
merger, and the LM; pipeline parallelism splits the LM's layers. For each
family, a single-rank engine computes the greedy tokens and top logprobs of
an image request and a video request (the reference; both models were checked
token for token against independent implementations at one rank). Each
parallel engine, offline (`LLM.chat`) and served (`vllm serve`), must give the
same tokens and logprobs within float32 noise, for the same prompt tokens.

Runs on CPU with the `mp` backend, one core per rank. Engine starts dominate
the time (every rank is a fresh process that imports vLLM), so each engine
answers all requests of its family in one go, and by default each (family,
parallelism) pair runs in one mode only: two single-rank and four parallel
engines. `--optional` adds the other four.
"""

import base64
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vllm import SamplingParams
from vllm.config import CompilationMode

from ....conftest import VllmRunner
from ....utils import RemoteOpenAIServer
from ...utils import check_logprobs_close
from .video_files import write_mp4

# The fork's examples/, beside tests/.
TEMPLATES = (
    Path(__file__).resolve().parents[4] / "vllm/transformers_utils/chat_templates"
)
MAX_TOKENS = 24
NUM_LOGPROBS = 5
# Both sides run in float32; they differ only in the order of sums.
LOGPROB_ATOL = 1e-3
# A reference step whose top two logprobs are closer than this could flip
# under float noise; the fixtures' peaked logits keep the gaps far larger.
MIN_TOP2_GAP = 1e-2
# One core per rank; without it the CPU backend asks for a NUMA node per rank.
RANK_CORES = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


@dataclass(frozen=True)
class Family:
    model: str
    max_model_len: int
    # None: the checkpoint's own chat template.
    chat_template: Path | None = None
    # Tarsier's 8 frames take 4,808 tokens, over the checkpoint's 4,096.
    env: tuple[tuple[str, str], ...] = ()

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "dtype": "float32",
            "max_model_len": self.max_model_len,
            "max_num_seqs": 4,
            "limit_mm_per_prompt": {"image": 1, "video": 1},
            "enforce_eager": True,
        }


FAMILIES = {
    "tarsier": Family(
        "omni-research/Tarsier-7b",
        max_model_len=5120,
        chat_template=TEMPLATES / "template_tarsier.jinja",
        env=(("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1"),),
    ),
    "tarsier2": Family("omni-research/Tarsier2-Recap-7b", max_model_len=2048),
}
PARALLEL: dict[str, dict[str, Any]] = {
    "tp2": {"tensor_parallel_size": 2},
    "pp2": {
        "pipeline_parallel_size": 2,
        # vLLM 0.32's CPU worker allocates the buffers that a later stage
        # receives into only while warming up a compiled model, and skips
        # that in eager mode. Trace with Dynamo, eager backend: no compiling.
        "enforce_eager": False,
        "compilation_config": {
            "mode": CompilationMode.DYNAMO_TRACE_ONCE,
            "backend": "eager",
        },
    },
}


@dataclass
class Completion:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    # Per generated token: the top logprobs and the sampled token's.
    logprobs: list[dict[int, float]]


# --- inputs -------------------------------------------------------------------


def _frame(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # Smooth random content: it survives MP4 compression as structure.
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)


def _image_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _video_url(video: np.ndarray, tmp_path: Path) -> str:
    path = tmp_path / "clip.mp4"
    write_mp4(path, video)
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def _conversation(kind: str, url: str, text: str) -> list[dict[str, Any]]:
    media = {"type": f"{kind}_url", f"{kind}_url": {"url": url}}
    return [{"role": "user", "content": [media, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def conversations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 16:9 image and a 12-frame 16:9 video (Tarsier samples 8 frames,
    Tarsier2 takes all 12), as data URLs: the server and `LLM.chat` decode
    the same bytes. `mirrored` is the image flipped left to right."""
    rng = np.random.default_rng(0)
    image = _frame(rng, 320, 180)
    video = np.stack([np.asarray(_frame(rng, 128, 72)) for _ in range(12)])
    tmp_path = tmp_path_factory.mktemp("media")
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {
        "requests": [
            _conversation("image", _image_url(image), "Describe the image."),
            _conversation(
                "video", _video_url(video, tmp_path), "Describe the video in detail."
            ),
        ],
        "mirrored": _conversation("image", _image_url(mirrored), "Describe the image."),
    }


# --- offline and served runs ---------------------------------------------------


def _chat_template_text(family: Family) -> str | None:
    return None if family.chat_template is None else family.chat_template.read_text()


def run_offline(
    runner: VllmRunner, family: Family, conversations: list[Any]
) -> list[Completion]:
    params = SamplingParams(
        temperature=0.0,
        max_tokens=MAX_TOKENS,
        logprobs=NUM_LOGPROBS,
        ignore_eos=True,
    )
    outputs = runner.llm.chat(
        conversations, params, chat_template=_chat_template_text(family)
    )
    completions = []
    for output in outputs:
        sample = output.outputs[0]
        assert sample.logprobs is not None
        completions.append(
            Completion(
                prompt_token_ids=list(output.prompt_token_ids or []),
                token_ids=list(sample.token_ids),
                text=sample.text,
                logprobs=[
                    {token: lp.logprob for token, lp in step.items()}
                    for step in sample.logprobs
                ],
            )
        )
    return completions


def _token_id(token: str) -> int:
    # `return_tokens_as_token_ids` names every logprob token "token_id:<id>".
    return int(token.removeprefix("token_id:"))


def run_served(
    server: RemoteOpenAIServer, family: Family, conversations: list[Any]
) -> list[Completion]:
    client = server.get_client()
    completions = []
    for messages in conversations:
        reply = client.chat.completions.create(
            model=family.model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            logprobs=True,
            top_logprobs=NUM_LOGPROBS,
            extra_body={
                "ignore_eos": True,
                "return_token_ids": True,
                "return_tokens_as_token_ids": True,
            },
        )
        choice = reply.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        logprobs = []
        for step in choice.logprobs.content:
            top = {_token_id(lp.token): lp.logprob for lp in step.top_logprobs}
            logprobs.append(top | {_token_id(step.token): step.logprob})
        extra = choice.model_extra or {}
        completions.append(
            Completion(
                prompt_token_ids=list((reply.model_extra or {})["prompt_token_ids"]),
                token_ids=list(extra["token_ids"]),
                text=choice.message.content or "",
                logprobs=logprobs,
            )
        )
    return completions


def serve_args(family: Family, parallel: dict[str, Any]) -> list[str]:
    """`vllm serve` flags for the same engine settings as offline."""
    kwargs = family.engine_kwargs() | parallel
    args = ["--distributed-executor-backend", "mp"]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    if family.chat_template is not None:
        args += ["--chat-template", str(family.chat_template)]
    return args


# --- reference and comparison ----------------------------------------------------


def _top2_gap(step: dict[int, float]) -> float:
    first, second = sorted(step.values(), reverse=True)[:2]
    return first - second


class References:
    """Single-rank results per family, computed on first use: one engine
    start per family serves all tests of that family."""

    def __init__(self, conversations: dict[str, Any]) -> None:
        self.conversations = conversations
        self.results: dict[str, list[Completion]] = {}

    def get(self, name: str, monkeypatch: pytest.MonkeyPatch) -> list[Completion]:
        if name not in self.results:
            self.results[name] = self._compute(FAMILIES[name], monkeypatch)
        return self.results[name]

    def _compute(
        self, family: Family, monkeypatch: pytest.MonkeyPatch
    ) -> list[Completion]:
        with monkeypatch.context() as m:
            for key, value in family.env:
                m.setenv(key, value)
            with VllmRunner(family.model, **family.engine_kwargs()) as runner:
                requests = self.conversations["requests"]
                expected = run_offline(runner, family, requests)
                [mirrored] = run_offline(
                    runner, family, [self.conversations["mirrored"]]
                )

        # Keep the comparisons meaningful: the tokens follow the pixels (a
        # mirrored image gives other tokens), every request yields MAX_TOKENS
        # of them, and no greedy choice is a near tie that float noise could
        # flip. A subtle error (wrong positions on a later pipeline stage) can
        # leave a tiny model's greedy tokens unchanged: the logprob bound in
        # `assert_same` is what catches it.
        assert mirrored.token_ids != expected[0].token_ids
        for completion in expected:
            assert len(completion.token_ids) == MAX_TOKENS
            gaps = [_top2_gap(step) for step in completion.logprobs]
            assert min(gaps) > MIN_TOP2_GAP, gaps
            print(f"{family.model}: smallest top-2 logprob gap {min(gaps):.3f}")
        return expected


@pytest.fixture(scope="module")
def references(conversations: dict[str, Any]) -> References:
    return References(conversations)


def assert_same(
    expected: list[Completion], actual: list[Completion], name: str
) -> None:
    check_logprobs_close(
        outputs_0_lst=[(c.token_ids, c.text, c.logprobs) for c in expected],
        outputs_1_lst=[(c.token_ids, c.text, c.logprobs) for c in actual],
        name_0="one rank",
        name_1=name,
    )
    for ref, out in zip(expected, actual, strict=True):
        assert out.prompt_token_ids == ref.prompt_token_ids, "inputs differ"
        assert out.token_ids == ref.token_ids, "greedy tokens differ"
        diffs = [
            abs(ref_step[token] - step[token])
            for ref_step, step in zip(ref.logprobs, out.logprobs, strict=True)
            for token in ref_step.keys() & step.keys()
        ]
        assert max(diffs) < LOGPROB_ATOL, diffs
        print(
            f"{name}: {len(out.prompt_token_ids)} prompt tokens, same "
            f"{len(out.token_ids)} tokens, max logprob diff {max(diffs):.1e}"
        )


# --- tests ----------------------------------------------------------------------


def cases(mode: str) -> list[Any]:
    """Every family with every kind of parallelism, in both modes. By
    default each (family, parallelism) pair runs in one mode only, the modes
    alternating, so that each mode still sees both families and both kinds;
    `--optional` runs the other four."""
    params = []
    for i, family in enumerate(FAMILIES):
        for j, parallel in enumerate(PARALLEL):
            default = (i + j + (mode == "served")) % 2 == 0
            marks = () if default else (pytest.mark.optional,)
            params.append(
                pytest.param(family, parallel, id=f"{family}-{parallel}", marks=marks)
            )
    return params


@pytest.mark.parametrize(("family_name", "parallel_name"), cases("offline"))
def test_offline_matches_one_rank(
    vllm_runner: type[VllmRunner],
    references: References,
    conversations: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    family_name: str,
    parallel_name: str,
) -> None:
    family = FAMILIES[family_name]
    expected = references.get(family_name, monkeypatch)

    for key, value in [*family.env, *RANK_CORES.items()]:
        monkeypatch.setenv(key, value)
    # The engine core in this process: one process start (an import of vLLM)
    # fewer; the ranks still run in their own processes.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    torch_threads = torch.get_num_threads()
    try:
        with vllm_runner(
            family.model,
            distributed_executor_backend="mp",
            **(family.engine_kwargs() | PARALLEL[parallel_name]),
        ) as runner:
            actual = run_offline(runner, family, conversations["requests"])
    finally:
        # The engine core lowers torch's threads for serving; later tests in
        # this process should not inherit that.
        torch.set_num_threads(torch_threads)

    assert_same(expected, actual, f"offline {parallel_name}")


@pytest.mark.parametrize(("family_name", "parallel_name"), cases("served"))
def test_served_matches_one_rank(
    references: References,
    conversations: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    family_name: str,
    parallel_name: str,
) -> None:
    family = FAMILIES[family_name]
    expected = references.get(family_name, monkeypatch)

    env = dict(family.env) | RANK_CORES
    # `vllm serve` is looked up on PATH: take the one beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, os.environ["PATH"]])
    for key, value in family.env:
        # The test process validates the server's arguments too.
        monkeypatch.setenv(key, value)
    with RemoteOpenAIServer(
        family.model, serve_args(family, PARALLEL[parallel_name]), env_dict=env
    ) as server:
        actual = run_served(server, family, conversations["requests"])

    assert_same(expected, actual, f"served {parallel_name}")
