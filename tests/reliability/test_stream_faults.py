"""The RTSP camera dies three times; the runtime reconnects each time within the backoff.

CI length: 24 seconds with short backoffs.  The two-minute run with the CLI's default
backoff is ``python tests/reliability/rtsp_outages.py`` (figures in docs/reliability.md).
"""

from __future__ import annotations

import json

import pytest
from stream_faults import FFMPEG, make_h264_clip, markdown, run_with_outages

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg (Debian package `ffmpeg`)"),
]


def test_camera_killed_three_times_is_reconnected_and_events_resume_within_the_backoff(
    colour_bundles, tmp_path
):
    clip = make_h264_clip(tmp_path / "clip.mp4")
    report = run_with_outages(
        colour_bundles["fp32"], clip, tmp_path, total_seconds=24, outage_seconds=[1.5, 2.0, 3.0],
        reconnect_delay=0.2, reconnect_max_delay=1.0, stream_timeout=2.0, stats_interval=1.0,
    )
    assert report.problems() == [], markdown(report) + "\n" + report.stderr_tail
    assert report.reconnects == 3 and report.lost_logged == 3, report.stderr_tail
    assert report.max_other_gap < 1.0, markdown(report)  # 25 fps away from the outages
    assert "Traceback" not in report.stderr_tail
    after_last = [e for e in _annotations(tmp_path / "events.jsonl")
                  if e["time"] >= report.outages[-1].restarted_at]
    assert {lab["label"] for e in after_last for lab in e["labels"]} >= {"red", "blue"}


def _annotations(path):
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r["type"] == "annotation"]
