"""What MQTT costs ``fuselite run``, and what survives a broker outage, on a real Mosquitto.

    python -m fuselite.bench.suite mqtt --bundle int8.tflite [--rate 1000] [--windows 40] \\
        [--rounds 3] [--frames 3000] [--outage 30] [--threads 1] \\
        [--events all|changes] [--events-qos 1|0]

A local Mosquitto (Debian ``mosquitto``) is started on a free port of 127.0.0.1, and a
lean subscriber with a persistent session (:class:`Counter`) counts what arrives.

* ``cost``: a process that only publishes ``--rate`` events/s: CPU time per event and
  the cores it takes (CPU time is what a busy machine cannot hide).
* ``windows``: one process reads the clip, annotates every frame and formats its event;
  windows of ``--window-s`` seconds alternate MQTT off and on (off, on, on, off, ...),
  so the machine's changing load hits both alike.  "On" publishes each frame's event
  and label states, and a second publisher in the process sends ``--rate`` more events/s
  (what other cameras of the board would publish).  The figure is the median over
  groups of four windows of FPS on / FPS off (target >= 0.95).  ``--events`` and
  ``--events-qos`` set the run's ``--mqtt-events`` / ``--mqtt-events-qos`` (the QoS also
  applies to the ``--rate`` publisher, another camera of the same board; it publishes
  every one of its events in both modes).
* ``runs``: rounds of two fresh ``fuselite run`` processes on the clip, in alternating
  order: ``off`` writes JSONL only; ``on`` adds ``--mqtt`` and the ``--rate`` publisher.
* ``outage``: one ``on`` process looping the clip; after 5 s the broker is killed
  (SIGKILL) for ``--outage`` seconds, then started again on the same port.  The process
  must not crash, and every event of the ``--rate`` publisher must reach the subscriber,
  whose session the restarted broker kept (the queue is sized for the outage).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fuselite.bench.busy_suite import _finish, _run_command, _run_figures
from fuselite.bench.mosquitto import Mosquitto
from fuselite.runtime.mqtt_wire import (
    PUBLISH,
    SUBACK,
    LinkError,
    connect_packet,
    puback_packet,
    publish_parts,
    split_packets,
    subscribe_packet,
)
from fuselite.runtime.stats import pid_cpu_s

TARGET_FPS_RATIO = 0.95
OUTAGE_START_S = 5.0
LOAD_CAMERA = "load"
_SEQ = re.compile(rb'"seq":(\d+)')

# Runs `fuselite run` (argv after the first three) with, when a broker URL is given, a
# second publisher in the same process sending RATE events/s until the run ends.
WRAPPER_SCRIPT = """
import json, sys, threading, time
from fuselite.cli import main
from fuselite.runtime.mqtt import MqttPublisher, MqttSettings  # here: imports race in threads
url, rate, out, qos = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
run_args = sys.argv[5:]
stop, stats = threading.Event(), {}

def load():
    settings = MqttSettings(url, client_id="bench-load", discovery=False, queue_size=10**6,
                            events_qos=qos)
    publisher = MqttPublisher(settings).start()
    publisher.set_labels("load", ["person", "car"])
    start, sent = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            publisher.publish_record("load", {"type": "annotation", "seq": sent, "frame": sent,
                "timestamp_ms": sent * 33.3, "time": time.time(),
                "labels": [{"label": "person", "score": 0.91}] if sent % 50 < 25 else [],
                "latency_ms": {"capture": 0.1, "preprocess": 1.2, "inference": 8.5,
                               "postprocess": 0.3, "total": 10.4}})
            sent += 1
        time.sleep(0.005)
    seconds = time.monotonic() - start
    stats.update(publisher.close(timeout=120.0), sent=sent, seconds=seconds)

thread = None
if url != "-":
    thread = threading.Thread(target=load, name="bench-load")
    thread.start()
try:
    code = main(["run", *run_args])
finally:
    stop.set()
    if thread is not None:
        thread.join()
        with open(out, "w") as f:
            json.dump(stats, f)
