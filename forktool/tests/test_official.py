"""forktool official: what the scratch venvs of the official wheels install,
and that they leave the project venv's vLLM out."""

import subprocess
import zipfile
from pathlib import Path

from forktool import official

METADATA = """\
Metadata-Version: 2.1
Name: vllm
Version: 9.9.9
Requires-Dist: regex
Requires-Dist: transformers<5.21.0,>=5.16.1
Requires-Dist: orjson>=3.11.6
Requires-Dist: torch==2.14.0
Requires-Dist: torchvision==0.29.0
Requires-Dist: flashinfer-python==0.7.2.post1
Requires-Dist: nvidia-cutlass-dsl[cu13]==4.8.0
Requires-Dist: humming-kernels[cu13]==0.1.19
Requires-Dist: xgrammar==0.2.8; platform_machine == "x86_64"
Requires-Dist: pandas; extra == "bench"
Requires-Dist: torchcodecs-not-a-gpu-package
"""


def fake_wheel(tmp_path: Path, requirements: str = METADATA) -> Path:
    wheel = tmp_path / "vllm-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("vllm-9.9.9.dist-info/METADATA", requirements)
        zf.writestr("vllm/__init__.py", "")
    return wheel


def test_requirements_leave_out_gpu_packages_and_extras(tmp_path):
    reqs = official.python_requirements(fake_wheel(tmp_path))
    assert reqs == [
        "regex",
        "transformers<5.21.0,>=5.16.1",
        "orjson>=3.11.6",
        'xgrammar==0.2.8; platform_machine == "x86_64"',
        "torchcodecs-not-a-gpu-package",
    ]


def test_scratch_venv_sees_the_project_packages_but_not_its_vllm(tmp_path):
    site = tmp_path / "project-site"
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text("FORK = True\n")
    (site / "vllm-0.32.0+cpu.dist-info").mkdir()
    (site / "__editable__.vllm-0.32.0+cpu.pth").write_text("/nowhere\n")
    (site / "dep_a.py").write_text("NAME = 'a'\n")
    # No requirements, so pip is not run (and needs no network).
    wheel = fake_wheel(tmp_path, "Metadata-Version: 2.1\nName: vllm\n")
    tree = tmp_path / "tree"
    (tree / "vllm").mkdir(parents=True)
    (tree / "vllm" / "__init__.py").write_text("FORK = False\n")
    python = official.scratch_venv(tmp_path / "scratch", site, wheel, first=tree)
    out = subprocess.check_output(
        [str(python), "-c", "import dep_a, vllm; print(dep_a.NAME, vllm.FORK)"],
        text=True,
    )
    assert out.split() == ["a", "False"]
    links = {p.name for p in (tmp_path / "scratch" / "deps").iterdir()}
    assert links == {"dep_a.py"}
