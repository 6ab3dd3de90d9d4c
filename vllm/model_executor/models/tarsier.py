# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Inference-only Tarsier (v1) model compatible with HuggingFace weights.

Tarsier (`omni-research/Tarsier-7b`, `omni-research/Tarsier-34b`) is LLaVA-1.5
(CLIP tower, MLP projector, Llama LM) trained to describe videos. On top of
LLaVA it:

- lays out each image or video frame as its grid of patch features, with the
  LM's input embedding of `image_newline_idx` after every row and the one of
  `image_new_idx` after the frame (P + sqrt(P) + 1 = 601 tokens at 336/14).
  Both ids are rows of the LM vocabulary, so the processor writes them into
  the prompt and the LM embeds them like text;
- takes video as a native modality: `<video>` stands for the sampled frames
  back to back, sampled as the authors' pipeline does;
- stretches every image and frame to a square before the CLIP processor;
- tokenizes prompts as the authors' pipeline does: `TarsierConfig` in
  models/config.py selects the `tarsier` tokenizer mode
  (vllm/tokenizers/tarsier.py), in which `<video>` is one token.

Processor kwargs (`mm_processor_kwargs`, per model or per request):

- `num_frames` (default 8): frames sampled per video, at
  `round(i * (T - 1) / (num_frames - 1))` of its `T` frames;
- `pad_to_square` (default False): pad to a square with the CLIP mean colour
  instead of stretching.

Context policy: the authors' default of 8 frames takes 4,808 tokens, more than
the 4,096 positions the checkpoints declare (the reference does not enforce
them). vLLM keeps that default; a prompt that does not fit `max_model_len` is
rejected, and the fixes are fewer frames (`mm_processor_kwargs={"num_frames":
...}`) or a larger `--max-model-len` together with
`VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`, for which `TarsierConfig` in models/config.py
sizes the LM's RoPE cache so that positions past 4,096 are computed as in the
reference. Memory profiling uses a video with as many frames as fit the
context.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal, cast

import numpy as np
import torch
from PIL import Image
from transformers import (
    BatchFeature,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
)
from transformers.image_transforms import to_pil_image

from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalInput
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageEmbeddingItems,
    ImageProcessorItems,
    ModalityDataItems,
    MultiModalDataItems,
    MultiModalDataParser,
)
from vllm.multimodal.processing import (
    ProcessorInputs,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
    TimingContext,
    cached_encode,
)
from vllm.multimodal.tarsier_video import sampled_frame_positions
from vllm.transformers_utils.processor import cached_get_image_processor
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from .interfaces import MultiModalEmbeddings
from .llava import (
    BaseLlavaMultiModalProcessor,
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaImagePixelInputs,
    LlavaProcessingInfo,
)

_IMAGE_PLACEHOLDER = "<image>"
_VIDEO_PLACEHOLDER = "<video>"
_DEFAULT_NUM_FRAMES = 8


class TarsierVideoPixelInputs(TensorSchema):
    """Dimensions:
        - bn: Batch size * number of videos
        - f: Number of frames per video
        - c: Number of channels (3)
        - h: Height of each frame
        - w: Width of each frame

    Videos of one request share `f`; when requests asked for different
    `num_frames`, the data is passed as a list instead of a batched tensor.
    """

    type: Literal["pixel_values_videos"] = "pixel_values_videos"
    pixel_values_videos: Annotated[
        torch.Tensor | list[torch.Tensor],
        TensorShape("bn", "f", 3, "h", "w", dynamic_dims={"f"}),
    ]


def sample_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread evenly over `num_total`, first and
    last included, rounded with Python's `round` as the authors' pipeline does.
    A video shorter than `num_frames` repeats frames."""
    if num_frames == 1:
        return [0]
    return [round(i * (num_total - 1) / (num_frames - 1)) for i in range(num_frames)]


class TarsierMultiModalDataParser(MultiModalDataParser):
    """Keeps each video's loader metadata with its frames, so that frames are
    sampled at the same source positions whether or not the item was cached."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(video_needs_metadata=True, **kwargs)

    def _get_video_with_metadata(self, video: Any) -> tuple[Any, dict[str, Any]]:
        frames, metadata = super()._get_video_with_metadata(video)
        # Frames passed without metadata are the whole video.
        return frames, {} if metadata is None else metadata

    def _parse_video_data(self, data: Any) -> ModalityDataItems[Any, Any] | None:
        if self.is_embeddings(data):
            raise ValueError(
                "Tarsier takes videos as frames; precomputed video embeddings "
                "are not supported."
            )
        return super()._parse_video_data(data)


