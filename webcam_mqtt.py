"""Detect people in a webcam (or any video) stream and publish the results over MQTT, one JSON message per frame.

Works with nothing installed: by default an MQTT broker runs inside this process (amqtt, 127.0.0.1:1883), the bundled
pretrained YOLOX-nano detector (COCO: every class goes into the message) runs offline, and web_server.py shows the
results live in a browser.

Run:
    python webcam_mqtt.py                                                   # first camera that opens, embedded broker
    python webcam_mqtt.py --source assets/videos/tud-campus.mp4 --max-frames 30
    python webcam_mqtt.py --source clip.mp4 --realtime --loop --publish-frames   # a file standing in for a camera
    python webcam_mqtt.py --source rtsp://cam/stream --broker 127.0.0.1:1883 --qos 1  # an outside broker (mosquitto)
    python webcam_mqtt.py --source 0 --http http://127.0.0.1:5000/api/detections      # also POST to web_server.py
    mosquitto_sub -t 'detections/#' -v                                       # watch (with an outside broker)
Measured (2 shared x86 cores, ssdlite_person on 1 thread, TUD-Campus looped at 30 fps, embedded broker, 120 s):
capture->subscriber 26.9 ms p50 / 62.3 ms p95, inference 85% of it (22.9 ms p50), overhead 2.6 ms p50, 3% of the
frames dropped, latency growth -4 ms over the run (benchmarks/bench_stream.py; docs/webcam_mqtt.md).

Latency cannot grow: a live source (camera, URL, or a file with --realtime) is read on its own thread that keeps
only the NEWEST frame; frames that arrive while the detector is busy are dropped and counted ("dropped"), never
queued. A file without --realtime is read as fast as the detector goes, every frame processed. Frames come from
OpenCV as BGR and are converted to RGB before the detector (which expects RGB). Boxes are in the source frame's
pixels. The broker may go away: the client reconnects with backoff and buffers at most --buffer messages meanwhile.
A message counts as delivered once the broker acknowledged it (QoS >= 1) or it was written to the broker (QoS 0); at
the stop the publisher waits up to --close-timeout for the last acknowledgements and the summary counts what was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from utils.assets import TORCHVISION_DETECTORS
from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, set_threads
from utils.detectors import DETECTORS, PERSON, build_detector, yolox_size_for
from utils.main_person import MainPersonSelector, add_association_argument, make_selector
from utils.mqtt import CLOSE_TIMEOUT_S, SCHEMA_VERSION, EmbeddedBroker, Publisher, add_broker_arguments, broker_options, parse_broker
from utils.outputs import write_run
from utils.timing import summarize
from utils.video import MAX_PIXELS, Letterbox, ThreadedReader, VideoSource

CAMERA_INDICES = range(4)  # what "no --source" tries, then every /dev/video* device
DETECTOR_HEIGHT = 240  # frames taller than this are shrunk before the detector: video_main_person's tuned --detector-size
JPEG_QUALITY = 70  # --publish-frames: about 15 KB for 427x240, enough to see the boxes on
COCO_NAMES = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # COCO id -> name (metadata only, no download)

log = logging.getLogger("webcam_mqtt")

######################################################################################################################
# Sources: cameras, files, URLs, image folders -> (index, BGR frame, capture time)


def camera_candidates() -> list[str]:
    return [str(index) for index in CAMERA_INDICES] + sorted(str(path) for path in Path("/dev").glob("video*"))


def open_source(text: str | None, max_pixels: int) -> VideoSource:
    """--source opened; none given: the first camera that opens, or one line listing every camera tried."""
    if text is not None:
        device = re.fullmatch(r"/dev/video(\d+)", text)  # OpenCV's V4L2 index N is /dev/videoN
        return VideoSource(device.group(1) if device else text, max_pixels=max_pixels)
    tried = []
    for candidate in camera_candidates():
        if candidate in tried or (candidate.startswith("/dev/") and candidate[len("/dev/video") :] in tried):
            continue
        tried.append(candidate)
        try:
            return open_source(candidate, max_pixels)
        except UserError:
            continue
    raise UserError(f"no camera could be opened (tried {', '.join(tried)}); give --source INDEX, /dev/videoN, a file, a URL or a folder")


def is_live(text: str) -> bool:
    return text.isdigit() or text.startswith("/dev/") or "://" in text


class Looped:
    """A video file played again and again (--loop), frame indices running on; a stand-in for an endless camera."""

    def __init__(self, first: VideoSource, text: str, max_pixels: int) -> None:
        self.source, self.text, self.max_pixels = first, text, max_pixels

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        offset = 0
        while True:
            count = 0
            for index, image in self.source:
                count = index + 1
                yield offset + index, image
            if count == 0:
                return
            offset += count
            self.source.close()
            self.source = VideoSource(self.text, max_pixels=self.max_pixels)

    def close(self) -> None:
        self.source.close()


class LatestFrameReader:
    """Reads a live source on a thread and keeps only the newest frame: the consumer always gets the freshest one,
    frames it had no time for are dropped and counted. fps: pace a file to its own rate (--realtime)."""

    def __init__(self, frames: Any, fps: float | None = None) -> None:
        self.frames, self.fps = frames, fps
        self.dropped = 0
        self._latest: tuple[int, np.ndarray, float] | None = None
        self._condition = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latest-frame", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            for count, (index, image) in enumerate(self.frames):
                if self.fps:  # a file as if it were a camera: frame n exists from n / fps on
                    delay = start + count / self.fps - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                if self._stop.is_set():
                    break
                with self._condition:
                    self.dropped += self._latest is not None  # the consumer never took the previous one
                    self._latest = (index, image, time.time())
                    self._condition.notify()
        except BaseException as error:  # handed to the consumer
            self._error = error
        with self._condition:
            self._finished = True
            self._condition.notify()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, float]]:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._latest is not None or self._finished or self._stop.is_set(), timeout=0.5)
                item, self._latest = self._latest, None
                if item is None and self._error is not None:
                    raise self._error
                if item is None and (self._finished or self._stop.is_set()):
                    return
            if item is not None:
                yield item

    def close(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify()
        self._thread.join(timeout=5)
        self.frames.close()


def file_frames(reader: ThreadedReader) -> Iterator[tuple[int, np.ndarray, float]]:
    """Every frame of a file, as fast as it goes. Its clock starts when decoding began, less the time it then sat in
    the reader's queue: a backlog only a faster-than-real-time file builds is not latency."""
    for frame in reader:
        waited = frame.queue_wait
        yield frame.index, frame.image, time.time() - (time.perf_counter() - frame.start_time - waited)


