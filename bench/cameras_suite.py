"""Several cameras in one process against one: ``python -m fuselite.bench.suite cameras``.

    python -m fuselite.bench.suite cameras --bundle demo-out/bundles/int8.tflite \\
        --video demo-out/video/scenes.mp4 [--rounds 3] [--seconds 8] [--rtsp]

Every measurement is a fresh ``fuselite run --config`` process, stopped by SIGINT after
``--seconds``; its figures come from each camera's final stats record (frames and the
seconds they took) and the process's peak RSS (``VmHWM``, sampled until it exits).  Rounds
interleave the arrangements, so a machine that gets busier hurts them alike.

* ``1 file`` / ``4 files``: one camera, then four, each replaying its own copy of the
  video with every frame annotated (the cameras are saturated: a frame always waits);
* ``1 rtsp`` / ``4 rtsp`` (``--rtsp``): the same video served by ffmpeg as RTSP streams
  on 127.0.0.1, at 4x its frame rate (so that four saturate the model), latest frame only;
* ``8 files``: eight cameras, for the peak RSS.

Targets (docs/cameras.md): total FPS of 4 cameras >= 0.9x one camera's; each of the 4
within +-10 % of their mean; 8 cameras' peak RSS <= 200 MB.  Results are written as
JSON and Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fuselite.bench.measure import vm_hwm_kib

TOTAL_RATIO_TARGET = 0.9
SPREAD_TARGET = 0.10
RSS_TARGET_MB = 200.0
WARM_UP_S = 1.0


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; prints the Markdown table."""
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    videos = _copies(args.video, args.out / "videos", 8)
    arrangements = {"1 file": videos[:1], "4 files": videos[:4]}
    relays = []
    if args.rtsp:
        fast = _fast_video(args.video, args.out / "videos" / "fast.mp4")
        relays = [_serve_rtsp(fast, args.out) for _ in range(4)]
        arrangements.update(
            {"1 rtsp": [r.url for r in relays[:1]], "4 rtsp": [r.url for r in relays]}
        )
    rows: dict[str, list[dict]] = {name: [] for name in arrangements}
    try:
        time.sleep(1.0 if relays else 0)
        for round_number in range(args.rounds):
            for name, sources in arrangements.items():
                rows[name].append(measure(name, sources, args, round_number))
        rows["8 files"] = [measure("8 files", videos, args, 0)]
    finally:
        for relay in relays:
            relay.kill()
    report = summarise(rows, args)
    (args.out / "cameras.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (args.out / "cameras.md").write_text(markdown)
    print(markdown)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.bench.suite cameras", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the demo's int8 bundle")
    parser.add_argument(
        "--video", type=Path, required=True, help="a video to replay (the demo's scenes.mp4)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-cameras"), help="results folder")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    parser.add_argument("--rtsp", action="store_true", help="also serve RTSP streams with ffmpeg")
    return parser


def _copies(video: Path, folder: Path, count: int) -> list[Path]:
    """``count`` copies of ``video``: each camera decodes a file of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count):
        copy = folder / f"camera{index}{video.suffix}"
        if not copy.exists():
            shutil.copyfile(video, copy)
        copies.append(copy)
    return copies


def _fast_video(video: Path, target: Path) -> Path:
    """``video`` at 4x speed and frame rate (H.264), once: RTSP streams that can saturate."""
    if not target.exists():
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(video),
                "-vf",
                "setpts=0.25*PTS",
                "-r",
                "60",
                "-c:v",
                "libx264",
                "-g",
                "30",
                "-preset",
                "veryfast",
                str(target),
            ],
            check=True,
        )
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_rtsp(video: Path, workdir: Path):
    """``video`` served in a loop as RTSP on 127.0.0.1 by the tests' relay (ffmpeg paces the
    RTP, the relay speaks RTSP: Debian's ffmpeg cannot serve RTSP itself)."""
    relay_dir = Path(__file__).resolve().parents[1] / "tests" / "runtime"
    if not (relay_dir / "rtsp_relay.py").exists():
        raise SystemExit("--rtsp needs a checkout of fuselite (tests/runtime/rtsp_relay.py)")
    sys.path.insert(0, str(relay_dir))
    from rtsp_relay import RtspRelay

    relay = RtspRelay(video, _free_port(), workdir)
    relay.start()
    return relay


def _config(name: str, sources: list, args, folder: Path) -> Path:
    """The cameras file of one measurement."""
    lines = [f"threads = {args.threads}", "stats_interval = 0"]
    for index, source in enumerate(sources):
        live = str(source).startswith("rtsp://")
        lines += [
            "[[camera]]",
            f'name = "cam{index}"',
            f'source = "{source}"',
            f'bundle = "{args.bundle}"',
            f'jsonl = "{folder}/cam{index}.jsonl"',
            "loop = true" if not live else "stream_timeout = 10",
        ]
    path = folder / "cameras.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child_peak_rss_mb(pid: int) -> float:
    """A running child's peak resident memory so far, in MiB (``VmHWM``; 0 once it is gone).

    Not ``ru_maxrss`` from ``wait4``: Linux keeps in it the high-water mark of the process
    before ``exec``, a fork of this benchmark (146 MB here against the 83 MB
    ``/usr/bin/time -v`` gives for the same run).
    """
    kib = vm_hwm_kib(pid)
    return 0.0 if kib is None else kib / 1024


