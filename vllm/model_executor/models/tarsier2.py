# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Inference-only Tarsier2 model compatible with HuggingFace weights.

Tarsier2 (omni-research/Tarsier2-Recap-7b, omni-research/Tarsier2-7b-0115) is
Qwen2-VL-7B with its own way of feeding frames; the model math is Qwen2-VL's.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache, cached_property
from typing import Any, TypeVar

import numpy as np
import PIL.Image
import torch
from transformers import BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension
from transformers.models.qwen2_vl import (
    Qwen2VLImageProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalInput
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.media import MediaWithBytes
from vllm.multimodal.parse import ImageSize, MultiModalDataItems, VideoProcessorItems
from vllm.multimodal.processing import ProcessorInputs, TimingContext
from vllm.multimodal.tarsier_video import TarsierVideoBackend, sampled_frame_positions

from .qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from .utils import WeightsMapper

_T = TypeVar("_T")


@dataclass(frozen=True)
class Tarsier2FrameOptions:
    """How Tarsier2's reference pipeline samples and sizes frames.

    Every field can be set per request (or per server) in
    ``mm_processor_kwargs``.
    """

    num_frames: int = 16
    """Frames sampled from a video, uniformly with both endpoints; a video
    with fewer frames is used whole."""

    max_frame_pixels: float = 1280 * 720 / 2
    """Pixel cap of each frame (and image) before Qwen2-VL's own resize."""

    max_sample_pixels: float = 128 * 384 * 384
    """Pixel budget of one item, shared by its duplicated frames."""

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, object]) -> "Tarsier2FrameOptions":
        """Read the options from (merged) ``mm_processor_kwargs``."""
        names = (f.name for f in fields(cls))
        values = {key: kwargs[key] for key in names if kwargs.get(key) is not None}
        for key, value in values.items():
            check_positive(key, value, integer=key == "num_frames")
        return cls(**values)  # type: ignore[arg-type]

    def sample_indices(self, total_frames: int) -> list[int]:
        """Indices of the frames to keep: ``round(i * (T - 1) / (n - 1))``."""
        if total_frames < 1:
            raise ValueError(
                f"Expected a video with at least one frame, got {total_frames}"
            )
        # All frames of a shorter video, as the loader keeps them.
        return TarsierVideoBackend.sample_indices(total_frames, self.num_frames)

    def max_pixels(self, num_duplicated_frames: int) -> float:
        """Pixel cap of each frame of an item with that many frames fed."""
        return min(
            self.max_frame_pixels, self.max_sample_pixels / num_duplicated_frames
        )


def check_positive(key: str, value: object, integer: bool = False) -> None:
    """Reject a processor kwarg that is not a positive number (or integer)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"Expected `{key}` to be a positive {kind}, got {value!r}")


def fit_to_pixels(height: int, width: int, max_pixels: float) -> tuple[int, int]:
    """Shrink ``height x width`` to at most ``max_pixels``, keeping its aspect.

    Qwen2-VL's ``smart_resize`` at factor 1: a frame over the cap becomes
    ``floor(h / beta) x floor(w / beta)`` with ``beta = sqrt(h * w / cap)``;
    a frame within the cap is kept as it is.
    """
    if height * width <= max_pixels:
        return height, width
    beta = math.sqrt(height * width / max_pixels)
    return max(1, math.floor(height / beta)), max(1, math.floor(width / beta))


def _frame_layout(frame: object) -> tuple[int, int, ChannelDimension]:
    """Height, width and channel axis, with vLLM's HWC-first convention."""
    if isinstance(frame, PIL.Image.Image):
        return frame.height, frame.width, ChannelDimension.LAST
    if isinstance(frame, (np.ndarray, torch.Tensor)) and frame.ndim == 3:
        if frame.shape[-1] in (1, 3, 4):
            return int(frame.shape[0]), int(frame.shape[1]), ChannelDimension.LAST
        return int(frame.shape[1]), int(frame.shape[2]), ChannelDimension.FIRST
    raise ValueError(
        "Expected a frame as a PIL image or a 3-D array/tensor, "
        f"got {type(frame).__name__}"
    )


def _resize_frame(frame: Any, height: int, width: int) -> PIL.Image.Image:
    """Resize with PIL's default filter, as the reference pipeline does."""
    if not isinstance(frame, PIL.Image.Image):
        _, _, channel_dim = _frame_layout(frame)
        if isinstance(frame, torch.Tensor):
            frame = frame.cpu().numpy()
        frame = to_pil_image(frame, input_data_format=channel_dim)
    if frame.mode != "RGB":
        frame = frame.convert("RGB")
    return frame.resize((width, height))


