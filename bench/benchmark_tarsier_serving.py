# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Load test of the OpenAI chat API serving Tarsier or Tarsier2.

Starts ``vllm serve`` (the console script beside this Python) on loopback, or
uses a running server given with ``--base-url``, and sends chat requests at a
fixed concurrency, a mix of images and videos, each its own generated media
(PNG or MP4 data URL) so that no request is served from vLLM's processor cache.
Reports requests completed, failed (an error response) and lost (no response at
all: refused, reset or timed out), latency percentiles, and throughput.

    HF_HUB_OFFLINE=1 python bench/benchmark_tarsier_serving.py \\
        --num-requests 500 --concurrency 32
    python bench/benchmark_tarsier_serving.py \\
        --model omni-research/Tarsier2-Recap-7b --num-requests 40 --concurrency 8

Videos ask for ``--num-frames`` frames through ``mm_processor_kwargs``, which
the server accepts only with ``--trust-request-mm-kwargs`` (set when this
script starts it); 0 leaves the model's default (8 for Tarsier, 16 for
Tarsier2). Every request decodes exactly ``--max-tokens`` tokens
(``ignore_eos``) so that runs compare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "vllm/transformers_utils/chat_templates"
DEFAULT_MODEL = "omni-research/Tarsier-7b"


def default_template(model: str) -> Path:
    name = (
        "template_tarsier2.jinja"
        if "tarsier2" in model.lower()
        else ("template_tarsier.jinja")
    )
    return TEMPLATES / name


# --- media --------------------------------------------------------------------


