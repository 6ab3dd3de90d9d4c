"""Tests of the fork tool's verbs, on a scratch copy of this repository.

Each test runs `python -m forktool` from a copy of the repo whose build folder
is private to the test module, so the real build/fork is never touched.  The
pinned sdists are taken from the real build/cache when present.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_CACHE = REPO / "build" / "cache"


def run_tool(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forktool", *args], cwd=repo,
                          text=True, capture_output=True)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, text=True,
                          capture_output=True).stdout


def copy_repo(dest: Path) -> Path:
    """Copy the repo's files (as git sees them) and share the sdist cache."""
    files = git(REPO, "ls-files", "--cached", "--others",
                "--exclude-standard").splitlines()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    (dest / "build" / "cache").mkdir(parents=True)
    for sdist in REAL_CACHE.glob("vllm-*.tar.gz"):
        (dest / "build" / "cache" / sdist.name).symlink_to(sdist)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    proc = run_tool(repo, "materialize")
    assert proc.returncode == 0, proc.stderr
    return repo


def commits(fork: Path) -> list[str]:
    return git(fork, "log", "--format=%H %s").splitlines()


def patched_files(patches: list[Path]) -> set[str]:
    return {line.split(" b/")[-1] for p in patches
            for line in p.read_text().splitlines()
            if line.startswith("diff --git ")}


def test_materialize_makes_the_series(repo: Path) -> None:
    fork = repo / "build" / "fork"
    log = commits(fork)
    assert len(log) == 4
    assert log[-1].split(" ", 1)[1].startswith("Import vLLM 0.32.0")
    assert [line.split(" ", 1)[1] for line in log[:3]] == [
        "[Model] Bring back Tarsier2, with its config on Transformers v5",
        "[Model] Bring back Tarsier with native video input",
        "[Multimodal] Clearer errors for rejected prompts and media",
    ]
    # The import commit is upstream untouched: it has no overlay file, and the
    # series has every overlay file and patched file.
    base = log[-1].split()[0]
    changed = git(fork, "diff", "--name-only", base, "HEAD").split()
    overlay = git(repo, "ls-files", "vllm", "tests", "docs", "examples").split()
    patches = sorted((repo / "patches").glob("*.patch"))
    assert sorted(changed) == sorted(set(overlay) | patched_files(patches))
    # Each PR holds its own part: generic fixes add nothing but unit tests in
    # upstream's test folders; the Tarsier PR adds no Tarsier2 file;
    # Tarsier2's config patch comes last.
    generic, tarsier, tarsier2 = (c.split()[0] for c in reversed(log[:3]))
    added = git(fork, "diff", "--name-only", "--diff-filter=A", base, generic)
    assert all(p.startswith("tests/") for p in added.split())
    assert not [p for p in added.split() if "tarsier" in p]
    added = git(fork, "diff", "--name-only", "--diff-filter=A", generic, tarsier)
    assert "vllm/model_executor/models/tarsier.py" in added.split()
    assert not [p for p in added.split() if "tarsier2" in p]
    in_tarsier2 = git(fork, "diff", "--name-only", tarsier, tarsier2).split()
    assert "vllm/transformers_utils/config.py" in in_tarsier2
    assert "vllm/model_executor/models/tarsier2.py" in in_tarsier2


def test_materialize_twice_is_a_noop(repo: Path) -> None:
    fork = repo / "build" / "fork"
    before = commits(fork)
    proc = run_tool(repo, "materialize")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert commits(fork) == before


def test_sync_takes_overlay_edits(repo: Path) -> None:
    fork = repo / "build" / "fork"
    new = repo / "docs" / "forktool_sync_probe.md"
    new.parent.mkdir(exist_ok=True)
    new.write_text("probe\n")
    try:
        proc = run_tool(repo, "sync")
        assert proc.returncode == 0, proc.stderr
        assert (fork / "docs" / "forktool_sync_probe.md").read_text() == "probe\n"
        assert len(commits(fork)) == 4
    finally:
        new.unlink()
        assert run_tool(repo, "sync").returncode == 0
    assert not (fork / "docs" / "forktool_sync_probe.md").exists()


