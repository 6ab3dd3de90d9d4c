"""Run upstream vLLM's ruff and mypy configuration over what the patch touches.

Mirrors upstream's pre-commit hooks (ruff-check, ruff-format, and
tools/pre_commit/mypy.py for the oldest supported Python) on the Python files
the patch commit adds or changes, inside the materialized fork. In an upstream
file the patch edits, only mypy errors on the patch's own lines count: the
others are upstream's (they depend on the installed transformers) and are
reported as such.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from forktool.cli import fork_dir, git, import_commit

MYPY_ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):(?P<line>\d+): error: ", re.M)


def changed_python_files(fork: Path, status: str) -> list[str]:
    base = import_commit(fork)
    out = git(fork, "diff", "--name-only", f"--diff-filter={status}", base, "HEAD")
    return [p for p in out.splitlines() if p.endswith(".py")]


def added_lines(fork: Path, path: str) -> set[int]:
    """Line numbers (in the patched file) that the patch adds or changes."""
    diff = git(fork, "diff", "-U0", import_commit(fork), "HEAD", "--", path)
    lines: set[int] = set()
    for start, count in re.findall(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", diff, re.M):
        first = int(start)
        lines.update(range(first, first + (int(count) if count else 1)))
    return lines


def run(cmd: list[str], fork: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=fork, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout, end="", flush=True)
    return proc.returncode, proc.stdout


def main() -> int:
    fork = fork_dir()
    added = changed_python_files(fork, "A")
    modified = changed_python_files(fork, "M")
    files = added + modified
    if not files:
        print("lint: the patch changes no Python file")
        return 0
    bindir = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    failed = False
    for cmd in ([str(bindir / "ruff"), "check", *files],
                [str(bindir / "ruff"), "format", "--check", "--diff", *files]):
        print(f"lint: ruff {cmd[1]} ({len(files)} files)", flush=True)
        failed |= run(cmd, fork, env)[0] != 0

    print(f"lint: mypy ({len(files)} files)", flush=True)
    code, out = run([sys.executable, "tools/pre_commit/mypy.py", "3.11", *files],
                    fork, env)
    if code != 0 and not MYPY_ERROR.search(out):
        failed = True  # mypy itself failed
    ours = {path: added_lines(fork, path) for path in modified}
    upstream_errors = 0
    for m in MYPY_ERROR.finditer(out):
        path, line = m["path"], int(m["line"])
        if path in ours and line not in ours[path]:
            upstream_errors += 1
        else:
            failed = True
            print(f"lint: patch error: {out[m.start():].splitlines()[0]}")
    if upstream_errors:
        print(f"lint: {upstream_errors} mypy errors on upstream lines of "
              "edited upstream files (not the patch's; ignored)")
    print(f"lint: {len(files)} files, {'FAILED' if failed else 'clean'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