def measure(name: str, sources: list, args, round_number: int) -> dict:
    """One fresh ``fuselite run --config`` for ``args.seconds``: per-camera FPS and peak RSS."""
    folder = args.out / "runs" / f"{name.replace(' ', '-')}-{round_number}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = _config(name, sources, args, folder)
    command = [sys.executable, "-m", "fuselite.cli", "run", "--config", str(config)]
    with (folder / "stderr.log").open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        time.sleep(args.seconds)
        peak_mb = child_peak_rss_mb(process.pid)
        process.send_signal(signal.SIGINT)
        while True:  # its shutdown may peak too: sample until it exits
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_mb = max(peak_mb, child_peak_rss_mb(process.pid))
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
    times, dropped, frames = {}, {}, 0
    for index in range(len(sources)):
        records = [
            json.loads(line) for line in (folder / f"cam{index}.jsonl").read_text().splitlines()
        ]
        times[f"cam{index}"] = [r["time"] for r in records if r.get("type") == "annotation"]
        final = [r for r in records if r.get("type") == "stats" and r.get("final")][-1]
        dropped[f"cam{index}"] = final["dropped"] / max(1, final["dropped"] + final["frames"])
        frames += final["frames"]
    fps = _window_fps(times)
    # CPU of the whole process (every thread, loading included) per annotated frame: what
    # running several cameras in one process costs on top of the frames themselves.
    cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000 / max(1, frames)
    return {
        "cpu_ms_per_frame": cpu_ms,
        "fps": fps,
        "total_fps": sum(fps.values()),
        "peak_rss_mb": peak_mb,
        "dropped_share": dropped,
        "exit": os.waitstatus_to_exitcode(status),
    }


def _window_fps(times: dict[str, list[float]]) -> dict[str, float]:
    """Each camera's annotated frames per second over the window where every camera ran,
    its first second left out (streams connect, files open, at different moments)."""
    if not all(times.values()):
        return {name: 0.0 for name in times}
    start = max(t[0] for t in times.values()) + WARM_UP_S
    end = min(t[-1] for t in times.values())
    if end <= start:
        return {name: 0.0 for name in times}
    return {name: sum(start <= x <= end for x in t) / (end - start) for name, t in times.items()}


def summarise(rows: dict[str, list[dict]], args) -> dict:
    """Medians and ranges per arrangement, and each target against its figure."""
    summary = {
        "machine": _machine(),
        "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds,
        "seconds": args.seconds,
        "threads": args.threads,
        "arrangements": {},
    }
    for name, runs in rows.items():
        totals = [r["total_fps"] for r in runs]
        spreads = [_spread(r["fps"]) for r in runs]
        summary["arrangements"][name] = {
            "total_fps_median": round(statistics.median(totals), 1),
            "total_fps_range": [round(min(totals), 1), round(max(totals), 1)],
            "spread_max": round(max(spreads), 3),
            "peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in runs), 1),
            "cpu_ms_per_frame_median": round(
                statistics.median(r["cpu_ms_per_frame"] for r in runs), 3
            ),
            # Live cameras drop the frames the model has no time for: the share says
            # whether they were saturated (files never drop: a frame always waits).
            "dropped_share_max": round(max(max(r["dropped_share"].values()) for r in runs), 3),
            "runs": runs,
        }
    summary["targets"] = _targets(summary["arrangements"], rows)
    return summary


def _spread(fps: dict[str, float]) -> float:
    """Largest distance of one camera's FPS from the cameras' mean, as a fraction of it."""
    mean = statistics.mean(fps.values())
    return max(abs(v - mean) for v in fps.values()) / mean if mean else 0.0


def _targets(arrangements: dict, rows: dict) -> list[dict]:
    targets = []
    for kind in ("files", "rtsp"):
        one, four = rows.get(f"1 {kind[:-1] if kind == 'files' else kind}"), rows.get(f"4 {kind}")
        if not one or not four:
            continue
        # Ratios within a round: both ran within seconds of each other.
        ratios = [
            f["total_fps"] / o["total_fps"]
            for o, f in zip(one, four, strict=True)
            if o["total_fps"]
        ]
        ratio = statistics.median(ratios)
        targets.append(
            {
                "target": f"4 {kind}: total FPS >= {TOTAL_RATIO_TARGET}x one camera's",
                "figure": f"{ratio:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})",
                "met": ratio >= TOTAL_RATIO_TARGET,
            }
        )
        spread = arrangements[f"4 {kind}"]["spread_max"]
        targets.append(
            {
                "target": f"4 {kind}: each camera within +-{SPREAD_TARGET:.0%} of the mean",
                "figure": f"worst {spread:.1%}",
                "met": spread <= SPREAD_TARGET,
            }
        )
    rss = arrangements["8 files"]["peak_rss_mb_max"]
    targets.append(
        {
            "target": f"8 cameras: peak RSS <= {RSS_TARGET_MB:.0f} MB",
            "figure": f"{rss:.0f} MB",
            "met": rss <= RSS_TARGET_MB,
        }
    )
    return targets


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.system()} {platform.release()}"
    )


def to_markdown(report: dict) -> str:
    """The tables for people."""
    heading = (
        f"{report['machine']}; {report['utc']}; load average {report['load_average']}; "
        f"{report['rounds']} interleaved rounds of {report['seconds']:g} s; "
        f"{report['threads']} interpreter threads"
    )
    lines = [
        heading,
        "",
        "| cameras | total FPS (median) | range | worst camera vs mean | dropped "
        + "| CPU ms/frame | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["arrangements"].items():
        low, high = row["total_fps_range"]
        lines.append(
            f"| {name} | {row['total_fps_median']} | {low}-{high} | "
            f"{row['spread_max']:.1%} | {row['dropped_share_max']:.0%} | "
            f"{row['cpu_ms_per_frame_median']:.2f} | {row['peak_rss_mb_max']:.0f} MB |"
        )
    lines += ["", "| target | figure | met |", "| --- | --- | --- |"]
    lines += [
        f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else 'NO'} |"
        for t in report["targets"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
