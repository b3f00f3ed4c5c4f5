"""The MQTT benchmark's lean subscriber: it must count what a real publisher delivers, by
sequence number, across a broker restart (the outage measurement relies on it)."""

from __future__ import annotations

import time

import pytest

from fuselite.bench.mosquitto import MOSQUITTO, Mosquitto
from fuselite.bench.mqtt_suite import LOAD_CAMERA, Counter
from fuselite.runtime.mqtt import MqttPublisher, MqttSettings

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (Debian package)")


def _publish(publisher: MqttPublisher, camera: str, seqs: range) -> None:
    for seq in seqs:
        publisher.publish_event(camera, {"type": "annotation", "seq": seq, "labels": []})


def test_the_counter_counts_load_and_run_events_and_keeps_its_session_over_a_restart(tmp_path):
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    try:
        counter = Counter(broker.port, session="test-counter")
        broker.save()  # the restarted broker keeps the counter's subscription
        settings = MqttSettings(broker.url, client_id="test-load", discovery=False)
        with MqttPublisher(settings).start() as publisher:
            _publish(publisher, LOAD_CAMERA, range(500))
            _publish(publisher, "run", range(7))
            assert counter.wait_for(500, timeout=10) < 10
        with counter.lock:
            assert sorted(counter.seqs) == list(range(500)) and counter.run_events == 7

        broker.kill()
        broker.start()
        with MqttPublisher(settings).start() as publisher:
            _publish(publisher, LOAD_CAMERA, range(500, 600))
            assert counter.wait_for(600, timeout=15) < 15
        with counter.lock:
            assert sorted(set(counter.seqs)) == list(range(600))
        counter.reset()
        with counter.lock:
            assert counter.seqs == [] and counter.run_events == 0
        counter.close()
    finally:
        broker.kill()


def test_a_counter_without_a_broker_says_so(tmp_path):
    broker = Mosquitto(tmp_path / "broker")  # never started
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="could not subscribe"):
        Counter(broker.port, session="nobody", timeout=1.0)
    assert time.monotonic() - start < 5