def test_sync_refuses_to_drop_unrefreshed_edits(repo: Path) -> None:
    fork = repo / "build" / "fork"
    target = fork / "vllm" / "envs.py"
    original = target.read_text()
    target.write_text(original + "# unrefreshed edit\n")
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs" / "forktool_probe.md").write_text("x\n")
    try:
        proc = run_tool(repo, "sync")
        assert proc.returncode == 2
        assert "vllm/envs.py" in proc.stderr
        assert "forktool refresh" in proc.stderr
        assert target.read_text().endswith("# unrefreshed edit\n")
    finally:
        (repo / "docs" / "forktool_probe.md").unlink()
        target.write_text(original)
        assert run_tool(repo, "sync").returncode == 0


def test_corrupt_patch_stops_with_clear_message(repo: Path) -> None:
    patch = sorted((repo / "patches").glob("*.patch"))[0]
    original = patch.read_text()
    # Change one context line so that the hunk no longer matches upstream.
    lines = original.splitlines(keepends=True)
    idx = next(i for i, line in enumerate(lines)
               if line.startswith(" ") and line.strip())
    lines[idx] = " # this context line is not in upstream\n"
    patch.write_text("".join(lines))
    try:
        proc = run_tool(repo, "sync")
        assert proc.returncode == 2
        assert f"patches/{patch.name} does not apply to vLLM 0.32.0" in proc.stderr
        assert "forktool refresh" in proc.stderr
    finally:
        patch.write_text(original)
        assert run_tool(repo, "sync").returncode == 0


