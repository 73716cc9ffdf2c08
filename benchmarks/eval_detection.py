"""Person detection quality of the project's detectors against MOT ground truth, per sequence and detector.

For every sequence given (a MOTChallenge folder with img1/ and gt/gt.txt) and every detector spec, the detector runs
on every frame (every --stride-th; at most --max-frames) with a low score floor, so that the precision/recall curve
is complete, and its person boxes are scored with pycocotools' COCOeval (built in memory, no files):

- ap50: person AP at IoU 0.5 (COCO's 101-point interpolated AP, one area range "all", up to MAX_DETECTIONS a frame);
- recall, precision: at the detector's own default score threshold (its default_score_thresh), from the same
  COCOeval matching (greedy in score order at IoU 0.5: the detections above a threshold match exactly as they
  would alone), read from evalImgs' dtMatches/dtIgnore/gtIgnore;
- ms_per_frame: median (and p95) of the detector's own detect() on one frame after warm-up, frame reading excluded.

Ground truth (utils.mot.read_mot_gt with person_classes=(1,), as TrackEval reads it): people are the rows not marked
conf 0 and, in MOT16/17 9-column gt, of class 1 (pedestrian). Ignore regions, given to COCOeval as iscrowd=1 so that
a detection matched to one is neither a true nor a false positive: conf-0 rows, and the MOT16+ person-like classes
that are not pedestrians (person on vehicle, static person, distractor, reflection; TrackEval's distractors).
Vehicles and occluders are in neither: a person detection on a car is a false positive, as in TrackEval.

Detector specs: a name from utils.detectors.DETECTORS, or name@size for a detector whose constructor takes a `size`
option (yolox_nano@416: long side 416). Detectors run with their other defaults (yolox_nano: all 80 classes, of which
the person boxes are kept).

Run:
    python benchmarks/eval_detection.py                     # ssdlite_person, yolox_nano@320 and @416 on TUD-Campus + mot-extra
    python benchmarks/eval_detection.py --detectors ssdlite_person yolox_nano@320 yolox_nano@416 yolox_nano@512 \\
        yolox_nano@640 --threads 2 --out runs/eval_detection
    python benchmarks/eval_detection.py --sequences assets/data/TUD-Campus --max-frames 10   # quick mode
Measured (2026-12-06, AMD EPYC 2-core x86 CPU, the second command: all 547 frames of TUD-Campus + mot-extra; the
full table is in reports/eval_detection/report.md). The two cores were shared with other jobs (1-minute load 2.8 to
6.3), so ms/frame is inflated: read it as ratios (yolox_nano@320 at 0.43-0.46x ssdlite over three runs). Scores are deterministic.
    mean of 6 sequences     AP50  recall  precision  ms/frame   (recall, precision at the default threshold:
    ssdlite_person         0.558   0.458      0.851      44.1    ssdlite_person 0.4, yolox_nano 0.3, chosen on the
    yolox_nano@320         0.660   0.615      0.843      20.4    tuning sequences by tune_main_person.py)
    yolox_nano@416         0.673   0.654      0.780      30.5
    yolox_nano@512         0.690   0.677      0.769      48.5
    yolox_nano@640         0.712   0.697      0.750      73.7
    AP50                 TUD-Campus ADL-Rundle-6     MOT16-05     MOT17-09  PETS09-S2L1     Venice-2
    ssdlite_person            0.838        0.552        0.349        0.574        0.651        0.386
    yolox_nano@320            0.780        0.593        0.477        0.682        0.904        0.522
    yolox_nano@416            0.742        0.655        0.481        0.688        0.909        0.566
    yolox_nano@512            0.767        0.674        0.486        0.702        0.889        0.625
    yolox_nano@640            0.790        0.714        0.535        0.701        0.894        0.635
Last line: {"sequences": {SEQ: {DETECTOR: {"ap50": ..., "recall": ..., ...}}}, "means": {DETECTOR: {...}}, ...}
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_main_person import add_sequences_argument, sequence_roots  # one --sequences for the MOT benchmarks

from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, set_threads
from utils.detectors import DETECTORS, PERSON, Detections, Detector, build_detector
from utils.mot import MotSequence, find_mot_sequences, read_mot_sequence
from utils.outputs import write_run
from utils.timing import device_name, summarize
from utils.video import read_rgb_image

MATCH_IOU = 0.5  # the usual person-detection criterion (PASCAL, MOT Det, CrowdHuman's AP50)
MAX_DETECTIONS = 300  # COCO's 100 a frame would cut the curve short in crowded street scenes
DEFAULT_SCORE_FLOOR = 0.01  # low enough that the AP curve reaches the detector's full recall
PEDESTRIANS = (1,)  # MOT16+ classes that count as people here: pedestrians only, as TrackEval evaluates
WARMUP_RUNS = 3  # untimed calls per sequence and detector: session start-up and a new input shape cost extra once
ALL_AREAS = [0.0, 1e10]  # one COCO area range: every person counts whatever their size


######################################################################################################################
# Detector specs


@dataclass
class DetectorSpec:
    """One --detectors entry: a detector name and, for a backend that takes one, an input size."""

    label: str
    name: str
    size: int | None = None


def detector_class(name: str) -> type[Detector] | None:
    """The Detector subclass whose class-level `name` is `name` (backends with one fixed name, e.g. ssdlite_person)."""
    pending, found = list(Detector.__subclasses__()), None
    while pending and found is None:
        cls = pending.pop()
        pending += cls.__subclasses__()
        found = cls if getattr(cls, "name", None) == name else None
    return found


def parse_detector_spec(text: str) -> DetectorSpec:
    """'ssdlite_person' or 'yolox_nano@416'; an unknown name, a size that is no whole number > 0, or a size for a
    detector whose constructor takes none, is a UserError (a size silently dropped would mislabel every figure)."""
    name, _, size_text = text.partition("@")
    if name not in DETECTORS:
        raise UserError(f"--detectors {text}: unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    if not size_text:
        return DetectorSpec(text, name)
    if not size_text.isdigit() or int(size_text) == 0:
        raise UserError(f"--detectors {text}: the size after @ must be a whole number of pixels > 0, got {size_text!r}")
    cls = detector_class(name)
    if cls is None or "size" not in inspect.signature(cls.__init__).parameters:
        raise UserError(f"--detectors {text}: {name} takes no size option; give it as {name}")
    return DetectorSpec(text, name, int(size_text))


def build_detectors(specs: list[DetectorSpec], score_floor: float, threads: int, device: torch.device) -> dict[str, Detector]:
    """Every detector, built before any frame is read, so that a bad size or missing model fails at once."""
    detectors = {}
    for spec in specs:
        options = {} if spec.size is None else {"size": spec.size}
        detectors[spec.label] = build_detector(spec.name, device=device, score_thresh=score_floor, threads=threads, **options)
    return detectors


######################################################################################################################
# Running the detectors


def frame_numbers(sequence: MotSequence, stride: int, max_frames: int | None) -> list[int]:
    """The 1-based frames evaluated: every stride-th from the first, at most max_frames of them."""
    return list(range(1, len(sequence) + 1, stride))[:max_frames]


def run_detectors(
    sequence: MotSequence, frames: list[int], detectors: dict[str, Detector], progress: tqdm
) -> tuple[dict[str, dict[int, Detections]], dict[str, list[float]]]:
    """Each detector's person detections per frame and its detect() seconds per frame (after WARMUP_RUNS untimed calls
    on the first frame). Every frame is read once and handed to each detector in turn."""
    first = read_rgb_image(sequence.image_paths[frames[0] - 1])  # RGB, what every detector takes
    for detector in detectors.values():
        for _ in range(WARMUP_RUNS):
            detector.detect([first])
    detections: dict[str, dict[int, Detections]] = {label: {} for label in detectors}
    seconds: dict[str, list[float]] = {label: [] for label in detectors}
    for frame in frames:
        image = read_rgb_image(sequence.image_paths[frame - 1])
        for label, detector in detectors.items():
            start = time.perf_counter()
            (found,) = detector.detect([image])
            seconds[label].append(time.perf_counter() - start)
            detections[label][frame] = found.persons()
        progress.update()
    return detections, seconds


######################################################################################################################
# Scoring with pycocotools


def _coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> COCO:
    """A COCO object built in memory (COCO() reads files only); createIndex's prints kept off stdout."""
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": PERSON, "name": "person"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotation(index: int, frame: int, box: np.ndarray, **fields: Any) -> dict[str, Any]:
    """One COCO annotation of an xyxy box; ids start at 1 (COCOeval takes a match id of 0 for 'unmatched')."""
    x1, y1, x2, y2 = (float(value) for value in box[:4])
    return {
        "id": index + 1,
        "image_id": frame,
        "category_id": PERSON,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        **fields,
    }


