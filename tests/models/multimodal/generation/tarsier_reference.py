# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""An independent reference of Tarsier (v1), written for the tests from the
published semantics with Transformers' CLIP and Llama modules.

It shares no code with `vllm.model_executor.models.tarsier` and does not use
Transformers' Llava, which lacks Tarsier's row and frame separators.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

# Weight-name prefixes of the published (pre-Transformers-5) LLaVA layout.
_VISION_PREFIX = "vision_tower.vision_model."
_LM_PREFIX = "language_model."
_PROJECTOR_PREFIX = "multi_modal_projector."


def reference_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """Uniform sampling with both ends, Python rounding (halves to even)."""
    if num_frames == 1:
        return [0]
    return [round(i * (num_total - 1) / (num_frames - 1)) for i in range(num_frames)]


class AuthorsTokenizer:
    """Tarsier's prompt ids as the authors' pipeline makes them, from the
    checkpoint's `tokenizer.model` and `tokenizer_config.json` with the
    SentencePiece library alone (no Transformers, no vLLM).

    The authors' `LlavaProcessor` (Transformers 4.37.2) loads
    `LlamaTokenizerFast`, converted from the SentencePiece model: the text is
    split at added tokens (`<s>`, `</s>`, `<unk>`, `<image>`, ...), and each
    other piece becomes `▁` + the piece with its spaces as `▁`, encoded by
    the SentencePiece model; `<s>` comes first where `add_bos_token` (default
    true) says so. Checked against Transformers 4.37.2 itself on the fixtures
    of both Tarsier checkpoints (610 texts each, identical ids).
    """

    def __init__(self, path: Path) -> None:
        proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
        proto.ParseFromString((path / "tokenizer.model").read_bytes())
        # The `▁` is prepended to every piece below, so never by the model.
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        config = json.loads((path / "tokenizer_config.json").read_text())
        self.added = {
            token["content"]: int(i)
            for i, token in config["added_tokens_decoder"].items()
        }
        self.eos_token: str = config["eos_token"]
        self.eos_token_id = self.added[self.eos_token]
        self.bos_token_id = self.added[config["bos_token"]]
        self.add_bos_token: bool = config.get("add_bos_token", True)
        self.pad_token_id = self.added.get(config.get("pad_token", ""), 0)
        longest_first = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        for piece in self._split.split(text):
            if piece in self.added:
                ids.append(self.added[piece])
            elif piece:
                ids += self.sp.encode("\u2581" + piece.replace(" ", "\u2581"))
        return ids

    def decode(self, token_ids: list[int]) -> str:
        text_ids = [t for t in token_ids if t < self.sp.get_piece_size()]
        return self.sp.decode([t for t in text_ids if t not in self.added.values()])

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        names = {i: token for token, i in self.added.items()}
        return [names.get(t) or self.sp.id_to_piece(t) for t in token_ids]


@dataclass
class ReferenceOutput:
    token_ids: list[int]
    text: str
    logprobs: list[dict[int, float]]