def test_refresh_and_export(repo: Path, tmp_path: Path) -> None:
    fork = repo / "build" / "fork"
    target = fork / "vllm" / "envs.py"
    original = target.read_text()
    target.write_text(original + "# an edit made inside the fork\n")
    before = sorted(p.name for p in (repo / "patches").glob("*.patch"))
    try:
        proc = run_tool(repo, "refresh")
        assert proc.returncode == 0, proc.stderr
        after = sorted(p.name for p in (repo / "patches").glob("*.patch"))
        (new,) = set(after) - set(before)
        text = (repo / "patches" / new).read_text()
        assert "+# an edit made inside the fork" in text
        # The fork now matches the repository: materialize has nothing to do.
        assert "nothing to do" in run_tool(repo, "materialize").stdout
        assert len(commits(fork)) == 4

        out = tmp_path / "pr"
        proc = run_tool(repo, "export", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        mails = sorted(out.glob("000*.patch"))
        assert [m.name[:4] for m in mails] == ["0001", "0002", "0003"]
        assert "Subject: [PATCH 2/3] [Model] Bring back Tarsier with" in (
            mails[1].read_text())
        # A new patch joins the last PR.
        assert "vllm/envs.py" in mails[2].read_text()
        assert "vllm/envs.py" not in mails[0].read_text()
        assert "PR 3/3" in (out / "diffstat.txt").read_text()
        # PR 1 also as one commit per fix, each with its new files.
        pr1 = sorted((out / "pr1").glob("*.patch"))
        assert len(pr1) == 5
        assert "test_mm_cache_rejected_prompt.py" in pr1[2].read_text()
        assert "test_mm_cache_rejected_prompt.py" not in pr1[3].read_text()
    finally:
        (repo / "patches" / new).unlink()
        target.write_text(original)
        assert run_tool(repo, "sync", "--force").returncode == 0


def test_refresh_of_a_file_two_prs_edit(repo: Path) -> None:
    """The edit goes to the later PR's patch, as a diff on the earlier one's."""
    fork = repo / "build" / "fork"
    target = fork / "vllm" / "model_executor" / "models" / "registry.py"
    owners = [p for p in sorted((repo / "patches").glob("*.patch"))
              if "vllm/model_executor/models/registry.py" in patched_files([p])]
    assert len(owners) == 2
    texts = {p: p.read_text() for p in sorted((repo / "patches").glob("*.patch"))}
    # Some hunks carry no leading context, so that they apply to 0.33 as well;
    # a fresh `git diff` would give them three lines, and refresh must not.
    assert re.search(r"(?m)^@@ [^\n]*\n\+", "".join(texts.values()))
    original = target.read_text()
    target.write_text(original + "# a refresh probe\n")
    try:
        proc = run_tool(repo, "refresh")
        assert proc.returncode == 0, proc.stderr
        first, last = owners
        for patch, text in texts.items():
            assert patch == last or patch.read_text() == text, patch.name
        assert "+# a refresh probe" in last.read_text()
        assert last.read_text().count("diff --git a/vllm/model_executor/models/"
                                      "registry.py") == 1
        assert "nothing to do" in run_tool(repo, "materialize").stdout
        assert target.read_text() == original + "# a refresh probe\n"
    finally:
        for patch, text in texts.items():
            patch.write_text(text)
        assert run_tool(repo, "sync", "--force").returncode == 0
    assert target.read_text() == original


def test_refresh_keeps_overlay_files_the_fork_has_not_seen(repo: Path) -> None:
    new = repo / "docs" / "forktool_unsynced_probe.md"
    new.parent.mkdir(exist_ok=True)
    new.write_text("not synced yet\n")
    try:
        proc = run_tool(repo, "refresh")
        assert proc.returncode == 0, proc.stderr
        assert new.read_text() == "not synced yet\n"
    finally:
        new.unlink()


def test_wrong_hash_stops_and_deletes_download(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)
    cache = repo / "build" / "cache"
    sdist = cache / "vllm-0.32.0.tar.gz"
    sdist.unlink(missing_ok=True)
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(repo / "upstream.toml", arcname="vllm-0.32.0/upstream.toml")
    proc = run_tool(repo, "materialize")
    assert proc.returncode == 2
    assert "vllm-0.32.0.tar.gz has sha256" in proc.stderr
    assert "upstream.toml pins d2c957d5" in proc.stderr
    assert not sdist.exists()


@pytest.mark.parametrize("version", ["0.33.0"])
def test_check_reports_each_patch(repo: Path, version: str) -> None:
    proc = run_tool(repo, "check", version)
    patches = sorted(p.name for p in (repo / "patches").glob("*.patch"))
    for name in patches:
        assert any(line.strip().startswith(name)
                   for line in proc.stdout.splitlines()), proc.stdout
    assert f"vLLM {version}" in proc.stdout
    assert "PR 1: [Multimodal]" in proc.stdout and "PR 3: [Model]" in proc.stdout
    assert proc.returncode in (0, 1)
    assert (proc.returncode == 0) == (f"applies to vLLM {version}" in proc.stdout)


def test_check_reports_a_failing_patch(repo: Path) -> None:
    bad = repo / "patches" / "9999-does-not-apply.patch"
    bad.write_text(
        "A patch for a file upstream does not have\n\n"
        "diff --git a/vllm/no_such_file.py b/vllm/no_such_file.py\n"
        "--- a/vllm/no_such_file.py\n+++ b/vllm/no_such_file.py\n"
        "@@ -1 +1 @@\n-old\n+new\n")
    try:
        proc = run_tool(repo, "check", "0.32.0")
        assert proc.returncode == 1
        assert "9999-does-not-apply.patch" in proc.stdout
        assert "FAILS" in proc.stdout
        assert "does not apply to vLLM 0.32.0" in proc.stdout
    finally:
        bad.unlink()


def test_no_whole_copy_of_an_upstream_file() -> None:
    (sdist,) = REAL_CACHE.glob("vllm-0.32.0.tar.gz")
    with tarfile.open(sdist) as tar:
        upstream = {name.split("/", 1)[1] for name in tar.getnames()
                    if "/" in name}
    roots = ("vllm/", "tests/", "docs/", "examples/", "benchmarks/", "csrc/",
             "cmake/", "requirements/", "tools/")
    tracked = {p for p in git(REPO, "ls-files").splitlines()
               if p.startswith(roots)}
    assert not sorted(upstream & tracked)