def coco_ground_truth_and_detections(
    people: dict[int, np.ndarray], ignore: dict[int, np.ndarray], detections: dict[int, Detections], frames: list[int]
) -> tuple[COCO, COCO]:
    """COCO gt (people iscrowd=0, ignore regions iscrowd=1) and detections of the given frames (image id = frame)."""
    images = [{"id": frame} for frame in frames]
    gt_annotations: list[dict[str, Any]] = []
    dt_annotations: list[dict[str, Any]] = []
    for frame in frames:
        # COCOeval overwrites 'ignore' with 'iscrowd': iscrowd=1 is what makes a box an ignore region
        for boxes, crowd in ((people.get(frame, np.zeros((0, 6))), 0), (ignore.get(frame, np.zeros((0, 6))), 1)):
            for box in boxes:  # ids must be unique: COCOeval records matches by id
                gt_annotations.append(_annotation(len(gt_annotations), frame, box, iscrowd=crowd, ignore=crowd))
        found = detections.get(frame, Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
        for box, score in zip(found.boxes, found.scores, strict=True):
            dt_annotations.append(_annotation(len(dt_annotations), frame, box, score=float(score)))
    return _coco(images, gt_annotations), _coco(images, dt_annotations)


def score_detections(
    people: dict[int, np.ndarray], ignore: dict[int, np.ndarray], detections: dict[int, Detections], frames: list[int], score_thresh: float
) -> dict[str, Any]:
    """AP50 over all scores, and recall/precision of the detections scoring >= score_thresh, on the given frames.

    people/ignore: per frame (N, >=4) xyxy boxes (utils.mot rows); detections: per frame person Detections.
    ap50 is None where the frames hold no person; precision is None where no detection passes score_thresh.
    """
    coco_gt, coco_dt = coco_ground_truth_and_detections(people, ignore, detections, frames)
    evaluation = COCOeval(coco_gt, coco_dt, "bbox")
    evaluation.params.imgIds = list(frames)  # frames without any annotation still hold false positives
    evaluation.params.catIds = [PERSON]
    evaluation.params.iouThrs = np.array([MATCH_IOU])
    evaluation.params.areaRng, evaluation.params.areaRngLbl = [ALL_AREAS], ["all"]
    evaluation.params.maxDets = [MAX_DETECTIONS]
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval reports its progress on stdout, which is for the JSON line
        evaluation.evaluate()
        evaluation.accumulate()
    precision_curve = evaluation.eval["precision"][0, :, 0, 0, 0]  # [iou, recall point, category, area, max dets]
    true_positives = false_positives = gt_people = 0
    for image in filter(None, evaluation.evalImgs):  # None: a frame with neither gt nor detections
        above = np.asarray(image["dtScores"]) >= score_thresh
        counted = ~image["dtIgnore"][0].astype(bool)  # matched to an ignore region: neither right nor wrong
        matched = image["dtMatches"][0] > 0
        true_positives += int((above & counted & matched).sum())
        false_positives += int((above & counted & ~matched).sum())
        gt_people += int((~image["gtIgnore"].astype(bool)).sum())
    passed = true_positives + false_positives
    return {
        "ap50": float(precision_curve.mean()) if (precision_curve > -1).all() else None,
        "recall": true_positives / gt_people if gt_people else None,
        "precision": true_positives / passed if passed else None,
        "score_thresh": score_thresh,
        "true_positives": true_positives,
        "false_positives": false_positives,
        "gt_people": gt_people,
        "ignore_regions": sum(len(ignore.get(frame, ())) for frame in frames),
        "capped_frames": sum(len(detections.get(frame, ())) > MAX_DETECTIONS for frame in frames),  # curve cut short there
    }


######################################################################################################################
# Report


def mean_figures(scores: dict[str, dict[str, dict[str, Any]]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per detector: the mean over sequences of each figure (sequences where it is None left out) and total frames."""
    means = {}
    for label in labels:
        rows = [per_detector[label] for per_detector in scores.values()]
        means[label] = {
            key: float(np.mean(values)) if (values := [row[key] for row in rows if row[key] is not None]) else None
            for key in ("ap50", "recall", "precision", "ms_per_frame")
        }
        means[label]["frames"] = sum(row["frames"] for row in rows)
        means[label]["sequences"] = len(rows)
    return means


def format_table(scores: dict[str, dict[str, dict[str, Any]]], means: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """One row per sequence x detector, then the means per detector; fixed width, or a markdown table."""
    header = ["sequence", "detector", "frames", "AP50", "recall", "precision", "thresh", "ms/frame"]
    rows = [
        [sequence, label, row["frames"], row["ap50"], row["recall"], row["precision"], row["score_thresh"], row["ms_per_frame"]]
        for sequence, per_detector in scores.items()
        for label, row in per_detector.items()
    ]
    rows += [
        ["mean", label, row["frames"], row["ap50"], row["recall"], row["precision"], "", row["ms_per_frame"]]
        for label, row in means.items()
    ]

    def cell(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    digits = [0, 0, 0, 3, 3, 3, 2, 1]
    text_rows = [header, *[[cell(value, digit) for value, digit in zip(row, digits, strict=True)] for row in rows]]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in text_rows]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    widths = [max(len(row[column]) for row in text_rows) + 2 for column in range(len(header))]
    return "\n".join(
        "".join(
            value.ljust(width) if column < 2 else value.rjust(width) for column, (value, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in text_rows
    )


def write_outputs(out: Path, results: dict[str, Any], table: str) -> None:
    """results.json and report.md in `out`."""
    settings = results["settings"]
    load = results["load_average"]
    report = (
        f"# Person detection against MOT ground truth\n\nMeasured on {results['machine']}, {settings['threads']} threads "
        f"(1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end: other work inflates ms/frame). "
        f"Frame stride {settings['stride']}, at most {settings['max_frames'] or 'all'} frames a sequence, score floor "
        f"{settings['score_floor']}. AP50: pycocotools at IoU {MATCH_IOU}, up to {MAX_DETECTIONS} detections a frame; recall "
        "and precision at each detector's default score threshold (thresh); ms/frame: median of the detector alone.\n\n"
        f"{table}\n"
    )
    write_run(out, results, report)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}", file=sys.stderr)


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sequences_argument(parser)
    parser.add_argument(
        "--detectors",
        nargs="+",
        default=["ssdlite_person", "yolox_nano@320", "yolox_nano@416"],
        help="detector names, or name@size for one with a size option (yolox_nano@416)",
    )
    parser.add_argument(
        "--score-floor", type=number(float, 0.0, 1.0), default=DEFAULT_SCORE_FLOOR, help="lowest score kept: the AP curve ends there"
    )
    parser.add_argument("--stride", type=number(int, 1), default=1, help="evaluate every stride-th frame")
    parser.add_argument(
        "--max-frames", type=number(int, 1), default=None, help="at most this many frames per sequence (quick mode; default: all)"
    )
    parser.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads of the detectors (timings hold at a fixed count)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (ONNX backends use CUDA only where onnxruntime has it)")
    parser.add_argument("--out", default=None, help="folder for results.json and report.md (default: none written)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    specs = [parse_detector_spec(text) for text in args.detectors]
    if len({spec.label for spec in specs}) < len(specs):  # one column per label: a repeated one would overwrite the other
        raise UserError(f"--detectors {' '.join(args.detectors)}: a detector is named twice")
    roots = sequence_roots(args.sequences)
    folders = [folder for root in roots for folder in find_mot_sequences(root)]
    if not folders:
        raise UserError("no MOT sequence to evaluate: give --sequences")
    load_at_start = os.getloadavg()[0]  # the cores are shared: a busy machine shows in ms/frame, not in the scores
    threads = set_threads(args.threads)  # torch ops in post-processing (NMS) too, not only the ONNX sessions
    device = resolve_device(args.device)
    detectors = build_detectors(specs, args.score_floor, threads, device)
    sequences = [read_mot_sequence(folder, person_classes=PEDESTRIANS) for folder in folders]
    frames_of = {sequence.name: frame_numbers(sequence, args.stride, args.max_frames) for sequence in sequences}
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    with tqdm(total=sum(map(len, frames_of.values())), unit="frame", file=sys.stderr) as progress:
        for sequence in sequences:
            progress.set_description(sequence.name)
            frames = frames_of[sequence.name]
            detections, seconds = run_detectors(sequence, frames, detectors, progress)
            scores[sequence.name] = {}
            for label, detector in detectors.items():
                timing = summarize(seconds[label])
                score = score_detections(sequence.gt, sequence.ignore, detections[label], frames, detector.default_score_thresh)
                scores[sequence.name][label] = {
                    "frames": len(frames),
                    **score,
                    "ms_per_frame": timing["median_ms"],
                    "p95_ms": timing["p95_ms"],
                }
    means = mean_figures(scores, list(detectors))
    results = {
        "sequences": scores,
        "means": means,
        "detectors": {label: detector.describe() for label, detector in detectors.items()},
        "settings": {"score_floor": args.score_floor, "stride": args.stride, "max_frames": args.max_frames, "threads": threads},
        "machine": device_name(device),
        "load_average": {"start": load_at_start, "end": os.getloadavg()[0]},
    }
    print("\n" + format_table(scores, means), file=sys.stderr)
    if args.out:
        write_outputs(Path(args.out), results, format_table(scores, means, markdown=True))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
