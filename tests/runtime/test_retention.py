"""Retention: rotated files, and caps that delete the oldest closed files fuselite wrote,
never the open one, never anyone else's."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from runtime_helpers import events, write_clip
from support.frames import BLUE, RED

from fuselite.runtime.cameras import load_cameras_config
from fuselite.runtime.multicam import run_cameras
from fuselite.runtime.retention import RotatingJsonlWriter, Series, sweep

GB = 1e9


def make_files(folder: Path, names: list[str], size: int = 1000) -> list[Path]:
    """Files of ``size`` bytes, each a minute newer than the one before."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time() - 3600
    paths = []
    for index, name in enumerate(names):
        path = folder / name
        path.write_bytes(b"x" * size)
        os.utime(path, (start + 60 * index, start + 60 * index))
        paths.append(path)
    return paths


FOREIGN = ["holiday.mp4", "door-notes.mp4", "door-0001.mkv", ".door.partial.mp4", "door-01.mp4"]


def test_a_size_cap_deletes_the_oldest_closed_files_and_nothing_else(tmp_path):
    ours = make_files(tmp_path, [f"door-{n:04d}.mp4" for n in range(1, 6)])
    foreign = make_files(tmp_path, FOREIGN, size=50_000)
    deleted = sweep([Series.beside(tmp_path / "door.mp4")], keep_gb=2500 / GB, keep_days=None)
    assert deleted == ours[:3]  # 5000 bytes down to 2000: the three oldest
    assert [p.exists() for p in ours] == [False, False, False, True, True]
    assert all(p.exists() for p in foreign)  # not ours, however big


def test_the_newest_file_of_a_series_survives_any_cap(tmp_path):
    ours = make_files(tmp_path, [f"door-{n:04d}.mp4" for n in range(1, 4)])
    deleted = sweep([Series.beside(tmp_path / "door.mp4")], keep_gb=1 / GB, keep_days=None)
    assert deleted == ours[:2] and ours[2].exists()  # it may be the one being written


def test_an_open_file_is_never_deleted_even_when_it_is_the_oldest(tmp_path):
    ours = make_files(tmp_path, [f"ev-{n:04d}.jsonl" for n in range(1, 5)])
    deleted = sweep(
        [Series.beside(tmp_path / "ev.jsonl")], keep_gb=1 / GB, keep_days=None, open_paths=[ours[0]]
    )
    assert ours[0].exists() and deleted == ours[1:3]


def test_an_age_cap_deletes_closed_files_older_than_keep_days(tmp_path):
    ours = make_files(tmp_path, [f"door-{n:04d}.mp4" for n in range(1, 4)])
    old = time.time() - 3 * 86400
    for path in ours:
        os.utime(path, (old, old))
    keep = make_files(tmp_path, ["door-0004.mp4"])
    foreign = make_files(tmp_path, ["old-holiday.mp4"])
    os.utime(foreign[0], (old, old))
    deleted = sweep([Series.beside(tmp_path / "door.mp4")], keep_gb=None, keep_days=2)
    assert deleted == ours and keep[0].exists() and foreign[0].exists()


def test_events_rotate_into_numbered_files_and_a_restart_continues_the_last(tmp_path):
    writer = RotatingJsonlWriter(tmp_path / "ev.jsonl", rotate_mb=0.0005)  # 500 bytes
    for index in range(30):
        assert writer.write({"type": "annotation", "frame": index, "pad": "x" * 40})
    writer.close()
    files = sorted(tmp_path.glob("ev-*.jsonl"))
    assert len(files) >= 3 and all(f.stat().st_size < 600 for f in files)
    frames = [json.loads(line)["frame"] for f in files for line in f.read_text().splitlines()]
    assert frames == list(range(30))  # nothing lost or repeated across the files
    again = RotatingJsonlWriter(tmp_path / "ev.jsonl", rotate_mb=0.0005)
    assert again.current == files[-1]  # appended to, not a new series from 0001
    again.close()


def test_a_run_with_a_tiny_cap_keeps_its_cap_and_a_foreign_file(tmp_path, int8_bundle):
    clip = write_clip(tmp_path / "clip.mp4", [RED, BLUE], frames_each=20)
    out = tmp_path / "out"
    foreign = make_files(out, ["door-notes.mp4", "holiday.jsonl"], size=200_000)
    config = tmp_path / "cameras.toml"
    config.write_text(f"""
threads = 1
stats_interval = 0
retention_check_s = 0.05
keep_gb = 0.00003   # 30 kB over every camera

[[camera]]
name = "door"
source = "{clip}"
bundle = "{int8_bundle}"
loop = true
max_frames = 160
fps = 100
video = "{out}/door.mp4"
video_segment_minutes = 0.005   # 0.3 s of stream time: about 8 frames a file
jsonl = "{out}/door.jsonl"
jsonl_rotate_mb = 0.004
""")
    summaries = run_cameras(load_cameras_config(config))
    assert summaries["door"].frames == 160
    videos, logs = sorted(out.glob("door-[0-9]*.mp4")), sorted(out.glob("door-[0-9]*.jsonl"))
    numbers = [int(p.stem.split("-")[1]) for p in videos]
    assert numbers[-1] >= 10  # the run wrote many segments (numbered from 0001)...
    assert numbers == list(range(numbers[-1] - len(numbers) + 1, numbers[-1] + 1))  # the newest
    assert len(numbers) < numbers[-1]  # ...and the cap deleted the oldest ones
    total = sum(p.stat().st_size for p in videos + logs)
    newest = videos[-1].stat().st_size + logs[-1].stat().st_size
    assert total <= 30_000 + newest  # the cap, give or take the files still open at the end
    assert all(p.exists() and p.stat().st_size == 200_000 for p in foreign)
    assert events(logs[-1], "stats")[-1]["final"] is True  # the open events file survived
