"""Tarsier on the official vLLM wheels, without a GPU.

`python3 -m forktool official VERSION...` installs the official (CUDA) vllm
wheel of each release, sha256-pinned, and the vllm-tarsier wheel with pip into
a scratch venv, and runs there the plugin's tests that need no engine
(registration and the front end: loader, chat template, processor); with
`--gpu`, on a machine with an NVIDIA GPU, also its generation tests on CUDA.
`python3 -m forktool check VERSION --run` does the same for the fork: the
series applied to that release's sdist, the official wheel's compiled files
joined to it, and the fork's tests that need no engine.

The venvs do not install a release's whole dependency set: they reuse
build/venv's packages (torch 2.13.0, Transformers) through a folder of links
that leaves its vLLM out, and pip adds what the release needs beyond them,
except the GPU-only packages (CUDA torch, FlashInfer, NVIDIA's libraries),
which nothing here could run. vLLM runs on its CPU platform
(VLLM_TARGET_DEVICE=cpu): the CUDA kernels are installed, never loaded. This
shows the plugin's and the fork's Python against each release's Python. It
does not run the engine or any kernel, and a release that pins another torch
(0.33.0 pins 2.14.0) runs here on 2.13.0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# Requirements of the official wheel that are for NVIDIA GPUs only (or the
# CUDA build of torch, which would replace build/venv's): not installed.
GPU_ONLY = re.compile(
    r"(torch|torchvision|torchaudio|torchcodec|pynvvideocodec|flashinfer-python"
    r"|apache-tvm-ffi|tilelang|nvtx|fastsafetensors|instanttensor|quack-kernels"
    r"|tokenspeed-mla|humming-kernels|nvidia-.*)",
    re.IGNORECASE,
)
PLUGIN_TESTS = (
    "plugin/tests/test_plugin_registration.py",
    "plugin/tests/test_plugin_frontend.py",
)
PLUGIN_GPU_TESTS = ("plugin/tests/test_plugin_generation.py",)
# The fork's tests that need no engine (run from the fork's root), and the
# upstream tests the series edits that need none.
FORK_TESTS = (
    "tests/multimodal/media/test_unprocessable_entity_error.py",
    "tests/multimodal/test_video.py::test_opencv_decodes_a_one_frame_video",
    "tests/multimodal/test_cache.py::test_undoing_a_rejected_request_keeps_p0_mirroring_p1",
    "tests/multimodal/test_cache.py::test_a_rejected_request_without_an_exact_undo_makes_p1_miss",
    "tests/multimodal/test_cache.py::test_undo_is_refused_after_another_request_or_an_invalidation",
    "tests/renderers/test_mm_cache_rejected_prompt.py",
    "tests/v1/engine/test_output_processor.py::test_generate_cache_miss_is_a_retryable_request_error",
    "tests/multimodal/test_tarsier_video_loader.py",
    "tests/transformers_utils/test_tarsier2_config.py",
    "tests/models/multimodal/processing/test_tarsier.py",
    "tests/models/multimodal/processing/test_tarsier2.py",
    "tests/models/multimodal/processing/test_tarsier_chat_template.py",
    "tests/models/multimodal/processing/test_tarsier_video.py",
)


def python_requirements(wheel: Path) -> list[str]:
    """The wheel's own requirements (no extras), less the GPU-only ones."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    reqs = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: ") or "extra ==" in line:
            continue
        req = line.removeprefix("Requires-Dist: ")
        match = re.match(r"[A-Za-z0-9_.-]+", req)
        if match and not GPU_ONLY.fullmatch(match.group()):
            reqs.append(req)
    return reqs


def scratch_venv(path: Path, project_site: Path, wheel: Path,
                 first: Path | None = None) -> Path:
    """A venv on build/venv's packages but not its vLLM, plus what `wheel`
    requires beyond them; `first` (a source tree) goes ahead of them."""
    from forktool.cli import purelib, run

    if path.exists():
        shutil.rmtree(path)
    deps = path / "deps"
    deps.mkdir(parents=True)
    for entry in project_site.iterdir():
        name = entry.name
        if name.startswith(("vllm", "__editable__")) or name.endswith(".pth"):
            continue
        (deps / name).symlink_to(entry)
    run([sys.executable, "-m", "venv", "--without-pip", str(path / "venv")])
    python = path / "venv" / "bin" / "python"
    lines = [str(p) for p in (first, deps) if p is not None]
    (purelib(python) / "scratch.pth").write_text("\n".join(lines) + "\n")
    requirements = python_requirements(wheel)
    if requirements:
        reqs = path / "requirements.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        run([str(python), "-m", "pip", "install", "-q", "--isolated",
             "--disable-pip-version-check", "-r", str(reqs)])
    return python


def test_env(gpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    # The official wheels are CUDA builds: without a GPU, vLLM's CPU
    # platform, chosen here, runs what needs no kernel.
    return env if gpu else env | {"VLLM_TARGET_DEVICE": "cpu"}


def pytest(python: Path, cwd: Path, tests: tuple[str, ...], log: Path,
           gpu: bool = False) -> bool:
    """Run the tests; their output goes to the terminal and to `log`."""
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=test_env(gpu), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            print(line, end="", flush=True)
    return proc.wait() == 0


def plugin_on_official(repo: Path, work: Path, project_site: Path,
                       wheel: Path, plugin_wheel: Path, gpu: bool = False) -> bool:
    """The plugin wheel with the official vllm wheel: engine-free tests, and
    on a GPU (`make gpu-test`) the generation tests on CUDA too."""
    from forktool.cli import log, run

    python = scratch_venv(work, project_site, wheel)
    run([str(python), "-m", "pip", "install", "-q", "--isolated", "--no-deps",
         "--disable-pip-version-check", str(wheel), str(plugin_wheel)])
    log(f"official: {wheel.name} and {plugin_wheel.name} in {work / 'venv'}")
    tests = PLUGIN_TESTS + (PLUGIN_GPU_TESTS if gpu else ())
    return pytest(python, repo, tests, work / "pytest.log", gpu)


def fork_on_official(tree: Path, work: Path, project_site: Path,
                     wheel: Path) -> bool:
    """The fork's tree (series applied) with the official wheel's compiled
    files joined, as vLLM's precompiled build joins them: engine-free tests."""
    from forktool.build_check import compiled_members
    from forktool.cli import log

    with zipfile.ZipFile(wheel) as zf:
        for name in compiled_members(zf):
            zf.extract(name, tree)
    # The sdist's egg-info would name the plain release, not this tree.
    shutil.rmtree(tree / "vllm.egg-info", ignore_errors=True)
    python = scratch_venv(work, project_site, wheel, first=tree)
    log(f"check: {tree} with {wheel.name}'s compiled files, in {work / 'venv'}")
    return pytest(python, tree, FORK_TESTS, work / "pytest.log")
