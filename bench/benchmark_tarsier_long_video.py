# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Time and peak memory of sampling Tarsier's frames from long videos.

Compares two paths of vLLM's `tarsier` video loader
(`TarsierVideoBackend._load_opencv`), both keeping the frames the authors'
pipeline samples (`--num-frames`, 8 for Tarsier):

- sequential: `seek=False`, decodes every frame in order up to the last
  sampled one (the loader's previous behaviour);
- seek: the default, which reads the container's packet index, seeks past
  keyframes and checks each frame's timestamp.

Each load runs in its own process, interleaving the arms, and the table gives
the median time over `--repetitions`, the largest peak RSS of those processes
(which includes importing vLLM) and whether the seek arm returned the same
frames (SHA-1 of each RGB array) as the sequential one.

The clips are written with PyAV into `--dir` (build/bench-videos/; a clip
written before with the same parameters is reused): 1920x1080 at 30 fps, a
moving gradient and block, so that no two frames of a clip up to 24 minutes
long are alike. Encoders (all with a keyframe every 250 frames):

- h264: libx264, preset ultrafast (no B-frames, CAVLC);
- h264-bframes: libx264, preset medium, 3 B-frames (CABAC);
- hevc: libx265, preset ultrafast;
- vp9: libvpx-vp9, realtime, cpu-used 8, 8 Mbit/s (WebM);
- mpeg4: FFmpeg's MPEG-4 part 2, 8 Mbit/s (AVI).

H.264 (ultrafast) clips are `--lengths` long (10 s, 2 and 10 minutes), the
other codecs' `--codec-lengths` (1 minute: writing a 10-minute 1080p clip
takes minutes, much longer with B-frames or HEVC on few cores). Then, unless
`--qa-length 0`, `benchmark_tarsier_video_qa.py` times questions about a
`--qa-length` clip through `vllm serve` and `LLM.chat` on the tiny fixture.
The tables go to stdout and to build/bench-results/long_video.md. Run it
from the repository root (the default is the whole run, about 20 minutes on
2 cores):

    export HF_HOME=$PWD/build/hf HF_HUB_OFFLINE=1
    build/venv/bin/python bench/benchmark_tarsier_long_video.py
    build/venv/bin/python bench/benchmark_tarsier_long_video.py \\
        --lengths 10 120 --codecs h264 vp9 --repetitions 1 --qa-length 0
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS = 1920, 1080, 30
GOP = 250
ARMS = ("sequential", "seek")
# Bump when the clips' content changes, so that cached clips are rewritten.
CONTENT_VERSION = 1
# Frames a clip variant's pattern is ahead of the first's.
VARIANT_SHIFT = 7919


@dataclass(frozen=True)
class Codec:
    encoder: str
    extension: str
    options: dict[str, str]
    bit_rate: int | None = None


CODECS = {
    "h264": Codec("libx264", "mp4", {"preset": "ultrafast", "g": str(GOP)}),
    "h264-bframes": Codec(
        "libx264", "mp4", {"preset": "medium", "bf": "3", "g": str(GOP)}
    ),
    "hevc": Codec(
        "libx265",
        "mp4",
        {"preset": "ultrafast", "g": str(GOP), "x265-params": "log-level=none"},
    ),
    "vp9": Codec(
        "libvpx-vp9",
        "webm",
        {
            "g": str(GOP),
            "deadline": "realtime",
            "cpu-used": "8",
            "row-mt": "1",
            "threads": str(os.cpu_count() or 1),
        },
        bit_rate=8_000_000,
    ),
    "mpeg4": Codec("mpeg4", "avi", {"g": str(GOP)}, bit_rate=8_000_000),
}

