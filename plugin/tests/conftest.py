# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The plugin's tests run in a venv with a stock vLLM and the vllm-tarsier
wheel (`make test-plugin`), from the repository: the independent references
are the fork's test files, imported from their folder (they use no vLLM)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models" / "multimodal" / "generation"))

# Tarsier's 8 frames take 4,808 tokens, past the 4,096 positions the
# checkpoints declare: the context flag the docs give.
os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 30-frame MP4 of noise (the loader keeps 8 or 16 of its
    frames), for --allowed-local-media-path."""
    from video_files import write_mp4

    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(5)
    write_mp4(folder / "clip.mp4", rng.integers(0, 256, (30, 72, 96, 3), np.uint8))
    return folder
