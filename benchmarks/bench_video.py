"""The seed's reference pipeline against video_main_person.py, side by side on the same clip and the same weights.

Reference (the SAIC brief's code): one frame at a time, PIL -> ToTensor -> fasterrcnn_resnet50_fpn with its default
transform (every frame upsized to 800 px), under torch.no_grad(), timed on frames decoded beforehand (in its
favour). Pipeline: video_main_person.main() end to end.
Both pick the main person with the same selector, so agreement (share of frames whose main-person boxes overlap with
IoU >= 0.5, over the frames where either found one) compares the detectors' outputs only.
With random weights (offline: no torchvision weights) the speed-up is real but agreement is meaningless: a random
model finds nobody, so it is reported as null.

The INT8 pipeline (video_main_person.py --quantized, quantise.py's static recipe, built on the spot from the same
weights unless --quantized names an artefact) is timed in the same run, so its speed-up is a same-run ratio too.
So are the bundled pretrained ONNX detectors in the same pipeline (video_main_person.py --detector ssdlite_person,
--detector yolox_nano); yolox_nano's agreement with the reference is null unless the reference is pretrained too.

Run:
    python benchmarks/bench_video.py --max-frames 20
    python benchmarks/bench_video.py --ablation      # per-frame time of each latency lever, one at a time
Last line: {"reference_fps": ..., "pipeline_fps": ..., "speedup": ..., "speedup_int8": ..., "agreement": ...,
            "yolox_nano_fps": ..., "speedup_yolox_nano": ..., ...}
Measured (defaults: 20 frames of tud-campus.mp4, 640x480; offline, so random Faster R-CNN weights; 2 threads, batch 4;
2-core AMD EPYC Zen 5, AVX-512, shared with other jobs; two runs), FPS end to end and x reference:
reference 0.15-0.19; fasterrcnn_resnet50_fpn 1.96-3.30 (12.8-17.5x); its --quantized INT8 8.0 (42.7-52.2x);
ssdlite_person 59.9-61.9 (328-391x); yolox_nano 96.0-102.0 (541-627x).
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
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import video_main_person
from utils.assets import TUD_CAMPUS_VIDEO, resolve_weights
from utils.cli import ArgumentParser, number, run_cli, set_threads
from utils.detectors import PERSON, TorchvisionDetector, build_torchvision_model
from utils.main_person import MainPersonSelector
from utils.metrics import box_iou
from utils.video import Letterbox, VideoSource

MODEL = "fasterrcnn_resnet50_fpn"  # the brief's model
AGREEMENT_IOU = 0.5
PROPOSALS = 100  # video_main_person.py's default, so the INT8 model is the one the pipeline would run


def bench_weights(choice: str, workdir: Path) -> tuple[str, bool]:
    """('DEFAULT' or a state_dict path, pretrained?). 'auto' takes torchvision's weights when they can be had,
    else a random model saved to a file, so that every pipeline runs the very same weights."""
    choice = resolve_weights(MODEL, choice)
    if choice.lower() == "none":
        print("note: benchmarking RANDOM weights: speed is real, agreement is not measured", file=sys.stderr)
        path = workdir / "random_weights.pth"
        torch.manual_seed(0)
        torch.save(build_torchvision_model(MODEL, "none").state_dict(), path)
        return str(path), False
    return choice, True


def build_int8_artefact(weights: str, proposals: int, calib_frames: int, backend: str, workdir: Path) -> Path:
    """quantise.py's static INT8 recipe for MODEL (the artefact `video_main_person.py --quantized` runs), made now."""
    import quantise

    argv = ["--model", MODEL, "--scheme", "static", "--weights", weights, "--proposals", str(proposals)]
    args = quantise.get_args_parser().parse_args(
        [*argv, "--calib-frames", str(calib_frames), "--backend", backend, "--observer", "histogram"]
    )
    print(f"building the static INT8 model ({calib_frames} calibration frames) ...", file=sys.stderr)
    path, _ = quantise.make_artefact(MODEL, "static", args, workdir, None)
    return path


def read_frames(source: str, max_frames: int) -> tuple[list[np.ndarray], float]:
    video = VideoSource(source)
    frames = [frame for _, (_, frame) in zip(range(max_frames), video, strict=False)]
    video.close()
    return frames, video.fps


