# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Video files for Tarsier and Tarsier2: the frames that reach each model are
the authors' `round(i * (T - 1) / (n - 1))` of the container's T frames.

The test videos (MP4 and GIF) show their frame index as large black and white
blocks, one per bit, which survive lossy codecs and every resize the
processors do; the frames are identified by reading those blocks back.
"""

import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vllm.config import VllmConfig
from vllm.model_executor.models.tarsier2 import Tarsier2Processor
from vllm.multimodal.processing import BaseMultiModalProcessor
from vllm.multimodal.tarsier_video import TarsierVideoBackend
from vllm.multimodal.video import VIDEO_LOADER_REGISTRY
from vllm.renderers import BaseRenderer, renderer_from_config
from vllm.renderers.params import ChatParams

from ...utils import build_model_context

TARSIER = "omni-research/Tarsier-7b"
TARSIER2 = "omni-research/Tarsier2-Recap-7b"
# The authors' prompt formats, as vLLM ships them.
TEMPLATES_DIR = Path(__file__).parents[4] / "vllm/transformers_utils/chat_templates"
TEMPLATES = {
    TARSIER: TEMPLATES_DIR / "template_tarsier.jinja",
    TARSIER2: TEMPLATES_DIR / "template_tarsier2.jinja",
}
LENGTHS = [1, 7, 30, 301]
NUM_FRAMES = [1, 3, 8, 16]
FORMATS = ["mp4", "gif"]
BITS_ROWS, BITS_COLS = 2, 5  # 10 bits: indices up to 1023
HEIGHT, WIDTH = 96, 160
VIDEO_CASES = pytest.mark.parametrize(
    ("fmt", "total", "n"),
    [(f, t, n) for f in FORMATS for t in LENGTHS for n in NUM_FRAMES],
)
# Tarsier's CLIP normalisation, to read the blocks back from pixel values.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def authors_indices(total: int, n: int) -> list[int]:
    """The authors' sampling, written out: Python's round, endpoints kept."""
    if n == 1:
        return [0]
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def tarsier2_indices(total: int, n: int) -> list[int]:
    """Tarsier2 keeps every frame of a video no longer than n."""
    return list(range(total)) if total <= n else authors_indices(total, n)


def index_frame(index: int) -> np.ndarray:
    bits = [(index >> b) & 1 for b in range(BITS_ROWS * BITS_COLS)]
    blocks = np.array(bits, dtype=np.uint8).reshape(BITS_ROWS, BITS_COLS) * 200 + 25
    frame = np.kron(blocks, np.ones((HEIGHT // BITS_ROWS, WIDTH // BITS_COLS)))
    return np.repeat(frame[..., None], 3, axis=-1).astype(np.uint8)


def read_index(image: np.ndarray) -> int:
    """The index an (H, W) brightness map in [0, 1] shows."""
    h, w = image.shape
    index = 0
    for bit in range(BITS_ROWS * BITS_COLS):
        row, col = divmod(bit, BITS_COLS)
        y, x = int((row + 0.5) * h / BITS_ROWS), int((col + 0.5) * w / BITS_COLS)
        dy, dx = max(h // 10, 1), max(w // 25, 1)
        if image[y - dy : y + dy + 1, x - dx : x + dx + 1].mean() > 0.5:
            index |= 1 << bit
    return index


def write_video(path: Path, total: int) -> bytes:
    frames = [index_frame(i) for i in range(total)]
    if path.suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=40)
    else:
        import cv2

        writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (WIDTH, HEIGHT)
        )
        for frame in frames:
            writer.write(frame)
        writer.release()
    return path.read_bytes()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    folder = tmp_path_factory.mktemp("videos")
    paths = {}
    for fmt in FORMATS:
        for total in LENGTHS:
            path = folder / f"clip_{total}.{fmt}"
            write_video(path, total)
            paths[fmt, total] = path
    return paths


def data_url(path: Path) -> str:
    media_type = "image/gif" if path.suffix == ".gif" else "video/mp4"
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


@VIDEO_CASES
def test_loader_decodes_only_the_sampled_frames(
    videos: dict[tuple[str, int], Path], fmt: str, total: int, n: int
) -> None:
    loader = VIDEO_LOADER_REGISTRY.load("tarsier")
    frames, metadata = loader.load_bytes(videos[fmt, total].read_bytes(), num_frames=n)

    expected = sorted(set(authors_indices(total, n)))
    assert len(frames) == len(expected) <= n
    assert [read_index(f.mean(-1) / 255) for f in frames] == expected
    assert metadata["frames_indices"] == expected
    assert metadata["total_num_frames"] == total


def test_loader_samples_the_frames_a_truncated_file_has(tmp_path: Path) -> None:
    import cv2

    # MJPEG in AVI, cut after the 97th of its 200 frames: its header still
    # claims 200.
    path = tmp_path / "clip.avi"
    fourcc = cv2.VideoWriter.fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(path), fourcc, 25, (WIDTH, HEIGHT))
    for i in range(200):
        writer.write(index_frame(i))
    writer.release()
    data = path.read_bytes()
    cut = [m.end() for m in re.finditer(b"\xff\xd9", data)][96]  # JPEG ends

    loader = VIDEO_LOADER_REGISTRY.load("tarsier")
    frames, metadata = loader.load_bytes(data[:cut], num_frames=8)
    total = metadata["total_num_frames"]
    assert total == 97
    decoded = [read_index(f.mean(-1) / 255) for f in frames]
    assert decoded == metadata["frames_indices"] == authors_indices(total, 8)


def test_loader_rejects_a_file_that_is_no_video() -> None:
    loader = VIDEO_LOADER_REGISTRY.load("tarsier")
    with pytest.raises(ValueError, match=r"Could not open the video \(1200 bytes\)"):
        loader.load_bytes(b"\x00not a video" * 100, num_frames=8)


@pytest.fixture(scope="module")
def long_context() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as m:
        m.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        yield


def _params(renderer: BaseRenderer, **mm_kwargs: Any) -> ChatParams:
    model_id = renderer.model_config.model
    return ChatParams(
        chat_template=TEMPLATES[model_id].read_text(), mm_processor_kwargs=mm_kwargs
    )


def _renderer(model_id: str, tmp: Path) -> BaseRenderer:
    ctx = build_model_context(
        model_id,
        dtype="float32",
        model_config_kwargs={
            "max_model_len": 16 * 601 + 64,
            "allowed_local_media_path": str(tmp),
        },
        limit_mm_per_prompt={"video": 1},
    )
    return renderer_from_config(VllmConfig(model_config=ctx.model_config))


@pytest.fixture(scope="module")
def renderers(
    long_context: None, videos: dict[tuple[str, int], Path]
) -> dict[str, BaseRenderer]:
    folder = next(iter(videos.values())).parent
    return {m: _renderer(m, folder) for m in (TARSIER, TARSIER2)}


def _chat(renderer: BaseRenderer, path: Path, n: int) -> tuple[Any, dict[str, Any]]:
    """A chat message with a video URL through vLLM's renderer, as `LLM.chat`
    and the server render it: MP4s as file URLs synchronously, GIFs as data
    URLs through the async path."""
    url = path.as_uri() if path.suffix == ".mp4" else data_url(path)
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": url}},
                {"type": "text", "text": "Describe the video."},
            ],
        }
    ]
    mm_kwargs = {"num_frames": n}
    params = _params(renderer, **mm_kwargs)
    if path.suffix == ".mp4":
        _, prompt = renderer.render_messages(messages, params)
    else:
        _, prompt = asyncio.run(renderer.render_messages_async(messages, params))
    mm_data = prompt.get("multi_modal_data")
    assert mm_data is not None
    return mm_data["video"], mm_kwargs


@VIDEO_CASES
def test_tarsier_gets_the_authors_frames(
    renderers: dict[str, BaseRenderer],
    videos: dict[tuple[str, int], Path],
    fmt: str,
    total: int,
    n: int,
) -> None:
    video, mm_kwargs = _chat(renderers[TARSIER], videos[fmt, total], n)
    processor = renderers[TARSIER].get_mm_processor()
    outputs = processor(
        "USER: <video>\nDescribe the video. ASSISTANT: ",
        mm_items=processor.info.parse_mm_data({"video": video}),
        hf_processor_mm_kwargs=mm_kwargs,
    )

    (item,) = outputs["mm_kwargs"]["video"]
    pixels = item["pixel_values_videos"].data  # (n, 3, 336, 336)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    seen = [read_index((p * std + mean).mean(0).numpy()) for p in pixels]
    assert seen == authors_indices(total, n)
    assert outputs["mm_placeholders"]["video"][0].length == n * 601


@VIDEO_CASES
def test_tarsier2_gets_the_authors_frames(
    renderers: dict[str, BaseRenderer],
    videos: dict[tuple[str, int], Path],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    total: int,
    n: int,
) -> None:
    video, mm_kwargs = _chat(renderers[TARSIER2], videos[fmt, total], n)
    processor: BaseMultiModalProcessor = renderers[TARSIER2].get_mm_processor()

    fed: list[np.ndarray] = []
    prepare_video = Tarsier2Processor.prepare_video

    def spy(self: Tarsier2Processor, *args: Any, **kwargs: Any) -> Any:
        out = prepare_video(self, *args, **kwargs)
        fed.extend(np.asarray(frame) for frame in out)
        return out

    monkeypatch.setattr(Tarsier2Processor, "prepare_video", spy)
    outputs = processor(
        "<|vision_start|><|video_pad|><|vision_end|>Describe the video.",
        mm_items=processor.info.parse_mm_data({"video": video}),
        hf_processor_mm_kwargs=mm_kwargs,
    )

    # The sampled frames in order, each one temporal patch.
    expected = tarsier2_indices(total, n)
    assert [read_index(f.mean(-1) / 255) for f in fed] == expected
    (item,) = outputs["mm_kwargs"]["video"]
    assert item["video_grid_thw"].data[0].item() == len(expected)


def test_tarsier_rejects_frames_that_cannot_fit_before_decoding(
    renderers: dict[str, BaseRenderer],
    videos: dict[tuple[str, int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(TarsierVideoBackend, "_load_opencv", never)
    with pytest.raises(ValueError, match="ask for at most 16 frames"):
        _chat(renderers[TARSIER], videos["mp4", 30], 3000)


def test_a_request_without_a_video_is_not_rejected_for_its_frames(
    renderers: dict[str, BaseRenderer],
) -> None:
    params = _params(renderers[TARSIER], num_frames=3000)
    messages: Any = [{"role": "user", "content": "Describe a video."}]
    _, prompt = renderers[TARSIER].render_messages(messages, params)
    assert not prompt.get("multi_modal_data")


def test_the_model_loader_kwargs_merge_by_the_request_level_rules(
    renderers: dict[str, BaseRenderer],
) -> None:
    # The request's num_frames reaches the loader; by VideoMediaIO's rule for
    # request-level kwargs it replaces the request's fps instead of joining it.
    params = ChatParams(
        media_io_kwargs={"video": {"fps": 2, "backend": "opencv"}},
        mm_processor_kwargs={"num_frames": 3},
    )
    video = renderers[TARSIER]._get_media_io_kwargs(params)["video"]
    assert video["video_backend"] == "tarsier"
    assert video["num_frames"] == 3
    assert "fps" not in video
    assert video["backend"] == "opencv"