sys.exit(code)
"""


# One process, one loop (read, annotate, event): windows of WINDOW_S seconds alternate
# MQTT off and on (off/on/on/off...), so the machine's changing load hits both alike.
# "on": each frame's event and label states go to the broker, and a second publisher
# sends RATE more events/s.  Prints one JSON line: every window's FPS and CPU time.
WINDOW_SCRIPT = """
import json, sys, threading, time
import cv2
from fuselite.runtime import Annotator, AnnotatorOptions
from fuselite.runtime.mqtt import MqttPublisher, MqttSettings
bundle, video, url, rate, windows, window_s, threads, events, qos = sys.argv[1:10]
rate, windows, window_s, qos = float(rate), int(windows), float(window_s), int(qos)
annotator = Annotator.create(AnnotatorOptions(bundle, num_threads=int(threads), smoothing=0.5,
                                              hysteresis=0.05))
runs = MqttPublisher(MqttSettings(url, client_id="bench-window-run", events=events,
                                  events_qos=qos)).start()
load = MqttPublisher(MqttSettings(url, client_id="bench-window-load", discovery=False,
                                  queue_size=10**6, events_qos=qos)).start()
runs.set_labels("run", annotator.allowed_labels)
load.set_labels("load", ["person"])
on, stop, sent = threading.Event(), threading.Event(), [0]

def generate():
    start, owed = time.monotonic(), 0.0
    last = start
    while not stop.is_set():
        now = time.monotonic()
        if on.is_set():
            owed += (now - last) * rate
            while owed >= 1:
                load.publish_record("load", {"type": "annotation", "seq": sent[0], "frame": sent[0],
                    "timestamp_ms": sent[0] * 33.3, "time": time.time(),
                    "labels": [{"label": "person", "score": 0.91}] if sent[0] % 50 < 25 else [],
                    "latency_ms": {"capture": 0.1, "preprocess": 1.2, "inference": 8.5,
                                   "postprocess": 0.3, "total": 10.4}})
                sent[0] += 1
                owed -= 1
        last = now
        time.sleep(0.005)

capture = cv2.VideoCapture(video)
def frame():
    global capture
    ok, image = capture.read()
    if not ok:
        capture.release()
        capture = cv2.VideoCapture(video)
        ok, image = capture.read()
    return image

generator = threading.Thread(target=generate, daemon=True)
generator.start()
for _ in range(30):
    annotator.annotate(frame(), 0.0)  # warm up
time.sleep(1.0)  # connected, discovery sent
results, index = [], 0
for w in range(windows):
    mqtt = (w % 4) in (1, 2)
    on.set() if mqtt else on.clear()
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall < window_s:
        index += 1
        result = annotator.annotate(frame(), index * 33.3)
        record = {"type": "annotation", "frame": index, "timestamp_ms": index * 33.3,
                  "time": time.time(),
                  "labels": [{"label": c.label, "score": round(c.score, 4)}
                             for c in result.categories],
                  "latency_ms": {"preprocess": round(result.latency.preprocess_ms, 3),
                                 "inference": round(result.latency.inference_ms, 3)}}
        json.dumps(record)  # what the JSONL sink would cost, in both modes
        if mqtt:
            runs.publish_record("run", record)
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results.append({"mqtt": mqtt, "fps": n / wall, "cpu_ms": cpu * 1000 / n})
on.clear()
stop.set()
generator.join()
print(json.dumps({"windows": results, "run": runs.close(timeout=30), "load": load.close(timeout=30),
                  "sent": sent[0]}))