def run_reference(frames: list[np.ndarray], weights: str, min_score: float) -> tuple[float, list[np.ndarray | None]]:
    """The seed's per-frame loop; returns its end-to-end FPS and the main-person box of each frame (427x240 canvas)."""
    model = build_torchvision_model(MODEL, weights).eval()
    height, width = frames[0].shape[:2]
    letterbox = Letterbox.fit(width, height, video_main_person.OUTPUT_WIDTH, video_main_person.OUTPUT_HEIGHT)
    selector = MainPersonSelector(video_main_person.OUTPUT_WIDTH, video_main_person.OUTPUT_HEIGHT)
    with torch.no_grad():
        model([F.to_tensor(Image.fromarray(cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB)))])  # warm-up, as the pipeline
        main_boxes = []
        start = time.perf_counter()
        for frame in frames:
            image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            output = model([F.to_tensor(image)])[0]
            keep = (output["labels"] == PERSON) & (output["scores"] >= min_score)
            boxes = letterbox.source_to_canvas(output["boxes"][keep].numpy())
            main_person = selector.update(boxes, output["scores"][keep].numpy())
            main_boxes.append(None if main_person is None else main_person.box)
        elapsed = time.perf_counter() - start
    return len(frames) / elapsed, main_boxes


def run_pipeline(
    source: str, detector: str, weights: str, max_frames: int, batch_size: int, threads: int, out: Path, quantized: Path | None = None
) -> tuple[dict, list[np.ndarray | None]]:
    argv = [
        *([] if quantized is None else ["--quantized", str(quantized)]),
        "--source",
        source,
        "--detector",
        detector,
        "--weights",
        weights,
        "--max-frames",
        str(max_frames),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
        "--no-video",
        "--out",
        str(out),
    ]
    results = video_main_person.main(video_main_person.get_args_parser().parse_args(argv))
    records = [json.loads(line) for line in Path(results["jsonl"]).read_text().splitlines()]
    return results, [None if r["main_person"] is None else np.asarray(r["main_person"]) for r in records]


def agreement(boxes_a: list[np.ndarray | None], boxes_b: list[np.ndarray | None]) -> float | None:
    """Share of frames where both found the same main person (IoU >= 0.5), over frames where either found one."""
    relevant = [(a, b) for a, b in zip(boxes_a, boxes_b, strict=True) if a is not None or b is not None]
    if not relevant:
        return None
    same = sum(a is not None and b is not None and box_iou(a, b)[0, 0] >= AGREEMENT_IOU for a, b in relevant)
    return same / len(relevant)


def ablation(frames: list[np.ndarray], weights: str, repeats: int) -> list[tuple[str, float]]:
    """Median seconds per frame of the model alone as each lever is switched on, cumulatively.

    The steps are timed round-robin, `repeats` rounds, so that drift in the machine's speed hits them all alike.
    """
    height, width = frames[0].shape[:2]
    letterbox = Letterbox.fit(width, height, video_main_person.OUTPUT_WIDTH, video_main_person.OUTPUT_HEIGHT)
    small = [cv2.cvtColor(letterbox.resize(frame), cv2.COLOR_BGR2RGB) for frame in frames]
    full = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in frames]
    off = {"proposals": 1000, "classes": None, "channels_last": False, "fold_bn": False}
    steps = [
        ("reference transform (800 px), full frames", dict(off, min_size=800, max_size=1333), full, 1),
        ("frames resized to 427x240 first, model at 240 px", off, small, 1),
        ("+ 100 RPN proposals (from 1000)", dict(off, proposals=100), small, 1),
        ("+ person class only", dict(off, proposals=100, classes=(PERSON,)), small, 1),
        ("+ channels_last", dict(off, proposals=100, classes=(PERSON,), channels_last=True), small, 1),
        ("+ batch norms folded into convs", dict(proposals=100), small, 1),
        ("+ batch of 4 frames", dict(proposals=100), small, 4),
    ]
    detectors = [TorchvisionDetector(MODEL, weights, score_thresh=0.05, **options) for _, options, _, _ in steps]
    per_frame: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats + 1):  # the first round is a warm-up and is dropped
        for times, detector, (_, _, images, batch_size) in zip(per_frame, detectors, steps, strict=True):
            for first in range(0, len(images) - batch_size + 1, batch_size):
                start = time.perf_counter()
                detector.detect(images[first : first + batch_size])
                times.append((time.perf_counter() - start) / batch_size)
    rows = []
    for times, (label, _, images, batch_size) in zip(per_frame, steps, strict=True):
        measured = times[len(images) // batch_size :]
        rows.append((label, statistics.median(measured)))
        print(f"  {label:<52} {rows[-1][1] * 1e3:8.0f} ms/frame", file=sys.stderr)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", default=str(TUD_CAMPUS_VIDEO), help="clip to run the pipelines on (default: the bundled tud-campus.mp4; one frame size)"
    )
    parser.add_argument("--max-frames", type=number(int, 1), default=20, help="frames to time (the reference takes seconds each)")
    parser.add_argument(
        "--weights", default="auto", help="auto (torchvision's when available, else random), DEFAULT, none or a state_dict path"
    )
    parser.add_argument(
        "--quantized",
        default=None,
        help="static INT8 artefact from quantise.py for the INT8 pipeline (default: built now from the same weights)",
    )
    parser.add_argument("--calib-frames", type=number(int, 1), default=32, help="calibration frames when the INT8 model is built here")
    parser.add_argument("--backend", default="fbgemm", help="quantised engine of the INT8 model built here")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 pipeline (default: time it)")
    parser.add_argument("--batch-size", type=number(int, 1), default=4, help="pipeline batch size (video_main_person.py's CPU default)")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads for all (default: all cores)")
    parser.add_argument("--ablation", action="store_true", help="also time each latency lever on its own")
    parser.add_argument("--ablation-frames", type=number(int, 1), default=8, help="frames per ablation step")
    parser.add_argument("--ablation-repeats", type=number(int, 1), default=3, help="timed rounds over those frames")
    return parser


