# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The workaround the docs give for what stock vLLM 0.32.0 lacks: with the
front end's processor cache off (`--mm-processor-cache-gb 0`), a video in a
rejected over-length request does not break the next request with it."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import rejected_then_same_video, serve
from tarsier_reference import AuthorsTokenizer

MODEL = "omni-research/Tarsier-7b"


@pytest.fixture(scope="module")
def server(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir = tmp_path_factory.mktemp("log")
    with serve(MODEL, media, log_dir, "--mm-processor-cache-gb", "0") as url:
        yield url


def test_no_processor_cache_no_drift(server: str, media: Path) -> None:
    from huggingface_hub import snapshot_download

    tokenizer = AuthorsTokenizer(Path(snapshot_download(MODEL)))
    assert rejected_then_same_video(server, MODEL, media, tokenizer) == (400, 200)
