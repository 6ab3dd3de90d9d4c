# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The Transformers references, loaded by file path from this repository.

The reference arms and the processor arm run the independent references that
the patch's generation tests compare vLLM with:
``tests/models/multimodal/generation/tarsier_reference.py`` (Tarsier) and
``tarsier2_reference.py`` (Tarsier2). They are the patch's own files, so this
repository holds them at those paths (the overlay that the fork is built
from), and they import only numpy, torch, PIL, safetensors, huggingface_hub
and transformers: not vllm, not each other, nothing else from vLLM's tests
tree.

So they are loaded here from this repository's copy, by path, with importlib,
as the top-level modules ``tarsier_reference`` and ``tarsier2_reference``
(loaded once per process, on first use): nothing puts a ``tests`` package on
``sys.path``, the benchmark does not depend on where the fork is materialized
(``build/fork``) or installed, and it runs the code that the tests in this
checkout run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
REFERENCES = REPO / "tests" / "models" / "multimodal" / "generation"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    path = REFERENCES / f"{name}.py"
    if not path.is_file():
        raise ImportError(
            f"{path} not found: the benchmark runs the test reference from this "
            "repository's tests/ tree (the overlay), next to bench/"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would (its dataclasses look
    # their module up by name).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def tarsier_reference() -> ModuleType:
    """``tests/models/multimodal/generation/tarsier_reference.py``."""
    return _load("tarsier_reference")


def tarsier2_reference() -> ModuleType:
    """``tests/models/multimodal/generation/tarsier2_reference.py``."""
    return _load("tarsier2_reference")