######################################################################################################################
# Frame -> message


def detector_input(frame_bgr: np.ndarray, max_height: int) -> tuple[np.ndarray, float]:
    """The detector's RGB input (shrunk to max_height if taller) and the scale from source pixels to it."""
    height, width = frame_bgr.shape[:2]
    scale = 1.0
    if height > max_height:
        fit = Letterbox.fit(width, height, round(max_height * width / height), max_height)
        frame_bgr, scale = fit.resize(frame_bgr), fit.scale
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), scale  # OpenCV decodes BGR; the detectors take RGB


def detector_options(name: str, width: int, height: int) -> dict[str, Any]:
    """What the detector is built with for width x height inputs: torchvision's resize bounds, yolox_nano's input long
    side (rounded up to its grid; every COCO class kept, the message lists them all)."""
    if name in TORCHVISION_DETECTORS:
        return {"min_size": DETECTOR_HEIGHT, "max_size": round(DETECTOR_HEIGHT * 16 / 9)}
    if name == "yolox_nano":
        return {"size": yolox_size_for(width, height)}
    return {}


def label_name(label: int) -> str:
    return COCO_NAMES[label] if 0 <= label < len(COCO_NAMES) and COCO_NAMES[label] != "N/A" else f"class_{label}"


class FrameDetector:
    """BGR frame -> one schema-1 message: detections in source pixels, the main person, inference time."""

    def __init__(
        self, detector: Any, camera: str, min_score: float | None, args: argparse.Namespace, frame_rate: float | None = None
    ) -> None:
        self.detector, self.camera = detector, camera
        self.min_score = detector.score_thresh if min_score is None else min_score
        self.association, self.frame_rate = args.association, frame_rate
        self.selector_args = (args.switch_margin, args.switch_frames, args.hold_frames)
        self.selector: MainPersonSelector | None = None
        self.size: tuple[int, int] | None = None

    def __call__(self, index: int, frame_bgr: np.ndarray, capture_ts: float, dropped: int) -> dict[str, Any]:
        height, width = frame_bgr.shape[:2]
        if (width, height) != self.size:  # a new picture size (an image folder): nothing carried over
            self.size = (width, height)
            self.selector = make_selector(self.association, width, height, *self.selector_args, frame_rate=self.frame_rate)
        rgb, scale = detector_input(frame_bgr, DETECTOR_HEIGHT)
        start = time.perf_counter()
        found = self.detector.detect([rgb])[0]
        inference_s = time.perf_counter() - start
        kept = found.select(found.scores >= self.min_score)
        boxes = kept.boxes / scale
        people = kept.labels == PERSON
        main = self.selector.update(boxes[people], kept.scores[people])
        return {
            "schema": SCHEMA_VERSION,
            "camera": self.camera,
            "frame": int(index),
            "capture_ts": round(capture_ts, 4),
            "publish_ts": 0.0,  # set just before sending
            "width": width,
            "height": height,
            "detections": [
                {"label": label_name(int(label)), "score": round(float(score), 3), "box": [round(float(v), 1) for v in box]}
                for box, score, label in zip(boxes, kept.scores, kept.labels, strict=True)
            ],
            "main_person": None
            if main is None
            else {"box": [round(float(v), 1) for v in main.box], "score": round(float(main.score), 3), "held": bool(main.held)},
            "inference_ms": round(inference_s * 1e3, 2),
            "dropped": int(dropped),
        }


