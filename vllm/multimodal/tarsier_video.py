# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The `tarsier` video loader, in its own module so that the fork's
`vllm.multimodal.video` and the vllm-tarsier plugin register the same code."""

import bisect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from vllm.logger import init_logger
from vllm.multimodal.video import (
    VIDEO_LOADER_REGISTRY,
    DecodedFrames,
    VideoBackend,
)
from vllm.multimodal.video_decoders import (
    VideoDecoderBackend,
    VideoSourceMetadata,
    VideoTargetMetadata,
    check_frame_pixel_limit,
)
from vllm.utils.import_utils import PlaceholderModule

try:
    import cv2
except ImportError:
    cv2 = PlaceholderModule("cv2")  # type: ignore[assignment]

logger = init_logger(__name__)


def sampled_frame_positions(
    metadata: Mapping[str, Any] | None,
    num_decoded: int,
    sample: Callable[[int], list[int]],
    num_frames: int,
) -> list[int]:
    """Positions among a video's decoded frames of the frames `sample(T)` keeps
    of the source video's `T` frames.

    A loader that decoded only some frames says which (`frames_indices` of
    `total_num_frames`); frames without that metadata are the whole video.
    Only exact frames are taken: a video loaded for other frames (a request's
    `num_frames` that did not reach the loader) is an error that says what to
    send, never the nearest frames.
    """
    indices = (metadata or {}).get("frames_indices")
    total = (metadata or {}).get("total_num_frames")
    if not indices or not total or len(indices) != num_decoded:
        return sample(num_decoded)

    position = {index: j for j, index in enumerate(indices)}
    wanted = sample(total)
    if missing := [index for index in wanted if index not in position]:
        raise ValueError(
            f"`num_frames`={num_frames} samples frames {wanted} of the video's "
            f"{total}, but it was loaded at frames {list(indices)} (missing "
            f"{missing}). Load it for the same frames: send "
            f'`"media_io_kwargs": {{"video": {{"num_frames": {num_frames}}}}}` '
            "with the request, or set it in `--media-io-kwargs`."
        )
    return [position[index] for index in wanted]


@VIDEO_LOADER_REGISTRY.register("tarsier")
class TarsierVideoBackend(VideoBackend):
    """Frames as Tarsier's and Tarsier2's reference pipeline samples them.

    The pipeline keeps frames ``round(i * (T - 1) / (num_frames - 1))`` of the
    video's ``T`` frames, each once, in order; ``frames_indices`` names them.
    Any decoding codec of ``VideoBackend`` (``backend``) applies. With OpenCV
    (the default) a long video costs the frames it keeps, not its length: the
    container's packets give ``T`` and every frame's timestamp without
    decoding, the decoder seeks to each wanted frame past a keyframe, and each
    frame it returns is checked against the wanted frame's timestamp. Where
    the timestamps do not identify the frames (no or repeated timestamps,
    variable frame rate seeks, packets that are not frames), it decodes the
    video in order instead; if fewer frames decode than the header claims, it
    samples over those. A GIF is read with PIL, as the authors do.
    """

    # How far before the target OpenCV's FFmpeg backend starts a seek.
    _SEEK_BACKOFF: ClassVar[int] = 16

    @staticmethod
    def sample_indices(total: int, num_frames: int) -> list[int]:
        """Distinct frames among ``round(i * (total - 1) / (num_frames - 1))``."""
        if num_frames < 1 or num_frames >= total:
            return list(range(total))
        if num_frames == 1:
            return [0]
        last, steps = total - 1, num_frames - 1
        return sorted({round(i * last / steps) for i in range(num_frames)})

    @classmethod
    def compute_frames_index_to_sample(
        cls,
        source: VideoSourceMetadata,
        target: VideoTargetMetadata,
        **kwargs,
    ) -> list[int]:
        return cls.sample_indices(source.total_frames_num, target.num_frames)

    @classmethod
    def load_bytes(
        cls,
        data: bytes,
        num_frames: int = -1,
        fps: int = -1,
        max_duration: int = 300,
        frame_recovery: bool = False,
        *,
        backend: VideoDecoderBackend = "opencv",
        frame_tokens: int | None = None,
        max_model_len: int | None = None,
        **kwargs: Any,
    ) -> tuple[DecodedFrames, dict[str, Any]]:
        # A model whose frames take a fixed number of tokens (Tarsier) sets
        # both, so that frames that could never fit are not decoded.
        if frame_tokens and max_model_len and num_frames * frame_tokens > max_model_len:
            raise ValueError(
                f"A video of {num_frames} frames takes {num_frames * frame_tokens} "
                f"tokens ({frame_tokens} per frame), more than the maximum model "
                f"length of {max_model_len}: ask for at most "
                f"{max_model_len // frame_tokens} frames with `num_frames`."
            )
        if not data:
            raise ValueError("The video is empty (0 bytes).")
        if backend != "opencv":
            return super().load_bytes(
                data,
                num_frames,
                backend=backend,
                frame_recovery=frame_recovery,
                **kwargs,
            )
        if data[:6] in (b"GIF87a", b"GIF89a"):
            frames, total, fps_ = cls._load_gif(data, num_frames)
        else:
            frames, total, fps_ = cls._load_opencv(data, num_frames)
        indices = sorted(frames)
        return np.stack([frames[i] for i in indices]), {
            "total_num_frames": total,
            "fps": fps_,
            "duration": total / fps_ if fps_ > 0 else 0,
            "video_backend": "tarsier",
            "frames_indices": indices,
            "do_sample_frames": False,
        }

    @classmethod
    def _load_gif(
        cls, data: bytes, num_frames: int
    ) -> tuple[dict[int, npt.NDArray], int, float]:
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(data)) as gif:
            check_frame_pixel_limit(gif.width, gif.height)
            total = getattr(gif, "n_frames", 1)
            frames: dict[int, npt.NDArray] = {}
            for index in cls.sample_indices(total, num_frames):
                gif.seek(index)
                frames[index] = np.asarray(gif.convert("RGB"))
            duration_ms = gif.info.get("duration") or 0
        return frames, total, 1000 / duration_ms if duration_ms else 0.0

    @staticmethod
    def _open(data: bytes) -> "cv2.VideoCapture":
        from vllm.multimodal.video_decoders.opencv import OpenCVVideoBackendMixin

        try:
            return OpenCVVideoBackendMixin.open_video_capture(data)
        except ValueError as e:
            raise ValueError(
                f"Could not open the video ({len(data)} bytes): it is not in a "
                "format FFmpeg reads, or it is truncated or corrupt. Send an MP4, "
                "WebM, AVI or GIF file."
            ) from e

    @staticmethod
    def _packet_index(data: bytes) -> tuple[list[float], list[float]]:
        """The video packets' timestamps in presentation order, and the
        keyframes', read without decoding (none if raw packets are not
        available)."""
        cap = TarsierVideoBackend._open(data)
        pts: list[float] = []
        keyframes: list[float] = []
        if cap.set(cv2.CAP_PROP_FORMAT, -1):  # raw packets
            while cap.grab():
                pts.append(cap.get(cv2.CAP_PROP_PTS))
                if cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
                    keyframes.append(pts[-1])
        return sorted(pts), sorted(keyframes)

    @classmethod
    def _load_opencv(
        cls, data: bytes, num_frames: int, seek: bool = True
    ) -> tuple[dict[int, npt.NDArray], int, float]:
        """`seek=False` decodes in order over the header's frame count (the
        benchmarks' baseline)."""
        cap = cls._open(data)
        check_frame_pixel_limit(
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        fps = cap.get(cv2.CAP_PROP_FPS)
        pts, keyframes = cls._packet_index(data) if seek else ([], [])
        # Distinct timestamps name the frames: seek, checking each frame.
        if pts and len(set(pts)) == len(pts):
            wanted = cls.sample_indices(len(pts), num_frames)
            if (frames := cls._read_seeking(cap, wanted, pts, keyframes)) is not None:
                return frames, len(pts), fps
            cap = cls._open(data)
        logger.debug("Timestamps do not identify the frames: decoding in order.")
        # One packet per frame is a better count than the header's, which
        # some containers estimate from the duration. (The header is read
        # directly: OpenCVVideoBackendMixin.get_video_metadata takes a capture
        # in vLLM 0.32 and the bytes in 0.33.)
        total = len(pts) or int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        while True:
            if total < 1:  # no usable count in the header: count the frames
                total = 0
                while cap.grab():
                    total += 1
                cap = cls._open(data)
                if total == 0:
                    raise ValueError("Could not decode any frame of the video.")
            wanted = cls.sample_indices(total, num_frames)
            frames, decoded = cls._read_sampled(cap, set(wanted))
            if decoded > wanted[-1]:
                return frames, total, fps
            if decoded == 0:
                raise ValueError("Could not decode any frame of the video.")
            logger.warning(
                "The video claims %d frames, but only %d decode; sampling over those.",
                total,
                decoded,
            )
            total = decoded
            cap = cls._open(data)

    @classmethod
    def _read_seeking(
        cls,
        cap: "cv2.VideoCapture",
        wanted: list[int],
        pts: list[float],
        keyframes: list[float],
    ) -> dict[int, npt.NDArray] | None:
        """Decode the wanted frames, seeking where that skips decoding; None as
        soon as a decoded frame is not the wanted one by its timestamp. The
        decoder's timestamps may be offset from the packets' by a constant
        (AVI): frame 0, always wanted and decoded first, calibrates it."""
        key_indices = [bisect.bisect_left(pts, key) for key in keyframes]
        frames: dict[int, npt.NDArray] = {}
        position = 0  # the frame the next read returns
        offset = None
        for target in wanted:
            # OpenCV seeks to the keyframe before `target - 16`, then decodes
            # up to the target: worth it only if that keyframe is ahead.
            landing = bisect.bisect_right(key_indices, target - cls._SEEK_BACKOFF)
            if offset is not None and landing and key_indices[landing - 1] > position:
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                position = target
            while position < target and cap.grab():
                position += 1
            ok, frame = cap.read()
            if not ok or position != target:
                return None
            decoded_pts = cap.get(cv2.CAP_PROP_PTS)
            if offset is None:
                offset = decoded_pts - pts[0]
            if decoded_pts - offset != pts[target]:
                return None
            frames[target] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position += 1
        return frames

    @staticmethod
    def _read_sampled(
        cap: "cv2.VideoCapture", wanted: set[int]
    ) -> tuple[dict[int, npt.NDArray], int]:
        """Decode frames in order up to the last wanted one, keeping the wanted
        ones; also returns how many frames decoded before the first failure."""
        frames: dict[int, npt.NDArray] = {}
        for index in range(max(wanted) + 1):
            if not cap.grab():
                return frames, index
            if index in wanted:
                ok, frame = cap.retrieve()
                if not ok:
                    return frames, index
                frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return frames, max(wanted) + 1
