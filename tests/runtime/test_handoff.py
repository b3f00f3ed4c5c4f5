"""The outputs thread's handoff: every item in order, bounded, and woken when it matters."""

from __future__ import annotations

import threading
import time

import pytest

from fuselite.runtime import handoff
from fuselite.runtime.handoff import LazyHandoff


def consume(queue: LazyHandoff, into: list, stop_at=None) -> threading.Thread:
    def work():
        while (item := queue.get()) is not stop_at:
            into.append(item)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_every_item_arrives_in_order_and_the_queue_never_exceeds_its_bound():
    queue, received, longest = LazyHandoff(maxsize=3, poll_seconds=0.001), [], 0
    consumer = consume(queue, received)
    for i in range(300):
        queue.put(i)
        longest = max(longest, len(queue))
    queue.put(None, urgent=True)
    consumer.join(10)
    assert received == list(range(300))
    assert longest <= 3


def test_a_full_queue_makes_the_producer_wait_for_the_consumer():
    queue = LazyHandoff(maxsize=2, poll_seconds=60.0)
    queue.put(1)
    queue.put(2)
    third = threading.Thread(target=queue.put, args=(3,), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive(), "put on a full queue returned without waiting"
    assert queue.get() == 1
    third.join(10)
    assert not third.is_alive() and [queue.get(), queue.get()] == [2, 3]


def test_an_urgent_item_wakes_a_consumer_that_would_otherwise_sleep_on():
    queue, received = LazyHandoff(maxsize=4, poll_seconds=60.0), []
    consumer = consume(queue, received)
    time.sleep(0.2)  # the consumer is asleep for a minute
    queue.put("stats", urgent=True)
    queue.put(None, urgent=True)
    consumer.join(10)
    assert not consumer.is_alive() and received == ["stats"]


def test_an_idle_consumer_is_woken_by_the_next_item(monkeypatch):
    # After an outage the consumer sleeps long; the first frame back must not wait for it.
    monkeypatch.setattr(handoff, "IDLE_POLL_SECONDS", 60.0)
    queue, received = LazyHandoff(maxsize=4, poll_seconds=0.5), []
    consumer = consume(queue, received)
    # Looks at 0.5 s (empty), then sleeps 1 s as idle, then 2 s: at 1.7 s it would
    # otherwise sleep until 3.5 s.
    time.sleep(1.7)
    start = time.monotonic()
    queue.put("frame")
    while not received and time.monotonic() - start < 10:
        time.sleep(0.01)
    assert received == ["frame"]
    assert time.monotonic() - start < 1.0, "the idle consumer was not woken"
    queue.put(None, urgent=True)
    consumer.join(10)


def test_a_queue_must_hold_at_least_one_item():
    with pytest.raises(ValueError, match="at least 1"):
        LazyHandoff(maxsize=0)
