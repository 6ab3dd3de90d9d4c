# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The plugin's tests run in a venv with a stock vLLM and the vllm-tarsier
wheel (`make test-plugin`), from the repository: the independent references
are the fork's test files, imported from their folder (they use no vLLM)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models" / "multimodal" / "generation"))

# Tarsier's 8 frames take 4,808 tokens, past the 4,096 positions the
# checkpoints declare: the context flag the docs give.
os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