MEASURE = r"""
import hashlib, json, resource, sys, time
from vllm.multimodal.tarsier_video import TarsierVideoBackend

path, arm, num_frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "rb") as f:
    data = f.read()

# Record whether the seek arm kept its seeked frames or fell back to decoding
# in order (None: it never tried, e.g. no usable packet index).
seeked = None
read_seeking = TarsierVideoBackend._read_seeking

def spy(*args):
    global seeked
    frames = read_seeking(*args)
    seeked = frames is not None
    return frames

TarsierVideoBackend._read_seeking = staticmethod(spy)
before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
frames, total, fps = TarsierVideoBackend._load_opencv(
    data, num_frames, seek=arm == "seek"
)
seconds = time.perf_counter() - start
hashes = {
    str(i): hashlib.sha1(
        f"{frames[i].shape}{frames[i].dtype}".encode() + frames[i].tobytes()
    ).hexdigest()
    for i in sorted(frames)
}
print(json.dumps({"seconds": seconds, "total": total, "fps": fps,
                  "indices": sorted(frames), "hashes": hashes,
                  "seeked": seeked, "before_load_mb": before_kib / 1024}))
"""


@dataclass
class Clip:
    codec: str
    length: int
    path: Path
    size_mb: float
    keyframes: int


@dataclass
class ArmResult:
    seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    before_load_mb: list[float] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)


def clip_path(directory: Path, codec: str, length: int, variant: int = 0) -> Path:
    """Cache path; its name carries a hash of everything that shapes the clip."""
    spec = CODECS[codec]
    params = {
        "content": CONTENT_VERSION,
        "size": [WIDTH, HEIGHT],
        "fps": FPS,
        "length": length,
        "encoder": spec.encoder,
        "options": {k: v for k, v in spec.options.items() if k != "threads"},
        "bit_rate": spec.bit_rate,
    }
    if variant:
        params["variant"] = variant
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return directory / f"{codec}_{length}s_{HEIGHT}p{FPS}_{key}.{spec.extension}"


