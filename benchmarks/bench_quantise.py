"""quantise.py's targets, measured side by side in one run (interleaved rounds, medians, ratios):

- efficientnet_lite0 static INT8 vs FP32 (both with batch norms folded) at batch 1: speed-up (target >= 1.5x) and
  top-1 on the bundled ImageNet images and Tiny-ImageNet val (target: drop <= 1.0 point);
- fasterrcnn_resnet50_fpn at 240x427, static INT8 (backbone + FPN + RPN head, dynamic INT8 box head) vs the
  optimised FP32 detector of video_main_person.py, per frame at batch 1 (target >= 1.5x);
- ssdlite_person ONNX Runtime static QDQ INT8 vs FP32: person AP@0.5 on TUD-Campus gt (target: drop <= 2 points)
  and its speed-up.
Offline the Faster R-CNN has random weights: its speed-up is real, its accuracy is not measured.

Run:
    python benchmarks/bench_quantise.py
    python benchmarks/bench_quantise.py --rounds 3 --calls 10      # quicker
Last line: {"efficientnet_speedup": ..., "efficientnet_top1_drop": ..., "detector_speedup": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import quantise
from utils.assets import TINY_IMAGENET
from utils.cli import ArgumentParser, number, run_cli, set_threads
from utils.detectors import OnnxSSDLitePersonDetector, TorchvisionDetector
from utils.efficientnet_lite import load_efficientnet_lite0, preprocess
from utils.imagenet import read_imagenet_samples, read_tiny_imagenet
from utils.quantization import quantize_classifier, quantize_detector, set_engine
from utils.video import read_spread_frames


def interleaved_ms(runs: dict[str, callable], inputs: list, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each runner, alternating runners round by round so machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run(inputs[0])
    for _ in range(rounds):
        for name, run in runs.items():
            for index in range(calls):
                start = time.perf_counter()
                run(inputs[index % len(inputs)])
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def top1(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in inputs.split(50)])
    return float((predictions == labels).float().mean())


def bench_efficientnet(args: argparse.Namespace) -> dict:
    from torch.fx.experimental.optimization import fuse

    fp32 = fuse(load_efficientnet_lite0())  # the fair baseline: BN folded, as FX quantisation does for INT8
    calibration = preprocess(read_tiny_imagenet(split="train", limit=args.calib_images)[0])
    int8 = quantize_classifier(load_efficientnet_lite0(), "static", args.backend, lambda prepared: prepared(calibration))
    imagenet, imagenet_labels = read_imagenet_samples()
    imagenet = preprocess(imagenet)
    tiny, tiny_labels = read_tiny_imagenet(args.tiny_imagenet)
    tiny = preprocess(tiny)
    with torch.inference_mode():
        latency = interleaved_ms({"fp32": fp32, "int8": int8}, list(imagenet[:8].split(1)), args.rounds, args.calls)
    figures = {
        "efficientnet_fp32_ms": latency["fp32"],
        "efficientnet_int8_ms": latency["int8"],
        "efficientnet_speedup": latency["fp32"] / latency["int8"],
        "efficientnet_top1_fp32": top1(fp32, imagenet, imagenet_labels),
        "efficientnet_top1_int8": top1(int8, imagenet, imagenet_labels),
        "efficientnet_tiny_top1_fp32": top1(fp32, tiny, tiny_labels),
        "efficientnet_tiny_top1_int8": top1(int8, tiny, tiny_labels),
    }
    figures["efficientnet_top1_drop"] = figures["efficientnet_top1_fp32"] - figures["efficientnet_top1_int8"]
    figures["efficientnet_tiny_top1_drop"] = figures["efficientnet_tiny_top1_fp32"] - figures["efficientnet_tiny_top1_int8"]
    return figures


def bench_detector(args: argparse.Namespace) -> dict:
    settings = {"min_size": 240, "max_size": 427, "proposals": 100}
    fp32 = TorchvisionDetector("fasterrcnn_resnet50_fpn", args.weights, **settings)
    int8 = TorchvisionDetector("fasterrcnn_resnet50_fpn", "none", **settings)
    int8.model.load_state_dict(fp32.model.state_dict())
    calibration = read_spread_frames(str(quantise.CALIB_VIDEO), args.calib_frames or quantise.CALIB_FRAMES["detector"])
    quantize_detector(
        int8.model, "static", args.backend, lambda: [int8.detect(calibration[i : i + 4]) for i in range(0, len(calibration), 4)]
    )
    frames, _ = quantise.read_eval_frames(8)
    frames = [cv2.resize(frame, quantise.LATENCY_SIZE, interpolation=cv2.INTER_AREA) for frame in frames]
    calls = max(args.calls // 4, 2)  # ~0.3 s a call
    latency = interleaved_ms({"fp32": lambda f: fp32.detect([f]), "int8": lambda f: int8.detect([f])}, frames, args.rounds, calls)
    return {
        "detector_fp32_ms": latency["fp32"],
        "detector_int8_ms": latency["int8"],
        "detector_speedup": latency["fp32"] / latency["int8"],
        "detector_pretrained": args.weights.lower() != "none",
    }


def bench_ssdlite(args: argparse.Namespace) -> dict:
    frames, gt = quantise.read_eval_frames(None)
    with tempfile.TemporaryDirectory() as folder:
        options = argparse.Namespace(
            calib=str(quantise.CALIB_VIDEO), calib_frames=args.calib_frames or quantise.CALIB_FRAMES["onnx"], observer=args.observer
        )
        path = quantise.make_onnx_artefact("ssdlite_person", "static", options, Path(folder))
        fp32 = OnnxSSDLitePersonDetector(threads=args.threads, score_thresh=quantise.AP_SCORE_FLOOR)
        int8 = OnnxSSDLitePersonDetector(path, threads=args.threads, score_thresh=quantise.AP_SCORE_FLOOR)
        aps = {}
        for name, detector in (("fp32", fp32), ("int8", int8)):
            predictions = [(found.boxes, found.scores) for found in (detector.detect([frame])[0].persons() for frame in frames)]
            aps[name] = quantise.detection_ap(predictions, gt)["ap50"]
        latency = interleaved_ms(
            {"fp32": lambda f: fp32.detect([f]), "int8": lambda f: int8.detect([f])}, frames[:8], args.rounds, args.calls
        )
    return {
        "ssdlite_ap50_fp32": aps["fp32"],
        "ssdlite_ap50_int8": aps["int8"],
        "ssdlite_ap50_drop": aps["fp32"] - aps["int8"],
        "ssdlite_fp32_ms": latency["fp32"],
        "ssdlite_int8_ms": latency["int8"],
        "ssdlite_speedup": latency["fp32"] / latency["int8"],
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="fbgemm", help="quantised engine for the torch models")
    parser.add_argument("--weights", default="none", help="fasterrcnn_resnet50_fpn weights: none (offline), DEFAULT, or a path")
    parser.add_argument("--tiny-imagenet", default=str(TINY_IMAGENET), help="Tiny-ImageNet folder")
    parser.add_argument(
        "--calib-images",
        type=number(int, 1),
        default=quantise.CALIB_FRAMES["classifier"],
        help="Tiny-ImageNet train images to calibrate efficientnet_lite0 on",
    )
    parser.add_argument(
        "--calib-frames",
        type=number(int, 1),
        default=None,
        help="office-video frames to calibrate the detectors on (default: quantise.py's, 32 / 96)",
    )
    parser.add_argument(
        "--observer", default="minmax", choices=("histogram", "minmax"), help="ssdlite_person's calibration (as quantise.py)"
    )
    parser.add_argument("--rounds", type=number(int, 1), default=5, help="interleaved timing rounds")
    parser.add_argument("--calls", type=number(int, 1), default=20, help="timed calls per model per round (a quarter for Faster R-CNN)")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="intra-op threads")
    parser.add_argument("--only", choices=("efficientnet", "detector", "ssdlite"), default=None, help="run one part (default: all)")
    return parser


def main(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    set_engine(args.backend)
    result = {"backend": args.backend, "threads": args.threads, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    parts = {"efficientnet": bench_efficientnet, "detector": bench_detector, "ssdlite": bench_ssdlite}
    for name, bench in parts.items():
        if args.only in (None, name):
            figures = bench(args)
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()), file=sys.stderr)
            result.update(figures)
    print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