def main(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    frames, _ = read_frames(args.source, args.max_frames)
    with tempfile.TemporaryDirectory() as workdir:
        weights, pretrained = bench_weights(args.weights, Path(workdir))
        quantized = None
        if not args.no_int8:
            quantized = args.quantized or build_int8_artefact(weights, PROPOSALS, args.calib_frames, args.backend, Path(workdir))
        min_score = TorchvisionDetector.default_score_thresh
        print(f"reference: {len(frames)} frames, one at a time at 800 px ...", file=sys.stderr)
        reference_fps, reference_boxes = run_reference(frames, weights, min_score)
        common = (len(frames), args.batch_size, threads)
        pipeline, pipeline_boxes = run_pipeline(args.source, MODEL, weights, *common, Path(workdir) / "pipeline")
        if quantized is not None:
            int8, int8_boxes = run_pipeline(args.source, MODEL, weights, *common, Path(workdir) / "int8", quantized=Path(quantized))
        ssdlite, _ = run_pipeline(args.source, "ssdlite_person", "DEFAULT", *common, Path(workdir) / "ssdlite")
        yolox, yolox_boxes = run_pipeline(args.source, "yolox_nano", "DEFAULT", *common, Path(workdir) / "yolox_nano")
        levers = ablation(frames[: args.ablation_frames], weights, args.ablation_repeats) if args.ablation else []
    agree = agreement(reference_boxes, pipeline_boxes) if pretrained else None
    yolox_agree = agreement(reference_boxes, yolox_boxes) if pretrained else None
    result = {
        "reference_fps": round(reference_fps, 3),
        "pipeline_fps": round(pipeline["fps_end_to_end"], 3),
        "speedup": round(pipeline["fps_end_to_end"] / reference_fps, 2),
        "agreement": None if agree is None else round(agree, 3),
        "ssdlite_person_fps": round(ssdlite["fps_end_to_end"], 2),
        "yolox_nano_fps": round(yolox["fps_end_to_end"], 3),
        "speedup_yolox_nano": round(yolox["fps_end_to_end"] / reference_fps, 2),
        # its own pretrained COCO weights: agreement with the reference means something only when the reference has them too
        "agreement_yolox_nano": None if yolox_agree is None else round(yolox_agree, 3),
        "pretrained_weights": pretrained,
        "frames": len(frames),
        "threads": threads,
        "batch_size": args.batch_size,
        "source": args.source,
        "device": "cpu",
    }
    rows = [("reference (PIL, 800 px, per frame)", reference_fps), (f"video_main_person.py {MODEL}", pipeline["fps_end_to_end"])]
    if quantized is not None:
        int8_agree = agreement(reference_boxes, int8_boxes) if pretrained else None
        result.update(
            int8_fps=round(int8["fps_end_to_end"], 3),
            speedup_int8=round(int8["fps_end_to_end"] / reference_fps, 2),
            agreement_int8=None if int8_agree is None else round(int8_agree, 3),
        )
        rows.append((f"video_main_person.py {MODEL} --quantized", int8["fps_end_to_end"]))
    rows.append(("video_main_person.py ssdlite_person", ssdlite["fps_end_to_end"]))
    rows.append(("video_main_person.py yolox_nano", yolox["fps_end_to_end"]))
    print(f"\n{'pipeline':<52}{'FPS':>8}{'x reference':>13}", file=sys.stderr)
    for label, fps in rows:
        print(f"{label:<52}{fps:>8.2f}{fps / reference_fps:>13.1f}", file=sys.stderr)
    print(
        f"agreement (main person IoU >= 0.5): {'not measured: random weights find no one' if agree is None else f'{agree:.3f}'}",
        file=sys.stderr,
    )
    if levers:
        result["ablation_ms_per_frame"] = {label: round(seconds * 1e3, 1) for label, seconds in levers}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