def frame_planes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V bases, twice as wide or tall as a frame's planes, so that
    each frame is a shifted window of them (a roll without wrap-around)."""
    y_ramp = np.linspace(16, 235, WIDTH, dtype=np.float32).astype(np.uint8)
    y = np.tile(np.concatenate([y_ramp, y_ramp]), (HEIGHT, 1))
    u_ramp = np.linspace(64, 192, HEIGHT // 2, dtype=np.float32).astype(np.uint8)
    u = np.tile(np.concatenate([u_ramp, u_ramp])[:, None], (1, WIDTH // 2))
    v_ramp = np.linspace(192, 64, WIDTH // 2, dtype=np.float32).astype(np.uint8)
    v = np.tile(np.concatenate([v_ramp, v_ramp]), (HEIGHT // 2, 1))
    return y, u, v


def fill_frame(
    out: np.ndarray, planes: tuple[np.ndarray, np.ndarray, np.ndarray], t: int
) -> None:
    """Frame t as one yuv420p array (Y rows, then U, then V), in place.

    The Y gradient moves 8 px a frame, U 2 rows, V 3 px and a block 7 px: the
    whole picture repeats only after 43200 frames (24 minutes).
    """
    y, u, v = planes
    cw, ch = WIDTH // 2, HEIGHT // 2
    dy, du, dv = (8 * t) % WIDTH, (2 * t) % ch, (3 * t) % cw
    out[:HEIGHT] = y[:, dy : dy + WIDTH]
    out[HEIGHT : HEIGHT + ch // 2] = u[du : du + ch].reshape(ch // 2, WIDTH)
    out[HEIGHT + ch // 2 :] = v[:, dv : dv + cw].reshape(ch // 2, WIDTH)
    x = (7 * t) % (WIDTH - 320)
    out[400:680, x : x + 320] = 235


def write_clip(path: Path, codec: str, length: int, variant: int = 0) -> None:
    """Encode the clip to a temporary name, then move it into place. Another
    `variant` starts the pattern elsewhere: the same kind of clip, other frames
    (so that vLLM's content-keyed caches do not take it for the first)."""
    import av

    spec = CODECS[codec]
    total = length * FPS
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    planes = frame_planes()
    buffer = np.empty((HEIGHT * 3 // 2, WIDTH), dtype=np.uint8)
    start = last_report = time.perf_counter()
    with av.open(str(partial), "w") as container:
        stream = container.add_stream(spec.encoder, rate=FPS, options=spec.options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if spec.bit_rate:
            stream.codec_context.bit_rate = spec.bit_rate
        for t in range(total):
            fill_frame(buffer, planes, t + VARIANT_SHIFT * variant)
            frame = av.VideoFrame.from_ndarray(buffer, format="yuv420p")
            frame.pts, frame.time_base = t, Fraction(1, FPS)
            container.mux(stream.encode(frame))
            now = time.perf_counter()
            if now - last_report >= 10:
                last_report = now
                rate = (t + 1) / (now - start)
                print(
                    f"  {path.name}: {t + 1}/{total} frames, {rate:.0f} frames/s, "
                    f"about {(total - t - 1) / rate:.0f} s left",
                    flush=True,
                )
        container.mux(stream.encode(None))
    os.replace(partial, path)
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )


def count_keyframes(path: Path) -> int:
    """Keyframes among the video packets (demuxing only)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(
            packet.is_keyframe
            for packet in container.demux(stream)
            if packet.size  # the demuxer's final empty packet
        )


def prepare_clip(directory: Path, codec: str, length: int, variant: int = 0) -> Clip:
    directory.mkdir(parents=True, exist_ok=True)
    path = clip_path(directory, codec, length, variant)
    if path.exists():
        print(f"reusing {path}", flush=True)
    else:
        print(f"writing {path} ({length * FPS} frames with {codec})", flush=True)
        write_clip(path, codec, length, variant)
    return Clip(codec, length, path, path.stat().st_size / 2**20, count_keyframes(path))


def measure(path: Path, arm: str, num_frames: int) -> dict:
    """One load in a fresh process; its peak RSS from the kernel."""
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", MEASURE, str(path), arm, str(num_frames)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            stderr.seek(0)
            tail = "".join(stderr.readlines()[-15:])
            raise RuntimeError(f"{arm} on {path} failed ({proc.returncode}):\n{tail}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def run_clip(clip: Clip, num_frames: int, repetitions: int) -> dict[str, ArmResult]:
    results = {arm: ArmResult() for arm in ARMS}
    for rep in range(repetitions):
        for arm in ARMS:
            r = measure(clip.path, arm, num_frames)
            res = results[arm]
            res.seconds.append(r["seconds"])
            res.peak_mb.append(r["peak_mb"])
            res.before_load_mb.append(r["before_load_mb"])
            res.runs.append(r)
            print(
                f"  {clip.codec:<12} {clip.length:>5} s  {arm:<10} "
                f"run {rep + 1}/{repetitions}: {r['seconds']:7.2f} s, "
                f"peak {r['peak_mb']:6.0f} MB ({r['before_load_mb']:.0f} before "
                f"the load), T={r['total']}, frames {r['indices']}",
                flush=True,
            )
    return results


def frames_key(run: dict) -> tuple:
    return tuple(sorted(run["hashes"].items(), key=lambda kv: int(kv[0])))


def compare(results: dict[str, ArmResult]) -> str:
    """Whether the seek arm's frames match the sequential arm's, every run."""
    reference = {frames_key(run) for run in results["sequential"].runs}
    seek = {frames_key(run) for run in results["seek"].runs}
    if len(reference) > 1:
        return "no (sequential varies between runs)"
    if seek == reference:
        return "yes"
    ref = dict(next(iter(reference)))
    differing = sorted(
        {int(i) for key in seek for i, h in key if ref.get(i) != h}
        | {int(i) for key in seek for i in ref if i not in dict(key)},
    )
    return f"no (frames {differing})"


def seek_note(results: dict[str, ArmResult]) -> str:
    states = {run["seeked"] for run in results["seek"].runs}
    if states == {True}:
        return ""
    if states == {False}:
        return " (fell back to in-order)"
    if states == {None}:
        return " (no packet index: in order)"
    return " (fell back in some runs)"


def before_load(rows: list[tuple[Clip, dict[str, ArmResult]]]) -> str:
    values = [mb for _, res in rows for arm in ARMS for mb in res[arm].before_load_mb]
    return f"{min(values):.0f}–{max(values):.0f}"


def table(
    rows: list[tuple[Clip, dict[str, ArmResult]]], num_frames: int, repetitions: int
) -> str:
    lines = [
        "| codec | length (s) | frames T | arm | seconds (median) | peak MB "
        "| same frames as sequential | speed-up |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for clip, results in rows:
        same = compare(results)
        base = statistics.median(results["sequential"].seconds)
        for arm in ARMS:
            res = results[arm]
            seconds = statistics.median(res.seconds)
            totals = sorted({run["total"] for run in res.runs})
            name = arm + (seek_note(results) if arm == "seek" else "")
            lines.append(
                f"| {clip.codec} | {clip.length} | "
                f"{', '.join(map(str, totals))} | {name} | {seconds:.2f} | "
                f"{max(res.peak_mb):.0f} | {same if arm == 'seek' else '—'} | "
                f"{'—' if arm == 'sequential' else f'{base / seconds:.1f}×'} |"
            )
    notes = [
        "",
        f"{num_frames} frames sampled; median of {repetitions} run(s) per arm, "
        "each load in its own process; peak MB: the largest peak RSS of those "
        f"processes, including importing vLLM and reading the clip "
        f"({before_load(rows)} MB before the load).",
        "",
        "| clip | size (MB) | keyframes | sampled indices (sequential) "
        "| sampled indices (seek) |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for clip, results in rows:
        indices = {
            arm: "; ".join(sorted({str(run["indices"]) for run in results[arm].runs}))
            for arm in ARMS
        }
        notes.append(
            f"| {clip.path.name} | {clip.size_mb:.1f} | {clip.keyframes} | "
            f"{indices['sequential']} | {indices['seek']} |"
        )
    return "\n".join(lines + notes) + "\n"


def environment() -> str:
    import av
    import cv2

    return (
        f"CPUs: {os.cpu_count()} (usable by this process: "
        f"{len(os.sched_getaffinity(0))}); OpenCV {cv2.__version__}, "
        f"PyAV {av.__version__}, Python {sys.version.split()[0]}"
    )


def main() -> None:
    from benchmark_tarsier_video_qa import add_arguments as add_qa_arguments
    from benchmark_tarsier_video_qa import qa_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[10, 120, 600],
        help="H.264 (ultrafast) clip lengths in seconds",
    )
    parser.add_argument(
        "--codecs", nargs="+", default=list(CODECS), choices=sorted(CODECS)
    )
    parser.add_argument(
        "--codec-lengths",
        type=int,
        nargs="*",
        default=[60],
        help="clip lengths in seconds for the codecs other than h264",
    )
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("build/bench-videos"))
    parser.add_argument(
        "--output", type=Path, default=Path("build/bench-results/long_video.md")
    )
    parser.add_argument(
        "--qa-length",
        type=int,
        default=600,
        help="seconds of the clip the questions are about (0: no questions)",
    )
    add_qa_arguments(parser)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    env = environment()
    print(env, flush=True)
    rows = []
    for codec in args.codecs:
        for length in args.lengths if codec == "h264" else args.codec_lengths:
            clip = prepare_clip(args.dir, codec, length)
            rows.append((clip, run_clip(clip, args.num_frames, args.repetitions)))

    report = (
        f"# Tarsier's loader on long videos\n\n{env}\n\n"
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`\n\n"
        + table(rows, args.num_frames, args.repetitions)
    )
    if args.qa_length:
        print("\n" + report, end="", flush=True)
        report += "\n" + qa_report(
            argparse.Namespace(**{**vars(args), "length": args.qa_length})
        )
    print("\n" + report, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
