# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Several questions about one long video through `vllm serve`.

Starts `vllm serve` on a Tarsier checkpoint (the tiny fixture by default, with
the fake HF cache of `make`), and times, one request at a time:

- one question with the video as a `file://` URL (cold: nothing cached);
- five questions, each sending the URL again (the loader and the processor
  run every time; the prefix cache may still serve the video's tokens);
- five questions about another copy of the video, the first with the URL and a
  `uuid`, the next four with only the `uuid` (`"video_url": {}`), vLLM's
  cached-input form: no download, no decoding.

The video is a 1080p H.264 clip written by `benchmark_tarsier_long_video.py`
(reused if it exists). Run from the repository root:

    export HF_HOME=$PWD/build/hf HF_HUB_OFFLINE=1
    build/venv/bin/python bench/benchmark_tarsier_video_qa.py --length 600
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchmark_tarsier_long_video import prepare_clip  # noqa: E402
from benchmark_tarsier_serving import start_server  # noqa: E402

QUESTIONS = [f"Question {i}: what happens in the video?" for i in range(5)]


def ask(base_url: str, model: str, video: dict, question: str) -> float:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": [video, {"type": "text", "text": question}]}
        ],
        "max_completion_tokens": 4,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="omni-research/Tarsier-7b")
    parser.add_argument("--length", type=int, default=600, help="seconds of video")
    parser.add_argument("--dir", type=Path, default=Path("build/bench-videos"))
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--startup-timeout", type=float, default=900)
    args = parser.parse_args()

    clip = prepare_clip(args.dir, "h264", args.length)
    media = Path(tempfile.mkdtemp(prefix="tarsier-qa-"))
    first, second = media / "first.mp4", media / "second.mp4"
    shutil.copyfile(clip.path, first)
    shutil.copyfile(clip.path, second)

    server_args = argparse.Namespace(
        model=args.model,
        chat_template=BENCH.parent / "vllm/transformers_utils/chat_templates/template_tarsier.jinja",
        max_model_len=args.max_model_len,
        server_arg=["--allowed-local-media-path", str(media)],
        server_log=None,
        startup_timeout=args.startup_timeout,
    )
    server = start_server(server_args)
    try:
        url = {"type": "video_url", "video_url": {"url": first.as_uri()}}
        ask(server.base_url, args.model, url, "warm-up")  # not timed
        fresh = {"type": "video_url", "video_url": {"url": second.as_uri()}}
        one = ask(server.base_url, args.model, fresh, QUESTIONS[0])
        again = [ask(server.base_url, args.model, fresh, q) for q in QUESTIONS]
        third = media / "third.mp4"
        shutil.copyfile(clip.path, third)
        named = {
            "type": "video_url",
            "video_url": {"url": third.as_uri()},
            "uuid": "qa-clip",
        }
        by_id = {"type": "video_url", "video_url": {}, "uuid": "qa-clip"}
        cached = [ask(server.base_url, args.model, named, QUESTIONS[0])]
        cached += [ask(server.base_url, args.model, by_id, q) for q in QUESTIONS[1:]]
    finally:
        server.stop()
        shutil.rmtree(media, ignore_errors=True)

    print(f"\n{clip.path.name}: {args.length} s of 1080p H.264, {args.model}")
    print(f"one question, cold:                    {one:6.2f} s")
    print(
        f"five questions, URL each time:         {sum(again):6.2f} s "
        f"({sum(again) / one:.2f}x one)  {[round(t, 2) for t in again]}"
    )
    print(
        f"five questions, URL + uuid then uuid:  {sum(cached):6.2f} s "
        f"({sum(cached) / one:.2f}x one, {sum(cached) / cached[0]:.2f}x its first)  "
        f"{[round(t, 2) for t in cached]}"
    )


if __name__ == "__main__":
    main()
