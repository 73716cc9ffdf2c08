"""A live web view of webcam_mqtt.py's detections: every camera's frame with its boxes, FPS, latency, a history chart.

Results arrive over MQTT (subscribed to detections/#) and over HTTP (POST /api/detections), both checked against
the ONE message schema in utils/mqtt.py; a bad or oversized message is dropped with a log line, never a crash.
The page gets updates pushed by Server-Sent Events; its script is served from web/ (no CDN, no build step).

Run:
    python web_server.py --with-camera assets/videos/tud-campus.mp4     # the demo in one command: broker + camera + page
    python web_server.py --with-camera 0 --with-camera clip.mp4           # two cameras side by side
    # or in two terminals: the camera's embedded broker, and this server subscribed to it
    python webcam_mqtt.py --source clip.mp4 --realtime --loop --publish-frames
    python web_server.py                                                   # http://127.0.0.1:8000, broker 127.0.0.1:1883
    python web_server.py --broker embedded --port 8000                     # this server hosts the broker instead

Endpoints: GET / (the page), GET /api/stream (SSE), GET /api/latest (the newest message per camera),
GET /api/history?n=100 (the last n messages, oldest first), GET /health, POST /api/detections (one JSON message).
Errors are JSON {"error", "status"}.
Measured (2 shared x86 cores, ssdlite_person on 1 thread, TUD-Campus looped at 30 fps, embedded broker, 120 s):
capture->subscriber 26.9 ms p50 / 62.3 ms p95, inference 85% of it (22.9 ms p50), overhead 2.6 ms p50, 3% of the
frames dropped, latency growth -4 ms over the run (benchmarks/bench_stream.py; docs/webcam_mqtt.md).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from utils.assets import REPO_ROOT
from utils.cli import ArgumentParser, UserError, number, run_cli
from utils.mqtt import (
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    EmbeddedBroker,
    InvalidMessage,
    add_broker_arguments,
    broker_options,
    close_subscriber,
    parse_broker,
    subscribe,
    validate_message,
)

WEB_DIR = REPO_ROOT / "web"
HISTORY = 1000  # messages kept for /api/history and the page's chart (a minute of two 8 FPS cameras)
CLIENT_QUEUE = 64  # SSE events waiting for one slow browser tab before its oldest are dropped
HEARTBEAT_S = 10  # an SSE comment this often keeps proxies and the browser from timing the stream out

log = logging.getLogger("web_server")

######################################################################################################################
# What the server knows: the latest message and frame per camera, a history, the SSE listeners


class Detections:
    """Thread-safe store of validated messages; every accepted message or frame is pushed to each SSE listener."""

    def __init__(self, history: int = HISTORY) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.latest_frames: dict[str, str] = {}  # camera -> its newest JPEG preview as a ready SSE data line
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self.received = {"mqtt": 0, "http": 0, "frames": 0}
        self.rejected = 0
        self.frame_topics: dict[str, str] = {}  # topic of a camera's messages -> camera id, to name its /frame topic
        self._listeners: list[queue.Queue[str]] = []
        self._lock = threading.Lock()

    def add_message(self, payload: bytes | str | dict, transport: str, topic: str = "") -> dict[str, Any]:
        """Validate and store one message; InvalidMessage (logged) if it breaks the schema."""
        try:
            message = validate_message(payload)
        except InvalidMessage as error:
            with self._lock:
                self.rejected += 1
            log.warning("dropped a message from %s%s: %s", transport, f" ({topic})" if topic else "", error)
            raise
        with self._lock:
            self.received[transport] += 1
            self.latest[message["camera"]] = message
            self.history.append(message)
            if topic:
                self.frame_topics[f"{topic}/frame"] = message["camera"]
        self._push("detections", json.dumps(message, separators=(",", ":")))
        return message

    def add_frame(self, topic: str, jpeg: bytes) -> None:
        """A camera's preview JPEG (<topic>/frame); pushed to the page as base64."""
        if len(jpeg) > MAX_FRAME_BYTES or not jpeg.startswith(b"\xff\xd8"):
            with self._lock:
                self.rejected += 1
            log.warning(
                "dropped a frame on %s: %d bytes, %s", topic, len(jpeg), "too large" if len(jpeg) > MAX_FRAME_BYTES else "not a JPEG"
            )
            return
        with self._lock:
            self.received["frames"] += 1
            camera = self.frame_topics.get(topic, topic.removesuffix("/frame").rpartition("/")[2])
            data = json.dumps({"camera": camera, "jpeg": base64.b64encode(jpeg).decode()})
            self.latest_frames[camera] = data
        self._push("frame", data)

    def _push(self, event: str, data: str) -> None:
        text = f"event: {event}\ndata: {data}\n\n"
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.put_nowait(text)
            except queue.Full:  # a slow tab loses its oldest event, the server does not wait for it
                try:
                    listener.get_nowait()
                    listener.put_nowait(text)
                except (queue.Empty, queue.Full):
                    pass

    def listen(self) -> queue.Queue[str]:
        listener: queue.Queue[str] = queue.Queue(maxsize=CLIENT_QUEUE)
        with self._lock:
            self._listeners.append(listener)
        return listener

    def unlisten(self, listener: queue.Queue[str]) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def on_mqtt(self, topic: str, payload: bytes) -> None:
        """paho's callback: frames on .../frame, messages elsewhere; never raises into paho's thread."""
        if topic.endswith("/frame"):
            self.add_frame(topic, payload)
            return
        with contextlib.suppress(InvalidMessage):  # logged and counted by add_message
            self.add_message(payload, "mqtt", topic)


