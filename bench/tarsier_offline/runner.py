# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Running the arms: each in its own process (the entry script again, with
``--worker``), its output logged, its progress forwarded to the progress bar
and the resident memory of its process tree sampled for the peak."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .processor_arm import run_processor
from .reference_arms import run_reference, run_tarsier2_reference
from .vllm_arms import run_llava, run_tarsier, run_tarsier2
from .workload import PROGRESS, BenchConfig

# What each arm's process runs: bench/benchmark_tarsier.py --worker ARM.
ENTRY = Path(__file__).resolve().parents[1] / "benchmark_tarsier.py"


def worker_main(arm: str, cfg: BenchConfig, out: Path) -> None:
    if cfg.vllm_reserved_cpus >= 0:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.vllm_reserved_cpus)
    # Every arm imports vLLM first, the reference arms included (their peak
    # memory and threading have always included it).
    import vllm  # noqa: F401

    if arm == "tarsier":
        result = run_tarsier(cfg)
    elif arm == "tarsier-awq":
        result = run_tarsier(cfg, awq=True)
    elif arm == "reference":
        result = run_reference(cfg)
    elif arm == "tarsier2":
        result = run_tarsier2(cfg)
    elif arm == "tarsier2-reference":
        result = run_tarsier2_reference(cfg)
    elif arm == "llava":
        result = run_llava(cfg, out.parent / "llava-view")
    else:
        result = run_processor(cfg, out.parent / "llava-view")
    out.write_text(json.dumps(result))


def tree_rss(proc: Any) -> int:
    """Resident bytes of a process and its descendants."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_arm(
    arm: str, cfg: BenchConfig, results: Path, bar: Any
) -> tuple[dict[str, Any], int, float]:
    """Run one arm in a subprocess; return its result, peak tree RSS and wall
    time (model load included). Its output goes to `<arm>.log`."""
    import psutil

    out = results / f"{arm}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(ENTRY),
        "--worker",
        arm,
        "--worker-config",
        json.dumps(dataclasses.asdict(cfg)),
        "--worker-out",
        str(out),
    ]
    start = time.perf_counter()
    peak = 0
    with (results / f"{arm}.log").open("w") as log:
        popen = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        proc = psutil.Process(popen.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, tree_rss(proc))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert popen.stdout is not None
        for line in popen.stdout:
            log.write(line)
            if line.startswith(PROGRESS):
                bar.set_postfix_str(f"{arm}: {line[len(PROGRESS) :].strip()}")
                bar.update(1)
        rc = popen.wait()
        done.set()
        sampler.join()
    if rc != 0 or not out.exists():
        raise RuntimeError(f"arm {arm!r} failed (exit {rc}); see {log.name}")
    return json.loads(out.read_text()), peak, time.perf_counter() - start