class TarsierProcessingInfo(LlavaProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return TarsierMultiModalDataParser(
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_image_processor(self) -> CLIPImageProcessorPil:
        """The checkpoint's CLIP processor, on the PIL backend like the
        Transformers 4.37 processor of the authors' pipeline."""
        model_config = self.ctx.model_config
        image_processor = cached_get_image_processor(
            model_config.model,
            revision=model_config.revision,
            trust_remote_code=model_config.trust_remote_code,
            backend="pil",
        )
        return cast(CLIPImageProcessorPil, image_processor)

    def get_num_frames(self, mm_kwargs: Mapping[str, object]) -> int:
        num_frames = self.ctx.get_merged_mm_kwargs(mm_kwargs).get(
            "num_frames", _DEFAULT_NUM_FRAMES
        )
        if type(num_frames) is not int or num_frames < 1:
            raise ValueError(
                f"`num_frames` must be a positive integer, but got {num_frames!r}."
            )
        return num_frames

    def get_video_loader_kwargs(
        self, mm_processor_kwargs: Mapping[str, object]
    ) -> dict[str, Any]:
        """Decode only the frames this request samples from a video URL; the
        loader rejects, before decoding, frames that could never fit."""
        return {
            "video_backend": "tarsier",
            "num_frames": self.get_num_frames(mm_processor_kwargs),
            "frame_tokens": self.get_max_image_tokens(),
            "max_model_len": self.ctx.model_config.max_model_len,
        }

    def get_pad_to_square(self, mm_kwargs: Mapping[str, object]) -> bool:
        pad_to_square = self.ctx.get_merged_mm_kwargs(mm_kwargs).get(
            "pad_to_square", False
        )
        if not isinstance(pad_to_square, bool):
            raise ValueError(
                f"`pad_to_square` must be a bool, but got {pad_to_square!r}."
            )
        return pad_to_square

    def check_mm_kwargs(self, mm_kwargs: Mapping[str, object]) -> None:
        """Reject unknown or invalid processor kwargs before any work, so that
        a typo fails instead of running with the defaults."""
        merged = self.ctx.get_merged_mm_kwargs(mm_kwargs)
        if unknown := sorted(merged.keys() - {"num_frames", "pad_to_square"}):
            raise ValueError(
                f"Tarsier does not take the processor kwargs {unknown}; it takes "
                "`num_frames` (frames sampled per video) and `pad_to_square`."
            )
        self.get_num_frames(mm_kwargs)
        self.get_pad_to_square(mm_kwargs)

    def get_num_patches(self) -> int:
        """Patch features per image or frame; every input is resized to the
        tower's image size, so this does not depend on the input."""
        size = self.get_vision_encoder_info().get_image_size()
        return super().get_num_image_tokens(image_width=size, image_height=size)

    def get_frame_tokens(self, num_patches: int) -> list[int]:
        """Placeholder tokens of one image or frame: each row of patches, then
        `image_newline_idx`; after the last row, `image_new_idx`."""
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                "Tarsier lays out image features as a square grid, so the "
                "number of patches per image must be a perfect square, but got "
                f"{num_patches}."
            )
        hf_config = self.ctx.get_hf_config(LlavaConfig)
        row = [hf_config.image_token_index] * side + [hf_config.image_newline_idx]
        return row * side + [hf_config.image_new_idx]

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return len(self.get_frame_tokens(self.get_num_patches()))

    def get_num_frames_with_most_features(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
    ) -> int:
        """Frames of each profiling video: as many as fit `seq_len`, since a
        request may ask for any `num_frames`."""
        num_videos = max(mm_counts.get("video", 0), 1)
        return max(seq_len // (self.get_max_image_tokens() * num_videos), 1)


class TarsierDummyInputsBuilder(LlavaDummyInputsBuilder[TarsierProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        num_images = mm_counts.get("image", 0)
        num_videos = mm_counts.get("video", 0)
        return _IMAGE_PLACEHOLDER * num_images + _VIDEO_PLACEHOLDER * num_videos

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        size = self.info.get_image_size_with_most_features()
        return {
            **super().get_dummy_mm_data(seq_len, mm_counts, mm_options),
            "video": self._get_dummy_videos(
                width=size.width,
                height=size.height,
                num_frames=self.info.get_num_frames_with_most_features(
                    seq_len, mm_counts
                ),
                num_videos=mm_counts.get("video", 0),
                overrides=mm_options.get("video"),
            ),
        }


class TarsierMultiModalProcessor(BaseLlavaMultiModalProcessor[TarsierProcessingInfo]):
    def apply(
        self, inputs: ProcessorInputs, timing_ctx: TimingContext
    ) -> MultiModalInput:
        # Before any frame is processed: a typo or a missing placeholder fails
        # with what to fix.
        self.info.check_mm_kwargs(inputs.hf_processor_mm_kwargs)
        self._check_placeholders(inputs)
        return super().apply(inputs, timing_ctx)

    def _check_placeholders(self, inputs: ProcessorInputs) -> None:
        image_token_id = self.info.get_hf_config().image_token_index
        text = self.info.get_tokenizer().decode(inputs.prompt)
        counts = inputs.mm_data_items.get_all_counts()
        found = {
            _IMAGE_PLACEHOLDER: inputs.prompt.count(image_token_id),
            _VIDEO_PLACEHOLDER: text.count(_VIDEO_PLACEHOLDER),
        }
        for modality, placeholder in (
            ("image", _IMAGE_PLACEHOLDER),
            ("video", _VIDEO_PLACEHOLDER),
        ):
            expected = counts.get(modality, 0)
            if found[placeholder] != expected:
                raise ValueError(
                    f"Expected {expected} `{placeholder}` placeholder(s) in the "
                    f"prompt for {expected} {modality}(s), but found "
                    f"{found[placeholder]}."
                )

    def get_dummy_inputs(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> ProcessorInputs:
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        if videos := inputs.mm_data_items.get("video"):
            # Keep every frame of the dummy videos, which were sized to fit.
            frames, _ = videos.get(0)
            inputs.hf_processor_mm_kwargs = {
                **inputs.hf_processor_mm_kwargs,
                "num_frames": len(frames),
            }
        return inputs

    def _get_mm_fields_config(
        self,
        hf_inputs: BatchFeature,
        hf_processor_mm_kwargs: Mapping[str, object],
    ) -> Mapping[str, MultiModalFieldConfig]:
        return dict(
            pixel_values=MultiModalFieldConfig.batched("image"),
            image_embeds=MultiModalFieldConfig.batched("image"),
            pixel_values_videos=MultiModalFieldConfig.batched("video"),
        )

    def _call_hf_processor(
        self,
        hf_data: Mapping[str, object],
        hf_kwargs: Mapping[str, object],
    ) -> BatchFeature:
        # The checkpoints ship no HF processor for this pipeline.
        pad_to_square = self.info.get_pad_to_square(hf_kwargs)
        outputs = dict[str, torch.Tensor]()
        if images := cast(Sequence[object] | None, hf_data.get("images")):
            outputs["pixel_values"] = self._preprocess_frames(images, pad_to_square)
        if videos := cast(
            Sequence[tuple[Sequence[object], Mapping[str, Any]]] | None,
            hf_data.get("videos"),
        ):
            num_frames = self.info.get_num_frames(hf_kwargs)
            outputs["pixel_values_videos"] = torch.stack(
                [
                    self._preprocess_frames(
                        self._sample_frames(frames, metadata, num_frames),
                        pad_to_square,
                    )
                    for frames, metadata in videos
                ]
            )
        return BatchFeature(outputs)

    def _sample_frames(
        self,
        frames: Sequence[object],
        metadata: Mapping[str, Any],
        num_frames: int,
    ) -> list[object]:
        if len(frames) == 0:
            raise ValueError("Expected a video with at least one frame, but got none.")
        indices = sampled_frame_positions(
            metadata,
            len(frames),
            lambda total: sample_frame_indices(total, num_frames),
            num_frames,
        )
        return [frames[i] for i in indices]

    def _to_square(self, image: Image.Image, pad_to_square: bool) -> Image.Image:
        """Stretch (or pad) to a square of side max(w, h), as the authors'
        pipeline does before the CLIP processor's resize and centre crop."""
        side = max(image.size)
        if not pad_to_square:
            return image.resize((side, side), Image.Resampling.BICUBIC)

        mean = self.info.get_image_processor().image_mean
        square = Image.new("RGB", (side, side), tuple(int(c * 255) for c in mean))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return square

    def _preprocess_frames(
        self,
        frames: Sequence[object],
        pad_to_square: bool,
    ) -> torch.Tensor:
        images = [
            self._to_square(
                to_pil_image(cast(np.ndarray, frame)).convert("RGB"), pad_to_square
            )
            for frame in frames
        ]
        image_processor = self.info.get_image_processor()
        pixel_values = image_processor(images=images, return_tensors="pt")
        return pixel_values["pixel_values"].to(self.info.ctx.model_config.dtype)

    def _get_video_target(self) -> list[int]:
        return cached_encode(
            self.info.get_tokenizer(), _VIDEO_PLACEHOLDER, add_special_tokens=False
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        image_token_id = self.info.get_hf_config().image_token_index

        def get_image_replacement(item_idx: int) -> PromptUpdateDetails:
            images = mm_items.get_items(
                "image", (ImageEmbeddingItems, ImageProcessorItems)
            )
            if isinstance(images, ImageEmbeddingItems):
                num_patches = images.get_feature_size(item_idx)
            else:
                num_patches = self.info.get_num_patches()
            tokens = self.info.get_frame_tokens(num_patches)
            return PromptUpdateDetails.select_token_id(tokens, image_token_id)

        def get_video_replacement(item_idx: int) -> PromptUpdateDetails:
            frame = self.info.get_frame_tokens(self.info.get_num_patches())
            num_frames = self.info.get_num_frames(hf_processor_mm_kwargs)
            return PromptUpdateDetails.select_token_id(
                frame * num_frames, image_token_id
            )

        return [
            PromptReplacement(
                modality="image",
                target=[image_token_id],
                replacement=get_image_replacement,
            ),
            PromptReplacement(
                modality="video",
                target=self._get_video_target(),
                replacement=get_video_replacement,
            ),
        ]


@MULTIMODAL_REGISTRY.register_processor(
    TarsierMultiModalProcessor,
    info=TarsierProcessingInfo,
    dummy_inputs=TarsierDummyInputsBuilder,
)
class TarsierForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        vision_config = vllm_config.model_config.hf_config.vision_config
        if not isinstance(vision_config, CLIPVisionConfig):
            # Tarsier2 checkpoints carry the same architecture name.
            raise ValueError(
                "Tarsier (v1) expects a CLIP vision tower, but the config has "
                f"{type(vision_config).__name__}; Tarsier2 checkpoints load as "
                "Tarsier2ForConditionalGeneration."
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return _IMAGE_PLACEHOLDER
        if modality.startswith("video"):
            return _VIDEO_PLACEHOLDER

        raise ValueError("Only image and video modalities are supported")

    @contextmanager
    def _mark_tower_model(
        self,
        vllm_config: VllmConfig,
        modalities: set[str] | str,
        **kwargs: Any,
    ) -> Iterator[None]:
        # The tower encodes video frames too: skip it only if both are disabled.
        with super()._mark_tower_model(vllm_config, {"image", "video"}, **kwargs):
            yield

    def _parse_and_validate_video_input(
        self, **kwargs: object
    ) -> TarsierVideoPixelInputs | None:
        pixel_values_videos = kwargs.pop("pixel_values_videos", None)
        if pixel_values_videos is None:
            return None

        size = self.config.vision_config.image_size
        return TarsierVideoPixelInputs(
            type="pixel_values_videos",
            pixel_values_videos=pixel_values_videos,
            resolve_bindings={"h": size, "w": size},
        )

    def _process_video_input(
        self, video_input: TarsierVideoPixelInputs
    ) -> tuple[torch.Tensor, ...]:
        videos = video_input["pixel_values_videos"]
        frames = torch.cat(list(videos))
        size = self.config.vision_config.image_size

        # Each frame is an image; a video is its frames' embeddings in order.
        frame_embeds = list(
            self._process_image_input(
                LlavaImagePixelInputs(
                    type="pixel_values",
                    pixel_values=frames,
                    resolve_bindings={"h": size, "w": size},
                )
            )
        )
        video_embeds = list[torch.Tensor]()
        for video in videos:
            video_embeds.append(torch.cat(frame_embeds[: len(video)]))
            frame_embeds = frame_embeds[len(video) :]
        return tuple(video_embeds)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        # A batch holds a single modality.
        video_input = self._parse_and_validate_video_input(**kwargs)
        if video_input is None:
            return super().embed_multimodal(**kwargs)

        return self._process_video_input(video_input)