######################################################################################################################
# The app


def create_app(store: Detections | None = None, stopping: threading.Event | None = None) -> Flask:
    """The Flask app around a Detections store (a new one if not given); `stopping` ends open SSE streams."""
    app = Flask(__name__, static_folder=str(WEB_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_MESSAGE_BYTES  # Flask answers 413 before reading a larger body
    store = store or Detections()
    stopping = stopping or threading.Event()
    app.extensions["detections"] = store  # app state, not a module global: two apps in one process stay apart
    add_error_handler(app, store)
    add_api_routes(app, store, started=time.time())
    add_stream_route(app, store, stopping)
    return app


def add_error_handler(app: Flask, store: Detections) -> None:
    """HTTP errors as JSON; a body over the size limit counts as a rejected message."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        if error.code == 413:
            with store._lock:
                store.rejected += 1
            log.warning("dropped a message from http: over %d bytes", MAX_MESSAGE_BYTES)
        message = f"message larger than {MAX_MESSAGE_BYTES} bytes" if error.code == 413 else error.description
        return jsonify(error=message, status=error.code), error.code


def add_api_routes(app: Flask, store: Detections, started: float) -> None:
    """The page, /health, and the JSON API: POST /api/detections, /api/latest, /api/history."""

    @app.get("/")
    def index() -> Response:
        return app.send_static_file("index.html")

    @app.get("/health")
    def health() -> Response:
        return jsonify(
            status="ok",
            cameras=sorted(store.latest),
            received=store.received,
            rejected=store.rejected,
            uptime_s=round(time.time() - started, 1),
        )

    @app.post("/api/detections")
    def post_detections() -> tuple[Response, int]:
        try:
            message = store.add_message(request.get_data(cache=False), "http")
        except InvalidMessage as error:
            return jsonify(error=str(error), status=400), 400
        return jsonify(accepted=True, camera=message["camera"], frame=message["frame"]), 202

    @app.get("/api/latest")
    def latest() -> Response:
        return jsonify(store.latest)

    @app.get("/api/history")
    def history() -> tuple[Response, int] | Response:
        text = request.args.get("n", "100")
        if not text.isdigit() or not 1 <= int(text) <= HISTORY:
            return jsonify(error=f"n={text!r}: give a whole number from 1 to {HISTORY}", status=400), 400
        with store._lock:
            return jsonify(list(store.history)[-int(text) :])


def sse_events(store: Detections, listener: queue.Queue[str], stopping: threading.Event) -> Iterator[str]:
    """One browser tab's event stream: what is known now, then every new event, a heartbeat when quiet."""
    try:
        yield "retry: 1000\n\n"
        for data in list(store.latest_frames.values()):  # a new tab shows every camera at once
            yield f"event: frame\ndata: {data}\n\n"
        for message in list(store.latest.values()):
            yield f"event: detections\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"
        while not stopping.is_set():
            try:
                yield listener.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                yield ": heartbeat\n\n"
    finally:
        store.unlisten(listener)


def add_stream_route(app: Flask, store: Detections, stopping: threading.Event) -> None:
    """/api/stream: server-sent events, open until the client leaves or `stopping` is set."""

    @app.get("/api/stream")
    def stream() -> Response:
        events = sse_events(store, store.listen(), stopping)
        return Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=number(int, 1, 65535), default=8000, help="HTTP port")
    add_broker_arguments(parser, None, "127.0.0.1:1883, where webcam_mqtt.py's embedded broker listens; embedded with --with-camera")
    parser.add_argument("--no-mqtt", action="store_true", help="HTTP POSTs only, no broker (default: subscribe to detections/#)")
    parser.add_argument("--topic", default="detections/#", help="MQTT topic filter to subscribe to")
    parser.add_argument(
        "--with-camera",
        action="append",
        default=[],
        metavar="SOURCE",
        help="also run webcam_mqtt.py on SOURCE (a file plays in real time, looped) as a child process; repeat for more cameras",
    )
    parser.add_argument("--camera-args", default="", help="extra flags for every --with-camera child, e.g. '--detector-size 360'")
    return parser


def start_cameras(sources: list[str], host: str, port: int, extra: str) -> list[subprocess.Popen]:
    """One webcam_mqtt.py child per source, publishing frames and detections to the broker at host:port."""
    children = []
    for number_, source in enumerate(sources):
        command = [sys.executable, str(REPO_ROOT / "webcam_mqtt.py"), "--source", source, "--broker", f"{host}:{port}", "--publish-frames"]
        if Path(source).is_file():
            command += ["--realtime", "--loop"]
        if len(sources) > 1:
            from webcam_mqtt import default_camera_id

            command += ["--camera-id", f"{default_camera_id(source)}-{number_}"]
        children.append(subprocess.Popen(command + extra.split(), cwd=REPO_ROOT))
    return children


def stop_on_signals(server: Any, stopping: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM end the open streams and the server; returns the handlers to put back."""
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there

        def shut_down(*_: Any) -> None:
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, shut_down)
    return previous_handlers


def stop_cameras(children: list[subprocess.Popen]) -> None:
    """SIGTERM to every camera (each prints its summary and stops cleanly), then wait; kill one that hangs."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request would drown the rest
    if args.broker is None:  # the one-command demo hosts the broker; otherwise it is webcam_mqtt.py's
        args.broker = "embedded" if args.with_camera else "127.0.0.1:1883"
    if args.no_mqtt and args.with_camera:
        raise UserError("--with-camera publishes over MQTT: drop --no-mqtt")
    host, port, embedded = parse_broker(args.broker)
    store, stopping = Detections(), threading.Event()
    try:
        server = make_server(args.host, args.port, create_app(store, stopping), threaded=True)
    except OSError as error:
        raise UserError(f"cannot serve on {args.host}:{args.port} ({error.strerror or error}); try --port") from None
    server.daemon_threads = True  # open SSE streams do not keep the process alive
    broker = EmbeddedBroker(port, host).start() if embedded and not args.no_mqtt else None
    client = None if args.no_mqtt else subscribe(broker_options(args, host, port), [args.topic], store.on_mqtt, client_id="web_server")
    if client is not None and args.with_camera and not client.subscribed.wait(10):  # the cameras' first frames reach us too
        log.warning("no subscription acknowledged by %s:%d within 10 s; starting the cameras anyway", host, port)
    children = start_cameras(args.with_camera, host, port, args.camera_args) if args.with_camera else []

    previous_handlers = stop_on_signals(server, stopping)
    log.info(
        "serving http://%s:%d/ ; %s", args.host, server.server_port, "HTTP only" if args.no_mqtt else f"MQTT {args.topic} on {host}:{port}"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stopping.set()
        stop_cameras(children)
        if broker is not None:
            broker.drain()  # the cameras' last messages reach this server's subscriber before it disconnects
        if client is not None:
            close_subscriber(client)
        if broker is not None:
            broker.stop()
        server.server_close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    results = {"received": store.received, "rejected": store.rejected, "cameras": sorted(store.latest)}
    print(f"web_server: {json.dumps(results)}", file=sys.stderr)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
