"""Soak ``fuselite run``: N frames of a looping video, sampling its memory, files and threads.

    python tests/reliability/soak.py --frames 20000 --json soak.json

The source is the demo's synthetic-scenes video (``fuselite.data.video.render_video``,
300 frames) replayed with ``--loop``, so the capture is reopened every 300 frames;
JSONL events and an annotated video are written, and with ``--preview`` a client keeps
opening and dropping the MJPEG stream.  ``/proc/PID/status`` (VmRSS, Threads) and
``/proc/PID/fd`` are sampled every ``--sample-seconds``.  Growth is measured after a
warm-up (``--warmup-frames``, default a tenth of the run): the median of the last tenth
of the samples minus the median of the first tenth.  Exit code 1 when resident memory
grows more than ``--max-rss-growth-mb``, when file descriptors or threads grow, or
when an output lost a frame.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
from reliability_support import (
    ProcessSample,
    fuselite_command,
    machine_description,
    quiet_env,
    sample_process,
)

PREVIEW_URL = re.compile(r"preview: (http://\S+/)")


@dataclass
class SoakReport:
    """What a soak run measured.

    Attributes:
        frames: Frames asked for (``--max-frames``).
        annotated: Annotation events in the JSONL file.
        video_frames: Frames in the annotated video (``None`` without one).
        returncode: Exit code of ``fuselite run``.
        seconds: Wall time.
        warmup_seconds: When the warm-up ended (seconds after start).
        rss_start_kb, rss_end_kb: Median VmRSS of the first and last tenth after warm-up.
        rss_max_kb: Largest VmRSS after warm-up.
        fds_start, fds_end: Fewest open fds in the first and last tenth after warm-up.
        threads_start, threads_end: Fewest threads in the first and last tenth.
        preview_requests: Requests the preview client completed.
        samples: Every sample.
    """

    frames: int
    annotated: int
    video_frames: int | None
    returncode: int | None
    seconds: float
    warmup_seconds: float
    rss_start_kb: float
    rss_end_kb: float
    rss_max_kb: int
    fds_start: int
    fds_end: int
    threads_start: int
    threads_end: int
    preview_requests: int = 0
    stats_rss_mb: list[float] = field(default_factory=list)
    samples: list[ProcessSample] = field(default_factory=list)

    @property
    def rss_growth_mb(self) -> float:
        """Resident memory growth after warm-up, in MB."""
        return (self.rss_end_kb - self.rss_start_kb) / 1024

    def problems(self, max_rss_growth_mb: float = 5.0) -> list[str]:
        """Broken promises; empty when the soak passed."""
        found = []
        if self.returncode != 0:
            found.append(f"exit code {self.returncode}")
        if self.annotated != self.frames:
            found.append(f"{self.annotated} JSONL events for {self.frames} frames")
        if self.video_frames is not None and self.video_frames != self.frames:
            found.append(f"{self.video_frames} video frames for {self.frames} frames")
        if self.rss_growth_mb > max_rss_growth_mb:
            found.append(f"resident memory grew {self.rss_growth_mb:.1f} MB after warm-up")
        if self.fds_end > self.fds_start:
            found.append(f"open files grew from {self.fds_start} to {self.fds_end}")
        if self.threads_end > self.threads_start:
            found.append(f"threads grew from {self.threads_start} to {self.threads_end}")
        return found

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rss_growth_mb"] = round(self.rss_growth_mb, 2)
        return data


def make_looping_source(folder: Path) -> Path:
    """The demo's scenes video: 20 s at 15 fps, 256x256."""
    from fuselite.data.video import render_video

    video = folder / "scenes.mp4"
    render_video(video, seconds=20.0, fps=15, image_size=64, scale=4)
    return video


