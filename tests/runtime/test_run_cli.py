"""`fuselite run` end to end, in subprocesses: outputs, signals, bad input, dependencies."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_helpers import (
    BLUE,
    RED,
    count_frames,
    error_lines,
    events,
    fuselite_popen,
    fuselite_run,
    runtime_env,
    solid,
    write_clip,
)
from support.bundles import repack

from fuselite.bundle import read_bundle


def test_run_on_a_video_writes_jsonl_events_and_an_annotated_mp4(
    int8_bundle, red_blue_clip, tmp_path
):
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out" / "annotated.mp4"
    done = fuselite_run(
        "--bundle",
        int8_bundle,
        "--source",
        red_blue_clip,
        "--jsonl",
        jsonl,
        "--video-out",
        video,
        "--threads",
        1,
        "--all-scores",
    )
    assert done.returncode == 0, done.stderr
    annotations = events(jsonl)
    assert [e["frame"] for e in annotations] == list(range(40))  # a file drops nothing
    assert [lab["label"] for lab in annotations[5]["labels"]] == ["red"]
    assert [lab["label"] for lab in annotations[-1]["labels"]] == ["blue"]
    assert annotations[1]["timestamp_ms"] == pytest.approx(40.0)
    assert set(annotations[0]["latency_ms"]) == {
        "capture",
        "preprocess",
        "inference",
        "postprocess",
        "total",
    }
    assert set(annotations[0]["scores"]) == {"red", "green", "blue", "gray"}
    final = events(jsonl, "stats")[-1]
    assert final["final"] and final["frames"] == 40 and final["stopped_by"] == "end"
    assert count_frames(video) == 40
    assert not list(video.parent.glob(".*partial*"))


def test_run_prints_events_to_stdout_and_honours_max_frames_and_labels(fp32_bundle, red_blue_clip):
    done = fuselite_run(
        "--bundle",
        fp32_bundle,
        "--source",
        red_blue_clip,
        "--max-frames",
        5,
        "--labels",
        "red circle, blue star,cup",
        "--stats-interval",
        0,
        "--all-scores",
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    annotations = [r for r in records if r["type"] == "annotation"]
    assert len(annotations) == 5
    assert annotations[0]["labels"][0]["label"] == "red circle"
    assert set(annotations[0]["scores"]) == {"red circle", "blue star"}
    assert records[-1]["stopped_by"] == "max_frames"
    assert "label 'cup' left out" in done.stderr  # no word of it is known


def test_run_on_a_folder_annotates_each_image_and_counts_the_corrupt_ones(fp32_bundle, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "1-red.png"), solid(RED))
    cv2.imwrite(str(folder / "2-blue.jpg"), solid(BLUE, size=(480, 640)))
    (folder / "3-broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "4-empty.png").write_bytes(b"")
    jsonl = tmp_path / "events.jsonl"
    done = fuselite_run("--bundle", fp32_bundle, "--source", folder, "--jsonl", jsonl)
    assert done.returncode == 0, done.stderr
    annotations = events(jsonl)
    assert [(e["name"], [lab["label"] for lab in e["labels"]]) for e in annotations] == [
        ("1-red.png", ["red"]),
        ("2-blue.jpg", ["blue"]),
    ]
    assert events(jsonl, "stats")[-1]["skipped"] == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_exits_0_with_a_playable_video(fp32_bundle, tmp_path, signum):
    clip = write_clip(tmp_path / "long.mp4", [RED, BLUE], frames_each=50)
    video, jsonl = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    process = fuselite_popen(
        "--bundle",
        fp32_bundle,
        "--source",
        clip,
        "--loop",
        "--fps-limit",
        50,
        "--video-out",
        video,
        "--jsonl",
        jsonl,
    )
    deadline = time.monotonic() + 20
    while (
        not jsonl.exists() or len(jsonl.read_text().splitlines()) < 20
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert signal.Signals(signum).name in stderr and "Traceback" not in stderr
    written = len(events(jsonl))
    assert written >= 20
    assert events(jsonl, "stats")[-1]["stopped_by"] == "signal"
    assert count_frames(video) == written
    assert not list(tmp_path.glob(".*partial*"))


def _truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _not_a_bundle(good: Path, bad: Path) -> None:
    bad.write_text("this is a text file, not a model\n")


def _manifest_missing(good: Path, bad: Path) -> None:
    bundle = read_bundle(good)
    with zipfile.ZipFile(bad.with_suffix(".zip"), "w") as zf:
        zf.writestr("tokenizer.json", json.dumps(bundle.tokenizer.to_dict()))
    bad.write_bytes(bundle.model_bytes + bad.with_suffix(".zip").read_bytes())


def _tampered(good: Path, bad: Path) -> None:
    data = bytearray(good.read_bytes())
    data[len(read_bundle(good).model_bytes) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))


def _labels_do_not_fit_the_output(good: Path, bad: Path) -> None:
    repack(good, bad, embedding_dim=16, label_embeddings=np.eye(4, 16, dtype=np.float32))


def _model_is_not_tflite(good: Path, bad: Path) -> None:
    repack(good, bad, model_bytes=b"\x00" * 64)


def _corrupt_flatbuffer(good: Path, bad: Path) -> None:
    model = bytearray(read_bundle(good).model_bytes)
    rng = np.random.default_rng(0)
    for i in rng.integers(16, len(model), 40):
        model[i] = int(rng.integers(0, 256))
    repack(good, bad, model_bytes=bytes(model))  # checksums recomputed: only the verifier stands


def _missing(good: Path, bad: Path) -> None:
    pass


BAD_BUNDLES = [
    (_truncated, "not a fuselite bundle"),
    (_not_a_bundle, "not a fuselite bundle"),
    (_manifest_missing, "missing manifest.json"),
    (_tampered, "do not match the manifest's sha256"),
    (_labels_do_not_fit_the_output, "embedded in 16 dimensions"),
    (_model_is_not_tflite, "not a TFLite flatbuffer"),
    (_corrupt_flatbuffer, "interpreter cannot load it"),
    (_missing, "cannot read bundle"),
]


@pytest.mark.parametrize(
    ("damage", "message"),
    [pytest.param(d, m, id=d.__name__.strip("_")) for d, m in BAD_BUNDLES],
)
def test_a_bad_bundle_gets_one_clear_error_line_and_exit_2(
    int8_bundle, red_blue_clip, tmp_path, damage, message
):
    bad = tmp_path / "bad.tflite"
    damage(int8_bundle, bad)
    done = fuselite_run("--bundle", bad, "--source", red_blue_clip)
    assert done.returncode == 2, done.stderr  # not a crash (negative) nor a bug (1)
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fuselite run: error: ") and message in lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--source", "/no/such/clip.mp4"], "not a camera index"),
        (["--threads", "0"], "num_threads"),
        (["--allow", "purple"], "its labels are: red, green, blue, gray"),
        (["--video-out", "out.gif"], "must end in one of"),
        (["--labels", " , "], "at least one"),
        (["--decode-threads", "-1"], "decode_threads"),
    ],
    ids=[
        "missing-source", "zero-threads", "unknown-allow-label", "gif-video", "blank-labels",
        "negative-decode-threads",
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(
    fp32_bundle, red_blue_clip, tmp_path, arguments, message
):
    arguments = [a if a != "out.gif" else str(tmp_path / a) for a in arguments]
    source = [] if "--source" in arguments else ["--source", red_blue_clip]
    done = fuselite_run("--bundle", fp32_bundle, *source, *arguments)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and message in lines[0], done.stderr


WRAPPER = """
import json, sys
{prelude}
{body}
tensorflow = sorted(m for m in sys.modules
                    if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
host_side = sorted(m for m in sys.modules if m.startswith(("fuselite.train", "fuselite.convert")))
report = {{"code": code, "tensorflow": tensorflow, "host_side": host_side}}
print(json.dumps(report), file=sys.stderr)
sys.exit(code)
"""
CLI_BODY = "from fuselite.cli import main; code = main(sys.argv[1:])"
API_BODY = """
from fuselite.runtime import AnnotatorOptions, RunOptions, run
summary = run(RunOptions(sys.argv[2], jsonl=None), AnnotatorOptions(sys.argv[1]))
code = 0 if summary.frames == 40 else 1
"""


def run_wrapped(
    tmp_path: Path, args, body: str = CLI_BODY, prelude: str = ""
) -> subprocess.CompletedProcess:
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER.format(prelude=prelude, body=body))
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=runtime_env(),
    )


def test_fuselite_run_on_a_video_imports_no_tensorflow_or_keras(
    fp32_bundle, red_blue_clip, tmp_path
):
    done = run_wrapped(
        tmp_path,
        [
            "run",
            "--bundle",
            fp32_bundle,
            "--source",
            red_blue_clip,
            "--jsonl",
            "none",
            "--video-out",
            tmp_path / "v.mp4",
        ],
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0 and report["tensorflow"] == []


def test_the_runtime_api_imports_nothing_from_the_host_side(fp32_bundle, red_blue_clip, tmp_path):
    done = run_wrapped(tmp_path, [fp32_bundle, red_blue_clip], body=API_BODY)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "tensorflow": [], "host_side": []}


def test_without_any_interpreter_the_error_says_what_to_pip_install(
    fp32_bundle, red_blue_clip, tmp_path
):
    prelude = 'sys.modules["ai_edge_litert"] = None; sys.modules["tflite_runtime"] = None'
    args = ["run", "--bundle", fp32_bundle, "--source", red_blue_clip]
    done = run_wrapped(tmp_path, args, prelude=prelude)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert "pip install ai-edge-litert" in lines[0] and "tflite-runtime" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_taken_preview_port_gets_one_error_line(fp32_bundle, red_blue_clip):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fuselite_run("--bundle", fp32_bundle, "--source", red_blue_clip, "--preview", port)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        f"fuselite run: error: preview 127.0.0.1:{port}: Address already in use"
    ]
