"""Capture-to-subscriber latency of webcam_mqtt.py with the bundled detector, and whether it stays flat over a long run.

A bundled clip, looped and paced at --fps (30) like a camera, goes through webcam_mqtt.py in its own process with
its embedded broker (the default set-up); this process subscribes like any viewer and times every message from
capture (capture_ts) to arrival. Reports latency p50/p95, the inference share, the overhead (latency less
inference: frame age while the detector was busy, pre/post-processing, JSON, MQTT), the frames dropped, and the
latency growth (median of the last third of the run less the first third): a pipeline that queued frames instead
of dropping them would grow by seconds a minute.

Run:
    python benchmarks/bench_stream.py                       # 120 s, 30 fps
    python benchmarks/bench_stream.py --seconds 10 --threads 1
Measured (2 shared x86 cores, ssdlite_person on 1 thread, TUD-Campus looped at 30 fps, embedded broker, 120 s):
capture->subscriber 26.9 ms p50 / 62.3 ms p95, inference 85% of it (22.9 ms p50), overhead 2.6 ms p50, 3% of the
frames dropped, latency growth -4 ms over the run (benchmarks/bench_stream.py; docs/webcam_mqtt.md).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.assets import TUD_CAMPUS_VIDEO  # noqa: E402
from utils.cli import ArgumentParser, UserError, number, run_cli  # noqa: E402
from utils.mqtt import BrokerOptions, close_subscriber, free_port, start_mosquitto, subscribe, validate_message  # noqa: E402
from utils.outputs import write_run  # noqa: E402

DEFAULT_SOURCE = TUD_CAMPUS_VIDEO
START_TIMEOUT_S = 90  # imports + detector load on a busy 2-core machine


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"p50_ms": round(float(np.median(array)), 2), "p95_ms": round(float(np.percentile(array, 95)), 2)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="video file, looped and paced like a camera")
    parser.add_argument("--fps", type=number(float, 1, 240), default=30.0, help="rate the source is played at")
    parser.add_argument("--seconds", type=number(float, 1), default=120.0, help="how long to stream after the first message")
    parser.add_argument("--warmup-seconds", type=number(float, 0), default=2.0, help="first messages left out of the figures")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads for inference (default: all cores)")
    parser.add_argument("--detector", default="ssdlite_person", help="webcam_mqtt.py --detector")
    parser.add_argument(
        "--broker", default="embedded", choices=("embedded", "mosquitto"), help="webcam_mqtt.py's own amqtt, or Debian's mosquitto"
    )
    parser.add_argument("--publish-frames", action="store_true", help="also publish the JPEG previews (as the demo does)")
    parser.add_argument("--out", default=None, help="folder for results.json (default: none written)")
    return parser


def publisher_command(args: argparse.Namespace, port: int, embedded: bool, out: str) -> list[str]:
    """webcam_mqtt.py on the clip played back in real time, looped, publishing to the broker on `port`."""
    command = [
        sys.executable, str(REPO_ROOT / "webcam_mqtt.py"), "--source", args.source, "--realtime", "--loop", "--fps", str(args.fps),
        "--broker", f"embedded:{port}" if embedded else f"127.0.0.1:{port}", "--camera-id", "bench", "--detector", args.detector, "--out", out,
    ]  # fmt: skip
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--publish-frames"] if args.publish_frames else []
    return command


def stop_publisher(child: subprocess.Popen) -> str:
    """SIGTERM: a clean stop, the child writes its results.json; killed if it hangs. Returns its stderr."""
    child.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        return child.communicate(timeout=30)[1]
    child.kill()
    return child.communicate()[1]


def run_publisher(
    args: argparse.Namespace, port: int, mosquitto: subprocess.Popen | None, arrivals: list[tuple[float, dict[str, Any]]], on_message: Any
) -> dict[str, Any]:
    """Run webcam_mqtt.py for --seconds after its first message while subscribed; returns its results.json."""
    with tempfile.TemporaryDirectory() as temporary:
        child = subprocess.Popen(
            publisher_command(args, port, mosquitto is None, temporary), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
        )
        client = subscribe(BrokerOptions("127.0.0.1", port), ["detections/#"], on_message, client_id="bench_stream", qos=0)
        try:
            deadline = time.time() + START_TIMEOUT_S
            while not arrivals and time.time() < deadline and child.poll() is None:
                time.sleep(0.1)
            if not arrivals:
                raise UserError(
                    f"webcam_mqtt.py published nothing within {START_TIMEOUT_S} s: {(child.stderr.read() if child.poll() is not None else '')[-300:]}"
                )
            time.sleep(args.seconds)
        finally:
            stderr = stop_publisher(child)
            close_subscriber(client)
            if mosquitto is not None:
                mosquitto.terminate()
                mosquitto.wait(timeout=10)
        results_path = Path(temporary) / "results.json"
        if not results_path.is_file():
            raise UserError(f"webcam_mqtt.py ended without results (exit {child.returncode}): {stderr.strip()[-300:]}")
        return json.loads(results_path.read_text())


def stream_results(args: argparse.Namespace, kept: list[tuple[float, dict[str, Any]]], publisher: dict[str, Any]) -> dict[str, Any]:
    """Latency split into inference and overhead, rate, drops and growth, from the messages after warm-up."""
    latency = [(received - message["capture_ts"]) * 1e3 for received, message in kept]
    inference = [message["inference_ms"] for _, message in kept]
    overhead = [total - model for total, model in zip(latency, inference, strict=True)]
    transport = [(received - message["publish_ts"]) * 1e3 for received, message in kept]
    third = len(latency) // 3
    frames = kept[-1][1]["frame"] - kept[0][1]["frame"] + 1  # frames the source produced meanwhile
    return {
        "source": Path(args.source).name,
        "source_fps": args.fps,
        "seconds": round(kept[-1][0] - kept[0][0], 1),
        "messages": len(kept),
        "processed_fps": round(len(kept) / max(kept[-1][0] - kept[0][0], 1e-9), 2),
        "dropped_share": round(1 - len(kept) / frames, 3),
        "latency": percentiles(latency),
        "inference": percentiles(inference),
        "inference_share_p50": round(float(np.median(inference) / np.median(latency)), 3),
        "overhead": percentiles(overhead),
        "frame_age": {"p50_ms": round(publisher["frame_age_ms"]["median_ms"], 2), "p95_ms": round(publisher["frame_age_ms"]["p95_ms"], 2)},
        "publish_to_subscriber": percentiles(transport),
        "latency_growth_ms": round(float(np.median(latency[-third:]) - np.median(latency[:third])), 2),
        "messages_dropped": publisher["messages_dropped"],
        "detector": args.detector,
        "threads": publisher["threads"],
        "publish_frames": args.publish_frames,
        "broker": args.broker,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    mosquitto = start_mosquitto(port) if args.broker == "mosquitto" else None
    arrivals: list[tuple[float, dict[str, Any]]] = []
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes) -> None:
        received = time.time()
        if topic.endswith("/frame"):
            return
        with lock:
            arrivals.append((received, validate_message(payload)))

    publisher = run_publisher(args, port, mosquitto, arrivals, on_message)
    with lock:
        start = arrivals[0][0] + args.warmup_seconds
        kept = [(received, message) for received, message in arrivals if received >= start]
    if len(kept) < 6:
        raise UserError(f"only {len(kept)} messages after warm-up: run longer (--seconds)")
    results = stream_results(args, kept, publisher)
    if args.out:
        write_run(args.out, results)
    print(
        f"{results['messages']} messages in {results['seconds']} s ({results['processed_fps']} FPS of a {args.fps:g} fps source, "
        f"{results['dropped_share']:.0%} dropped): latency p50 {results['latency']['p50_ms']} ms p95 {results['latency']['p95_ms']} ms, "
        f"inference p50 {results['inference']['p50_ms']} ms ({results['inference_share_p50']:.0%}), overhead p50 "
        f"{results['overhead']['p50_ms']} ms (frame age {results['frame_age']['p50_ms']} ms, publish->subscriber "
        f"{results['publish_to_subscriber']['p50_ms']} ms), growth {results['latency_growth_ms']} ms",
        file=sys.stderr,
    )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