"""


def measure_windows(args, broker: Mosquitto) -> dict[str, Any]:
    """The ``windows`` measurement in a fresh process (see :data:`WINDOW_SCRIPT`)."""
    command = [
        sys.executable,
        "-c",
        WINDOW_SCRIPT,
        str(args.bundle),
        str(args.video),
        broker.url,
        str(args.rate),
        str(args.windows),
        str(args.window_s),
        str(args.threads),
        args.events,
        str(args.events_qos),
    ]
    out, _rss = _finish(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    data = json.loads(out.splitlines()[-1])
    off = [w["fps"] for w in data["windows"] if not w["mqtt"]]
    on = [w["fps"] for w in data["windows"] if w["mqtt"]]
    # Neighbouring windows share the machine's load: compare each "on" pair with the
    # "off" pair next to it (windows come as off, on, on, off, off, on, on, off...).
    pairs = [
        (
            statistics.mean(data["windows"][i + 1 + k]["fps"] for k in (0, 1)),
            statistics.mean(data["windows"][i + 3 * k]["fps"] for k in (0, 1)),
        )
        for i in range(0, len(data["windows"]) - 3, 4)
    ]
    data["ratios"] = [on_fps / off_fps for on_fps, off_fps in pairs]
    data["fps_off"], data["fps_on"] = statistics.median(off), statistics.median(on)
    data["cpu_off"] = statistics.median(w["cpu_ms"] for w in data["windows"] if not w["mqtt"])
    data["cpu_on"] = statistics.median(w["cpu_ms"] for w in data["windows"] if w["mqtt"])
    print(
        f"windows: FPS off {data['fps_off']:.1f}, on {data['fps_on']:.1f}; on/off per group "
        f"median {statistics.median(data['ratios']):.3f}; load sent {data['sent']}, "
        f"published {data['load']['published']}, run events published {data['run']['published']}",
        flush=True,
    )
    return data


# The CPU the publisher itself costs: RATE events/s for SECONDS, nothing else in the process.
COST_SCRIPT = """
import json, sys, time
from fuselite.runtime.mqtt import MqttPublisher, MqttSettings
url, rate, seconds, qos = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
publisher = MqttPublisher(MqttSettings(url, client_id="bench-cost", discovery=False,
                                       events_qos=qos)).start()
publisher.set_labels("cost", ["person"])
while not publisher.stats()["connected"]:
    time.sleep(0.05)
cpu, start, sent = time.process_time(), time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * rate)
    while sent < due:
        publisher.publish_record("cost", {"type": "annotation", "frame": sent, "time": time.time(),
            "labels": [{"label": "person", "score": 0.91}] if sent % 50 < 25 else [],
            "latency_ms": {"preprocess": 1.2, "inference": 8.5, "total": 10.4}})
        sent += 1
    time.sleep(0.005)
while publisher.stats()["queued"]:
    time.sleep(0.005)
wall, cpu = time.monotonic() - start, time.process_time() - cpu
stats = publisher.close()
print(json.dumps({"sent": sent, "published": stats["published"], "us_per_event": cpu / sent * 1e6,
                  "cores": cpu / wall, "rate": sent / wall}))
"""


def measure_cost(args, broker: Mosquitto) -> dict[str, Any]:
    """CPU time per published event, in a fresh process publishing ``args.rate`` events/s,
    and what the same events cost the broker and the subscriber meanwhile: on a board
    that runs its own broker, all of it comes out of the cores inference would have."""
    broker_before, subscriber_before = pid_cpu_s(broker.process.pid), time.process_time()
    command = [
        sys.executable,
        "-c",
        COST_SCRIPT,
        broker.url,
        str(args.rate),
        "10",
        str(args.events_qos),
    ]
    out, _rss = _finish(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    cost = json.loads(out.splitlines()[-1])
    # While the publisher ran, this process did nothing but the subscriber's paho thread.
    cost["broker_us_per_event"] = (pid_cpu_s(broker.process.pid) - broker_before) / cost["sent"] * 1e6
    cost["subscriber_us_per_event"] = (time.process_time() - subscriber_before) / cost["sent"] * 1e6
    print(
        f"cost: {cost['us_per_event']:.0f} us CPU per event, {cost['cores']:.3f} cores at "
        f"{cost['rate']:.0f} events/s ({cost['published']}/{cost['sent']} acknowledged); "
        f"broker {cost['broker_us_per_event']:.0f} us, subscriber {cost['subscriber_us_per_event']:.0f} us per event",
        flush=True,
    )
    return cost


def loss_floor(cost: dict[str, Any], rate: float, cores: int) -> float:
    """The share of a CPU-bound loop's FPS that ``rate`` events/s must take on ``cores``
    cores when the publisher and the broker run beside it (the subscriber is elsewhere):
    their CPU time is time the loop's cores do not have."""
    seconds_per_event = (cost["us_per_event"] + cost["broker_us_per_event"]) / 1e6
    return seconds_per_event * rate / cores


