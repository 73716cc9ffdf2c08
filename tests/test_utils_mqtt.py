"""utils/mqtt.py: the message schema, --broker parsing, and the embedded broker with a publisher that survives it."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import StallingBroker

from utils.cli import UserError
from utils.mqtt import (
    MAX_MESSAGE_BYTES,
    BrokerOptions,
    EmbeddedBroker,
    InvalidMessage,
    Publisher,
    close_subscriber,
    free_port,
    parse_broker,
    subscribe,
    validate_message,
)


def good_message(**changes) -> dict:
    message = {
        "schema": 1,
        "camera": "cam0",
        "frame": 7,
        "capture_ts": 1700000000.5,
        "publish_ts": 1700000000.55,
        "width": 640,
        "height": 480,
        "detections": [{"label": "person", "score": 0.9, "box": [10, 20, 110, 220]}],
        "main_person": {"box": [10, 20, 110, 220], "score": 0.9, "held": False},
        "inference_ms": 14.5,
        "dropped": 0,
    }
    message.update(changes)
    return message


def test_a_good_message_passes_as_dict_and_as_bytes():
    assert validate_message(good_message()) == good_message()
    assert validate_message(json.dumps(good_message(main_person=None, detections=[])).encode())["main_person"] is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in good_message().items() if k != "frame"}), "missing"),
        (good_message(extra=1), "unknown"),
        (good_message(schema=2), "schema"),
        (good_message(frame="7"), "frame must be int"),
        (good_message(frame=True), "frame must be int"),
        (good_message(frame=-1), "frame"),
        (good_message(camera="a/b"), "camera"),
        (good_message(camera="<script>"), "camera"),
        (good_message(width=0), "width"),
        (good_message(detections=[{"label": "person", "score": 1.5, "box": [0, 0, 1, 1]}]), "score"),
        (good_message(detections=[{"label": "person", "score": 0.5, "box": [0, 0, 1]}]), "box"),
        (good_message(detections=[{"label": "person", "score": 0.5, "box": [0, 0, 1, 1], "x": 1}]), r"detections\[0\]"),
        (good_message(detections=[{"label": "person", "score": 0.5, "box": [0, 0, 1, 1]}] * 301), "over the limit"),
        (good_message(main_person={"box": [0, 0, 1, 1], "score": 0.5}), "main_person"),
        (json.dumps(good_message(capture_ts=float("nan"))), "capture_ts"),  # Python's json writes and reads NaN
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "over the limit"),
    ],
)
def test_bad_messages_are_refused_with_the_reason(payload, reason):
    with pytest.raises(InvalidMessage, match=reason):
        validate_message(payload)


def test_parse_broker():
    assert parse_broker("embedded") == ("127.0.0.1", 1883, True)
    assert parse_broker("embedded:1999") == ("127.0.0.1", 1999, True)
    assert parse_broker("mqtt.local:8883") == ("mqtt.local", 8883, False)
    for bad in ("localhost", "host:port", "host:70000", ":1883"):
        with pytest.raises(UserError, match="--broker"):
            parse_broker(bad)


def wait_for(condition, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_publisher_survives_the_broker_going_away_and_coming_back():
    port = free_port()
    broker = EmbeddedBroker(port).start()
    received: list[bytes] = []
    lock = threading.Lock()

    def on_message(topic, payload):
        with lock:
            received.append(payload)

    subscriber = subscribe(BrokerOptions("127.0.0.1", port), ["detections/#"], on_message)
    publisher = Publisher(BrokerOptions("127.0.0.1", port), "test-publisher", buffer_size=5)
    try:
        assert publisher.connected.wait(10) and subscriber.subscribed.wait(10)
        for number in range(20):
            publisher.publish("detections/cam0", b"%d" % number, qos=1)
        assert wait_for(lambda: len(received) == 20)

        broker.stop()
        assert wait_for(lambda: not publisher.connected.is_set())
        for number in range(20, 28):  # 8 messages while away into a buffer of 5: the 3 oldest are dropped
            # retained, one topic each: they reach the subscriber whether it resubscribes before or after they are sent
            publisher.publish(f"detections/cam0/{number}", b"%d" % number, qos=1, retain=True)
        assert publisher.dropped == 3 and len(publisher.buffer) == 5

        broker = EmbeddedBroker(port).start()
        assert wait_for(lambda: publisher.connected.is_set(), timeout=20)
        expected = {*range(20), *range(23, 28)}  # 20-22 were the oldest in the full buffer
        assert wait_for(lambda: {int(payload) for payload in received} >= expected, timeout=20)
        time.sleep(0.2)
        with lock:
            assert [int(payload) for payload in received[:20]] == list(range(20))
            assert {int(payload) for payload in received} == expected  # QoS 1 is at least once: a repeat is allowed
        assert publisher.connections == 2 and publisher.disconnections == 1
    finally:
        publisher.close()
        close_subscriber(subscriber)
        broker.stop()


def test_embedded_broker_on_a_taken_port_is_one_line():
    port = free_port()
    broker = EmbeddedBroker(port).start()
    try:
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}.*--broker 127.0.0.1:{port}"):
            EmbeddedBroker(port).start()
    finally:
        broker.stop()


def test_close_waits_for_acknowledgements_and_counts_what_never_came():
    """A broker that acknowledges 10 of 12 QoS-1 messages: close() reports 2 lost, never '0 dropped'."""
    broker = StallingBroker(ack_first=10)
    publisher = Publisher(BrokerOptions("127.0.0.1", broker.port), "test-stalled")
    try:
        assert publisher.connected.wait(10)
        for number in range(12):
            publisher.publish("detections/cam0", b"%d" % number, qos=1)
        for number in range(3):  # QoS 0 counts as out once written to the socket
            publisher.publish("detections/cam0/frame", b"jpeg%d" % number, qos=0)
        started = time.monotonic()
        assert publisher.close(timeout=0.5) == 2
        assert 0.5 <= time.monotonic() - started < 3
    finally:
        broker.close()
    assert (publisher.published, publisher.delivered, publisher.dropped, publisher.unacknowledged) == (15, 13, 0, 2)
    assert len(broker.received) == 15  # all were sent: the loss is the missing acknowledgement


def test_close_returns_once_everything_is_acknowledged_and_the_broker_hands_it_on():
    """Stopped right after the last publish: every message reaches the subscriber (publisher close waits for the
    acknowledgements, the embedded broker's stop for its deliveries), and nothing is counted lost."""
    port = free_port()
    broker = EmbeddedBroker(port).start()
    received: list[bytes] = []
    subscriber = subscribe(BrokerOptions("127.0.0.1", port), ["detections/#"], lambda topic, payload: received.append(payload))
    publisher = Publisher(BrokerOptions("127.0.0.1", port), "test-drain")
    try:
        assert publisher.connected.wait(10) and subscriber.subscribed.wait(10)
        for number in range(100):
            publisher.publish("detections/cam0/frame", bytes(20_000), qos=0)  # a JPEG-sized QoS 0 message before each
            publisher.publish("detections/cam0", b"%d" % number, qos=1)
        assert publisher.close() == 0
        assert publisher.delivered == publisher.published == 200
        assert broker.stop() == 0  # the subscriber still connected: the broker hands everything on before it stops
    finally:
        close_subscriber(subscriber)
        broker.stop()
    assert [int(payload) for payload in received if len(payload) < 100] == list(range(100))
    assert sum(len(payload) == 20_000 for payload in received) == 100
