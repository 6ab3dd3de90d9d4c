# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The tokenizer of Tarsier (v1) checkpoints, as the authors' pipeline builds it.

The checkpoints ship a SentencePiece `tokenizer.model` and name `LlamaTokenizer`,
with no `tokenizer.json`. The authors' code (Transformers 4.37) converts it to a
fast tokenizer that puts a word-start mark (`▁`) before every piece of text
between added tokens: the first word, and the text after each `<image>`.
Transformers 5 loads model type "llava" with a generic backend instead, which
marks no word start, and its `LlamaTokenizer` marks only the first one, so
neither gives the ids the model was trained on.

A repo that ships a `tokenizer.json` is loaded from it. [inferred] Tarsier-34b's
published files could not be read here: with a `tokenizer.model` only, its Yi
model's own ids are kept (Transformers 4.37 would rename ids 1 and 2 to `<s>`
and `</s>` and move `<image>` off the config's `image_token_index`).
"""

from pathlib import Path
from typing import cast

from tokenizers import normalizers
from transformers import AddedToken, AutoTokenizer, LlamaTokenizer

from vllm.transformers_utils.repo_utils import file_or_path_exists

from .hf import get_cached_tokenizer
from .protocol import TokenizerLike

VIDEO_TOKEN = "<video>"
"""The video placeholder of Tarsier prompts, one token here. The authors replace
it with one `<image>` per frame before tokenizing, so it splits the text as
those images do; the model's processor replaces this token with the frames."""


class TarsierTokenizer(TokenizerLike):
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        *args,
        trust_remote_code: bool = False,
        revision: str | None = None,
        download_dir: str | None = None,
        **kwargs,
    ) -> TokenizerLike:
        if file_or_path_exists(path_or_repo_id, "tokenizer.json", revision):
            # A converted tokenizer says how it splits text: use it as it is.
            tokenizer = AutoTokenizer.from_pretrained(
                path_or_repo_id,
                *args,
                trust_remote_code=trust_remote_code,
                revision=revision,
                cache_dir=download_dir,
                **kwargs,
            )
        else:
            tokenizer = LlamaTokenizer.from_pretrained(
                path_or_repo_id,
                *args,
                revision=revision or "main",
                cache_dir=download_dir,
                legacy=True,
                **kwargs,
            )
            # Transformers 4.37's conversion: prepend `▁` to each piece of text
            # (even one that starts with a space), then spaces become `▁`.
            backend = tokenizer.backend_tokenizer
            backend.normalizer = normalizers.Sequence(
                [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
            )
            backend.pre_tokenizer = None

        if VIDEO_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens(
                [AddedToken(VIDEO_TOKEN, special=True, normalized=False)],
                special_tokens=True,
            )
        return cast(TokenizerLike, get_cached_tokenizer(tokenizer))