class Tarsier2ImageProcessor(Qwen2VLImageProcessorPil):
    """Qwen2-VL's image processor on the PIL backend, as in the authors'
    pipeline (Transformers 4.47): the torchvision backend's bicubic resize
    differs from PIL's by an 8-bit level or two (more on pixel noise).

    Pixels left unnormalised (vLLM's on-device normalisation) stay ``uint8``,
    as on the torchvision backend, instead of four times larger ``float32``.
    """

    def patchify(
        self,
        image: np.ndarray,
        patch_size: int,
        merge_size: int,
        temporal_patch_size: int,
    ) -> tuple[np.ndarray, int, int]:
        patches, grid_h, grid_w = super().patchify(
            image, patch_size, merge_size, temporal_patch_size
        )
        if image.dtype == np.uint8:
            patches = patches.astype(np.uint8)
        return patches, grid_h, grid_w


class Tarsier2Processor(Qwen2VLProcessor):
    """Qwen2-VL processor that feeds frames the way Tarsier2's authors do.

    Plain Qwen2-VL packs two consecutive frames into each temporal patch and
    sizes frames only with its own resize. Tarsier2 instead samples
    ``num_frames`` frames uniformly (endpoints included), shrinks each to at
    most ``max_frame_pixels`` (and the item's share of ``max_sample_pixels``),
    and repeats every sampled frame ``temporal_patch_size`` times, so that each
    sampled frame becomes exactly one temporal patch (``grid_t`` equals the
    number of sampled frames). An image is a single frame. Frames then go
    through the image processor, as in the authors' pipeline: Qwen2-VL's own
    resize to multiples of 28, and the repeat over the temporal patch.

    Sampling happens here, so a video should arrive with all its frames, or
    as the ``tarsier`` video loader sampled it for the same ``num_frames``
    (which is how a video URL arrives).
    """

    def __call__(  # type: ignore[override]
        self,
        images: Any = None,
        text: Any = None,
        videos: Any = None,
        *,
        num_frames: int | None = None,
        max_frame_pixels: float | None = None,
        max_sample_pixels: float | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        options = Tarsier2FrameOptions.from_kwargs(
            {
                "num_frames": num_frames,
                "max_frame_pixels": max_frame_pixels,
                "max_sample_pixels": max_sample_pixels,
            }
        )
        if images is not None:
            images = [
                self.prepare_image(image, options) for image in self._as_list(images)
            ]
        if videos is not None:
            videos = [
                self.prepare_video(video, options) for video in self._as_list(videos)
            ]
        return super().__call__(images=images, text=text, videos=videos, **kwargs)

    @staticmethod
    def _as_list(items: Any) -> list[Any]:
        return list(items) if isinstance(items, (list, tuple)) else [items]

    @property
    def frame_repeats(self) -> int:
        """Copies of each sampled frame: one temporal patch per frame."""
        return self.video_processor.temporal_patch_size

    def prepare_image(
        self, image: _T, options: Tarsier2FrameOptions
    ) -> _T | PIL.Image.Image:
        """Cap an image's pixels like a single frame."""
        height, width, _ = _frame_layout(image)
        new_size = fit_to_pixels(height, width, options.max_pixels(self.frame_repeats))
        if new_size == (height, width):
            return image
        return _resize_frame(image, *new_size)

    def prepare_video(self, video: Any, options: Tarsier2FrameOptions) -> list[Any]:
        """Sample and cap the frames of one video."""
        indices = options.sample_indices(len(video))

        height, width, _ = _frame_layout(video[0])
        cap = options.max_pixels(len(indices) * self.frame_repeats)
        new_size = fit_to_pixels(height, width, cap)
        if new_size == (height, width):
            return [video[i] for i in indices]
        return [_resize_frame(video[i], *new_size) for i in indices]

    def _process_videos(  # type: ignore[override]
        self, videos: list[list[Any]], **kwargs: Any
    ) -> tuple[BatchFeature, list[str]]:
        """Each video's frames through the image processor, one temporal patch
        per frame."""
        valid_kwargs = self.image_processor.valid_kwargs.__annotations__
        image_kwargs = {k: v for k, v in kwargs.items() if k in valid_kwargs}
        return_tensors = image_kwargs.pop("return_tensors", None)

        pixel_values, grids = [], []
        for frames in videos:
            processed = self.image_processor(frames, **image_kwargs)
            frame_grids = processed["image_grid_thw"]
            if (frame_grids != frame_grids[0]).any():
                raise ValueError(
                    "Expected the frames of a video to share one size, got "
                    f"patch grids {np.unique(frame_grids, axis=0).tolist()}"
                )
            pixel_values.append(processed["pixel_values"])
            grids.append([len(frames), *frame_grids[0][1:]])

        grid_thw = {"video_grid_thw": np.array(grids)}
        outputs = BatchFeature(
            {"pixel_values_videos": np.concatenate(pixel_values), **grid_thw},
            tensor_type=return_tensors,
        )
        replacements = [
            self.replace_video_token(grid_thw, video_idx=i) for i in range(len(videos))
        ]
        return outputs, replacements


def _normalize_size(config: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the old ``size: {min_pixels, max_pixels}`` form.

    Tarsier2's ``preprocessor_config.json`` predates the
    ``{shortest_edge, longest_edge}`` form that current Transformers expects.
    """
    config = dict(config)
    size = config.get("size")
    if isinstance(size, Mapping) and ("min_pixels" in size or "max_pixels" in size):
        new_size = {
            k: v for k, v in size.items() if k not in ("min_pixels", "max_pixels")
        }
        if "min_pixels" in size:
            new_size.setdefault("shortest_edge", size["min_pixels"])
        if "max_pixels" in size:
            new_size.setdefault("longest_edge", size["max_pixels"])
        config["size"] = new_size
    return config


@cache
def _frame_with_most_tokens(
    max_pixels: float, factor: int, min_pixels: int, max_resized_pixels: int
) -> tuple[ImageSize, int]:
    """The frame within ``max_pixels`` that Qwen2-VL resizes to most tokens.

    Qwen2-VL rounds each side to the nearest multiple of ``factor`` (one token
    per ``factor x factor`` cell), so the frame with most pixels is not always
    the one with most tokens.
    """
    best = (ImageSize(width=1, height=1), 0)
    for height in range(1, math.isqrt(int(max_pixels)) + 1):
        # Qwen2-VL rejects aspect ratios above 200
        width = min(int(max_pixels // height), 200 * height)
        h, w = smart_resize(height, width, factor, min_pixels, max_resized_pixels)
        tokens = (h // factor) * (w // factor)
        if tokens > best[1]:
            best = (ImageSize(width=width, height=height), tokens)
    return best


class Tarsier2ProcessingInfo(Qwen2VLProcessingInfo):
    """Qwen2-VL processing info whose token counts follow Tarsier2's frames."""

    @cached_property
    def _hf_processor(self) -> Tarsier2Processor:
        config = _normalize_size(self.ctx.get_hf_image_processor_config())
        # The reference pipeline sizes video frames with the image settings.
        return Tarsier2Processor(
            image_processor=Tarsier2ImageProcessor(**config),
            video_processor=Qwen2VLVideoProcessor(**config, cap_pixels_per_frame=False),
            tokenizer=self.get_tokenizer(),
        )

    def get_hf_processor(self, **kwargs: object) -> Tarsier2Processor:
        # Request options reach the processor call, not its construction.
        return self._hf_processor

    def check_mm_kwargs(self, mm_kwargs: Mapping[str, object]) -> None:
        """Reject unknown or invalid processor kwargs before any work, so that
        a typo fails instead of running with the defaults, and a bad value is
        named instead of failing inside the HF processor."""
        merged = self.ctx.get_merged_mm_kwargs(mm_kwargs)
        options = {f.name for f in fields(Tarsier2FrameOptions)}
        known = options | Tarsier2ImageProcessor.valid_kwargs.__annotations__.keys()
        if unknown := sorted(merged.keys() - known):
            raise ValueError(
                f"Tarsier2 does not take the processor kwargs {unknown}; it takes "
                f"{sorted(options)} and the Qwen2-VL image processor's options "
                "(e.g. `min_pixels`, `max_pixels`)."
            )
        self.get_frame_options(mm_kwargs)
        for key in ("min_pixels", "max_pixels"):
            if merged.get(key) is not None:
                check_positive(key, merged[key])

    def get_frame_options(
        self, mm_kwargs: Mapping[str, object]
    ) -> Tarsier2FrameOptions:
        """Frame options of a request, over the configured defaults."""
        return Tarsier2FrameOptions.from_kwargs(
            self.ctx.get_merged_mm_kwargs(mm_kwargs)
        )

    @property
    def frame_repeats(self) -> int:
        return self.get_hf_config().vision_config.temporal_patch_size

    def get_video_loader_kwargs(
        self, mm_processor_kwargs: Mapping[str, object]
    ) -> dict[str, Any]:
        """Decode only the frames this request samples from a video URL."""
        num_frames = self.get_frame_options(mm_processor_kwargs).num_frames
        return {"video_backend": "tarsier", "num_frames": num_frames}

    def get_num_image_tokens(
        self,
        *,
        image_width: int,
        image_height: int,
        image_processor: Qwen2VLImageProcessor,
        mm_kwargs: Mapping[str, object],
    ) -> int:
        options = self.get_frame_options(mm_kwargs)
        height, width = fit_to_pixels(
            image_height, image_width, options.max_pixels(self.frame_repeats)
        )
        return super().get_num_image_tokens(
            image_width=width,
            image_height=height,
            image_processor=image_processor,
            mm_kwargs=mm_kwargs,
        )

    def get_num_video_tokens(
        self,
        *,
        image_width: int,
        image_height: int,
        num_frames: int,
        image_processor: Qwen2VLImageProcessor,
        mm_kwargs: Mapping[str, object],
    ) -> int:
        options = self.get_frame_options(mm_kwargs)
        num_fed = len(options.sample_indices(num_frames)) * self.frame_repeats
        height, width = fit_to_pixels(
            image_height, image_width, options.max_pixels(num_fed)
        )
        return super().get_num_video_tokens(
            image_width=width,
            image_height=height,
            num_frames=num_fed,
            image_processor=image_processor,
            mm_kwargs=mm_kwargs,
        )

    def _get_frame_with_most_tokens(self, max_pixels: float) -> tuple[ImageSize, int]:
        vision_config = self.get_hf_config().vision_config
        size = self._get_vision_size(
            self._merge_and_resolve_mm_processor_kwargs({}).get("images_kwargs", {}),
            default_size=self.get_image_processor().size,
        )
        return _frame_with_most_tokens(
            max_pixels,
            vision_config.patch_size * vision_config.spatial_merge_size,
            size["shortest_edge"],
            size["longest_edge"],
        )

    def get_image_size_with_most_features(
        self, max_pixels: int | None = None
    ) -> ImageSize:
        cap = (
            self.get_frame_options({}).max_pixels(self.frame_repeats)
            if max_pixels is None
            else max_pixels
        )
        return self._get_frame_with_most_tokens(cap)[0]

    def get_video_frame_size_with_most_features(self, num_frames: int) -> ImageSize:
        """Frame size of a ``num_frames`` video with the most tokens."""
        options = self.get_frame_options({})
        num_fed = len(options.sample_indices(num_frames)) * self.frame_repeats
        return self._get_frame_with_most_tokens(options.max_pixels(num_fed))[0]

    def get_num_frames_with_most_features(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        max_frames_per_video: int | None = None,
    ) -> int:
        """Frames of the video with most tokens that fits its share of ``seq_len``.

        Tarsier2 feeds at most ``num_frames`` sampled frames, and fewer frames
        may each get more pixels, so every count up to that is tried.
        """
        options = self.get_frame_options({})
        max_frames = options.num_frames
        if max_frames_per_video is not None:
            max_frames = min(max_frames, max_frames_per_video)
        budget = seq_len // max(mm_counts.get("video", 0), 1)

        best_frames, best_tokens = 1, 0
        for num_frames in range(1, max_frames + 1):
            num_fed = num_frames * self.frame_repeats
            _, tokens = self._get_frame_with_most_tokens(options.max_pixels(num_fed))
            if best_tokens < num_frames * tokens <= budget:
                best_frames, best_tokens = num_frames, num_frames * tokens
        return best_frames

    def get_max_video_tokens(self, seq_len: int, mm_counts: Mapping[str, int]) -> int:
        num_frames = self.get_num_frames_with_most_features(seq_len, mm_counts)
        size = self.get_video_frame_size_with_most_features(num_frames)
        return self.get_num_video_tokens(
            image_width=size.width,
            image_height=size.height,
            num_frames=num_frames,
            image_processor=self.get_image_processor(),
            mm_kwargs={},
        )


class Tarsier2DummyInputsBuilder(Qwen2VLDummyInputsBuilder):
    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        # Frames of a long video get fewer pixels than an image.
        assert isinstance(self.info, Tarsier2ProcessingInfo)
        image_size = self.info.get_image_size_with_most_features()
        num_frames = self.info.get_num_frames_with_most_features(seq_len, mm_counts)
        frame_size = self.info.get_video_frame_size_with_most_features(num_frames)

        return {
            "image": self._get_dummy_images(
                width=image_size.width,
                height=image_size.height,
                num_images=mm_counts.get("image", 0),
                overrides=mm_options.get("image"),
            ),
            "video": self._get_dummy_videos(
                width=frame_size.width,
                height=frame_size.height,
                num_frames=num_frames,
                num_videos=mm_counts.get("video", 0),
                overrides=mm_options.get("video"),
            ),
        }


class Tarsier2MultiModalProcessor(Qwen2VLMultiModalProcessor):
    def apply(
        self, inputs: ProcessorInputs, timing_ctx: TimingContext
    ) -> MultiModalInput:
        assert isinstance(self.info, Tarsier2ProcessingInfo)
        self.info.check_mm_kwargs(inputs.hf_processor_mm_kwargs)
        result = super().apply(self._select_frames(inputs), timing_ctx)
        self._check_placeholders(result)
        return result

    def _select_frames(self, inputs: ProcessorInputs) -> ProcessorInputs:
        """Keep of each loaded video the frames the pipeline samples from the
        source video, so that a video a loader decoded only partly is sampled
        as the whole one would be (exactly, or an error)."""
        videos = inputs.mm_data_items.get("video")
        if not isinstance(videos, VideoProcessorItems) or not isinstance(
            videos.metadata, list
        ):
            return inputs
        assert isinstance(self.info, Tarsier2ProcessingInfo)
        options = self.info.get_frame_options(inputs.hf_processor_mm_kwargs)
        data: list[Any] = []
        metadata: list[dict[str, Any] | None] = []
        for item, item_metadata in zip(videos.data, videos.metadata):
            if item is None or not item_metadata:
                data.append(item)
                metadata.append(item_metadata)
                continue
            frames = item.media if isinstance(item, MediaWithBytes) else item
            positions = sampled_frame_positions(
                item_metadata, len(frames), options.sample_indices, options.num_frames
            )
            if positions == list(range(len(frames))):
                data.append(item)
                metadata.append(item_metadata)
                continue
            kept = (
                frames[positions]
                if isinstance(frames, (np.ndarray, torch.Tensor))
                else [frames[p] for p in positions]
            )
            source = item_metadata.get("frames_indices") or range(len(frames))
            metadata.append(
                {**item_metadata, "frames_indices": [source[p] for p in positions]}
            )
            data.append(
                MediaWithBytes(kept, item.original_bytes)
                if isinstance(item, MediaWithBytes)
                else kept
            )
        items = MultiModalDataItems(
            {**inputs.mm_data_items, "video": VideoProcessorItems(data, metadata)}
        )
        return replace(inputs, mm_data_items=items)

    def _check_placeholders(self, result: MultiModalInput) -> None:
        """A pad token left in the prompt has no item to stand for: reject
        it instead of embedding it as text."""
        hf_config = self.info.get_hf_config()
        token_ids = result["prompt_token_ids"]
        for modality, token_id in (
            ("image", hf_config.image_token_id),
            ("video", hf_config.video_token_id),
        ):
            items = result["mm_placeholders"].get(modality, [])
            expected = sum(item.get_num_embeds() for item in items)
            if (found := token_ids.count(token_id)) != expected:
                pad = self.info.get_tokenizer().decode([token_id])
                raise ValueError(
                    f"The prompt has {found} `{pad}` tokens, but its {len(items)} "
                    f"{modality}(s) fill {expected}: write one placeholder per "
                    f"{modality}, as the chat template does."
                )


@MULTIMODAL_REGISTRY.register_processor(
    Tarsier2MultiModalProcessor,
    info=Tarsier2ProcessingInfo,
    dummy_inputs=Tarsier2DummyInputsBuilder,
)
class Tarsier2ForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2-VL with Tarsier2's checkpoint layout and frame pipeline.

    The config is read from the checkpoint's LLaVA layout by
    ``vllm.transformers_utils.configs.tarsier2``.
    """

    # Checkpoint layout: vision_tower.*, language_model.model.*,
    # language_model.lm_head.*; the language model already sits where
    # Qwen2-VL keeps it.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"vision_tower.": "visual."})