def png_url(rng: np.random.Generator, width: int, height: int) -> str:
    from PIL import Image

    # A coarse random pattern, upscaled: real structure, cheap to make.
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def mp4_url(
    rng: np.random.Generator, width: int, height: int, frames: int, path: Path
) -> str:
    import cv2

    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"mp4v"), 8, (width, height)
    )
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MP4 (mp4v) here")
    background = rng.integers(0, 256, 3)
    colour = rng.integers(0, 256, 3)
    side = max(4, min(width, height) // 4)
    for t in range(frames):
        frame: np.ndarray = np.empty((height, width, 3), np.uint8)
        frame[:] = background
        x = (t * (width - side)) // max(frames - 1, 1)
        frame[height // 3 : height // 3 + side, x : x + side] = colour
        writer.write(frame)
    writer.release()
    data = path.read_bytes()
    path.unlink()
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


@dataclass
class Request:
    index: int
    kind: str  # "image" or "video"
    body: dict[str, Any]


def build_requests(args: argparse.Namespace) -> list[Request]:
    """All request bodies, made before the clock starts."""
    rng = random.Random(args.seed)
    n_videos = round(args.num_requests * args.video_fraction)
    kinds = ["video"] * n_videos + ["image"] * (args.num_requests - n_videos)
    rng.shuffle(kinds)
    requests = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(kinds):
            media_rng = np.random.default_rng([args.seed, i])
            if kind == "image":
                part = {
                    "type": "image_url",
                    "image_url": {"url": png_url(media_rng, *args.image_size)},
                }
                text = "Describe the image in detail."
            else:
                width, height = args.video_size
                url = mp4_url(
                    media_rng, width, height, args.video_frames, Path(tmp) / f"{i}.mp4"
                )
                part = {"type": "video_url", "video_url": {"url": url}}
                text = "Describe the video in detail."
            body: dict[str, Any] = {
                "model": args.model,
                "messages": [
                    {"role": "user", "content": [part, {"type": "text", "text": text}]}
                ],
                "max_tokens": args.max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
            }
            if kind == "video" and args.num_frames:
                body["mm_processor_kwargs"] = {"num_frames": args.num_frames}
            requests.append(Request(i, kind, body))
    return requests


# --- server -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base_url: str) -> bool:
    try:
        urllib.request.urlopen(f"{base_url}/health", timeout=5).close()
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is not None:
            return
        # Its own process group: the engine core goes with the front-end.
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_server(args: argparse.Namespace) -> Server:
    vllm = Path(sys.executable).parent / "vllm"
    if not vllm.is_file():
        raise SystemExit(f"{vllm} not found: install the fork into this venv")
    port = free_port()
    limits = {"image": 1, "video": 1}
    cmd = [
        str(vllm),
        "serve",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chat-template",
        str(args.chat_template),
        "--max-model-len",
        str(args.max_model_len),
        "--limit-mm-per-prompt",
        json.dumps(limits),
        "--enforce-eager",
        "--trust-request-mm-kwargs",
        "--disable-uvicorn-access-log",
        *args.server_arg,
    ]
    env = dict(os.environ, VLLM_ALLOW_LONG_MAX_MODEL_LEN="1")
    log = args.server_log or Path(tempfile.mkstemp(suffix=".log")[1])
    print(f"starting: {' '.join(cmd)}\n  log: {log}", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + args.startup_timeout
    while not healthy(server.base_url):
        if proc.poll() is not None:
            raise SystemExit(
                f"vllm serve exited with {proc.returncode}:\n{server.tail()}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(
                f"no /health after {args.startup_timeout} s:\n{server.tail()}"
            )
        time.sleep(2)
    return server


# --- load ---------------------------------------------------------------------


@dataclass
class Result:
    index: int
    kind: str
    status: str  # "completed", "failed" or "lost"
    latency_s: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


async def send(session: aiohttp.ClientSession, url: str, request: Request) -> Result:
    start = time.perf_counter()

    def result(status: str, **kwargs: Any) -> Result:
        return Result(
            request.index, request.kind, status, time.perf_counter() - start, **kwargs
        )

    try:
        async with session.post(url, json=request.body) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return result("lost", error=f"{type(e).__name__}: {e}"[:200])
    if response.status != 200:
        return result("failed", error=f"HTTP {response.status}: {text[:200]}")
    try:
        usage = json.loads(text)["usage"]
        return result(
            "completed",
            prompt_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
        )
    except (ValueError, KeyError, TypeError) as e:
        return result("failed", error=f"bad body ({e}): {text[:200]}")


async def run_load(
    base_url: str, requests: list[Request], concurrency: int, timeout: float
) -> tuple[list[Result], float]:
    url = f"{base_url}/v1/chat/completions"
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    results: list[Result] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await send(session, url, request))
            done = len(results)
            if done % max(1, len(requests) // 10) == 0:
                print(f"  {done}/{len(requests)} done", flush=True)

    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout
    ) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return sorted(results, key=lambda r: r.index), elapsed


# --- report -------------------------------------------------------------------


@dataclass
class Summary:
    requests: int
    completed: int
    failed: int
    lost: int
    p50_s: float | None
    p99_s: float | None
    mean_prompt_tokens: float | None
    output_tokens: int
    errors: list[str] = field(default_factory=list)


def summarize(results: list[Result]) -> Summary:
    done = [r for r in results if r.status == "completed"]
    latencies = np.array([r.latency_s for r in done])
    errors = sorted({r.error for r in results if r.error})
    return Summary(
        requests=len(results),
        completed=len(done),
        failed=sum(r.status == "failed" for r in results),
        lost=sum(r.status == "lost" for r in results),
        p50_s=float(np.percentile(latencies, 50)) if done else None,
        p99_s=float(np.percentile(latencies, 99)) if done else None,
        mean_prompt_tokens=(
            float(np.mean([r.prompt_tokens for r in done])) if done else None
        ),
        output_tokens=sum(r.output_tokens for r in done),
        errors=errors[:5],
    )


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(
    args: argparse.Namespace, results: list[Result], elapsed: float
) -> dict[str, Any]:
    rows = {"all": summarize(results)}
    for kind in ("image", "video"):
        subset = [r for r in results if r.kind == kind]
        if subset:
            rows[kind] = summarize(subset)
    total = rows["all"]
    print(
        f"\n{args.model}: {args.num_requests} requests, concurrency "
        f"{args.concurrency}, max_tokens {args.max_tokens}, "
        f"{elapsed:.1f} s wall"
    )
    header = (
        "",
        "requests",
        "completed",
        "failed",
        "lost",
        "p50 s",
        "p99 s",
        "prompt tok",
    )
    table = [header] + [
        (
            name,
            str(s.requests),
            str(s.completed),
            str(s.failed),
            str(s.lost),
            fmt(s.p50_s),
            fmt(s.p99_s),
            fmt(s.mean_prompt_tokens, 0),
        )
        for name, s in rows.items()
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))
    throughput = {
        "requests_per_s": total.completed / elapsed,
        "output_tokens_per_s": total.output_tokens / elapsed,
    }
    print(
        f"\nthroughput: {throughput['requests_per_s']:.2f} requests/s, "
        f"{throughput['output_tokens_per_s']:.1f} output tokens/s"
    )
    if total.errors:
        print("errors (distinct, first 5):")
        for error in total.errors:
            print(f"  {error}")
    return {
        "model": args.model,
        "num_requests": args.num_requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "num_frames": args.num_frames,
        "elapsed_s": elapsed,
        **throughput,
        "rows": {name: asdict(s) for name, s in rows.items()},
    }


# --- main ---------------------------------------------------------------------


def size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--chat-template",
        type=Path,
        default=None,
        help="default: the example template of the model's family",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="use this running server instead of starting one",
    )
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--video-fraction", type=float, default=0.5)
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="frames per video (mm_processor_kwargs); default 4 "
        "when this script starts the server, else the model's",
    )
    parser.add_argument("--image-size", type=size, default=(320, 240), metavar="WxH")
    parser.add_argument("--video-size", type=size, default=(160, 120), metavar="WxH")
    parser.add_argument(
        "--video-frames", type=int, default=16, help="frames in each generated MP4"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="requests sent (and not counted) before the run",
    )
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--server-log", type=Path, default=None)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `vllm serve` argument (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures here"
    )
    args = parser.parse_args(argv)
    if args.chat_template is None:
        args.chat_template = default_template(args.model)
    if args.num_frames is None:
        args.num_frames = 0 if args.base_url else 4
    if not 0 <= args.video_fraction <= 1:
        parser.error("--video-fraction must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    requests = build_requests(args)
    warmup = build_requests(
        argparse.Namespace(
            **{**vars(args), "num_requests": args.warmup, "seed": args.seed + 1}
        )
    )
    print(
        f"built {len(requests)} requests in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    server = None if args.base_url else start_server(args)
    base_url = args.base_url or server.base_url  # type: ignore[union-attr]
    try:
        if warmup:
            results, _ = asyncio.run(
                run_load(base_url, warmup, 1, args.request_timeout)
            )
            bad = [r.error for r in results if r.status != "completed"]
            if bad:
                print(f"warm-up failed: {bad[0]}", file=sys.stderr)
                return 1
        print(
            f"sending {len(requests)} requests at concurrency {args.concurrency}",
            flush=True,
        )
        results, elapsed = asyncio.run(
            run_load(base_url, requests, args.concurrency, args.request_timeout)
        )
        if server is not None and server.proc.poll() is not None:
            print(
                f"the server exited during the run ({server.proc.returncode})"
                f":\n{server.tail()}",
                file=sys.stderr,
            )
    finally:
        if server is not None:
            server.stop()
    report = print_report(args, results, elapsed)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["rows"]["all"]["completed"] == len(requests) else 1


if __name__ == "__main__":
    sys.exit(main())
