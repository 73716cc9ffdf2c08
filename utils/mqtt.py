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
CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # it names a topic level and an HTML id: no '/', '+', '#', quotes
# Field -> allowed types, for every message; the README's schema table lists the same fields.
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


def validate_message(payload: bytes | str | dict) -> dict[str, Any]:
    """The message as a dict if it follows schema version 1, else InvalidMessage saying what is wrong."""
    if isinstance(payload, (bytes, bytearray, str)):
        if len(payload) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"{len(payload)} bytes, over the limit of {MAX_MESSAGE_BYTES}")
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidMessage(f"not JSON ({error})") from None
    if not isinstance(payload, dict):
        raise InvalidMessage(f"must be a JSON object, got {type(payload).__name__}")
    missing, extra = FIELDS.keys() - payload.keys(), payload.keys() - FIELDS.keys()
    if missing or extra:
        raise InvalidMessage(f"fields missing: {sorted(missing)}, unknown: {sorted(extra)[:5]}")
    for name, types in FIELDS.items():
        if isinstance(payload[name], bool) or not isinstance(payload[name], types):
            raise InvalidMessage(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {type(payload[name]).__name__}")
    if payload["schema"] != SCHEMA_VERSION:
        raise InvalidMessage(f"schema {payload['schema']} is not the supported version {SCHEMA_VERSION}")
    if not CAMERA_ID.match(payload["camera"]):
        raise InvalidMessage(f"camera {payload['camera']!r:.70} is not 1-64 of A-Z a-z 0-9 _ . -")
    for name in ("frame", "width", "height", "dropped"):
        _number(payload[name], name, 0 if name in ("frame", "dropped") else 1)
    for name in ("capture_ts", "publish_ts", "inference_ms"):
        _number(payload[name], name, 0)
    if len(payload["detections"]) > MAX_DETECTIONS:
        raise InvalidMessage(f"{len(payload['detections'])} detections, over the limit of {MAX_DETECTIONS}")
    for index, detection in enumerate(payload["detections"]):
        if not isinstance(detection, dict) or detection.keys() != {"label", "score", "box"}:
            raise InvalidMessage(f"detections[{index}] must be {{label, score, box}}")
        if not isinstance(detection["label"], str) or not 0 < len(detection["label"]) <= 64:
            raise InvalidMessage(f"detections[{index}].label must be a short string")
        _number(detection["score"], f"detections[{index}].score", 0, 1)
        _box(detection["box"], f"detections[{index}].box")
    main_person = payload["main_person"]
    if main_person is not None:
        if main_person.keys() != {"box", "score", "held"} or not isinstance(main_person["held"], bool):
            raise InvalidMessage("main_person must be null or {box, score, held (bool)}")
        _box(main_person["box"], "main_person.box")
        _number(main_person["score"], "main_person.score", 0, 1)
    return payload


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

    def stop(self) -> None:
        """Shut the broker down (clients see their connection drop) and end its thread."""
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=10)
        except Exception as error:  # a broker that does not shut down cleanly is still stopped below
            log.warning("embedded broker shutdown: %s", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None


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
    keeps at most buffer_size messages while disconnected (oldest dropped first, counted in `dropped`)."""

    def __init__(self, options: BrokerOptions, client_id: str = "", buffer_size: int = 100, keepalive: int = 5) -> None:
        self.buffer: collections.deque[tuple[str, bytes, int, bool]] = collections.deque()
        self.buffer_size = buffer_size
        self.dropped = 0  # messages lost to a full buffer
        self.connections = 0  # successful connections: more than 1 means it reconnected
        self.disconnections = 0
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._closing = False
        self.client = make_client(options, client_id)
        self.client.max_queued_messages_set(PAHO_QUEUE)  # paho's own queue (QoS>0 awaiting acks) is bounded too
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(options.host, options.port, keepalive=keepalive)
        self.client.loop_start()  # the loop thread retries the first connection as well as later ones

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        with self._lock:
            self.connections += 1
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

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            self._buffer((topic, payload, qos, retain))
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:  # MQTT_ERR_QUEUE_SIZE: paho's own bound reached
            self.dropped += 1

    def _buffer(self, message: tuple[str, bytes, int, bool]) -> None:
        if len(self.buffer) >= self.buffer_size:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(message)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Send now if connected, else buffer; never blocks on the network, never raises for a missing broker."""
        with self._lock:
            if self.connected.is_set():
                self._send(topic, payload, qos, retain)
            else:
                self._buffer((topic, payload, qos, retain))

    def close(self, timeout: float = 2.0) -> None:
        """Give queued messages up to `timeout` s to leave, then disconnect."""
        deadline = threading.Event()
        if self.connected.is_set():
            for _ in range(int(timeout / 0.05)):
                if not self.client.want_write() and not self.buffer:
                    break
                deadline.wait(0.05)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()


def subscribe(
    options: BrokerOptions, topics: list[str], on_message: Callable[[str, bytes], None], client_id: str = "", qos: int = 1
) -> mqtt.Client:
    """A started paho client that subscribes to `topics` on every (re)connection and calls on_message(topic, payload);
    its `subscribed` event is set once the broker has acknowledged the subscription."""
    client = make_client(options, client_id)
    client.subscribed = threading.Event()  # type: ignore[attr-defined]

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, qos) for topic in topics])

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: client.subscribed.set()
    client.on_disconnect = lambda *_: client.subscribed.clear()
    client.on_message = lambda client, userdata, message: on_message(message.topic, message.payload)
    client.connect_async(options.host, options.port, keepalive=5)
    client.loop_start()
    return client
