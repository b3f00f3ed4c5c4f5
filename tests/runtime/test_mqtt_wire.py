"""The events link: MQTT 3.1.1 packets, and batches against a real Mosquitto broker."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from fuselite.bench.mosquitto import MOSQUITTO, Mosquitto
from fuselite.runtime.mqtt import MqttPublisher, MqttSettings
from fuselite.runtime.mqtt_wire import (
    PUBLISH,
    BatchLink,
    LinkError,
    Message,
    connect_packet,
    publish_packet,
    publish_parts,
    remaining_length,
    split_packets,
)

needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (Debian package)")


@pytest.mark.parametrize(
    ("size", "encoded"),
    # The standard's own examples (MQTT 3.1.1, table 2.4): the edges of 1 to 4 bytes.
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
    ],
)
def test_remaining_length_is_the_standards_encoding(size, encoded):
    assert remaining_length(size) == encoded


def test_packets_split_whole_and_wait_for_the_rest_of_a_cut_one():
    big = b"x" * 300  # a two-byte remaining length
    stream = publish_packet("a/b", b"one", qos=1, packet_id=7) + publish_packet("c", big)
    buffer = bytearray(stream[:-10])
    first = split_packets(buffer)
    assert [publish_parts(*p) for p in first] == [("a/b", 7, b"one")]
    assert first[0][0] >> 4 == PUBLISH
    buffer += stream[-10:]
    assert [publish_parts(*p) for p in split_packets(buffer)] == [("c", 0, big)]
    assert buffer == bytearray()


def test_connect_packet_carries_the_credentials_and_keepalive():
    packet = connect_packet("cam-events", 30, "user", "pw")
    assert packet[0] == 0x10 and packet[2:8] == b"\x00\x04MQTT"
    assert packet[8] == 4 and packet[9] == 0x80 | 0x40 | 0x02  # level 4; user, password, clean
    assert packet[10:12] == b"\x00\x1e"
    assert packet.endswith(b"\x00\x04user\x00\x02pw")


def _watch(port: int, count: int) -> subprocess.Popen:
    """A real subscriber from another process: Mosquitto's own test client is not installed
    everywhere, so a paho one in a child."""
    script = (
        "import sys, paho.mqtt.client as m\n"
        "c = m.Client(m.CallbackAPIVersion.VERSION2)\n"
        "got = []\n"
        "def on(cl, u, msg):\n"
        "    got.append(msg.payload.decode()); print(msg.payload.decode(), flush=True)\n"
        f"    if len(got) == {count}: cl.disconnect()\n"
        "c.on_message = on\n"
        "c.on_subscribe = lambda *a: print('ready', flush=True)\n"
        "c.on_connect = lambda cl, *a: cl.subscribe('t/#', qos=1)\n"
        f"c.connect('127.0.0.1', {port}); c.loop_forever()\n"
    )
    pytest.importorskip("paho.mqtt.client")
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    return child


@needs_broker
def test_a_batch_arrives_in_order_and_every_message_is_acknowledged(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        watcher = _watch(broker.port, 300)
        link = BatchLink("127.0.0.1", broker.port, "batch-test").open()
        messages = [Message("t/events", json.dumps({"n": n}).encode(), 1, owner=n) for n in range(300)]
        link.publish(messages[:150])
        link.publish(messages[150:])
        acked, deadline = [], time.monotonic() + 10
        while len(acked) < 300 and time.monotonic() < deadline:
            acked += link.poll(wait=0.5)
        assert acked == list(range(300)) and link.unacked == {}
        out, _ = watcher.communicate(timeout=10)
        assert [json.loads(line)["n"] for line in out.splitlines()] == list(range(300))
        link.close()
        assert not link.connected


@needs_broker
def test_a_killed_broker_closes_the_link_and_gives_back_what_it_did_not_acknowledge(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        link = BatchLink("127.0.0.1", broker.port, "kill-test").open()
        broker.process.send_signal(19)  # SIGSTOP: the broker reads nothing and answers nothing
        link.publish([Message("t/x", b"1", 1, owner="a"), Message("t/x", b"2", 1, owner="b")])
        broker.kill()  # (a stopped process dies from SIGKILL too)
        assert link.poll(wait=2.0) == []
        assert not link.connected and link.error
        assert link.drop() == ["a", "b"]
        with pytest.raises(LinkError, match="not connected"):
            link.publish([Message("t/x", b"3", 1, owner="c")])
    finally:
        broker.kill()


@needs_broker
def test_nothing_listening_is_one_line_saying_where(tmp_path):
    broker = Mosquitto(tmp_path / "broker")  # configured, never started
    with pytest.raises(LinkError, match=rf"cannot reach 127\.0\.0\.1:{broker.port}"):
        BatchLink("127.0.0.1", broker.port, "nobody").open(timeout=1)


def _broker_with_password(tmp_path, user: str, password: str) -> Mosquitto:
    passwords = tmp_path / "passwords"
    passwords.write_text(f"{user}:{password}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True)
    options = (f"password_file {passwords}",)
    return Mosquitto(tmp_path / "broker", listener_options=options, allow_anonymous=False)


@needs_broker
def test_a_password_broker_takes_the_events_and_refuses_a_wrong_password(tmp_path, caplog):
    with _broker_with_password(tmp_path, "board", "s3cret") as broker:
        right = BatchLink("127.0.0.1", broker.port, "w", username="board", password="s3cret")
        with pytest.raises(LinkError, match="bad user name or password|not authorised"):
            BatchLink("127.0.0.1", broker.port, "x", username="board", password="nope").open()
        right.open().close()
        settings = MqttSettings(broker.url, username="board", password="s3cret", discovery=False)
        with MqttPublisher(settings).start() as publisher:
            publisher.set_labels("cam", ["person"])
            publisher.publish_record("cam", {"type": "annotation", "frame": 0, "labels": []})
            deadline = time.monotonic() + 10
            while publisher.stats()["published"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert publisher.stats()["published"] == 1
        caplog.set_level(logging.WARNING, logger="fuselite.runtime.mqtt")
        wrong = MqttSettings(broker.url, username="board", password="nope", discovery=False)
        refused = MqttPublisher(wrong).start()
        refused.publish_record("cam", {"type": "annotation", "frame": 1, "labels": []})
        deadline = time.monotonic() + 10
        while "refused the connection" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refused.stats()["queued"] == 1 and refused.stats()["published"] == 0
        refused.close(timeout=0.1)
    assert "refused the connection" in caplog.text


@needs_broker
def test_a_polled_idle_link_stays_open_and_one_left_alone_is_closed_by_the_broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        polled = BatchLink("127.0.0.1", broker.port, "polled", keepalive=1).open()
        alone = BatchLink("127.0.0.1", broker.port, "alone", keepalive=1).open()
        deadline = time.monotonic() + 4  # the broker gives up after 1.5 keep-alives
        while time.monotonic() < deadline:
            if polled.due():
                polled.poll()  # pings
            time.sleep(0.05)
        assert polled.connected
        polled.publish([Message("t/x", b"1", 1, owner="still here")])
        acked, deadline = [], time.monotonic() + 5
        while not acked and time.monotonic() < deadline:
            acked = polled.poll(wait=0.5)  # (a ping's answer may come first)
        assert acked == ["still here"] and polled.connected
        alone.sock.settimeout(5)  # read it raw: a poll would ping
        assert alone.sock.recv(1) == b""  # the broker closed it
        polled.close()


@needs_broker
def test_an_idle_publisher_keeps_its_events_connection(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("fuselite.runtime.mqtt.KEEPALIVE_S", 1)
    caplog.set_level(logging.INFO, logger="fuselite.runtime.mqtt")
    with Mosquitto(tmp_path / "broker") as broker:
        settings = MqttSettings(broker.url, discovery=False)
        with MqttPublisher(settings).start() as publisher:
            publisher.set_labels("cam", ["person"])
            # Mosquitto closes an idle keep-alive-1 connection after 5.5 s (measured).
            for frame, idle in ((0, 7.5), (1, 0.0)):
                publisher.publish_record("cam", {"type": "annotation", "frame": frame, "labels": []})
                deadline = time.monotonic() + 10
                while publisher.stats()["published"] <= frame and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(idle)
            assert publisher.stats()["published"] == 2
    assert "events connection" not in caplog.text


def test_a_malformed_stream_closes_the_link_saying_why():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def broker_that_garbles() -> None:
        peer, _ = server.accept()
        peer.recv(1024)  # the CONNECT
        peer.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
        time.sleep(0.3)  # the link is open by then
        peer.sendall(b"\x40\xff\xff\xff\xff\x01")  # a length of five bytes: none is valid
        time.sleep(2)
        peer.close()

    thread = threading.Thread(target=broker_that_garbles, daemon=True)
    thread.start()
    link = BatchLink("127.0.0.1", port, "garbled").open()
    deadline = time.monotonic() + 5
    while link.connected and time.monotonic() < deadline:
        assert link.poll(wait=0.5) == []
    assert not link.connected and "malformed" in link.error
    server.close()
