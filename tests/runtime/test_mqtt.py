"""MQTT events, label states and Home Assistant discovery, against a real Mosquitto broker.

Every broker here is Debian's ``mosquitto`` started on 127.0.0.1 on a free port, and
every reader a real paho-mqtt subscriber.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
from runtime_helpers import events, fuselite_run

from fuselite.bench.mosquitto import MOSQUITTO, Mosquitto, free_port
from fuselite.runtime.mqtt import (
    MqttError,
    MqttPublisher,
    MqttSettings,
    import_paho,
    mqtt_settings_from_args,
    mqtt_settings_from_table,
    slugify,
    unique_slugs,
)

paho = pytest.importorskip("paho.mqtt.client")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (Debian package)")
# What Home Assistant accepts as node and object ids in a discovery topic.
HA_CONFIG_TOPIC = re.compile(r"^homeassistant/binary_sensor/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")


class Subscriber:
    """A paho subscriber to ``#`` that keeps every message it receives, reconnecting itself.

    ``session`` names a persistent session (clean_session off, QoS 1): a broker that
    keeps it queues what arrives while this subscriber is away.
    """

    def __init__(self, port: int, session: str | None = None) -> None:
        self.messages: list = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()  # the broker acknowledged the subscription
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=session or "",
            clean_session=session is None,
        )
        self.client.reconnect_delay_set(0.1, 0.2)
        self.client.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic_end: str) -> list:
        """The messages whose topic ends with ``topic_end``."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(topic_end)]

    def frames(self) -> list[int]:
        """The ``frame`` of every event received, in order of arrival."""
        return [json.loads(m.payload)["frame"] for m in self.on("/events")]

    def wait(self, condition, timeout: float = 15.0) -> None:
        """Waits until ``condition()`` holds (fails the test after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for MQTT messages"
            time.sleep(0.02)

    def latest(self) -> dict[str, bytes]:
        """``{topic: payload}`` of the last message on each topic."""
        with self._lock:
            return {m.topic: m.payload for m in self.messages}

    def close(self) -> None:
        """Disconnects."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    """A running Mosquitto on a free port of 127.0.0.1 (killed after the test)."""
    if MOSQUITTO is None:
        pytest.skip("needs mosquitto (Debian package)")
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def subscribers():
    """Makes subscribers and closes them after the test."""
    made = []

    def make(port: int, session: str | None = None) -> Subscriber:
        made.append(Subscriber(port, session))
        # Subscribed before the test publishes: events are not retained, so one published
        # before the broker acknowledged the subscription would never reach it.
        assert made[-1].subscribed.wait(15.0), "the test subscriber never got its subscription"
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.close()


def annotation(frame: int, *labels: str) -> dict:
    """An event record as ``fuselite run`` writes it (the fields that matter here)."""
    return {
        "type": "annotation",
        "frame": frame,
        "labels": [{"label": x, "score": 0.9} for x in labels],
    }


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"url": "mqtt://h", "qeue_size": 5}, "unknown key 'qeue_size'"),
        ({"url": "mqtt://h", "queue_size": "5"}, "queue_size must be a int"),
        ({"url": "mqtt://h", "discovery": "no"}, "discovery must be a bool"),
        ({"username": "u"}, "url is missing"),
        ({"url": "http://h:1883"}, "must look like mqtt://host:1883"),
        ({"url": "mqtt://u:secret@h"}, "no user or password in the mqtt url"),
        ({"url": "mqtt://h:99999"}, "bad port"),
        ({"url": "mqtts://h", "tls_ca": "/nonexistent/ca.pem"}, "tls_ca: no such file"),
        ({"url": "mqtt://h", "topic_prefix": "home/#"}, "topic_prefix"),
        ({"url": "mqtt://h", "password": "p", "password_file": "f"}, "not both"),
        ({"url": "mqtt://h", "events": "frames"}, "events must be 'all' or 'changes'"),
        ({"url": "mqtt://h", "events_qos": 2}, "events_qos must be 0 or 1"),
        ({"url": "mqtt://h", "events_qos": True}, "events_qos must be a int"),
    ],
)
def test_a_bad_mqtt_table_is_one_line_naming_the_key(table, named):
    with pytest.raises(MqttError) as error:
        mqtt_settings_from_table(table, where="[cameras.porch.mqtt]")
    message = str(error.value)
    assert named in message and message.startswith("[cameras.porch.mqtt]")
    assert "\n" not in message and "secret" not in message


def test_a_good_mqtt_table_gives_settings_with_tls_port_and_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until connecting")
    table = {
        "url": "mqtts://broker.lan",
        "username": "cam",
        "password_file": str(secret),
        "tls_ca": str(ca),
        "client_id": "Garage Pi",
        "discovery": False,
        "queue_size": 50,
    }
    settings = mqtt_settings_from_table(table)
    assert (settings.host, settings.port, settings.tls) == ("broker.lan", 8883, True)
    assert settings.password == "s3cret" and "s3cret" not in repr(settings)
    assert settings.availability_topic == "fuselite/status/garage_pi"
    assert settings.discovery is False and settings.queue_size == 50


def test_the_password_comes_from_a_file_or_the_environment(tmp_path):
    args = argparse.Namespace(
        mqtt="mqtt://127.0.0.1:1883",
        mqtt_user="cam",
        mqtt_password_file=None,
        mqtt_tls_ca=None,
        mqtt_tls_cert=None,
        mqtt_tls_key=None,
        mqtt_tls_insecure=False,
        mqtt_client_id=None,
        mqtt_topic_prefix="fuselite",
        no_ha_discovery=False,
        ha_discovery_prefix="homeassistant",
        mqtt_queue=100,
    )
    assert (
        mqtt_settings_from_args(args, {"FUSELITE_MQTT_PASSWORD": "from-env"}).password == "from-env"
    )
    assert mqtt_settings_from_args(args, {}).password is None
    (tmp_path / "pw").write_text("from-file\n")
    args.mqtt_password_file = tmp_path / "pw"
    assert mqtt_settings_from_args(args, {"FUSELITE_MQTT_PASSWORD": "x"}).password == "from-file"
    args.mqtt = None
    assert mqtt_settings_from_args(args, {}) is None


def test_label_slugs_are_home_assistant_ids_and_stay_distinct():
    slugs = unique_slugs(["red car", "Red-Car!", "person", "猫", "a/b+c#"])
    assert len(set(slugs.values())) == 5
    assert all(re.fullmatch(r"[a-z0-9_]+", slug) for slug in slugs.values())
    assert slugs["person"] == "person" and slugify("a/b+c#") == "a_b_c"


def test_without_paho_the_error_says_which_extra_to_install(monkeypatch):
    for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MqttError, match=r"pip install 'fuselite\[mqtt\]'"):
        import_paho()


# -- a real broker -------------------------------------------------------------------------


@needs_broker
def test_events_states_and_availability_reach_a_real_broker(broker, subscribers):
    watcher = subscribers(broker.port)
    publisher = MqttPublisher(MqttSettings(broker.url, client_id="board1")).start()
    publisher.set_labels("Front door", ["person", "cat"])
    person = "fuselite/front_door/person/state"
    watcher.wait(lambda: watcher.on(person))  # OFF once connected
    for frame in range(20):
        publisher.publish_record("Front door", annotation(frame, "person"))
    watcher.wait(lambda: watcher.latest()[person] == b"ON")
    for frame in range(20, 30):
        publisher.publish_record("Front door", annotation(frame))
    watcher.wait(lambda: len(watcher.on("/events")) == 30)
    assert watcher.frames() == list(range(30))
    event = json.loads(watcher.on("front_door/events")[0].payload)
    assert event["camera"] == "Front door" and event["labels"][0]["label"] == "person"
    wait_until(lambda: publisher.stats()["published"] == 30)

    late = subscribers(broker.port)  # sees only what is retained
    retained_topics = {
        "fuselite/front_door/person/state",
        "fuselite/front_door/cat/state",
        "fuselite/status/board1",
    }
    # All of them: the broker sends its retained messages one after another.
    late.wait(lambda: retained_topics <= set(late.latest()))
    retained = late.latest()
    assert retained["fuselite/front_door/person/state"] == b"OFF"  # it went OFF at frame 20
    assert retained["fuselite/front_door/cat/state"] == b"OFF"
    assert retained["fuselite/status/board1"] == b"online"
    assert not late.on("/events")  # events are not retained
    watcher.wait(lambda: watcher.latest()[person] == b"OFF")
    assert [m.payload for m in watcher.on(person)] == [b"OFF", b"ON", b"OFF"]  # on change only
    assert publisher.close() == {
        "published": 30,
        "queued": 0,
        "dropped": 0,
        "connected": True,
        "reconnects": 0,
    }
    late.wait(lambda: late.latest()["fuselite/status/board1"] == b"offline")


@needs_broker
def test_events_on_change_come_only_when_a_label_comes_or_goes(broker, subscribers):
    watcher = subscribers(broker.port)
    settings = MqttSettings(broker.url, client_id="board1", events="changes", events_qos=0)
    publisher = MqttPublisher(settings).start()
    publisher.set_labels("porch", ["person", "car"])
    person = "fuselite/porch/person/state"
    watcher.wait(lambda: watcher.on(person))  # OFF once connected
    frames = [(), (), ("person",), ("person",), ("person", "car"), ("car",), ("car",), ()]
    for frame, labels in enumerate(frames):
        publisher.publish_record("porch", annotation(frame, *labels))
    watcher.wait(lambda: len(watcher.on("/events")) == 4)
    published = [json.loads(m.payload) for m in watcher.on("/events")]
    assert [e["frame"] for e in published] == [2, 4, 5, 7]
    assert [e["changed"] for e in published] == [
        {"on": ["person"], "off": []},
        {"on": ["car"], "off": []},
        {"on": [], "off": ["person"]},
        {"on": [], "off": ["car"]},
    ]
    assert published[1]["labels"] == annotation(4, "person", "car")["labels"]
    watcher.wait(lambda: watcher.latest().get("fuselite/porch/car/state") == b"OFF")
    assert watcher.latest()[person] == b"OFF"
    assert publisher.close()["published"] == 4


@needs_broker
def test_qos0_events_queued_during_an_outage_arrive_after_it(tmp_path, subscribers):
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    try:
        watcher = subscribers(broker.port, session="watcher")
        broker.save()  # the restarted broker keeps the watcher's session
        publisher = MqttPublisher(MqttSettings(broker.url, events_qos=0)).start()
        publisher.set_labels("cam", ["person"])
        for frame in range(20):
            publisher.publish_record("cam", annotation(frame))
        watcher.wait(lambda: len(watcher.frames()) == 20)
        wait_until(lambda: publisher.stats()["published"] == 20)

        broker.kill()
        wait_until(lambda: not publisher.stats()["connected"])
        for frame in range(20, 50):
            publisher.publish_record("cam", annotation(frame, "person"))
        assert publisher.stats()["queued"] == 30  # waiting, not handed to a dead connection
        broker.start()
        watcher.wait(lambda: len(watcher.frames()) >= 50, timeout=30)
        assert watcher.frames() == list(range(50))
        wait_until(lambda: publisher.stats()["queued"] == 0)
        assert publisher.close() == {
            "published": 50,
            "queued": 0,
            "dropped": 0,
            "connected": True,
            "reconnects": 1,
        }
    finally:
        broker.kill()


@needs_broker
def test_discovery_configs_are_what_home_assistant_reads(broker, subscribers):
    publisher = MqttPublisher(MqttSettings(broker.url, client_id="board1")).start()
    publisher.set_labels("porch", ["person", "red car", "Red-Car"], bundle="int8.tflite")
    publisher.set_labels("garage", ["person"])
    publisher.update_states("porch", ["red car"])
    # Every config acknowledged before Home Assistant subscribes: then it can only get them as
    # retained messages (a config still in flight would arrive live, with retain unset).
    wait_until(lambda: publisher.stats()["connected"] and publisher.delivered())
    home_assistant = subscribers(broker.port)  # subscribes after: gets the retained configs
    home_assistant.wait(lambda: len(home_assistant.on("/config")) == 4)
    configs = {m.topic: json.loads(m.payload) for m in home_assistant.on("/config")}
    assert all(HA_CONFIG_TOPIC.match(topic) for topic in configs)
    assert all(m.retain for m in home_assistant.on("/config"))
    assert len({c["unique_id"] for c in configs.values()}) == 4
    for config in configs.values():
        assert {
            "name",
            "unique_id",
            "state_topic",
            "availability_topic",
            "payload_on",
            "payload_off",
            "payload_available",
            "payload_not_available",
            "device",
        } <= set(config)
        assert config["availability_topic"] == "fuselite/status/board1"
        assert config["device"]["identifiers"] and config["device"]["name"] in ("porch", "garage")
    home_assistant.wait(
        lambda: all(c["state_topic"] in home_assistant.latest() for c in configs.values())
    )
    states = {
        c["name"]: home_assistant.latest()[c["state_topic"]]
        for c in configs.values()
        if c["device"]["name"] == "porch"
    }
    assert states == {"person": b"OFF", "red car": b"ON", "Red-Car": b"OFF"}
    porch_devices = {
        json.dumps(c["device"]) for c in configs.values() if c["device"]["name"] == "porch"
    }
    assert len(porch_devices) == 1  # one device per camera, its labels as its entities

    # Home Assistant restarting announces itself: the configs are sent again.
    home_assistant.client.publish("homeassistant/status", "online", qos=1)
    home_assistant.wait(lambda: len(home_assistant.on("/config")) == 8)
    publisher.close()


@needs_broker
def test_discovery_can_be_turned_off(broker, subscribers):
    watcher = subscribers(broker.port)
    with MqttPublisher(MqttSettings(broker.url, discovery=False)).start() as publisher:
        publisher.set_labels("porch", ["person"])
        publisher.publish_record("porch", annotation(0, "person"))
        watcher.wait(lambda: watcher.on("/events") and watcher.on("person/state"))
    assert not [m for m in watcher.messages if m.topic.startswith("homeassistant/")]


@needs_broker
def test_broker_killed_mid_run_queues_within_the_bound_and_counts_the_rest(
    tmp_path, subscribers, caplog
):
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    try:
        # A persistent session on a saved database: the restarted broker queues for it.
        watcher = subscribers(broker.port, session="watcher")
        watcher.wait(lambda: watcher.client.is_connected())
        time.sleep(0.2)  # the subscription is in place
        broker.save()
        caplog.set_level(logging.INFO, logger="fuselite.runtime.mqtt")
        publisher = MqttPublisher(MqttSettings(broker.url, queue_size=50)).start()
        publisher.set_labels("cam", ["person"])
        for frame in range(20):
            publisher.publish_record("cam", annotation(frame))
        watcher.wait(lambda: len(watcher.frames()) == 20)
        wait_until(lambda: publisher.stats()["published"] == 20)  # acknowledged: not resent

        broker.kill()
        wait_until(lambda: not publisher.stats()["connected"])
        for frame in range(20, 100):  # 80 events for a queue of 50: the 30 oldest go
            publisher.publish_record("cam", annotation(frame, "person"))
        assert publisher.stats() == {
            "published": 20,
            "queued": 50,
            "dropped": 30,
            "connected": False,
            "reconnects": 0,
        }

        broker.start()
        watcher.wait(lambda: len(watcher.frames()) >= 70, timeout=30)
        assert watcher.frames() == list(range(20)) + list(range(50, 100))  # in order, none lost
        wait_until(lambda: publisher.stats()["published"] == 70)
        assert publisher.stats() == {
            "published": 70,
            "queued": 0,
            "dropped": 30,
            "connected": True,
            "reconnects": 1,
        }
        watcher.wait(lambda: watcher.latest().get("fuselite/cam/person/state") == b"ON")
        publisher.close()
    finally:
        broker.kill()
    log = caplog.text
    assert "lost the broker" in log and "is back after" in log
    assert "30 events dropped while it was away" in log
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # lost, then the queue is full: not one line per retry


@needs_broker
def test_an_unreachable_broker_at_start_is_tried_until_it_comes(tmp_path, subscribers, caplog):
    port = free_port()
    caplog.set_level(logging.INFO, logger="fuselite.runtime.mqtt")
    publisher = MqttPublisher(MqttSettings(f"mqtt://127.0.0.1:{port}")).start()
    publisher.set_labels("cam", ["person"])
    for frame in range(5):
        publisher.publish_record("cam", annotation(frame))
    wait_until(lambda: "cannot reach it (Connection refused)" in caplog.text)
    assert publisher.stats()["queued"] == 5 and not publisher.stats()["connected"]
    with Mosquitto(tmp_path / "broker", port=port):
        watcher = subscribers(port)
        wait_until(lambda: publisher.stats()["published"] == 5, timeout=40)
        watcher.wait(lambda: watcher.latest().get("fuselite/cam/person/state") == b"OFF")
        publisher.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one line, however many attempts


# -- fuselite run --mqtt -------------------------------------------------------------------


@needs_broker
def test_fuselite_run_publishes_its_events_and_states(
    int8_bundle, red_blue_clip, broker, subscribers, tmp_path
):
    watcher = subscribers(broker.port)
    jsonl = tmp_path / "events.jsonl"
    done = fuselite_run(
        "--bundle",
        int8_bundle,
        "--source",
        red_blue_clip,
        "--threads",
        1,
        "--jsonl",
        jsonl,
        "--mqtt",
        broker.url,
        "--mqtt-client-id",
        "testboard",
        "--camera-name",
        "Drive way",
    )
    assert done.returncode == 0, done.stderr
    watcher.wait(lambda: len(watcher.frames()) == 40)
    assert watcher.frames() == list(range(40))
    written = events(jsonl)
    published = [json.loads(m.payload) for m in watcher.on("/events")]
    assert [e["labels"] for e in published] == [e["labels"] for e in written]
    assert {e["camera"] for e in published} == {"Drive way"}
    latest = watcher.latest()
    assert latest["fuselite/drive_way/blue/state"] == b"ON"
    assert latest["fuselite/drive_way/red/state"] == b"OFF"
    configs = [json.loads(m.payload) for m in watcher.on("/config")]
    assert sorted(c["name"] for c in configs) == ["blue", "gray", "green", "red"]
    assert {c["device"]["model"] for c in configs} == {int8_bundle.name}
    final = events(jsonl, "stats")[-1]
    assert final["final"] and final["mqtt"]["dropped"] == 0
    assert final["mqtt"]["published"] + final["mqtt"]["queued"] == 40
    assert latest["fuselite/status/testboard"] == b"offline"  # a clean end says so


@needs_broker
def test_fuselite_run_can_publish_only_the_changes_at_qos_0(
    int8_bundle, red_blue_clip, broker, subscribers, tmp_path
):
    watcher = subscribers(broker.port)
    jsonl = tmp_path / "events.jsonl"
    done = fuselite_run(
        *("--bundle", int8_bundle, "--source", red_blue_clip, "--threads", 1, "--jsonl", jsonl),
        *("--mqtt", broker.url, "--camera-name", "drive", "--mqtt-events", "changes"),
        *("--mqtt-events-qos", 0),
    )
    assert done.returncode == 0, done.stderr
    written = events(jsonl)
    assert len(written) == 40
    label_sets = [()] + [tuple(sorted(x["label"] for x in e["labels"])) for e in written]
    changes = [e["frame"] for e, (a, b) in zip(written, itertools.pairwise(label_sets)) if a != b]
    assert 0 < len(changes) < 40  # the clip's labels change, and not on every frame
    watcher.wait(lambda: watcher.frames() == changes)
    assert watcher.latest()["fuselite/drive/blue/state"] == b"ON"
    final = events(jsonl, "stats")[-1]["mqtt"]  # written before the last ones went out
    assert final["published"] + final["queued"] == len(changes) and final["dropped"] == 0


@needs_broker
def test_fuselite_run_goes_on_without_a_broker_and_says_so(int8_bundle, red_blue_clip, tmp_path):
    jsonl = tmp_path / "events.jsonl"
    url = f"mqtt://127.0.0.1:{free_port()}"
    done = fuselite_run(
        "--bundle",
        int8_bundle,
        "--source",
        red_blue_clip,
        "--threads",
        1,
        "--jsonl",
        jsonl,
        "--mqtt",
        url,
    )
    assert done.returncode == 0, done.stderr
    assert len(events(jsonl)) == 40
    assert "cannot reach it" in done.stderr and "tried again" in done.stderr
    assert "40 events were not delivered" in done.stderr
    final = events(jsonl, "stats")[-1]["mqtt"]
    assert final == {
        "published": 0,
        "queued": 40,
        "dropped": 0,
        "connected": False,
        "reconnects": 0,
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mqtt", "http://127.0.0.1:1883"], "must look like mqtt://host:1883"),
        (["--mqtt", "mqtt://cam:hunter2@127.0.0.1"], "no user or password in the mqtt url"),
        (
            ["--mqtt", "mqtt://127.0.0.1", "--mqtt-password-file", "/nonexistent/pw"],
            "cannot read the mqtt password file",
        ),
    ],
)
def test_a_bad_mqtt_flag_is_one_line_and_exit_code_2(int8_bundle, red_blue_clip, flags, message):
    done = fuselite_run("--bundle", int8_bundle, "--source", red_blue_clip, *flags)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "hunter2" not in lines[0]


def _tls_files(folder) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    folder.mkdir()

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=fuselite test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    return {name: str(folder / f"{name}.pem") for name in ("ca", "server")} | {
        "key": str(folder / "server.key")
    }


@needs_broker
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mqtts_publishes_over_tls_checked_against_the_ca(tmp_path, caplog):
    files = _tls_files(tmp_path / "tls")
    options = (f"cafile {files['ca']}", f"certfile {files['server']}", f"keyfile {files['key']}")
    with Mosquitto(tmp_path / "broker", listener_options=options) as broker:
        watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
        watcher.tls_set(ca_certs=files["ca"])
        received = []
        watcher.on_message = lambda c, u, message: received.append(message.topic)
        watcher.connect("127.0.0.1", broker.port)
        watcher.subscribe("fuselite/+/events", qos=1)
        watcher.loop_start()
        url = f"mqtts://127.0.0.1:{broker.port}"
        with MqttPublisher(MqttSettings(url, tls_ca=files["ca"])).start() as publisher:
            publisher.set_labels("cam", ["person"])
            publisher.publish_record("cam", annotation(0, "person"))
            wait_until(lambda: received == ["fuselite/cam/events"])
        # The system's CAs do not know this broker's: no connection, and nothing sent.
        caplog.set_level(logging.WARNING, logger="fuselite.runtime.mqtt")
        untrusted = MqttPublisher(MqttSettings(url)).start()
        untrusted.publish_record("cam", annotation(1))
        wait_until(lambda: "the TLS handshake failed" in caplog.text)
        assert untrusted.stats()["connected"] is False and untrusted.stats()["queued"] == 1
        untrusted.close()
        watcher.disconnect()
        watcher.loop_stop()
    assert received == ["fuselite/cam/events"]


def test_a_shared_publisher_counts_each_camera_apart():
    # Nothing listens on this port: every event waits, then the oldest are dropped.
    settings = MqttSettings(f"mqtt://127.0.0.1:{free_port()}", queue_size=4)
    with MqttPublisher(settings).start() as publisher:
        for camera in ("porch", "porch", "porch", "garage", "garage"):
            publisher.publish_record(camera, annotation(0))
        assert publisher.stats("porch") == {
            "published": 0,
            "queued": 2,
            "dropped": 1,
            "connected": False,
            "reconnects": 0,
        }
        assert (
            publisher.stats("garage")["queued"] == 2 and publisher.stats("garage")["dropped"] == 0
        )
        assert publisher.stats()["queued"] == 4 and publisher.stats()["dropped"] == 1


@needs_broker
def test_fuselite_run_config_publishes_every_camera_over_one_connection(
    int8_bundle, red_blue_clip, broker, subscribers, tmp_path
):
    watcher = subscribers(broker.port)
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'threads = 1\n[defaults]\nbundle = "{int8_bundle}"\n'
        f'[[camera]]\nname = "front"\nsource = "{red_blue_clip}"\njsonl = "{tmp_path}/f.jsonl"\n'
        f'[[camera]]\nname = "back"\nsource = "{red_blue_clip}"\nlabels = ["red", "blue"]\n'
        f'jsonl = "{tmp_path}/b.jsonl"\n'
        f'[mqtt]\nurl = "{broker.url}"\nclient_id = "multi"\n'
    )
    done = fuselite_run("--config", config, timeout=60)
    assert done.returncode == 0, done.stderr
    watcher.wait(lambda: len(watcher.on("/events")) == 80)
    for camera in ("front", "back"):
        frames = [json.loads(m.payload)["frame"] for m in watcher.on(f"fuselite/{camera}/events")]
        assert frames == list(range(40))
        assert watcher.latest()[f"fuselite/{camera}/blue/state"] == b"ON"
        final = events(tmp_path / f"{camera[0]}.jsonl", "stats")[-1]["mqtt"]
        assert final["published"] + final["queued"] == 40 and final["dropped"] == 0
    configs = [json.loads(m.payload) for m in watcher.on("/config")]
    names = sorted((c["device"]["name"], c["name"]) for c in configs)
    assert names == [
        ("back", "blue"),
        ("back", "red"),
        ("front", "blue"),
        ("front", "gray"),
        ("front", "green"),
        ("front", "red"),
    ]
    assert done.stderr.count("MQTT: connected") == 1  # one connection for both cameras


def test_a_bad_mqtt_table_in_a_cameras_file_is_one_line(int8_bundle, red_blue_clip, tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'[[camera]]\nname = "front"\nsource = "{red_blue_clip}"\nbundle = "{int8_bundle}"\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1"\nqueue = 5\n'
    )
    done = fuselite_run("--config", config)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1
    assert "[mqtt]: unknown key 'queue'" in lines[0] and str(config) in lines[0]
