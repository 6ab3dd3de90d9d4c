# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The command line: options, the benchmark checkpoints, the dtype, the arms
in turn (or one arm, in a worker process), then the report and its files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import __doc__ as DESCRIPTION
from .report import model_summary, plot, write_report
from .runner import run_arm, worker_main
from .workload import ARMS, BenchConfig, tarsier2_prompt

# This repository's root: `python -m fixtures.bench` runs from there.
REPO = Path(__file__).resolve().parents[2]


def pick_dtype(requested: str) -> tuple[str, str]:
    """bfloat16 where the CPU runs it natively (both vLLM's CPU backend and
    Transformers then do), else float32 for both."""
    if requested != "auto":
        return requested, "requested"
    import torch

    if (
        torch.cuda.is_available()
        or torch.backends.mkldnn.is_available()
        and (torch.ops.mkldnn._is_mkldnn_bf16_supported())
    ):
        return "bfloat16", "the CPU supports bfloat16 natively"
    return "float32", "no native bfloat16 on this CPU"


def ensure_model(model: Path, family: str) -> None:
    """Write the benchmark checkpoint with the fixtures package if missing."""
    if (model / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "fixtures.bench", "--out", str(model.resolve())]
    cmd += ["--family", family]
    print(f"{model} is missing; running: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit(f"could not write {model}; run `python -m fixtures.bench` first")


def ensure_awq_model(model: Path, awq: Path) -> None:
    """Write the 4-bit AWQ copy of the Tarsier benchmark checkpoint if missing."""
    if (awq / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "fixtures.quantized", "--src", str(model.resolve())]
    cmd += ["--out", str(awq.resolve())]
    print(f"{awq} is missing; running: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit(f"could not write {awq}; run `python -m fixtures.quantized` first")


def awq_kernel_missing_reason() -> str:
    """Why vLLM's CPU backend cannot run AWQ here ("" if it can), as the
    fixtures package (which the quantized test uses too) decides."""
    code = "from fixtures.quantized import awq_kernel_missing_reason as r\n"
    code += "print(r() or '')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"could not check the CPU for the AWQ kernel:\n{out.stderr}")
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("build/bench-model"))
    parser.add_argument(
        "--awq-model",
        type=Path,
        default=Path("build/bench-model-awq"),
        help="the 4-bit AWQ copy of --model (written with fixtures.quantized "
        "when missing)",
    )
    parser.add_argument(
        "--tarsier2-model", type=Path, default=Path("build/bench-model-tarsier2")
    )
    parser.add_argument("--results-dir", type=Path, default=Path("build/bench-results"))
    parser.add_argument(
        "--num-videos",
        type=int,
        default=16,
        help="videos per repetition; 16 keeps the default run of seven arms "
        "within 15 minutes on 2 cores (32: about 18 minutes)",
    )
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument(
        "--source-frames", type=int, default=16, help="frames per input video"
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument(
        "--tarsier2-max-frame-pixels",
        type=int,
        default=640 * 360 // 4,
        help="Tarsier2's per-frame pixel cap (the authors' option, applied by "
        "both arms); the default quarters the default frames, ~66 visual tokens "
        "per frame, to keep the default run within 15 minutes on 2 cores "
        "(the authors' default, 460800, leaves them at 299)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--warmup-videos", type=int, default=2)
    parser.add_argument(
        "--dtype", choices=("auto", "bfloat16", "float32"), default="auto"
    )
    parser.add_argument(
        "--reference-batch-size",
        type=int,
        default=8,
        help="videos per Transformers generate call",
    )
    parser.add_argument(
        "--reference-attn",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="attention kernel of the reference's Llama",
    )
    parser.add_argument(
        "--vllm-reserved-cpus",
        type=int,
        default=0,
        help="cores vLLM's CPU worker leaves to its front-end; the default 0 "
        "gives the model all cores, as the reference has; -1: vLLM's default "
        "(one per rank)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="let vLLM torch.compile the model, its default (off here: see the "
        "docstring)",
    )
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="what to run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker_main(
            args.worker, BenchConfig(**json.loads(args.worker_config)), args.worker_out
        )
        return

    from tqdm import tqdm

    start = time.perf_counter()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if "tarsier-awq" in args.arms and (reason := awq_kernel_missing_reason()):
        print(f"Skipping the tarsier-awq arm: {reason}", flush=True)
        args.arms.remove("tarsier-awq")
    if {"tarsier", "tarsier-awq", "reference", "llava", "processor"} & set(args.arms):
        ensure_model(args.model, "tarsier")
    if "tarsier-awq" in args.arms:
        ensure_awq_model(args.model, args.awq_model)
    if {"tarsier2", "tarsier2-reference", "processor"} & set(args.arms):
        ensure_model(args.tarsier2_model, "tarsier2")
    dtype, dtype_reason = pick_dtype(args.dtype)
    cfg = BenchConfig(
        model=str(args.model.resolve()),
        awq_model=str(args.awq_model.resolve()),
        tarsier2_model=str(args.tarsier2_model.resolve()),
        tarsier2_max_frame_pixels=args.tarsier2_max_frame_pixels,
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        source_frames=args.source_frames,
        width=args.width,
        height=args.height,
        max_new_tokens=args.max_new_tokens,
        repetitions=args.repetitions,
        warmup_videos=min(args.warmup_videos, args.num_videos),
        dtype=dtype,
        reference_batch_size=args.reference_batch_size,
        reference_attn=args.reference_attn,
        vllm_reserved_cpus=args.vllm_reserved_cpus,
        compile=args.compile,
        seed=args.seed,
    )
    results_dir = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    # Progress steps per arm: start-up, warm-up, repetitions (processor: 4).
    steps = {a: (7 if a == "processor" else 2 + cfg.repetitions) for a in args.arms}
    results: dict[str, dict[str, Any]] = {}
    peaks: dict[str, int] = {}
    walls: dict[str, float] = {}
    with tqdm(total=sum(steps.values()), desc="benchmark", unit="step") as bar:
        for arm in args.arms:
            results[arm], peaks[arm], walls[arm] = run_arm(arm, cfg, results_dir, bar)
    reserved = (
        "vLLM's default" if cfg.vllm_reserved_cpus < 0 else str(cfg.vllm_reserved_cpus)
    )
    meta = {
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "model": model_summary(args.model),
        "tarsier2_model": model_summary(args.tarsier2_model),
        "tarsier2_prompt": tarsier2_prompt(cfg.tarsier2_model)
        if (args.tarsier2_model / "config.json").exists()
        else "",
        "dtype_reason": dtype_reason,
        "vllm": f"offline `LLM.generate`, all requests at once, "
        f"torch.compile {'on' if cfg.compile else 'off (eager)'}; cores "
        f"reserved for the front-end: {reserved}; "
        f"VLLM_CPU_KVCACHE_SPACE={os.environ.get('VLLM_CPU_KVCACHE_SPACE', 'unset')} "
        "GiB (preallocated, part of the peak RSS)",
        "total_min": f"{(time.perf_counter() - start) / 60:.1f}",
    }
    report = write_report(cfg, meta, results, peaks, walls)
    (results_dir / "results.md").write_text(report + "\n")
    (results_dir / "results.json").write_text(
        json.dumps(
            {"config": dataclasses.asdict(cfg), "results": results, "peak_rss": peaks}
        )
    )
    plot(cfg, results, results_dir / "results.png")
    print()
    print(report)
    print(f"Wrote {results_dir}/results.md, results.json, results.png")
