"""Run upstream vLLM's ruff and mypy configuration over what the patch touches.

Mirrors upstream's pre-commit hooks (ruff-check, ruff-format, and
tools/pre_commit/mypy.py for the oldest supported Python) on the Python files
the patch commit adds or changes, inside the materialized fork. In an upstream
file the patch edits, only mypy errors on the patch's own lines count: the
others are upstream's (they depend on the installed transformers) and are
reported as such.

With ``--each-pr``, the same runs on every commit of the PR series, each in a
git worktree of the fork checked out at that commit, over what the series
has changed up to it: each PR must pass on its own.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from forktool.cli import (
    REPO,
    PullRequest,
    fork_dir,
    git,
    import_commit,
    load_series,
    per_patch_commits,
)

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


def lint(fork: Path, with_plugin_package: bool = False) -> int:
    """Lint the Python files the series changes, up to the fork's HEAD (and
    the plugin package built from them)."""
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
    # The plugin's own code (registration and its tests), with the same ruff
    # configuration: it is not in the fork, so mypy's run above does not see it.
    plugin = sorted(str(p) for p in (REPO / "plugin").rglob("*.py"))
    for cmd in ([str(bindir / "ruff"), "check", "--config", "pyproject.toml", *plugin],
                [str(bindir / "ruff"), "format", "--check", "--diff", "--config",
                 "pyproject.toml", *plugin]):
        print(f"lint: ruff {cmd[1]} ({len(plugin)} plugin files)", flush=True)
        failed |= run(cmd, fork, env)[0] != 0
    if with_plugin_package:
        failed |= mypy_plugin_package(fork, env)
    print(f"lint: {len(files)} files, {len(plugin)} plugin files, "
          f"{'FAILED' if failed else 'clean'}")
    return 1 if failed else 0


def mypy_plugin_package(fork: Path, env: dict[str, str]) -> bool:
    """mypy, with upstream's configuration, over the plugin package as
    `forktool plugin` writes it (the copied modules and the glue together).
    Returns whether it failed."""
    from forktool.plugin import PACKAGE, build_plugin

    with tempfile.TemporaryDirectory() as tmp:
        build_plugin(REPO, fork, Path(tmp))
        print("lint: mypy (the vllm-tarsier package as built)", flush=True)
        code, _ = run([sys.executable, "-m", "mypy", "--python-version", "3.11",
                       "--follow-imports", "silent", "--config-file",
                       "pyproject.toml", "-p", PACKAGE], fork,
                      env | {"MYPYPATH": tmp})
    return code != 0


def lint_each_pr(fork: Path) -> int:
    """Lint every PR of the series on its own, and every commit of a PR
    exported as one commit per patch."""
    base = import_commit(fork)
    commits = git(fork, "rev-list", "--reverse", f"{base}..HEAD").split()
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (pr, commit) in enumerate(zip(load_series(), commits), 1):
            subject = git(fork, "log", "-1", "--format=%s", commit).strip()
            print(f"lint: PR {n}/{len(commits)}: {subject}", flush=True)
            tree = Path(tmp) / f"pr{n}"
            git(fork, "worktree", "add", "-q", "--detach", str(tree), commit)
            try:
                if lint(tree):
                    failed.append(str(n))
            finally:
                git(fork, "worktree", "remove", "--force", str(tree))
            if pr.commit_per_patch:
                failed += lint_per_patch(fork, commit, pr, n)
    print(f"lint: {len(commits)} PRs, "
          + (f"FAILED: {failed}" if failed else "each clean"))
    return 1 if failed else 0


def lint_per_patch(fork: Path, commit: str, pr: PullRequest, n: int) -> list[str]:
    failed = []
    with per_patch_commits(fork, commit, pr) as (tree, commits):
        for i, patch_commit in enumerate(commits, 1):
            git(tree, "checkout", "-q", "--detach", patch_commit)
            subject = git(tree, "log", "-1", "--format=%s", patch_commit).strip()
            print(f"lint: PR {n}, commit {i}/{len(commits)}: {subject}", flush=True)
            if lint(tree):
                failed.append(f"{n}.{i}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m forktool.lint")
    parser.add_argument("--each-pr", action="store_true",
                        help="lint every commit of the series on its own")
    args = parser.parse_args()
    fork = fork_dir()
    if args.each_pr:
        return lint_each_pr(fork)
    return lint(fork, with_plugin_package=True)


if __name__ == "__main__":
    sys.exit(main())
