"""`vllm serve` as a user runs it: the console script pip installed.

Starts build/venv/bin/vllm on the tiny Tarsier-7b fixture (loopback, no
VLLM_TARGET_DEVICE: the installed package finds the CPU platform itself),
waits for /health, sends one chat request with a video, and stops it with
Ctrl+C as a user would: the server and its engine process must be gone.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM = REPO / "build" / "venv" / "bin" / "vllm"
TEMPLATE = REPO / "vllm/transformers_utils/chat_templates/template_tarsier.jinja"
MODEL = "omni-research/Tarsier-7b"
FRAMES_SAMPLED = 8
TOKENS_PER_FRAME = 601  # 24 x (24 patches + row newline) + frame end
STARTUP_TIMEOUT_S = 600
STOP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mp4_bytes(path: Path, frames: int = 12) -> bytes:
    """A small MP4 whose frames differ (a bar moving across)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 4,
                             (64, 48))
    for t in range(frames):
        frame = np.full((48, 64, 3), 40, np.uint8)
        frame[:, 4 * t:4 * t + 8] = (30, 200, 220)
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def get_json(url: str, body: dict | None = None, timeout: float = 300) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n"
                        f"{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"no /health after {STARTUP_TIMEOUT_S} s:\n"
                f"{log.read_text()[-4000:]}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    assert VLLM.is_file(), f"{VLLM} missing: run `make fork`"
    tmp = tmp_path_factory.mktemp("serve")
    log = tmp / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_TARGET_DEVICE"}
    env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    cmd = [str(VLLM), "serve", MODEL, "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "8192",
           "--chat-template", str(TEMPLATE), "--enforce-eager",
           "--limit-mm-per-prompt", '{"video": 1, "image": 0}']
    with log.open("w") as out:
        # Its own session: Ctrl+C goes to it alone, and its group is checked.
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    info = {"proc": proc, "base": base, "log": log, "tmp": tmp, "stopped": False}
    try:
        wait_healthy(proc, base, log)
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_chat_with_a_video(server: dict) -> None:
    video = base64.b64encode(mp4_bytes(server["tmp"] / "clip.mp4")).decode()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "video_url",
             "video_url": {"url": f"data:video/mp4;base64,{video}"}},
            {"type": "text", "text": "Describe the video in detail."},
        ]}],
        "max_tokens": 8,
        "temperature": 0.0,
    }
    reply = get_json(f"{server['base']}/v1/chat/completions", body)
    usage = reply["usage"]
    assert usage["completion_tokens"] == 8
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"]
    # The video reached the model as Tarsier's 8 frames of 601 tokens.
    visual = FRAMES_SAMPLED * TOKENS_PER_FRAME
    assert visual < usage["prompt_tokens"] < visual + 40


def test_ctrl_c_stops_the_server_and_its_engine(server: dict) -> None:
    proc: subprocess.Popen = server["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_TIMEOUT_S} s after Ctrl+C:\n"
                    f"{server['log'].read_text()[-4000:]}")
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_alive(proc.pid), "the engine process outlived the server"
    assert code == 0, server["log"].read_text()[-4000:]
