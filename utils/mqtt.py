"""MQTT for webcam_mqtt.py and web_server.py: an embedded broker, a client that survives its broker, one message schema.

- EmbeddedBroker: amqtt (pure Python, from PyPI) in a background thread's asyncio loop on 127.0.0.1, so nothing has
  to be installed for the demo; `--broker host:port` uses an outside broker (mosquitto, EMQX) instead.
- Publisher: a paho-mqtt 2.x client that connects in the background, reconnects with exponential backoff, and
  keeps at most `buffer_size` messages while the broker is away (the oldest are dropped and counted): never a crash,
  never an unbounded queue.
- subscribe(): a paho client that (re)subscribes on every (re)connection.
- validate_message(): the ONE schema both transports (MQTT, HTTP POST) are checked against.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from utils.cli import UserError

SCHEMA_VERSION = 1
DEFAULT_PORT = 1883  # MQTT's registered port
MAX_MESSAGE_BYTES = 64 * 1024  # a message with 300 detections is about 25 KB; more is refused, not parsed
MAX_FRAME_BYTES = 1024 * 1024  # a downscaled JPEG is 10-40 KB
MAX_DETECTIONS = 300
PAHO_QUEUE = 1000  # QoS 1/2 messages paho holds until acknowledged: a broker that never acks cannot fill memory
# Publisher.close() waits this long for the last acknowledgements: a local broker answers in milliseconds, a remote one
# over a slow link in a few hundred; a broker that is gone costs a stop this much at most
CLOSE_TIMEOUT_S = 3.0
SUBSCRIBER_QUIET_S = 0.3  # close_subscriber(): a broker passes a message on within milliseconds; this long silent = all in
CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # it names a topic level and an HTML id: no '/', '+', '#', quotes
# Field -> allowed types, for every message; docs/webcam_mqtt.md's schema table lists the same fields.
FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "camera": (str,),
    "frame": (int,),
    "capture_ts": (int, float),
    "publish_ts": (int, float),
    "width": (int,),
    "height": (int,),
    "detections": (list,),
    "main_person": (dict, type(None)),
    "inference_ms": (int, float),
    "dropped": (int,),
}

log = logging.getLogger("mqtt")


class InvalidMessage(ValueError):
    """A message that does not follow the schema; its text says which field and why, in one line."""


######################################################################################################################
# The message schema


def _number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidMessage(f"{name} must be a finite number in [{low}, {high}], got {value!r:.40}")
    return float(value)


def _box(value: Any, name: str) -> None:
    if not isinstance(value, list) or len(value) != 4:
        raise InvalidMessage(f"{name} must be [x1, y1, x2, y2]")
    for coordinate in value:
        _number(coordinate, name)


def _parse(payload: bytes | str | dict) -> Any:
    """A raw payload (size-checked) as JSON; a dict passes through."""
    if not isinstance(payload, (bytes, bytearray, str)):
        return payload
    if len(payload) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"{len(payload)} bytes, over the limit of {MAX_MESSAGE_BYTES}")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidMessage(f"not JSON ({error})") from None


def _check_fields(payload: Any) -> None:
    """An object with exactly the schema's fields, each of an allowed type (a bool is never a number)."""
    if not isinstance(payload, dict):
        raise InvalidMessage(f"must be a JSON object, got {type(payload).__name__}")
    missing, extra = FIELDS.keys() - payload.keys(), payload.keys() - FIELDS.keys()
    if missing or extra:
        raise InvalidMessage(f"fields missing: {sorted(missing)}, unknown: {sorted(extra)[:5]}")
    for name, types in FIELDS.items():
        if isinstance(payload[name], bool) or not isinstance(payload[name], types):
            raise InvalidMessage(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {type(payload[name]).__name__}")


def _check_header(payload: dict[str, Any]) -> None:
    """Schema version, camera id, and the counters, sizes and times in range."""
    if payload["schema"] != SCHEMA_VERSION:
        raise InvalidMessage(f"schema {payload['schema']} is not the supported version {SCHEMA_VERSION}")
    if not CAMERA_ID.match(payload["camera"]):
        raise InvalidMessage(f"camera {payload['camera']!r:.70} is not 1-64 of A-Z a-z 0-9 _ . -")
    for name in ("frame", "width", "height", "dropped"):
        _number(payload[name], name, 0 if name in ("frame", "dropped") else 1)
    for name in ("capture_ts", "publish_ts", "inference_ms"):
        _number(payload[name], name, 0)


def _check_detections(detections: list[Any]) -> None:
    """At most MAX_DETECTIONS, each {label, score, box}."""
    if len(detections) > MAX_DETECTIONS:
        raise InvalidMessage(f"{len(detections)} detections, over the limit of {MAX_DETECTIONS}")
    for index, detection in enumerate(detections):
        if not isinstance(detection, dict) or detection.keys() != {"label", "score", "box"}:
            raise InvalidMessage(f"detections[{index}] must be {{label, score, box}}")
        if not isinstance(detection["label"], str) or not 0 < len(detection["label"]) <= 64:
            raise InvalidMessage(f"detections[{index}].label must be a short string")
        _number(detection["score"], f"detections[{index}].score", 0, 1)
        _box(detection["box"], f"detections[{index}].box")


def _check_main_person(main_person: dict[str, Any] | None) -> None:
    """null, or {box, score, held (bool)}."""
    if main_person is None:
        return
    if main_person.keys() != {"box", "score", "held"} or not isinstance(main_person["held"], bool):
        raise InvalidMessage("main_person must be null or {box, score, held (bool)}")
    _box(main_person["box"], "main_person.box")
    _number(main_person["score"], "main_person.score", 0, 1)


def validate_message(payload: bytes | str | dict) -> dict[str, Any]:
    """The message as a dict if it follows schema version 1, else InvalidMessage saying what is wrong."""
    message = _parse(payload)
    _check_fields(message)
    _check_header(message)
    _check_detections(message["detections"])
    _check_main_person(message["main_person"])
    return message


######################################################################################################################
# Where the broker is


@dataclass
class BrokerOptions:
    """How to reach the broker: address, credentials, TLS (all optional but the address)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None  # a CA file turns TLS on
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False  # skip the host name check (self-signed test brokers)


def add_broker_arguments(parser: argparse.ArgumentParser, default: str | None, default_help: str | None = None) -> None:
    """The broker flags both scripts share; default_help describes a default of None."""
    parser.add_argument(
        "--broker",
        default=default,
        help=f"'embedded' (an MQTT broker inside this process on 127.0.0.1:{DEFAULT_PORT}), 'embedded:PORT', or HOST:PORT of an "
        f"outside broker such as mosquitto (default: {default_help or default})",
    )
    parser.add_argument("--username", default=None, help="broker user name (default: none, anonymous)")
    parser.add_argument("--password", default=None, help="broker password (default: none)")
    parser.add_argument("--tls-ca", default=None, help="CA certificate file; turns TLS on (default: none, plain TCP)")
    parser.add_argument("--tls-cert", default=None, help="client certificate file for TLS (default: none)")
    parser.add_argument("--tls-key", default=None, help="client key file for TLS (default: none)")
    parser.add_argument("--tls-insecure", action="store_true", help="do not check the broker's host name (default: checked)")


def parse_broker(text: str) -> tuple[str, int, bool]:
    """'embedded', 'embedded:PORT' or 'HOST:PORT' -> (host, port, embedded?); a UserError otherwise."""
    name, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text and name == "embedded":
        return "127.0.0.1", DEFAULT_PORT, True
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or not name:
        raise UserError(f"--broker {text}: give 'embedded', 'embedded:PORT' or HOST:PORT (e.g. 127.0.0.1:1883)")
    return ("127.0.0.1" if name == "embedded" else name.strip("[]")), int(port_text), name == "embedded"


def broker_options(args: argparse.Namespace, host: str, port: int) -> BrokerOptions:
    return BrokerOptions(host, port, args.username, args.password, args.tls_ca, args.tls_cert, args.tls_key, args.tls_insecure)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests and benchmarks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedBroker:
    """amqtt on 127.0.0.1:port in a daemon thread with its own asyncio loop; start() returns once it listens."""

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmbeddedBroker:
        with socket.socket() as probe:  # amqtt would log a traceback; one line is better
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: a listener fails it, TIME_WAIT not
            try:
                probe.bind((self.host, self.port))
            except OSError as error:
                raise UserError(
                    f"the embedded MQTT broker cannot listen on {self.host}:{self.port} ({error.strerror}): another broker there? "
                    f"use --broker {self.host}:{self.port} to connect to it, or --broker embedded:PORT"
                ) from None
        for name in ("amqtt", "transitions"):  # they log every connection at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._broker = Broker(config, loop=self._loop)
                self._loop.run_until_complete(self._broker.start())
            except BaseException as error:
                failure.append(error)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="mqtt-broker", daemon=True)
        self._thread.start()
        started.wait(timeout=30)
        if failure or not started.is_set():
            raise UserError(f"the embedded MQTT broker did not start on {self.host}:{self.port}: {failure[0] if failure else 'timeout'}")
        return self

    def undelivered(self) -> int:
        """Messages the broker holds and has not yet handed on: waiting to be broadcast, being sent, or sent at QoS >= 1
        to a subscriber that has not acknowledged them. Reads amqtt's internals (pinned in requirements.txt)."""
        broker = self._broker
        if broker is None:
            return 0
        count = broker._broadcast_queue.qsize() + sum(not task.done() for task in broker._tasks_queue)
        for session, _ in list(broker._sessions.values()):
            count += session.delivered_message_queue.qsize() + len(session.inflight_out)
        return count

    def drain(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Wait up to `timeout` s until the broker has handed on every message it holds; returns how many it still holds."""
        if self._loop is None or self._thread is None:
            return 0
        deadline = time.monotonic() + timeout
        while True:
            held = asyncio.run_coroutine_threadsafe(self._count_undelivered(), self._loop).result(timeout=5)
            if not held or time.monotonic() >= deadline:
                return held
            time.sleep(0.02)

    async def _count_undelivered(self) -> int:
        return self.undelivered()  # on the broker's own loop: its queues are not thread-safe

    def stop(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Let the broker hand on what it holds (up to `timeout` s), shut it down (clients see their connection drop)
        and end its thread. Returns the number of messages it still held, lost with it (a warning says so)."""
        if self._thread is None or self._loop is None:
            return 0
        held = self.drain(timeout)
        if held:
            log.warning("embedded broker stopped with %d message(s) not yet delivered to its subscribers", held)
        try:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=10)
        except Exception as error:  # a broker that does not shut down cleanly is still stopped below
            log.warning("embedded broker shutdown: %s", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        return held


def start_mosquitto(port: int) -> subprocess.Popen:
    """Debian's mosquitto on 127.0.0.1:port (anonymous, no persistence), returned once it accepts connections; a
    UserError if it is not installed (apt-get install mosquitto)."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise UserError("mosquitto is not installed (apt-get install mosquitto)")
    config = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)  # noqa: SIM115 (mosquitto reads it after we return)
    config.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    config.close()
    process = subprocess.Popen([binary, "-c", config.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            Path(config.name).unlink()  # read at start-up: no longer needed
            return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    Path(config.name).unlink()
    raise UserError(f"mosquitto did not start listening on 127.0.0.1:{port}")


######################################################################################################################
# Clients


def make_client(options: BrokerOptions, client_id: str = "", min_delay: float = 0.25, max_delay: float = 8.0) -> mqtt.Client:
    """A paho 2.x client (MQTT 3.1.1) with credentials, TLS and reconnect backoff from min_delay doubling to max_delay."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls_ca or options.tls_cert:
        client.tls_set(ca_certs=options.tls_ca, certfile=options.tls_cert, keyfile=options.tls_key)
        client.tls_insecure_set(options.tls_insecure)
    client.reconnect_delay_set(min_delay, max_delay)
    return client


class Publisher:
    """Publishes through a broker that may come and go: connects in the background, reconnects with backoff, and
    keeps at most buffer_size messages while disconnected (oldest dropped first, counted in `dropped`).

    Every message handed to publish() is followed until it has left for good: a QoS >= 1 message once the broker
    acknowledged it (PUBACK/PUBCOMP, paho's on_publish), a QoS 0 message once paho wrote it to the socket. close()
    waits for that, and what never got there is counted in `unacknowledged`: published = delivered + dropped +
    unacknowledged, so a summary can say exactly what was lost.
    """

    def __init__(self, options: BrokerOptions, client_id: str = "", buffer_size: int = 100, keepalive: int = 5) -> None:
        self.buffer: collections.deque[tuple[str, bytes, int, bool]] = collections.deque()
        self.buffer_size = buffer_size
        self.published = 0  # messages handed to publish()
        self.delivered = 0  # acknowledged by the broker (QoS >= 1) or written to it (QoS 0)
        self.dropped = 0  # lost to a full buffer or paho's full queue
        self.unacknowledged = 0  # lost with a connection (QoS 0 not yet written) or still unacknowledged at close()
        self.connections = 0  # successful connections: more than 1 means it reconnected
        self.disconnections = 0
        self.connected = threading.Event()
        self._pending: dict[int, int] = {}  # mid -> QoS of the messages handed to paho and not yet out
        self._lock = threading.Lock()
        # paho calls on_publish holding its own message lock, which client.publish() takes too: on_publish therefore only
        # notes the mid under a lock of its own, and _settle() matches the notes later (else the two threads deadlock)
        self._out: list[int] = []
        self._out_lock = threading.Lock()
        self._closing = False
        self.client = make_client(options, client_id)
        self.client.max_queued_messages_set(PAHO_QUEUE)  # paho's own queue (QoS>0 awaiting acks) is bounded too
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(options.host, options.port, keepalive=keepalive)
        self.client.loop_start()  # the loop thread retries the first connection as well as later ones

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        with self._lock:
            self.connections += 1
            self._forget_unwritten_qos0()
            if self.connections > 1:
                log.warning("reconnected to the broker; sending %d buffered message(s)", len(self.buffer))
            self.connected.set()
            while self.buffer:
                self._send(*self.buffer.popleft())

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected.is_set() and not self._closing:
            self.disconnections += 1
            log.warning("lost the broker (%s); reconnecting with backoff, buffering up to %d messages", reason, self.buffer_size)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._out_lock:
            self._out.append(mid)

    def _settle(self) -> None:
        """Count the messages paho reported out since the last call (caller holds self._lock)."""
        with self._out_lock:
            out, self._out = self._out, []
        for mid in out:
            if self._pending.pop(mid, None) is not None:
                self.delivered += 1

    def _forget_unwritten_qos0(self) -> None:
        """paho empties its write queue when it reconnects: a QoS 0 message still in it is gone (QoS >= 1 ones are
        resent by paho from its own store, so they stay pending). Caller holds self._lock."""
        self._settle()
        lost = [mid for mid, qos in self._pending.items() if qos == 0]
        for mid in lost:
            del self._pending[mid]
        self.unacknowledged += len(lost)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos == 0:  # paho keeps only QoS >= 1 messages while disconnected
            self._buffer((topic, payload, qos, retain))
        elif info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN at QoS >= 1: paho sends it on reconnection
            self._pending[info.mid] = qos
        else:  # MQTT_ERR_QUEUE_SIZE: paho's own bound reached
            self.dropped += 1

    def _buffer(self, message: tuple[str, bytes, int, bool]) -> None:
        if len(self.buffer) >= self.buffer_size:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(message)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Send now if connected, else buffer; never blocks on the network, never raises for a missing broker."""
        with self._lock:
            self.published += 1
            if self.connected.is_set():
                self._send(topic, payload, qos, retain)
            else:
                self._buffer((topic, payload, qos, retain))

    def outstanding(self) -> int:
        """Messages not yet out: buffered while disconnected, or handed to paho and not yet acknowledged/written."""
        with self._lock:
            self._settle()
            return len(self.buffer) + len(self._pending)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Wait up to `timeout` s until every message is out (see the class docstring), then disconnect. Returns how
        many were still not acknowledged (also added to `unacknowledged`)."""
        deadline = time.monotonic() + timeout
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._settle()
            left = len(self.buffer) + len(self._pending)
            self._closing = True
            self.unacknowledged += left
            self._pending.clear()
            self.buffer.clear()
        self.client.disconnect()
        self.client.loop_stop()
        if left:
            log.warning("%d message(s) not acknowledged by the broker within %.1f s of the stop: lost", left, timeout)
        return left


def subscribe(
    options: BrokerOptions, topics: list[str], on_message: Callable[[str, bytes], None], client_id: str = "", qos: int = 1
) -> mqtt.Client:
    """A started paho client that subscribes to `topics` on every (re)connection and calls on_message(topic, payload);
    its `subscribed` event is set once the broker has acknowledged the subscription. Stop it with close_subscriber()."""
    client = make_client(options, client_id)
    client.subscribed = threading.Event()  # type: ignore[attr-defined]
    client.last_message_at = time.monotonic()  # type: ignore[attr-defined]

    def deliver(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        client.last_message_at = time.monotonic()  # type: ignore[attr-defined]
        on_message(message.topic, message.payload)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, qos) for topic in topics])

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: client.subscribed.set()
    client.on_disconnect = lambda *_: client.subscribed.clear()
    client.on_message = deliver
    client.connect_async(options.host, options.port, keepalive=5)
    client.loop_start()
    return client


def close_subscriber(client: mqtt.Client, quiet_s: float = SUBSCRIBER_QUIET_S, timeout: float = CLOSE_TIMEOUT_S) -> None:
    """Disconnect a subscribe() client once nothing has arrived for `quiet_s` (at most `timeout` s): messages the
    broker was still sending when the publishers stopped are received, not cut off by the disconnection."""
    deadline = time.monotonic() + timeout
    while client.is_connected() and time.monotonic() < deadline and time.monotonic() - client.last_message_at < quiet_s:
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
