"""Run upstream vLLM's ruff and mypy configuration over what the patch touches.

Mirrors upstream's pre-commit hooks (ruff-check, ruff-format, and
tools/pre_commit/mypy.py for the oldest supported Python) on the Python files
the patch commit adds or changes, inside the materialized fork.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from forktool.cli import fork_dir, git, import_commit


def changed_python_files(fork: Path) -> list[str]:
    base = import_commit(fork)
    out = git(fork, "diff", "--name-only", "--diff-filter=AM", base, "HEAD")
    return [p for p in out.splitlines() if p.endswith(".py")]


def main() -> int:
    fork = fork_dir()
    files = changed_python_files(fork)
    if not files:
        print("lint: the patch changes no Python file")
        return 0
    bindir = Path(sys.executable).parent
    steps = [
        [str(bindir / "ruff"), "check", *files],
        [str(bindir / "ruff"), "format", "--check", "--diff", *files],
        [sys.executable, "tools/pre_commit/mypy.py", "3.11", *files],
    ]
    env = os.environ | {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    failed = 0
    for cmd in steps:
        print("lint:", " ".join(Path(c).name if i == 0 else c
                                for i, c in enumerate(cmd[:3])), "...",
              flush=True)
        failed |= subprocess.run(cmd, cwd=fork, env=env).returncode
    print(f"lint: {len(files)} files, {'FAILED' if failed else 'clean'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