def jpeg_preview(frame_bgr: np.ndarray, width: int) -> bytes:
    """The frame shrunk to `width` (aspect kept) as JPEG: what a viewer draws the boxes on (scaled by width ratio)."""
    height, source_width = frame_bgr.shape[:2]
    if source_width > width:
        frame_bgr = Letterbox.fit(source_width, height, width, round(height * width / source_width)).resize(frame_bgr)
    ok, data = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else b""


class HttpPoster:
    """POSTs messages to web_server.py (--http) from a thread, so a slow server never stalls the camera loop; at most
    `buffer` messages wait (oldest dropped). A message counts as sent only once the server answered 2xx: posted =
    sent + failed (refused or unreachable) + dropped (buffer full) + unsent (still queued when close() gave up)."""

    def __init__(self, url: str, buffer: int) -> None:
        self.url = url
        self.posted = self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=buffer)
        self._thread = threading.Thread(target=self._run, name="http-poster", daemon=True)
        self._thread.start()

    def post(self, payload: bytes) -> None:
        self.posted += 1
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            request = urllib.request.Request(self.url, payload, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:  # 4xx/5xx raise HTTPError; redirects are followed
                    response.read()
                    status = response.status
            except (urllib.error.URLError, OSError) as error:
                status, reason = None, getattr(error, "reason", error)
            if status is not None and 200 <= status < 300:
                self.sent += 1
                continue
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.warning("POST %s failed (%s); %d failed so far", self.url, reason if status is None else f"HTTP {status}", self.failed)

    @property
    def unsent(self) -> int:
        return self.posted - self.sent - self.failed - self.dropped

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Let the queue empty for up to `timeout` s; returns how many messages were never answered (unsent)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # a full queue that never drains: the thread is a daemon, left behind
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.unsent


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=None,
        help="camera index or /dev/videoN, video file, rtsp:// or http:// URL, or image folder (default: the first camera that opens)",
    )
    parser.add_argument("--realtime", action="store_true", help="read a file at its own frame rate, newest frame only, like a camera")
    parser.add_argument(
        "--fps", type=number(float, 0.1, 1000), default=None, help="rate of a file with --realtime (default: the file's own)"
    )
    parser.add_argument("--loop", action="store_true", help="play a video file again and again (default: once)")
    parser.add_argument("--max-frames", type=number(int, 1), default=None, help="stop after this many processed frames (default: no limit)")
    parser.add_argument("--max-pixels", type=number(int, 1), default=MAX_PIXELS, help="refuse frames larger than this")
    parser.add_argument("--camera-id", default=None, help="names the camera in messages and topic (default: camN, or the file's name)")
    parser.add_argument("--topic", default=None, help="MQTT topic of the JSON messages (default: detections/<camera-id>)")
    parser.add_argument("--qos", type=number(int, 0, 2), default=0, help="MQTT QoS: 0 for lowest latency, 1 at least once")
    parser.add_argument("--retain", action="store_true", help="the broker keeps the last message for late subscribers (default: off)")
    parser.add_argument("--client-id", default=None, help="MQTT client id (default: webcam_mqtt-<camera-id>-<pid>)")
    add_broker_arguments(parser, default="embedded")
    parser.add_argument("--buffer", type=number(int, 1), default=100, help="messages kept while the broker is away; older ones dropped")
    parser.add_argument(
        "--close-timeout",
        type=number(float, 0, 600),
        default=CLOSE_TIMEOUT_S,
        help="at the stop, seconds to wait for the broker's last acknowledgements (and HTTP answers); what has not come by "
        "then is counted as lost (default: %(default)s)",
    )
    parser.add_argument("--publish-frames", action="store_true", help="also publish a downscaled JPEG per frame on <topic>/frame")
    parser.add_argument("--frame-width", type=number(int, 16, 4096), default=427, help="width of the --publish-frames JPEG")
    parser.add_argument("--http", default=None, help="also POST every message to this URL, e.g. http://127.0.0.1:5000/api/detections")
    parser.add_argument(
        "--detector",
        default="yolox_nano",
        choices=DETECTORS,
        help="detector (default: yolox_nano, bundled COCO YOLOX-nano: every COCO class in the message; ssdlite_person: bundled, people only)",
    )
    parser.add_argument("--weights", default="DEFAULT", help="DEFAULT, none (random, speed only) or a state_dict path")
    parser.add_argument("--quantized", default=None, help="a model saved by quantise.py (default: none)")
    parser.add_argument("--onnx", default=None, help="a torchvision detector exported by tensorrt_convert.py, run by ONNX Runtime")
    parser.add_argument("--engine", default=None, help="a TensorRT engine built by tensorrt_convert.py (CUDA)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the detector runs")
    parser.add_argument(
        "--threads",
        type=number(int, 1),
        default=None,
        help="CPU threads for inference (default: all cores but one, left to capture and MQTT; on 2 shared cores, back to back: "
        "1 thread 23 ms p50 / 39 ms p95 capture->subscriber, 0.1%% of a 30 fps source dropped; 2 threads 18 / 70 ms, 6%% dropped)",
    )
    parser.add_argument("--min-score", type=number(float, 0, 1), default=None, help="score floor (default: the detector's own)")
    parser.add_argument("--switch-margin", type=number(float, 1), default=1.3, help="salience ratio another person needs to take over")
    parser.add_argument("--switch-frames", type=number(int, 1), default=3, help="frames in a row the challenger must win")
    parser.add_argument("--hold-frames", type=number(int, 0), default=5, help="frames the main person is held over detector misses")
    add_association_argument(parser)
    parser.add_argument("--out", default=None, help="folder for results.json (default: none written)")
    return parser


