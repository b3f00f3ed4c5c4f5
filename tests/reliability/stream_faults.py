"""An RTSP camera that dies and comes back while ``fuselite run`` watches it.

The camera is ``tests/runtime/rtsp_relay.py``: ffmpeg paces an H.264 clip as RTP on
127.0.0.1 and a small relay speaks RTSP (Debian's ffmpeg cannot listen as an RTSP
server).  :func:`run_with_outages` kills it (ffmpeg and every connection, like a camera
losing power) at planned moments, restarts it after a planned outage, and measures what
the event stream of ``fuselite run`` saw: the gap in annotation events around each
outage, the reconnects the runtime counted, and whether it exited cleanly.

A gap is bounded by the outage itself, plus the reconnect delay in force when the camera
came back (at most ``--reconnect-max-delay``), plus the time to open the stream again
(RTSP handshake, then decoding up to the next keyframe): ``OPEN_ALLOWANCE_S``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reliability_support import fuselite_command, quiet_env
from rtsp_relay import RtspRelay

FFMPEG = shutil.which("ffmpeg")
# Reopening the stream: RTSP handshake, OpenCV's FFmpeg probing the stream, decoding up to
# the next keyframe (one every 0.2 s in our clip).  Measured 1.0 s on the idle machine and
# up to 1.7 s with other jobs on its two cores; the rest is margin.
OPEN_ALLOWANCE_S = 2.5


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_h264_clip(path: Path, seconds_per_colour: float = 1.0) -> Path:
    """Red then blue, 160x120 at 25 fps, H.264 with a keyframe every 5 frames."""
    colour = "color=c={}:size=160x120:rate=25:duration=" + str(seconds_per_colour)
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         colour.format("red"), "-f", "lavfi", "-i", colour.format("blue"),
         "-filter_complex", "[0][1]concat=n=2:v=1", "-c:v", "libx264", "-g", "5",
         "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=60, capture_output=True,
    )
    return path


@dataclass
class Outage:
    """One planned camera failure and what the event stream showed.

    Attributes:
        killed_at: Unix time the camera was killed.
        restarted_at: Unix time it was serving again.
        last_event_before: Time of the last annotated frame read before the kill.
        first_event_after: Time of the first annotated frame read after the restart.
    """

    killed_at: float
    restarted_at: float
    last_event_before: float | None = None
    first_event_after: float | None = None
    lost_logged_at: float | None = None
    reconnected_logged_at: float | None = None

    @property
    def seconds(self) -> float:
        """How long the camera was gone."""
        return self.restarted_at - self.killed_at

    @property
    def detection(self) -> float | None:
        """Seconds from the kill to the runtime logging "lost the stream"."""
        return None if self.lost_logged_at is None else self.lost_logged_at - self.killed_at

    @property
    def reconnect(self) -> float | None:
        """Seconds from the camera's return to the runtime logging "reconnected"."""
        if self.reconnected_logged_at is None:
            return None
        return self.reconnected_logged_at - self.restarted_at

    @property
    def gap(self) -> float | None:
        """Seconds between the events either side of the outage (None if none came after)."""
        if self.last_event_before is None or self.first_event_after is None:
            return None
        return self.first_event_after - self.last_event_before


@dataclass
class StreamReport:
    """What one run against a failing camera measured.

    Attributes:
        seconds: Wall time of the run.
        returncode: Exit code of ``fuselite run`` (0 after SIGTERM is a clean end).
        annotations: Annotation events in the JSONL file.
        frames: Frames the runtime says it annotated (final stats record).
        outages: The planned outages with the gaps measured around them.
        reconnects: Reconnects the runtime counted (final stats record).
        lost_logged: "lost the stream" log lines.
        max_other_gap: Largest gap between events away from any outage.
        reconnect_max_delay: The run's longest wait between reconnect attempts.
        stderr_tail: The end of the runtime's log, for a failure message.
    """

    seconds: float
    returncode: int | None
    annotations: int
    frames: int
    outages: list[Outage]
    reconnects: int
    lost_logged: int
    max_other_gap: float
    reconnect_max_delay: float
    stderr_tail: str = ""
    stats: list[dict] = field(default_factory=list)

    def gap_bound(self, outage: Outage) -> float:
        """The longest gap allowed around ``outage``."""
        return outage.seconds + self.reconnect_max_delay + OPEN_ALLOWANCE_S

    def problems(self) -> list[str]:
        """Everything that breaks the contract; empty when the run behaved."""
        found = []
        if self.returncode != 0:
            found.append(f"exit code {self.returncode}")
        if self.annotations != self.frames:
            found.append(f"{self.frames} frames annotated but {self.annotations} events written")
        if self.reconnects < len(self.outages):
            found.append(f"{self.reconnects} reconnects for {len(self.outages)} outages")
        for i, outage in enumerate(self.outages, 1):
            if outage.gap is None:
                found.append(f"outage {i}: no events after the camera came back")
            elif outage.gap > self.gap_bound(outage):
                found.append(f"outage {i}: gap {outage.gap:.2f} s > bound "
                             f"{self.gap_bound(outage):.2f} s")
        return found

    def to_dict(self) -> dict:
        """JSON-ready, with each outage's length and gap."""
        data = asdict(self)
        for row, outage in zip(data["outages"], self.outages):
            row.update(seconds=round(outage.seconds, 3), gap=outage.gap,
                       bound=round(self.gap_bound(outage), 3))
        return data


