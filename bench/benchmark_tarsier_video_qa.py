# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Questions about one long video, through `vllm serve` and `LLM.chat`.

For each API, in a fresh engine (so its caches start empty), one request at a
time, with the video as a `file://` URL:

- a warm-up question about a third clip of the same kind (not timed: the
  first long video an engine sees costs more, about a second here);
- one question about clip A: what a video costs the first time;
- four more questions about A, the URL each time: vLLM's caches key the video
  by its content, so they serve it only after the loader decoded it again;
- five questions about clip B (A's kind and length, other frames): the first
  with the URL and a `uuid`, the next four with only the `uuid`
  (`"video_url": {}`), vLLM's cached-input form: no read, no decoding.

The goal: five questions about one video cost at most 1.3 times one question.
Clips are 1080p H.264, written by `benchmark_tarsier_long_video.py` into
`--dir` (reused when there); that benchmark runs this one after its loader
table. Alone, from the repository root:

    export HF_HOME=$PWD/build/hf HF_HUB_OFFLINE=1
    build/venv/bin/python bench/benchmark_tarsier_video_qa.py --length 600
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchmark_tarsier_long_video import prepare_clip  # noqa: E402

TEMPLATE = (
    BENCH.parent / "vllm/transformers_utils/chat_templates/template_tarsier.jinja"
)
QUESTIONS = [f"Question {i}: what happens in the video?" for i in range(5)]
APIS = ("serve", "LLM.chat")
MAX_TOKENS = 4
RESULT = "QA-RESULT "

Ask = Callable[[dict[str, Any], str], float]


def messages(video: dict[str, Any], question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [video, {"type": "text", "text": question}]}]


def server_asker(base_url: str, model: str) -> Ask:
    def ask(video: dict[str, Any], question: str) -> float:
        body = {
            "model": model,
            "messages": messages(video, question),
            "max_completion_tokens": MAX_TOKENS,
            "temperature": 0.0,
        }
        request = urllib.request.Request(
            f"{base_url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            json.load(response)
        return time.perf_counter() - start

    return ask


def session(ask: Ask, warm: Path, a: Path, b: Path) -> dict[str, Any]:
    """The timed questions; every answer is awaited before the next."""

    def url(path: Path) -> dict[str, Any]:
        return {"type": "video_url", "video_url": {"url": path.resolve().as_uri()}}

    ask(url(warm), "warm-up")
    one = ask(url(a), QUESTIONS[0])
    by_url = [one] + [ask(url(a), q) for q in QUESTIONS[1:]]
    by_uuid = [ask({**url(b), "uuid": "qa-clip-b"}, QUESTIONS[0])]
    by_id = {"type": "video_url", "video_url": {}, "uuid": "qa-clip-b"}
    by_uuid += [ask(by_id, q) for q in QUESTIONS[1:]]
    return {"one": one, "url": by_url, "uuid": by_uuid}


def run_serve(args: argparse.Namespace, clips: list[Path]) -> dict[str, Any]:
    from benchmark_tarsier_serving import start_server

    server = start_server(
        argparse.Namespace(
            model=args.model,
            chat_template=TEMPLATE,
            max_model_len=args.max_model_len,
            server_arg=["--allowed-local-media-path", str(args.dir.resolve())],
            server_log=None,
            startup_timeout=args.startup_timeout,
        )
    )
    try:
        return session(server_asker(server.base_url, args.model), *clips)
    finally:
        server.stop()


def run_llm(args: argparse.Namespace, clips: list[Path]) -> dict[str, Any]:
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    from vllm import LLM, SamplingParams

    llm = LLM(
        args.model,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"image": 1, "video": 1},
        enforce_eager=True,
        allowed_local_media_path=str(args.dir.resolve()),
    )
    template = TEMPLATE.read_text()
    sampling_params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)

    def ask(video: dict[str, Any], question: str) -> float:
        start = time.perf_counter()
        llm.chat(
            messages(video, question),  # type: ignore[arg-type]
            sampling_params,
            chat_template=template,
            use_tqdm=False,
        )
        return time.perf_counter() - start

    return session(ask, *clips)


def measure(api: str, args: argparse.Namespace) -> dict[str, Any]:
    """One API's session in a fresh process (fresh engine, empty caches)."""
    cmd = [
        sys.executable,
        __file__,
        "--api",
        api,
        "--model",
        args.model,
        "--length",
        str(args.length),
        "--dir",
        str(args.dir),
        "--max-model-len",
        str(args.max_model_len),
        "--startup-timeout",
        str(args.startup_timeout),
    ]
    print(f"QA through {api}: {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith(RESULT))
    return json.loads(line.removeprefix(RESULT))


def table(results: dict[str, dict[str, Any]], length: int, model: str) -> str:
    lines = [
        f"Questions about a {length} s 1080p H.264 clip (`file://` URL), {model}, "
        f"{MAX_TOKENS} tokens each, one request at a time, a fresh engine per API.",
        "",
        "| API | one question (A) | five, the URL each time (A) | ratio "
        "| five, URL + `uuid` then `uuid` (B) | ratio | ratio to its first |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for api, r in results.items():
        url, uuid = sum(r["url"]), sum(r["uuid"])
        lines.append(
            f"| {api} | {r['one']:.2f} s | {url:.2f} s | {url / r['one']:.2f}× "
            f"| {uuid:.2f} s | {uuid / r['one']:.2f}× "
            f"| {uuid / r['uuid'][0]:.2f}× |"
        )
    lines += ["", "Each question's seconds:", ""]
    for api, r in results.items():
        lines.append(
            f"- {api}: URL {[round(t, 2) for t in r['url']]}, "
            f"uuid {[round(t, 2) for t in r['uuid']]}"
        )
    return "\n".join(lines) + "\n"


def qa_report(args: argparse.Namespace) -> str:
    """Both APIs' sessions, as the report's section (the first writes the clips)."""
    results = {api: measure(api, args) for api in APIS}
    return "## Questions about one video\n\n" + table(results, args.length, args.model)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="omni-research/Tarsier-7b")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--startup-timeout", type=float, default=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--length", type=int, default=600, help="seconds of video")
    parser.add_argument("--dir", type=Path, default=Path("build/bench-videos"))
    parser.add_argument("--api", choices=APIS, help="one API (internal)")
    args = parser.parse_args()

    if args.api is None:
        print("\n" + qa_report(args), end="")
        return
    # The warm-up clip, A and B: variants of one kind of clip.
    clips = [
        prepare_clip(args.dir, "h264", args.length, variant).path
        for variant in (2, 0, 1)
    ]
    # vLLM's CPU backend otherwise sizes its KV cache from most of the memory.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    run = run_serve if args.api == "serve" else run_llm
    print(RESULT + json.dumps(run(args, clips)), flush=True)


if __name__ == "__main__":
    main()