def run_soak(bundle: Path, source: Path, workdir: Path, frames: int, warmup_frames: int,
             sample_seconds: float = 0.5, video: bool = True, preview: bool = True,
             fps_limit: float | None = None, preview_every: float = 2.0,
             timeout: float = 7200) -> SoakReport:
    """Runs ``fuselite run`` for ``frames`` frames of ``source`` (looped) and samples it."""
    events = workdir / "events.jsonl"
    args = ["--bundle", bundle, "--source", source, "--loop", "--max-frames", frames,
            "--jsonl", events, "--threads", 1, "--stats-interval", 2]
    if fps_limit:
        args += ["--fps-limit", fps_limit]
    if video:
        args += ["--video-out", workdir / "annotated.mp4"]
    if preview:
        args += ["--preview", 0]
    started, wall_started = time.monotonic(), time.time()
    process = subprocess.Popen(fuselite_command("run", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=quiet_env())
    stderr: list[str] = []
    client = _PreviewClient(stderr, preview_every) if preview else None
    threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()
    if client:
        client.start()
    samples = _sample_until_exit(process, started, sample_seconds, timeout)
    if client:
        client.stop()
    seconds = time.monotonic() - started
    warmup = _warmup_seconds(events, warmup_frames, wall_started)
    return _report(frames, warmup, events, workdir / "annotated.mp4" if video else None,
                   process.returncode, seconds, samples, client.requests if client else 0)


def _sample_until_exit(process: subprocess.Popen, started: float, every: float,
                       timeout: float) -> list[ProcessSample]:
    samples = []
    deadline = started + timeout
    while process.poll() is None:
        sample = sample_process(process.pid, started)
        if sample is not None:
            samples.append(sample)
        if time.monotonic() > deadline:
            process.kill()
            break
        time.sleep(every)
    process.wait(60)
    return samples


class _PreviewClient:
    """Opens the MJPEG stream for half a second every ``every`` seconds, then the snapshot
    and the stats."""

    def __init__(self, stderr: list[str], every: float = 2.0) -> None:
        self.stderr = stderr
        self.every = every
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _url(self) -> str | None:
        for line in list(self.stderr):
            match = PREVIEW_URL.search(line)
            if match:
                return match.group(1)
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            url = self._url()
            if url is None:
                continue
            try:
                with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as stream:
                    end = time.monotonic() + 0.5
                    while time.monotonic() < end:
                        stream.read(4096)
                for path in ("snapshot.jpg", "stats.json"):
                    with urllib.request.urlopen(url + path, timeout=5) as response:
                        response.read()
                self.requests += 3
            except OSError:
                pass  # the run is ending


def _report(frames: int, warmup: float, events: Path, video: Path | None,
            returncode: int | None, seconds: float, samples: list[ProcessSample],
            preview_requests: int) -> SoakReport:
    records = _records(events)
    stats = [r for r in records if r["type"] == "stats"]
    steady = [s for s in samples if s.seconds >= warmup] or samples
    tenth = max(1, len(steady) // 10)
    first, last = steady[:tenth], steady[-tenth:]
    return SoakReport(
        frames=frames, annotated=sum(r["type"] == "annotation" for r in records),
        video_frames=_count_frames(video) if video else None, returncode=returncode,
        seconds=round(seconds, 1), warmup_seconds=round(warmup, 1),
        rss_start_kb=statistics.median(s.rss_kb for s in first),
        rss_end_kb=statistics.median(s.rss_kb for s in last),
        rss_max_kb=max(s.rss_kb for s in steady),
        fds_start=min(s.fds for s in first), fds_end=min(s.fds for s in last),
        threads_start=min(s.threads for s in first), threads_end=min(s.threads for s in last),
        preview_requests=preview_requests, stats_rss_mb=[r["rss_mb"] for r in stats],
        samples=samples,
    )


def _records(events: Path) -> list[dict]:
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()]


def _warmup_seconds(events: Path, warmup_frames: int, wall_started: float) -> float:
    """Seconds after the start when ``warmup_frames`` frames were done (from the stats)."""
    for record in _records(events):
        if record["type"] == "stats" and record["frames"] >= warmup_frames:
            return record["time"] - wall_started
    return 0.0


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def markdown(report: SoakReport) -> str:
    """The soak's figures as a two-column Markdown table."""
    rows = [
        ("frames annotated / asked", f"{report.annotated} / {report.frames}"),
        ("video frames written", "-" if report.video_frames is None else str(report.video_frames)),
        ("wall time", f"{report.seconds:.0f} s (warm-up until {report.warmup_seconds:.0f} s)"),
        ("resident memory after warm-up", f"{report.rss_start_kb / 1024:.1f} MB"),
        ("resident memory at the end", f"{report.rss_end_kb / 1024:.1f} MB"),
        ("growth after warm-up",
         f"{report.rss_growth_mb:+.2f} MB (max {report.rss_max_kb / 1024:.1f} MB)"),
        ("open file descriptors", f"{report.fds_start} -> {report.fds_end}"),
        ("threads", f"{report.threads_start} -> {report.threads_end}"),
        ("preview requests served", str(report.preview_requests)),
        ("exit code", str(report.returncode)),
    ]
    return "\n".join(["| measure | value |", "| --- | --- |"]
                     + [f"| {k} | {v} |" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--warmup-frames", type=int, help="default: a tenth of --frames")
    parser.add_argument("--bundle", type=Path, help="default: the fp32 colour test bundle")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--fps-limit", type=float, help="pace the run like a camera (e.g. 15)")
    parser.add_argument("--no-video", action="store_true", help="do not write an annotated video")
    parser.add_argument("--no-preview", action="store_true", help="no MJPEG preview client")
    parser.add_argument("--preview-every", type=float, default=2.0,
                        help="seconds between the preview client's visits")
    parser.add_argument("--max-rss-growth-mb", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the figures and samples here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        bundle = args.bundle or _build_bundle(workdir)
        report = run_soak(bundle, make_looping_source(workdir), workdir, args.frames,
                          args.warmup_frames or args.frames // 10, args.sample_seconds,
                          video=not args.no_video, preview=not args.no_preview,
                          fps_limit=args.fps_limit, preview_every=args.preview_every)
    print(markdown(report))
    problems = report.problems(args.max_rss_growth_mb)
    print("problems: " + ("; ".join(problems) if problems else "none"))
    if args.json:
        data = report.to_dict()
        data.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"),
                    bundle=str(args.bundle or "fp32 colour test bundle"),
                    arguments={k: str(v) for k, v in vars(args).items()})
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if problems else 0


def _build_bundle(folder: Path) -> Path:
    from support.bundles import build_colour_bundles

    return build_colour_bundles(folder / "bundles")["fp32"]


if __name__ == "__main__":
    sys.exit(main())
