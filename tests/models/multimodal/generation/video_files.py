# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""MP4 files for the generation tests, and the reference side's decoding of
them: every frame, with the same decoder (OpenCV) that vLLM's loader uses."""

from pathlib import Path

import cv2
import numpy as np


def write_mp4(path: Path, video: np.ndarray, fps: int = 25) -> None:
    """Write RGB frames (T, H, W, 3) as an MPEG-4 part 2 file."""
    height, width = video.shape[1:3]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height)
    )
    for frame in video:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def decode_mp4(path: Path) -> np.ndarray:
    """Every frame of a video file as RGB, shape (T, H, W, 3)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)