def delivery_summary(publisher: Publisher) -> str:
    """'all N messages delivered' only when that is true; otherwise how many were lost and how."""
    lost = publisher.dropped + publisher.unacknowledged
    if not lost:
        return f"all {publisher.published} messages delivered to the broker"
    return (
        f"{lost} of {publisher.published} messages LOST ({publisher.dropped} dropped from a full buffer, "
        f"{publisher.unacknowledged} never acknowledged by the broker)"
    )


def default_camera_id(source: str) -> str:
    if source.isdigit() or source.startswith("/dev/video"):
        return "cam" + re.sub(r"\D", "", source)
    name = Path(source.rstrip("/")).stem if "://" not in source else source.split("://", 1)[1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "cam"


def load_source_and_detector(args: argparse.Namespace) -> tuple[VideoSource, int, Any]:
    """The opened source, the thread count and the warmed-up detector; the source is closed again if loading fails."""
    source = open_source(args.source, args.max_pixels)
    try:
        device = resolve_device(args.device)
        threads = set_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
        rgb, _ = detector_input(np.zeros((source.height, source.width, 3), np.uint8), DETECTOR_HEIGHT)
        options = detector_options(args.detector, rgb.shape[1], rgb.shape[0])
        detector = build_detector(
            args.detector, args.weights, device, threads=threads, quantized=args.quantized, onnx=args.onnx, engine=args.engine, **options
        )
        detector.warmup(rgb.shape[1], rgb.shape[0])
    except BaseException:
        source.close()
        raise
    return source, threads, detector


def open_reader(args: argparse.Namespace, source: VideoSource) -> tuple[Any, Iterator[tuple[int, np.ndarray, float]], bool]:
    """The frame reader, its (index, BGR frame, capture time) iterator, and whether it is live (drops stale frames)."""
    frames_in: Any = Looped(source, source.name, args.max_pixels) if args.loop else source
    live = is_live(source.name) or args.realtime
    if live:
        reader: Any = LatestFrameReader(frames_in, fps=(args.fps or source.fps) if args.realtime and not is_live(source.name) else None)
        return reader, iter(reader), live
    reader = ThreadedReader(frames_in, max_frames=args.max_frames, queue_size=2)
    return reader, file_frames(reader), live


def catch_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM set `stop` (the loop then ends cleanly); returns the handlers to put back."""
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous_handlers


def publish_frames(
    args: argparse.Namespace,
    frames: Iterator[tuple[int, np.ndarray, float]],
    dropped: Any,
    describe: FrameDetector,
    sinks: tuple[Publisher, HttpPoster | None, str],
    stop: threading.Event,
) -> dict[str, list[float]]:
    """Detect in each frame and publish its message (and picture); returns the per-frame timings in seconds."""
    publisher, poster, topic = sinks
    timings: dict[str, list[float]] = {"latencies": [], "inferences": [], "ages": []}
    for index, image, capture_ts in frames:
        timings["ages"].append(time.time() - capture_ts)  # how long the frame waited for the detector to be free
        message = describe(index, image, capture_ts, dropped())
        if args.publish_frames:  # the picture first: a viewer then has it when the boxes arrive
            publisher.publish(f"{topic}/frame", jpeg_preview(image, args.frame_width), qos=0, retain=args.retain)
        message["publish_ts"] = round(time.time(), 4)
        payload = json.dumps(message, separators=(",", ":")).encode()
        publisher.publish(topic, payload, qos=args.qos, retain=args.retain)
        if poster is not None:
            poster.post(payload)
        timings["latencies"].append(message["publish_ts"] - capture_ts)
        timings["inferences"].append(message["inference_ms"] / 1e3)
        if stop.is_set() or (args.max_frames is not None and len(timings["latencies"]) >= args.max_frames):
            break
    return timings


def shut_down(
    reader: Any, publisher: Publisher, poster: HttpPoster | None, broker: EmbeddedBroker | None, handlers: dict[int, Any], timeout: float
) -> None:
    """Stop in this order: the reader, the clients (waiting for acknowledgements), the embedded broker, the handlers."""
    reader.close()
    publisher.close(timeout)  # waits for the broker's acknowledgements: what never came is counted, not hidden
    if poster is not None:
        poster.close(timeout)
    if broker is not None:
        broker.stop()  # after its clients: it hands on what it holds first
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def delivery_results(publisher: Publisher, poster: HttpPoster | None) -> dict[str, Any]:
    """What happened to the messages: published, delivered, dropped, unacknowledged, and the HTTP side."""
    return {
        "messages_published": publisher.published,  # = delivered + dropped + unacknowledged
        "messages_delivered": publisher.delivered,  # acknowledged by the broker (QoS >= 1) or written to it (QoS 0)
        "messages_dropped": publisher.dropped,  # a full buffer while the broker was away
        "messages_unacknowledged": publisher.unacknowledged,  # lost with a connection, or never acknowledged before the stop
        "reconnections": max(0, publisher.connections - 1),
        "http": None
        if poster is None
        else {"posted": poster.posted, "sent": poster.sent, "failed": poster.failed, "dropped": poster.dropped, "unsent": poster.unsent},
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    host, port, embedded = parse_broker(args.broker)
    if args.camera_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.camera_id):
        raise UserError(f"--camera-id {args.camera_id!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    broker = EmbeddedBroker(port, host).start() if embedded else None  # first: a taken port fails before any loading
    try:
        source, threads, detector = load_source_and_detector(args)
    except BaseException:
        if broker is not None:
            broker.stop()
        raise
    camera = args.camera_id or default_camera_id(source.name)
    topic = args.topic or f"detections/{camera}"
    publisher = Publisher(broker_options(args, host, port), args.client_id or f"webcam_mqtt-{camera}-{os.getpid()}", args.buffer)
    poster = HttpPoster(args.http, args.buffer) if args.http else None
    if not publisher.connected.wait(5):
        log.warning("no broker at %s:%d yet; going on, buffering up to %d messages", host, port, args.buffer)
    reader, frames, live = open_reader(args, source)
    stop = threading.Event()
    previous_handlers = catch_stop_signals(stop)
    # the rate frames come at (a live source drops some while the detector is busy: the tracker then sees fewer)
    describe = FrameDetector(detector, camera, args.min_score, args, frame_rate=args.fps or source.fps)
    log.info("publishing %s on %s (broker %s:%d%s)", source.name, topic, host, port, ", embedded" if embedded else "")
    start = time.perf_counter()
    try:
        timings = publish_frames(args, frames, lambda: reader.dropped if live else 0, describe, (publisher, poster, topic), stop)
    finally:
        wall_s = time.perf_counter() - start
        shut_down(reader, publisher, poster, broker, previous_handlers, args.close_timeout)

    processed = len(timings["latencies"])
    results = {
        "source": source.name,
        "camera": camera,
        "topic": topic,
        "broker": f"{host}:{port}" + (" (embedded)" if embedded else ""),
        "frames": processed,
        "dropped_frames": reader.dropped if live else 0,
        "bad_frames": len(source.bad_frames),
        "fps": processed / wall_s if wall_s > 0 else 0.0,
        "latency_ms": summarize(timings["latencies"]),  # capture -> handed to the MQTT client
        "inference_ms": summarize(timings["inferences"]),
        "frame_age_ms": summarize(timings["ages"]),  # capture -> picked up: a live frame waits for the detector to finish the last one
        **delivery_results(publisher, poster),
        "stopped_by_signal": stop.is_set(),
        "detector": detector.name,
        "association": args.association,
        "threads": threads,
    }
    if args.out:
        write_run(args.out, results)
    print_summary(results, publisher)
    return results


def print_summary(results: dict[str, Any], publisher: Publisher) -> None:
    """One line on stderr: frames, rate, latency, delivery."""
    latency = results["latency_ms"]
    print(
        f"{results['frames']} frames published on {results['topic']}, {results['dropped_frames']} stale frames dropped, "
        f"{results['fps']:.1f} FPS, latency capture->publish p50 {latency['median_ms']:.1f} ms p95 {latency['p95_ms']:.1f} ms "
        f"(inference p50 {results['inference_ms']['median_ms']:.1f} ms), {delivery_summary(publisher)}, "
        f"{results['reconnections']} reconnections",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
