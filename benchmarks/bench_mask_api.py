"""mask_api.py under load against its own model: what the HTTP layer costs on top of inference.

Starts the real server (waitress, `python mask_api.py`) in a subprocess and posts the balloon val photos, one client
at a time and then from --clients concurrent clients. The raw model's time is measured by the server around the model
call alone (utils.maskrcnn.predict, `timings_ms.inference` in each answer): the same process, thread and images as
the request, so the pair is not skewed by a noisy neighbour or by a different thread pool (a model timed in another
process's main thread ran 2-8x slower here, with two busy OpenMP threads on 2 shared cores). Overhead, per request:
(latency seen by the client - model time) / model time: upload, decoding, masks to JSON, the socket. Target (issue
13): median <= 15%. With several clients inference is serialised in the server, so requests/s stays that of one model
while latency grows with the queue: both are reported.

Run:
    python benchmarks/bench_mask_api.py                 # the shipped model, 13 balloon photos, 1 and 4 clients
    python benchmarks/bench_mask_api.py --clients 8 --rounds 3
Last line: {"inference_p50_ms": ..., "api_p50_ms": ..., "overhead": ..., "target": 0.15, "met": ..., "requests_per_s": ...}
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.cli import ArgumentParser, UserError, number, run_cli
from utils.timing import summarize

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "assets" / "data" / "balloon" / "val"
TARGET = 0.15  # API overhead over raw inference


def start_server(checkpoint: str | None, threads: int) -> tuple[subprocess.Popen, str]:
    """`python mask_api.py` on a free loopback port; returns once /health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(REPO / "mask_api.py"), "--port", str(port), "--torch-threads", str(threads), "--threads", "8"]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"mask_api.py exited with {process.returncode}: {process.stderr.read().strip().splitlines()[-1:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise UserError("mask_api.py did not answer /health within 180 s")


def post(url: str, data: bytes) -> tuple[float, float]:
    """(seconds for one POST /predict, answer read and parsed; seconds the server spent in the model)."""
    start = time.perf_counter()
    request = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - start, answer["timings_ms"]["inference"] / 1e3


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: the shipped balloon model)")
    parser.add_argument("--clients", type=number(int, 2), default=4, help="concurrent clients of the load phase")
    parser.add_argument("--rounds", type=number(int, 1), default=2, help="passes over the images in each phase")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads for inference, server and raw alike")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    uploads = [path.read_bytes() for path in sorted(IMAGES.glob("*.jpg"))]
    process, url = start_server(args.checkpoint, args.threads)
    try:
        post(url, uploads[0])  # warm-up
        single = [post(url, data) for _ in range(args.rounds) for data in uploads]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            loaded = list(pool.map(lambda data: post(url, data), uploads * args.rounds))
        load_s = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=30)

    inference, api = summarize([model for _, model in single]), summarize([latency for latency, _ in single])
    busy = summarize([latency for latency, _ in loaded])
    overheads = [latency / model - 1 for latency, model in single]
    overhead = float(np.median(overheads))
    print(f"{'':<32}{'p50 ms':>9}{'p95 ms':>9}", file=sys.stderr)
    for label, stats in (("model (timed in the server)", inference), ("API, 1 client", api), (f"API, {args.clients} clients", busy)):
        print(f"{label:<32}{stats['median_ms']:>9.1f}{stats['p95_ms']:>9.1f}", file=sys.stderr)
    print(
        f"API overhead at 1 client: {overhead * 100:+.1f}% of the model's time, median per request (target <= {TARGET * 100:.0f}%)",
        file=sys.stderr,
    )
    result = {
        "images": len(uploads),
        "rounds": args.rounds,
        "threads": args.threads,
        "inference_p50_ms": round(inference["median_ms"], 1),
        "api_p50_ms": round(api["median_ms"], 1),
        "api_p95_ms": round(api["p95_ms"], 1),
        "overhead": round(overhead, 3),
        "overhead_p95": round(float(np.percentile(overheads, 95)), 3),
        "target": TARGET,
        "met": overhead <= TARGET,
        "clients": args.clients,
        "loaded_p50_ms": round(busy["median_ms"], 1),
        "loaded_p95_ms": round(busy["p95_ms"], 1),
        "requests_per_s": round(len(loaded) / load_s, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