def run_with_outages(bundle: Path, clip: Path, workdir: Path, total_seconds: float,
                     outage_seconds: list[float], reconnect_delay: float = 0.5,
                     reconnect_max_delay: float = 10.0, stream_timeout: float = 5.0,
                     stats_interval: float = 5.0) -> StreamReport:
    """Runs ``fuselite run`` on a camera killed ``len(outage_seconds)`` times, evenly spread."""
    relay = RtspRelay(clip, free_port(), workdir)
    events = workdir / "events.jsonl"
    relay.start()
    args = ["--bundle", bundle, "--source", relay.url, "--jsonl", events, "--threads", 1,
            "--reconnect-delay", reconnect_delay, "--reconnect-max-delay", reconnect_max_delay,
            "--stream-timeout", stream_timeout, "--stats-interval", stats_interval]
    started = time.monotonic()
    process = subprocess.Popen(fuselite_command("run", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=quiet_env())
    stderr: list[tuple[float, str]] = []  # (arrival time, line): the log has no timestamps
    reader = threading.Thread(target=_read_lines, args=(process.stderr, stderr), daemon=True)
    reader.start()
    outages = []
    try:
        _wait_for_annotations(events, 5, timeout=30)
        for i, seconds in enumerate(outage_seconds):
            kill_at = started + (i + 1) * total_seconds / (len(outage_seconds) + 1) - seconds / 2
            time.sleep(max(0.0, kill_at - time.monotonic()))
            outages.append(_outage(relay, seconds))
        time.sleep(max(0.0, started + total_seconds - time.monotonic()))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(10)
        relay.kill()
    return _report(events, outages, process.returncode, stderr,
                   time.monotonic() - started, reconnect_max_delay)


def _read_lines(stream, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.time(), line))


def _outage(relay: RtspRelay, seconds: float) -> Outage:
    killed_at = time.time()
    relay.kill()
    time.sleep(seconds)
    relay.start()
    return Outage(killed_at, time.time())


def _wait_for_annotations(events: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_records(events, "annotation")) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no {count} events from the stream within {timeout:.0f} s")


def _records(events: Path, kind: str) -> list[dict]:
    if not events.exists():
        return []
    records = []
    for line in events.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written right now
        if record.get("type") == kind:
            records.append(record)
    return records


def _report(events: Path, outages: list[Outage], returncode: int | None,
            stderr: list[tuple[float, str]], seconds: float,
            reconnect_max_delay: float) -> StreamReport:
    times = sorted(r["time"] for r in _records(events, "annotation"))
    for outage in outages:
        before = [t for t in times if t <= outage.killed_at]
        after = [t for t in times if t >= outage.restarted_at]
        outage.last_event_before = before[-1] if before else None
        outage.first_event_after = after[0] if after else None
        outage.lost_logged_at = _first_line_after(stderr, "lost the stream", outage.killed_at)
        outage.reconnected_logged_at = _first_line_after(stderr, "reconnected after",
                                                         outage.restarted_at)
    windows = [(o.killed_at, o.restarted_at) for o in outages]
    other = [b - a for a, b in itertools.pairwise(times)
             if not any(a < end and b > start for start, end in windows)]
    stats = _records(events, "stats")
    final = stats[-1] if stats else {}
    text = "".join(line for _, line in stderr)
    return StreamReport(
        seconds=round(seconds, 1), returncode=returncode, annotations=len(times),
        frames=int(final.get("frames", -1)), outages=outages, reconnects=int(final.get("reconnects", 0)),
        lost_logged=text.count("lost the stream"), max_other_gap=max(other, default=0.0),
        reconnect_max_delay=reconnect_max_delay, stderr_tail=text[-3000:], stats=stats,
    )


def _first_line_after(lines: list[tuple[float, str]], text: str, after: float) -> float | None:
    return next((t for t, line in lines if t >= after and text in line), None)


def markdown(report: StreamReport) -> str:
    """One row per outage: its length, the event gap and bound, and where the time went."""
    rows = [("| outage | camera gone (s) | event gap (s) | bound (s) | gap - outage (s) "
             "| loss logged after (s) | reconnected after return (s) |"),
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, o in enumerate(report.outages, 1):
        gap = "none" if o.gap is None else f"{o.gap:.2f}"
        recovery = "-" if o.gap is None else f"{o.gap - o.seconds:.2f}"
        rows.append(f"| {i} | {o.seconds:.2f} | {gap} | {report.gap_bound(o):.2f} | {recovery} "
                    f"| {_seconds(o.detection)} | {_seconds(o.reconnect)} |")
    return "\n".join(rows)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
