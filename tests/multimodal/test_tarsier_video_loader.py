# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The `tarsier` video loader returns exactly the frames
`round(i * (T - 1) / (n - 1))` of a video's T frames, whatever the codec,
container or frame rate, and seeks instead of decoding the whole video where
timestamps identify the frames.

Each frame of the test clips shows its own index as black and white blocks;
clips are written with PyAV. The expected frames are those a sequential
decode shows at the authors' indices.
"""

import fractions
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vllm.multimodal.tarsier_video import TarsierVideoBackend

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

BITS_ROWS, BITS_COLS = 3, 5  # 15 bits: indices up to 32767
HEIGHT, WIDTH = 96, 160
NUM_FRAMES = [1, 2, 8, 16]

# name: (codec, container, encoder options); keyframes every 30 frames.
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264_bframes": ("libx264", "mp4", {"g": "30", "bf": "3", "preset": "medium"}),
    "hevc": ("libx265", "mkv", {"g": "30", "x265-params": "log-level=none"}),
    "vp9": ("libvpx-vp9", "webm", {"g": "30", "deadline": "realtime"}),
    "mpeg4_avi": ("mpeg4", "avi", {"g": "30", "bf": "2"}),
    "mpeg4_mp4": ("mpeg4", "mp4", {"g": "30"}),
}


def index_frame(index: int) -> np.ndarray:
    bits = [(index >> b) & 1 for b in range(BITS_ROWS * BITS_COLS)]
    blocks = np.array(bits, dtype=np.uint8).reshape(BITS_ROWS, BITS_COLS) * 200 + 25
    frame = np.kron(blocks, np.ones((HEIGHT // BITS_ROWS, WIDTH // BITS_COLS)))
    return np.repeat(frame[..., None], 3, axis=-1).astype(np.uint8)


def read_index(frame: np.ndarray) -> int:
    """The index an RGB frame shows (the centre of each block)."""
    grey = frame.mean(-1)
    index = 0
    for bit in range(BITS_ROWS * BITS_COLS):
        row, col = divmod(bit, BITS_COLS)
        y = int((row + 0.5) * HEIGHT / BITS_ROWS)
        x = int((col + 0.5) * WIDTH / BITS_COLS)
        if grey[y - 4 : y + 5, x - 4 : x + 5].mean() > 127:
            index |= 1 << bit
    return index


def write_clip(
    path: Path,
    total: int,
    codec: str,
    options: dict[str, str],
    frame_ms: list[int] | None = None,
) -> bytes:
    """A clip whose frame i shows i; `frame_ms` gives variable frame times."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=25, options=options)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    if frame_ms is not None:
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.time_base = fractions.Fraction(1, 1000)
    pts = 0
    for i in range(total):
        frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
        if frame_ms is not None:
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            pts += frame_ms[i % len(frame_ms)]
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path.read_bytes()


def sequential_indices(data: bytes) -> list[int]:
    """What each frame shows, decoding the whole clip in order with OpenCV."""
    cap = TarsierVideoBackend._open(data)
    shown: list[int] = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return shown
        shown.append(read_index(frame[..., ::-1]))


def authors_indices(total: int, n: int) -> list[int]:
    """The authors' sampling, written out: Python's round, endpoints kept."""
    if n == 1:
        return [0]
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


def check_loader(data: bytes, total: int) -> None:
    shown = sequential_indices(data)
    assert shown == list(range(total)), "the clip itself decodes wrongly"
    for n in NUM_FRAMES:
        frames, metadata = TarsierVideoBackend.load_bytes(data, num_frames=n)
        expected = authors_indices(total, n)
        assert metadata["total_num_frames"] == total
        assert metadata["frames_indices"] == expected
        assert [read_index(f) for f in frames] == [shown[i] for i in expected], n


def seeks_exactly(data: bytes, total: int, n: int = 8) -> bool:
    """Whether the seeking path itself returns the wanted frames (rather than
    giving up, which makes the loader decode in order)."""
    pts, keyframes = TarsierVideoBackend._packet_index(data)
    if len(set(pts)) != len(pts):
        return False
    wanted = authors_indices(total, n)
    frames = TarsierVideoBackend._read_seeking(
        TarsierVideoBackend._open(data), wanted, pts, keyframes
    )
    if frames is None:
        return False
    assert [read_index(frames[i]) for i in wanted] == wanted
    return True


@pytest.mark.parametrize("total", [1, 2, 7, 301])
@pytest.mark.parametrize("name", list(CODECS))
def test_exact_frames_per_codec(tmp_path: Path, name: str, total: int) -> None:
    codec, container, options = CODECS[name]
    data = write_clip(tmp_path / f"clip.{container}", total, codec, options)
    check_loader(data, total)
    if total == 301:  # ten keyframe intervals: seeking pays, and is exact
        # AVI has no timestamps of its own: with B-frames the decoder's do not
        # follow the packets', so the loader decodes in order there.
        assert seeks_exactly(data, total) == (name != "mpeg4_avi")


def test_av1(tmp_path: Path) -> None:
    """AV1 is exact where the OpenCV build decodes it, and a clear error where
    it does not (the opencv-python wheels have no software AV1 decoder)."""
    data = write_clip(tmp_path / "clip.mkv", 61, "libsvtav1", {"g": "30"})
    if sequential_indices(data):
        check_loader(data, 61)
    else:
        with pytest.raises(ValueError, match="Could not decode any frame"):
            TarsierVideoBackend.load_bytes(data, num_frames=8)


@pytest.mark.parametrize(
    ("codec", "container"),
    [("libx264", "mp4"), ("libx264", "mkv"), ("libvpx-vp9", "webm")],
)
def test_variable_frame_rate_is_exact(
    tmp_path: Path, codec: str, container: str
) -> None:
    """Frames of 20 ms and 50 ms, in runs of ten: OpenCV's own seek (by time)
    lands on other frames here, so the loader must not trust it. Matroska's
    header also overstates the frame count."""
    frame_ms = [20] * 10 + [50] * 10
    data = write_clip(
        tmp_path / f"clip.{container}", 300, codec, {"g": "30"}, frame_ms=frame_ms
    )
    check_loader(data, 300)


def test_tens_of_thousands_of_frames(tmp_path: Path) -> None:
    total = 20_000
    options = {"g": "250", "preset": "ultrafast"}
    data = write_clip(tmp_path / "long.mp4", total, "libx264", options)
    for n in (8, 16):
        frames, metadata = TarsierVideoBackend.load_bytes(data, num_frames=n)
        expected = authors_indices(total, n)
        assert metadata["total_num_frames"] == total
        assert [read_index(f) for f in frames] == expected == metadata["frames_indices"]
    assert seeks_exactly(data, total)


class NeighbourSeek:
    """A capture whose seeks land one frame late, as an unreliable index
    would make them."""

    def __init__(self, cap: Any) -> None:
        self.cap = cap

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_POS_FRAMES:
            value += 1
        return self.cap.set(prop, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cap, name)


def test_a_seek_to_a_neighbouring_frame_is_caught(tmp_path: Path) -> None:
    codec, container, options = CODECS["h264_bframes"]
    data = write_clip(tmp_path / f"clip.{container}", 301, codec, options)
    pts, keyframes = TarsierVideoBackend._packet_index(data)
    wanted = authors_indices(301, 8)
    cap = NeighbourSeek(TarsierVideoBackend._open(data))
    assert TarsierVideoBackend._read_seeking(cap, wanted, pts, keyframes) is None
    assert seeks_exactly(data, 301)  # the same clip, seeking as it should
