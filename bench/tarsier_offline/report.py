# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The report: per-arm metrics (median [min, max] over repetitions), the
markdown tables and ratios written to ``results.md`` and printed, the bar
charts in ``results.png``, and the summary of a benchmark checkpoint."""

from __future__ import annotations

import json
import os
import platform
import statistics
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .vllm_arms import awq_dtype
from .workload import ARM_NAMES, FAMILIES, PROMPT, BenchConfig


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median [min, max]`."""
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def arm_metrics(result: dict[str, Any], cfg: BenchConfig) -> dict[str, list[float]]:
    reps = result["reps"]
    return {
        "wall time (s)": [r["wall_s"] for r in reps],
        "videos/s": [cfg.num_videos / r["wall_s"] for r in reps],
        "generated tokens/s": [r["generated_tokens"] / r["wall_s"] for r in reps],
        "prefill tokens/s": [r["prompt_tokens"] / r["wall_s"] for r in reps],
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    """Share of videos with the same first token and with identical outputs."""
    first = sum(x[:1] == y[:1] for x, y in zip(a, b))
    same = sum(x == y for x, y in zip(a, b))
    return f"first token {first}/{len(a)}, all tokens {same}/{len(a)}"


def write_report(
    cfg: BenchConfig,
    meta: dict[str, str],
    results: dict[str, dict[str, Any]],
    peaks: dict[str, int],
    walls: dict[str, float],
) -> str:
    gen_arms = [a for a in ARM_NAMES if a in results]
    metrics = {a: arm_metrics(results[a], cfg) for a in gen_arms}
    lines = [
        "# Tarsier offline throughput",
        "",
        f"- machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU; "
        f"load average at start {meta['load_start']}, at end {meta['load_end']}",
        f"- Tarsier model: `{cfg.model}` ({meta['model']})",
        f"- Tarsier2 model: `{cfg.tarsier2_model}` ({meta['tarsier2_model']})",
        f"- dtype {cfg.dtype} ({meta['dtype_reason']})",
        *(
            [
                f"- AWQ model: `{cfg.awq_model}` (the Tarsier model's decoder Linear "
                "layers in 4-bit AWQ, group size 64, by `fixtures.quantized`; "
                f"activations in {awq_dtype(cfg.dtype)})"
            ]
            if "tarsier-awq" in results
            else []
        ),
        f"- vLLM: {meta['vllm']}",
        f"- workload: {cfg.num_videos} videos of {cfg.source_frames} frames "
        f"{cfg.width}x{cfg.height}, {cfg.num_frames} sampled, greedy, "
        f"{cfg.max_new_tokens} new tokens each (equal lengths checked); prompt "
        f"`{PROMPT!r}` (Tarsier), `{meta['tarsier2_prompt']!r}` (Tarsier2); "
        f"Tarsier2 `max_frame_pixels` {cfg.tarsier2_max_frame_pixels}; "
        f"reference batch size {cfg.reference_batch_size}, attention "
        f"`{cfg.reference_attn}`",
        f"- {cfg.repetitions} repetitions per arm after a {cfg.warmup_videos}-video "
        "warm-up; cells are median [min, max]; total run "
        f"{meta['total_min']} min",
        "",
    ]
    if gen_arms:
        cols = list(next(iter(metrics.values())))
        lines += [
            "| arm | " + " | ".join(cols) + " | peak RSS (GiB) | arm total (s) |",
            "|---" * (len(cols) + 3) + "|",
        ]
        for arm in gen_arms:
            cells = [spread(metrics[arm][c]) for c in cols]
            rss = f"{peaks[arm] / 2**30:.2f}"
            lines.append(
                f"| {ARM_NAMES[arm]} | "
                + " | ".join(cells)
                + f" | {rss} | {walls[arm]:.0f} |"
            )
        lines.append("")
        for family in FAMILIES:
            counts = {
                ARM_NAMES[a]: (r["prompt_tokens"], r["generated_tokens"])
                for a in family
                if a in results
                for r in results[a]["reps"][:1]
            }
            if not counts:
                continue
            same = len(set(counts.values())) == 1
            prompt, generated = next(iter(counts.values()))
            lines += [
                f"Tokens per repetition, {' / '.join(counts)}: {prompt} prompt "
                f"(visual included), {generated} generated, "
                + ("the same in each." if same else f"NOT equal: {counts}."),
                "",
            ]

    def ratio_rows(num: str, den: str, label: str) -> list[str]:
        rows = [
            f"**{label}** (per repetition i, {ARM_NAMES[num]} / {ARM_NAMES[den]}):",
            "",
        ]
        for col in metrics[num]:
            pairs = zip(metrics[num][col], metrics[den][col])
            rows.append(f"- {col}: {spread([a / b for a, b in pairs])}x")
        rows.append(f"- peak RSS: {peaks[num] / peaks[den]:.2f}x")
        if (num, den) == ("tarsier-awq", "tarsier"):
            # vLLM's CPU layers repack weights into oneDNN or kernel-specific
            # handles, so the checkpoints are what can be compared.
            a, b = checkpoint_bytes(cfg.awq_model), checkpoint_bytes(cfg.model)
            rows.append(
                f"- checkpoint size: {a / 2**20:.1f} MiB / {b / 2**20:.1f} MiB "
                f"= {a / b:.2f}x"
            )
        outputs = results[num]["reps"][-1]["outputs"]
        ref_outputs = results[den]["reps"][-1]["outputs"]
        rows += [f"- greedy outputs: {agreement(outputs, ref_outputs)}", ""]
        return rows

    if {"tarsier", "reference"} <= set(gen_arms):
        lines += ratio_rows("tarsier", "reference", "Speed-up of the fork")
    if {"tarsier-awq", "tarsier"} <= set(gen_arms):
        lines += ratio_rows("tarsier-awq", "tarsier", "AWQ 4-bit vs unquantized")
    if {"tarsier2", "tarsier2-reference"} <= set(gen_arms):
        lines += ratio_rows(
            "tarsier2", "tarsier2-reference", "Speed-up of the fork, Tarsier2"
        )
    if {"tarsier", "llava"} <= set(gen_arms):
        lines += ratio_rows("tarsier", "llava", "Tarsier vs plain LLaVA")
        if "processor" in results:
            fps = results["processor"]["fps"]
            frames = cfg.num_videos * cfg.num_frames
            tarsier_s = frames / statistics.median(
                fps["vLLM Tarsier processor, uncached"]
            )
            llava_s = frames / statistics.median(
                fps["vLLM LLaVA processor (llava arm), uncached"]
            )
            # vLLM's front-end preprocesses while the engine computes, so the
            # difference bounds its share of the wall time rather than adds up.
            lines[-1:] = [
                f"- preprocessing alone (processor benchmark below), per "
                f"repetition: Tarsier {tarsier_s:.2f} s, LLaVA {llava_s:.2f} s; "
                "vLLM's front-end overlaps it with the model, so the difference "
                "bounds its share of the wall-time gap",
                "",
            ]
    if "processor" in results:
        lines += [
            "| preprocessing | frames/s | peak RSS (GiB) |",
            "|---|---|---|",
        ]
        for name, rates in results["processor"]["fps"].items():
            lines.append(
                f"| {name} | {spread(rates, '{:.1f}')} | "
                f"{peaks['processor'] / 2**30:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(cfg: BenchConfig, results: dict[str, dict[str, Any]], path: Path) -> None:
    """Bar charts (median, min-max whiskers): end-to-end generated tokens/s
    of each arm and preprocessing frames/s (log scale: the cache hit is much
    faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, list[float]], bool]] = []
    gen = {
        ARM_NAMES[arm]: arm_metrics(results[arm], cfg)["generated tokens/s"]
        for arm in ARM_NAMES
        if arm in results
    }
    if gen:
        panels.append(("generated tokens/s, end to end", gen, False))
    if "processor" in results:
        panels.append(("preprocessing frames/s", results["processor"]["fps"], True))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5))
    for ax, (title, data, log) in zip(np.atleast_1d(axes), panels):
        labels = [textwrap.fill(k, 14) for k in data]
        med = [statistics.median(v) for v in data.values()]
        err = [
            [m - min(v) for m, v in zip(med, data.values())],
            [max(v) - m for m, v in zip(med, data.values())],
        ]
        bars = ax.bar(labels, med, yerr=err, capsize=6, color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", label_type="center", color="white")
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7.5)
    fig.suptitle(
        f"Tarsier and Tarsier2: {cfg.num_videos} videos x {cfg.num_frames} frames, "
        f"{cfg.max_new_tokens} new tokens, {cfg.dtype}, {os.cpu_count()} CPU cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def checkpoint_bytes(model: str) -> int:
    return sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))


def model_summary(model: Path) -> str:
    if not (model / "config.json").exists():
        return "not written"
    cfg = json.loads((model / "config.json").read_text())
    v, t = cfg["vision_config"], cfg["text_config"]
    lm = (
        f"{t['num_hidden_layers']}L/{t['hidden_size']}, "
        f"{t['num_attention_heads']} heads ({t['num_key_value_heads']} KV), "
        f"ffn {t['intermediate_size']}, vocab {t['vocab_size']}"
    )
    if "depth" in v:  # Qwen2-VL
        return (
            f"Qwen2-VL tower {v['depth']}L/{v['embed_dim']}, patch "
            f"{v['patch_size']}, {v['spatial_merge_size']}x"
            f"{v['spatial_merge_size']} merge; Qwen2 {lm}"
        )
    side = v["image_size"] // v["patch_size"]
    return (
        f"CLIP {v['num_hidden_layers']}L/{v['hidden_size']}, "
        f"{v['image_size']}px/{v['patch_size']} -> {side * side + side + 1} "
        f"tokens per frame; Llama {lm}"
    )