class TarsierReference:
    """CLIP features of layer `vision_feature_layer` without CLS, the MLP
    projector, the separators after each patch row and each frame, spliced
    into the prompt at the `<image>` tokens, then greedy decoding."""

    def __init__(self, model: str) -> None:
        """`model`: a hub id or a local folder."""
        path = Path(model)
        if not path.is_dir():
            path = Path(snapshot_download(model))
        self.config = json.loads((path / "config.json").read_text())
        self.tokenizer = AuthorsTokenizer(path)
        self.image_processor = CLIPImageProcessorPil.from_pretrained(path)

        # One file, or the shards published checkpoints have.
        state = {
            name: tensor
            for file in sorted(path.glob("*.safetensors"))
            for name, tensor in load_file(file).items()
        }

        self.vision = CLIPVisionModel(CLIPVisionConfig(**self.config["vision_config"]))
        self.vision.load_state_dict(
            {
                name.removeprefix(_VISION_PREFIX): tensor
                for name, tensor in state.items()
                if name.startswith(_VISION_PREFIX)
            }
        )

        text_config = LlamaConfig(**self.config["text_config"])
        text_config._attn_implementation = "eager"
        self.lm = LlamaForCausalLM(text_config)
        self.lm.load_state_dict(
            {
                name.removeprefix(_LM_PREFIX): tensor
                for name, tensor in state.items()
                if name.startswith(_LM_PREFIX)
            }
        )

        linear_1 = state[_PROJECTOR_PREFIX + "linear_1.weight"]
        linear_2 = state[_PROJECTOR_PREFIX + "linear_2.weight"]
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(linear_1.shape[1], linear_1.shape[0]),
            torch.nn.GELU(),
            torch.nn.Linear(linear_2.shape[1], linear_2.shape[0]),
        )
        self.projector.load_state_dict(
            {
                "0.weight": linear_1,
                "0.bias": state[_PROJECTOR_PREFIX + "linear_1.bias"],
                "2.weight": linear_2,
                "2.bias": state[_PROJECTOR_PREFIX + "linear_2.bias"],
            }
        )

        for module in (self.vision, self.lm, self.projector):
            module.float().eval()

    def preprocess(self, frames: list[Image.Image], pad: bool = False) -> torch.Tensor:
        """Stretch (or pad with the mean colour) to a square of side max(w, h),
        then the CLIP processor."""
        squares = []
        for frame in frames:
            side = max(frame.size)
            if pad:
                colour = tuple(int(c * 255) for c in self.image_processor.image_mean)
                square = Image.new("RGB", (side, side), colour)
                square.paste(
                    frame, ((side - frame.width) // 2, (side - frame.height) // 2)
                )
            else:
                square = frame.resize((side, side))
            squares.append(square)
        return self.image_processor(images=squares, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def frame_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        hidden_states = self.vision(
            pixel_values=pixel_values, output_hidden_states=True
        ).hidden_states
        features = hidden_states[self.config["vision_feature_layer"]][:, 1:]
        patches = self.projector(features)

        embed = self.lm.get_input_embeddings()
        newline = embed(torch.tensor(self.config["image_newline_idx"]))
        frame_end = embed(torch.tensor(self.config["image_new_idx"]))

        num_frames, num_patches, hidden = patches.shape
        side = int(num_patches**0.5)
        grid = patches.view(num_frames, side, side, hidden)
        rows = torch.cat([grid, newline.expand(num_frames, side, 1, hidden)], dim=2)
        return [
            torch.cat([frame_rows.flatten(0, 1), frame_end[None]])
            for frame_rows in rows
        ]

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        frames: list[Image.Image],
        *,
        max_tokens: int,
        num_logprobs: int,
        pad: bool = False,
    ) -> ReferenceOutput:
        """`prompt` holds one `<image>` per frame, in order (the authors'
        pipeline expands `<video>` into `<image>` * num_frames)."""
        image_token = self.config["image_token_index"]
        input_ids = self.tokenizer.encode(prompt)
        visual = iter(self.frame_embeddings(self.preprocess(frames, pad)))

        embed = self.lm.get_input_embeddings()
        pieces = [
            next(visual) if token == image_token else embed(torch.tensor([token]))
            for token in input_ids
        ]
        assert next(visual, None) is None, "more frames than <image> tokens"
        inputs_embeds = torch.cat(pieces)[None]

        token_ids: list[int] = []
        logprobs: list[dict[int, float]] = []
        past_key_values = None
        for _ in range(max_tokens):
            out = self.lm(
                inputs_embeds=inputs_embeds,
                past_key_values=past_key_values,
                use_cache=True,
            )
            past_key_values = out.past_key_values
            step_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            top = torch.topk(step_logprobs, num_logprobs)
            token = int(top.indices[0])
            token_ids.append(token)
            logprobs.append(
                dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            )
            if token == self.tokenizer.eos_token_id:
                break
            inputs_embeds = embed(torch.tensor([[token]]))

        return ReferenceOutput(token_ids, self.tokenizer.decode(token_ids), logprobs)


def video_frames(video: np.ndarray, num_frames: int) -> list[Image.Image]:
    """The frames the authors' pipeline feeds for a video given as an array."""
    return [
        Image.fromarray(video[i])
        for i in reference_frame_indices(len(video), num_frames)
    ]