class Counter:
    """A subscriber counting the load publisher's events (by sequence number) and the run's
    events; its session (``session`` is the client id) outlives a broker restart.

    It is written on the events link's wire code, one ``recv`` per burst and the PUBACKs
    of a burst in one ``send``, because the benchmark's subscriber runs on the cores the
    run is measured on: a paho subscriber took 59-84 us an event (docs/mqtt.md), 6-8% of a
    core at 1,000 events/s that a board does not pay (Home Assistant subscribes from its
    own machine).
    """

    def __init__(self, port: int, session: str, timeout: float = 10.0) -> None:
        self.seqs: list[int] = []
        self.run_events = 0
        self.lock = threading.Lock()
        self.port, self.session = port, session
        self._subscribed, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-counter", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"the counter could not subscribe on port {port}")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, LinkError):
                self._session()
            self._subscribed.clear()
            self._stop.wait(0.1)  # the broker is down: try again

    def _session(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            hello = connect_packet(self.session, 0, clean_session=False)
            sock.sendall(hello + subscribe_packet(1, "fuselite/+/events", 1))
            sock.settimeout(0.2)
            buffer = bytearray()
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    return
                buffer += data
                acks = [self._take(first, body) for first, body in split_packets(buffer)]
                if any(acks):
                    sock.sendall(b"".join(acks))

    def _take(self, first: int, body: bytes) -> bytes:
        """Counts one packet; returns the PUBACK it needs (or nothing)."""
        if first >> 4 == SUBACK:
            self._subscribed.set()
        if first >> 4 != PUBLISH:
            return b""
        topic, packet_id, payload = publish_parts(first, body)
        with self.lock:
            if topic == f"fuselite/{LOAD_CAMERA}/events":
                self.seqs.append(int(_SEQ.search(payload).group(1)))
            else:
                self.run_events += 1
        return puback_packet(packet_id) if packet_id else b""

    def reset(self) -> None:
        """Forgets what was counted (between measurements)."""
        with self.lock:
            self.seqs, self.run_events = [], 0

    def wait_for(self, sent: int, timeout: float) -> float:
        """Waits until every sequence number below ``sent`` arrived; returns seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with self.lock:
                if len(set(self.seqs)) >= sent:
                    break
            time.sleep(0.05)
        return time.monotonic() - start

    def close(self) -> None:
        """Stops counting and disconnects."""
        self._stop.set()
        self._thread.join(timeout=5)


def _wrapped(args, url: str, stats_file: Path, run_args: list[str]) -> list[str]:
    qos = str(args.events_qos)
    return [
        sys.executable,
        "-c",
        WRAPPER_SCRIPT,
        url,
        str(args.rate),
        str(stats_file),
        qos,
        *run_args,
    ]


def _mqtt_flags(args, url: str, name: str) -> list[str]:
    """The run's ``--mqtt*`` flags."""
    return [
        *("--mqtt", url, "--mqtt-client-id", f"bench-{name}", "--camera-name", "run"),
        *("--mqtt-events", args.events, "--mqtt-events-qos", str(args.events_qos)),
    ]


def measure_run(args, broker: Mosquitto | None, work: Path, name: str) -> dict[str, Any]:
    """One ``fuselite run`` in a fresh process, with MQTT (and the load) when ``broker``."""
    jsonl, stats_file = work / f"{name}.jsonl", work / f"{name}-load.json"
    run_args = _run_command(args.bundle, args.video, args.threads, args.frames, jsonl)[4:]
    url = "-"
    if broker is not None:
        url = broker.url
        run_args += _mqtt_flags(args, url, name)
    process = subprocess.Popen(
        _wrapped(args, url, stats_file, run_args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _out, rss = _finish(process)
    figures = _run_figures(jsonl, rss)
    if broker is not None:
        figures["load"] = json.loads(stats_file.read_text())
        figures["run_mqtt"] = _final_stats(jsonl).get("mqtt")
    return figures


def _final_stats(jsonl: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in jsonl.open()]
    return [r for r in records if r.get("type") == "stats" and r.get("final")][-1]


def fps_rounds(args, broker: Mosquitto, counter: Counter, work: Path) -> list[dict[str, Any]]:
    """The ``fps`` measurement: ``off`` and ``on`` interleaved, order alternating."""
    rounds = []
    for number in range(args.rounds):
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        counter.reset()
        figures = {}
        for mode in order:
            figures[mode] = measure_run(
                args, broker if mode == "on" else None, work, f"{mode}-{number}"
            )
        load = figures["on"]["load"]
        counter.wait_for(load["sent"], timeout=30)
        with counter.lock:
            received, run_received = len(set(counter.seqs)), counter.run_events
        figures["ratio"] = figures["on"]["fps"] / figures["off"]["fps"]
        figures["load_rate"] = load["sent"] / load["seconds"]
        figures["received"], figures["run_received"] = received, run_received
        rounds.append(figures)
        print(
            f"round {number + 1}/{args.rounds} ({'/'.join(order)}): FPS off "
            f"{figures['off']['fps']:.1f}, on {figures['on']['fps']:.1f}, on/off "
            f"{figures['ratio']:.3f}; load {figures['load_rate']:.0f} events/s, sent "
            f"{load['sent']}, received {received}, dropped {load['dropped']}; run events "
            f"received {run_received}/{args.frames}",
            flush=True,
        )
    return rounds


def outage(args, broker: Mosquitto, counter: Counter, work: Path) -> dict[str, Any]:
    """The ``outage`` measurement: a looping run, the broker killed for ``args.outage`` s."""
    counter.reset()
    jsonl, stats_file = work / "outage.jsonl", work / "outage-load.json"
    run_args = _run_command(args.bundle, args.video, args.threads, 10**9, jsonl)[4:]
    run_args += _mqtt_flags(args, broker.url, "outage")
    run_args += ["--mqtt-queue", str(int(args.rate * (args.outage + 30)))]
    process = subprocess.Popen(
        _wrapped(args, broker.url, stats_file, run_args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(OUTAGE_START_S)
    broker.kill()
    killed = time.monotonic()
    with counter.lock:
        received_before_kill = max(counter.seqs, default=-1)
    time.sleep(args.outage)
    broker.start()
    down_s = time.monotonic() - killed
    time.sleep(10.0)  # run on after the restart
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=300)
    load = json.loads(stats_file.read_text())
    drain_s = counter.wait_for(load["sent"], timeout=120)
    with counter.lock:
        seqs = list(counter.seqs)
    final = _final_stats(jsonl)
    result = {
        "exit_code": process.returncode,
        "broker_down_s": round(down_s, 1),
        "sent": load["sent"],
        "publisher": {k: load[k] for k in ("published", "queued", "dropped", "reconnects")},
        "received_unique": len(set(seqs)),
        "duplicates": len(seqs) - len(set(seqs)),
        "missing": load["sent"] - len(set(seqs) & set(range(load["sent"]))),
        # A broker killed at once loses what it acknowledged and had not passed on yet:
        # missing numbers next to this one are the broker's loss, not the publisher's.
        "last_received_before_kill": received_before_kill,
        "missing_ranges": _ranges(sorted(set(range(load["sent"])) - set(seqs))),
        "in_order": seqs == sorted(seqs),
        "wait_after_end_s": round(drain_s, 1),
        "run_frames": final["frames"],
        "run_mqtt": final.get("mqtt"),
        "log": [line for line in err.splitlines() if "MQTT" in line],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "log"}), flush=True)
    return result


def _ranges(numbers: list[int]) -> list[list[int]]:
    """``[[first, last], ...]`` of the runs of consecutive numbers in sorted ``numbers``."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return runs


def _spread(values: list[float], digits: int) -> tuple[str, str]:
    """``(median, "min-max")`` as text."""
    median = statistics.median(values)
    return f"{median:.{digits}f}", f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _window_rows(windows: dict[str, Any], rate: str) -> list[tuple[str, tuple[str, str]]]:
    on = [w for w in windows["windows"] if w["mqtt"]]
    off = [w for w in windows["windows"] if not w["mqtt"]]
    target = f"target >= {TARGET_FPS_RATIO}"
    return [
        ("windows: FPS without MQTT", _spread([w["fps"] for w in off], 1)),
        (f"windows: FPS with MQTT + {rate} events/s", _spread([w["fps"] for w in on], 1)),
        (f"windows: with / without, per group ({target})", _spread(windows["ratios"], 3)),
        ("windows: CPU ms per frame without", _spread([w["cpu_ms"] for w in off], 2)),
        ("windows: CPU ms per frame with", _spread([w["cpu_ms"] for w in on], 2)),
        (
            "windows: load events published / sent",
            (f"{windows['load']['published']} / {windows['sent']}", ""),
        ),
    ]


def _run_rows(rounds: list[dict[str, Any]], rate: str, frames: int) -> list:
    sent = sum(r["on"]["load"]["sent"] for r in rounds)
    received = sum(r["received"] for r in rounds)
    run_received = sum(r["run_received"] for r in rounds)
    return [
        ("runs: inference FPS without MQTT", _spread([r["off"]["fps"] for r in rounds], 1)),
        (
            f"runs: inference FPS with MQTT + {rate} events/s",
            _spread([r["on"]["fps"] for r in rounds], 1),
        ),
        (
            f"runs: with / without (target >= {TARGET_FPS_RATIO})",
            _spread([r["ratio"] for r in rounds], 3),
        ),
        ("runs: CPU ms per frame without", _spread([r["off"]["cpu_ms"] for r in rounds], 2)),
        ("runs: CPU ms per frame with", _spread([r["on"]["cpu_ms"] for r in rounds], 2)),
        ("runs: events/s sent by the load publisher", _spread([r["load_rate"] for r in rounds], 0)),
        ("runs: load events received / sent", (f"{received} / {sent}", "")),
        ("runs: run events received / annotated", (f"{run_received} / {frames * len(rounds)}", "")),
    ]


def markdown(
    header: dict[str, Any],
    cost: dict[str, Any],
    windows: dict[str, Any] | None,
    rounds: list[dict[str, Any]],
    out: dict[str, Any] | None,
) -> str:
    """The report for the docs."""
    rate = f"{header['rate']:.0f}"
    rows = [
        ("publisher alone: CPU per event (us)", (f"{cost['us_per_event']:.0f}", "")),
        (f"publisher alone: cores at {cost['rate']:.0f} events/s", (f"{cost['cores']:.3f}", "")),
        ("the same events: broker CPU per event (us)", (f"{cost['broker_us_per_event']:.0f}", "")),
        ("the same events: subscriber CPU per event (us)", (f"{cost['subscriber_us_per_event']:.0f}", "")),
        (
            f"FPS a loop filling {os.cpu_count()} cores must lose (publisher + broker)",
            (f"{loss_floor(cost, cost['rate'], os.cpu_count() or 1):.1%}", ""),
        ),
    ]
    if windows is not None:
        rows += _window_rows(windows, rate)
    if rounds:
        rows += _run_rows(rounds, rate, header["frames"])
    machine = (
        f"{header['date']}, {header['cpu']}, {header['cpus']} cores (shared), load average "
        f"before {header['load']}; {header['windows']} windows of {header['window_s']} s in one "
        f"process, then {header['rounds']} rounds of {header['frames']} frames in fresh "
        f"processes; the run's events: {header['events']}, QoS {header['events_qos']}"
    )
    lines = [
        machine,
        f"`{header['command']}`",
        "",
        "| measure | median | min-max |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {median} | {spread} |" for name, (median, spread) in rows]
    if out is not None:
        lines += ["", _outage_text(out, rate)]
    return "\n".join(lines)


def _outage_text(out: dict[str, Any], rate: str) -> str:
    return (
        f"Outage: broker killed for {out['broker_down_s']} s while publishing {rate} events/s: "
        f"exit code {out['exit_code']}, {out['sent']} sent, {out['received_unique']} received "
        f"({out['missing']} missing, {out['duplicates']} duplicates, in order: "
        f"{out['in_order']}; missing ranges {out['missing_ranges']}, the last event received "
        f"before the kill: {out['last_received_before_kill']}), "
        f"{out['publisher']['dropped']} dropped, "
        f"{out['publisher']['reconnects']} reconnection(s); the run annotated "
        f"{out['run_frames']} frames, its final MQTT counts {out['run_mqtt']}."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m fuselite.bench.suite mqtt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle to run")
    parser.add_argument(
        "--video", type=Path, help="the clip (default: a 640x480 30 fps clip made once)"
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--rate", type=float, default=1000.0, help="extra events/s (default 1000)")
    parser.add_argument(
        "--windows",
        type=int,
        default=40,
        help="windows of the in-process measure, a multiple of 4 (default 40)",
    )
    parser.add_argument("--window-s", type=float, default=1.0, help="seconds a window (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of fresh processes (default 3)"
    )
    parser.add_argument("--frames", type=int, default=3000, help="frames per run (default 3000)")
    parser.add_argument(
        "--outage",
        type=float,
        default=30.0,
        help="seconds the broker is down (default 30; 0 skips the outage)",
    )
    parser.add_argument(
        "--events",
        choices=("all", "changes"),
        default="all",
        help="the run's --mqtt-events (default all: an event per frame)",
    )
    parser.add_argument(
        "--events-qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="QoS of every event, the run's and the --rate publisher's (default 1)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _header(args) -> dict[str, Any]:
    from fuselite.bench.runtime_suite import _cpu_model

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": args.rounds,
        "windows": args.windows,
        "window_s": args.window_s,
        "frames": args.frames,
        "rate": args.rate,
        "events": args.events,
        "events_qos": args.events_qos,
        "command": shlex.join(["python", "-m", "fuselite.bench.suite", "mqtt", *args.argv]),
    }


def main(argv: list[str] | None = None) -> int:
    """Measures, prints the Markdown report, writes the JSON if asked."""
    from fuselite.bench.runtime_suite import DEFAULT_WORK_DIR, benchmark_clip

    args = parse_args(argv)
    if not args.bundle.is_file():
        print(f"error: no such bundle: {args.bundle}", file=sys.stderr)
        return 2
    args.video = args.video or benchmark_clip(DEFAULT_WORK_DIR)
    header = _header(args)
    with tempfile.TemporaryDirectory(prefix="fuselite-mqtt-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker", persistence=True).start()
        try:
            counter = Counter(broker.port, session="bench-counter")
            broker.save()  # the counter's session survives the outage's restart
            cost = measure_cost(args, broker)
            windows = measure_windows(args, broker) if args.windows else None
            counter.reset()
            rounds = fps_rounds(args, broker, counter, work)
            out = outage(args, broker, counter, work) if args.outage > 0 else None
            counter.close()
        finally:
            broker.kill()
    print(markdown(header, cost, windows, rounds, out))
    if args.json:
        from fuselite.files import write_atomic

        data = {"header": header, "cost": cost, "windows": windows, "rounds": rounds, "outage": out}
        write_atomic(args.json, json.dumps(data, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
