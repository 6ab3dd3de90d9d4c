# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Peak memory and time of loading a long video for Tarsier.

Compares vLLM's `tarsier` video loader (decodes only the frames the authors'
pipeline samples) with decoding every frame (`opencv` loader with
`num_frames=-1`, the only exact route before it), on synthetic 1080p MPEG-4
videos of several lengths. Each measurement runs in its own process, whose
peak RSS is reported. Decoding every frame needs about 6 MB per 1080p frame,
so that arm is only run where it fits in half of the available memory.

    python bench/benchmark_tarsier_video_memory.py --lengths 300 1000 3000
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WIDTH, HEIGHT, FPS = 1920, 1080, 30

MEASURE = r"""
import json, resource, sys, time
from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

path, arm, num_frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
loader = VIDEO_LOADER_REGISTRY.load(arm)
start = time.perf_counter()
frames, metadata = loader.load_bytes(data, num_frames=num_frames)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "frames": len(frames),
                  "total": metadata["total_num_frames"]}))
"""


def write_video(path: Path, num_frames: int) -> None:
    import cv2
    import numpy as np

    ramp = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    base = np.stack([np.tile(ramp, (HEIGHT, 1))] * 3, axis=-1)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT)
    )
    for t in range(num_frames):
        frame = np.roll(base, 8 * t, axis=1)
        frame[400:680, (t * 7) % 1600 : (t * 7) % 1600 + 320] = (30, 30, 220)
        writer.write(frame)
    writer.release()


def measure(path: Path, arm: str, num_frames: int) -> dict:
    """Run one load in a fresh process; its peak RSS from the kernel."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MEASURE, str(path), arm, str(num_frames)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} on {path} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path("build/bench-video"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for length in args.lengths:
        path = args.dir / f"synthetic_{length}_1080p.mp4"
        if not path.exists():
            start = time.perf_counter()
            write_video(path, length)
            print(
                f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        arms = [("tarsier", args.num_frames)]
        if length * WIDTH * HEIGHT * 3 / 2**20 < available_mib() / 2:
            arms.append(("opencv", -1))
        else:
            print(
                f"decoding all {length} frames would take "
                f"{length * WIDTH * HEIGHT * 3 / 2**30:.1f} GiB: skipped"
            )
        for arm, num_frames in arms:
            result = measure(path, arm, num_frames)
            rows.append((length, arm, result))
            print(
                f"{length:>6} frames  {arm:<8} decoded {result['frames']:>5}  "
                f"{result['seconds']:7.1f} s  peak RSS "
                f"{result['peak_rss_mib']:8.0f} MiB",
                flush=True,
            )

    print("\n| video frames | loader | frames kept | time (s) | peak RSS (MiB) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for length, arm, r in rows:
        name = "tarsier" if arm == "tarsier" else "opencv, num_frames=-1"
        print(
            f"| {length} | {name} | {r['frames']} | {r['seconds']:.1f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
