"""Find the main person in every frame of a video, fast: a 427x240 annotated video, one JSON line per frame, a
latency report.

Run:
    python video_main_person.py --source assets/videos/one-by-one-person-detection.mp4   # bundled YOLOX-nano, offline
    python video_main_person.py --source clip.mp4 --no-video --jsonl - | jq -c .main_person
    python video_main_person.py --source 0 --batch-size 1                   # a webcam; also URLs, image folders
    python video_main_person.py --source clip.mp4 --detector fasterrcnn_resnet50_fpn   # the brief's model (online once)
Measured (2 shared x86 cores, benchmarks/bench_video.py): 96-102 FPS end to end with the default yolox_nano, 60-62
with ssdlite_person; docs/measured.md.

The main person
---------------
The person a viewer would call the subject of the shot: large, near the centre, clearly visible, and the same
person from one frame to the next. Per frame, every person detection with score >= --min-score gets a salience

    salience = score * sqrt(box area / frame area) * (1 - 0.5 * distance of box centre from frame centre)

(distance normalised to 1 at a corner): size counts most, as linear size (sqrt) so that a person twice as tall
counts twice, not four times; confidence discounts doubtful boxes; the centre term halves the weight of a person at
the very edge but never vetoes a large one. Then, over time:
- association (--association): with iou (the default), the current main person is found again in the new frame as
  the detection with the highest IoU with their predicted box (IoU >= 0.3): a walking person moves little between
  frames; with bytetrack, every frame's person boxes go through supervision's ByteTrack (a Kalman filter per person,
  a second matching pass for weak detections) and the main person is the detection carrying their track id. iou
  stays the default: ByteTrack lost one frame on the tuning sequences and did no better held out (docs/video_main_person.md);
- hysteresis: another person takes over only when their salience beats the current one's by --switch-margin (1.3x)
  for --switch-frames (3) frames in a row, so the choice does not flicker between two people of similar size;
- motion: the main person's box moves at their recent velocity (an average of the last frame-to-frame shifts), so
  association looks where they will be, not where they were;
- hold: when the detector misses the current main person, their box walks on at that velocity for up to
  --hold-frames (5) frames (marked "held": true) before the choice is released; a miss of one frame is the
  detector's, not the scene's. A frame of another size (an image folder) starts afresh: nothing is carried onto it;
- ties (two equal people) go to the detection listed first, and then stay put by the hysteresis.

Every default (detector, --detector-size, the detector's score threshold, hold, association, switching) was chosen
on two tuning sequences (TUD-Campus, PETS09-S2L1) by benchmarks/tune_main_person.py and kept only where four held-out
MOT sequences did not get worse (reports/tune_main_person). Measured by benchmarks/eval_main_person.py with the
defaults: the main person is a real person (IoU >= 0.5) in 98.0% of the tuning frames (PETS09-S2L1: 96.0%) and
98.3% of the held-out frames (worst sequence 95.9%), with 1.25 identity switches per held-out sequence while the
previous person was still visible (ssdlite_person: 96.0%, 6.25).

Latency levers, each measured in benchmarks/bench_video.py: frames are resized to the --detector-size box (240: the
output's height) BEFORE the model and the model works at that size (yolox_nano: the frame unscaled on a canvas
rounded up to 32; the reference upsizes every frame to 800 px), frames are decoded and resized on a background
thread, inference is batched, and only the person class is decoded and NMS-ed; torchvision detectors also run under
torch.inference_mode() in channels_last with batch norms folded into the convolutions and --proposals RPN boxes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from tqdm import tqdm

from utils.assets import ONE_BY_ONE_VIDEO, TORCHVISION_DETECTORS
from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, seed_everything, set_threads
from utils.detectors import DETECTORS, PERSON, build_detector, yolox_size_for
from utils.draw import HELD_COLOR, MAIN_COLOR, OTHER_COLOR, draw_box, draw_caption
from utils.main_person import MainPerson, add_association_argument, make_selector
from utils.outputs import atomic_path, write_run
from utils.timing import StageTimer, format_summary, summarize
from utils.video import MAX_PIXELS, Letterbox, ThreadedReader, VideoSource, VideoWriter

BACKENDS = ("torch", "onnxruntime", "tensorrt")
OUTPUT_WIDTH, OUTPUT_HEIGHT = 427, 240  # the brief's output resolution (WxH)
DEFAULT_SOURCE = str(ONE_BY_ONE_VIDEO)  # absolute: the default works from any folder

######################################################################################################################
# Geometry: each frame's size decides where it lands in the output and what the detector sees


@dataclass(frozen=True)
class Geometry:
    """How frames of one source size map to the 427x240 output canvas and to the detector's input."""

    canvas: Letterbox  # source -> output canvas (aspect kept, centred, black bars)
    detector: Letterbox  # source -> detector input (aspect kept, no bars: only its content is used)

    @classmethod
    def for_size(cls, width: int, height: int, detector_height: int) -> Geometry:
        """detector_height: the detector works in a 16:9 box of that height (0: the source's own size); never upsized."""
        canvas = Letterbox.fit(width, height, OUTPUT_WIDTH, OUTPUT_HEIGHT)
        if detector_height == 0 or detector_height >= height:
            detector = Letterbox.fit(width, height, width, height)
        else:
            detector = Letterbox.fit(width, height, round(detector_height * OUTPUT_WIDTH / OUTPUT_HEIGHT), detector_height)
        return cls(canvas, detector)

    def detector_to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in detector-input pixels -> output canvas pixels."""
        return self.canvas.source_to_canvas(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / self.detector.scale)

    def describe(self) -> dict[str, Any]:
        """What the JSONL and results.json record: the canvas letterbox (scale, offsets) of this frame size."""
        return {"scale": round(self.canvas.scale, 6), "left": self.canvas.left, "top": self.canvas.top}


@dataclass
class Prepared:
    """A frame as the reader thread leaves it: the detector's RGB input, and what the output video needs."""

    detector_rgb: np.ndarray
    canvas_bgr: np.ndarray | None  # the content part of the output frame (None with --no-video)
    geometry: Geometry
    source_size: tuple[int, int]  # (width, height)


######################################################################################################################
# Outputs


def prepare_out_dir(path: str) -> tuple[Path, Path | None]:
    """Create the output folder and prove it is writable before any work starts.

    Returns the folder and the topmost folder this call created (None if it existed), which remove_if_empty()
    takes away again when the run fails: a failed run leaves no empty --out behind.
    """
    out = Path(path)
    created = next((folder for folder in (*reversed(out.parents), out) if not folder.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to output folder {out}: {error.strerror or error}") from None
    return out, created


def remove_if_empty(out: Path, created: Path | None) -> None:
    """Remove the folders from `out` up to `created` that this run made, as long as they are empty."""
    if created is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()  # only ever succeeds on an empty folder
        except OSError:
            return
        if folder == created:
            return


class JsonLines:
    """One JSON object per line to stdout ('-') or to a file that appears under its name only when complete."""

    def __init__(self, target: str) -> None:
        self.to_stdout = target == "-"
        self.path = None if self.to_stdout else Path(target)
        if self.path is None:
            self._file: IO[str] = sys.stdout
            return
        self._target = atomic_path(self.path)  # renamed onto the path by close(), removed by abort()
        try:
            self._file = self._target.__enter__().open("w")
        except OSError as error:
            self._target.__exit__(OSError, error, None)
            raise UserError(f"cannot write {self.path}: {error.strerror or error}") from None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self.path is not None:
            self._file.close()
            self._target.__exit__(None, None, None)
        else:
            self._file.flush()

    def abort(self) -> None:
        if self.path is not None:
            self._file.close()
            aborted = UserError("aborted")
            self._target.__exit__(UserError, aborted, None)  # removes the partial file


def rounded(box: np.ndarray) -> list[float]:
    return [round(float(value), 1) for value in box]


def annotate(canvas: np.ndarray, person_boxes: np.ndarray, person_scores: np.ndarray, main: MainPerson | None, caption: str) -> None:
    """Other people thin, the main person thick (amber while held), a caption in the corner."""
    for box, score in zip(person_boxes, person_scores, strict=True):
        draw_box(canvas, box, OTHER_COLOR, f"{score:.2f}")
    if main is not None:
        draw_box(
            canvas, main.box, HELD_COLOR if main.held else MAIN_COLOR, "main (held)" if main.held else f"main {main.score:.2f}", thickness=2
        )
    draw_caption(canvas, caption)


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="video file, stream URL, camera index, image file or image folder")
    parser.add_argument("--out", default="runs/main_person", help="folder for main_person.mp4, results.json and the JSONL")
    parser.add_argument(
        "--jsonl", default=None, help="where the per-frame JSON lines go: a path, or - for stdout (default: OUT/main_person.jsonl)"
    )
    parser.add_argument("--no-video", action="store_true", help="do not write the annotated video (default: write it)")
    parser.add_argument(
        "--detector",
        default="yolox_nano",
        choices=DETECTORS,
        help="detector (default: yolox_nano, bundled COCO YOLOX-nano, chosen on the tuning sequences and held out: docs/video_main_person.md; "
        "ssdlite_person: bundled person-only SSDLite; fasterrcnn_*: torchvision, the brief's model, weights downloaded once)",
    )
    parser.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT (torchvision's, downloaded once), none (random init: speed only) or a state_dict path"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the detector runs")
    parser.add_argument(
        "--quantized",
        default=None,
        help="a model saved by quantise.py: .pt for torchvision detectors (INT8, CPU), .onnx for ssdlite_person and yolox_nano (default: none)",
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="what runs the detector: torch (--detector/--weights/--quantized), onnxruntime (an exported --onnx file) or "
        "tensorrt (an --engine, CUDA) (default: onnxruntime with --onnx, tensorrt with --engine, else torch)",
    )
    parser.add_argument(
        "--onnx",
        default=None,
        help="a torchvision detector exported to ONNX by tensorrt_convert.py, run by ONNX Runtime; its model comes from "
        "the JSON beside it, --detector/--weights do not apply (default: none)",
    )
    parser.add_argument(
        "--engine",
        default=None,
        help="a TensorRT engine built by tensorrt_convert.py from an exported torchvision detector (needs CUDA and "
        "TensorRT; its JSON beside it is checked first) (default: none)",
    )
    parser.add_argument(
        "--detector-size",
        type=number(int, 0),
        default=None,
        help=f"height of the 16:9 box the detector works in, boxes mapped back to 427x240; 0: the source's own size, never "
        f"upsized (default: {OUTPUT_HEIGHT}, the output size; 480+ sharpens small, distant people's boxes but costs "
        "ssdlite_person close-up people, and Faster R-CNN time: docs/video_main_person.md, 'Main person against ground truth')",
    )
    parser.add_argument(
        "--batch-size",
        type=number(int, 1),
        default=None,
        help="frames per inference call (default: 4 on CPU, +10-20%% FPS over 1; 8 on CUDA; 1 gives the lowest latency)",
    )
    parser.add_argument("--max-frames", type=number(int, 1), default=None, help="stop after this many frames (default: all)")
    parser.add_argument(
        "--max-pixels",
        type=number(int, 1),
        default=MAX_PIXELS,
        help="pixels per frame: a bigger image file is refused unread, a bigger image in a folder is skipped and counted, a video with bigger frames is refused",
    )
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads for inference (default: all cores)")
    parser.add_argument(
        "--min-score",
        type=number(float, 0, 1),
        default=None,
        help="person score floor (default: the detector's own, 0.5 Faster R-CNN, 0.4 ssdlite)",
    )
    parser.add_argument("--proposals", type=number(int, 1), default=100, help="RPN proposals per frame (torchvision detectors)")
    parser.add_argument("--switch-margin", type=number(float, 1), default=1.3, help="salience ratio another person needs to take over")
    parser.add_argument("--switch-frames", type=number(int, 1), default=3, help="frames in a row the challenger must win to take over")
    parser.add_argument("--hold-frames", type=number(int, 0), default=5, help="frames the main person is held over detector misses")
    add_association_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed (random-weight runs are then reproducible)")
    return parser


def resolve_backend(args: argparse.Namespace) -> str:
    """--backend, settled: inferred from --onnx / --engine when not given; a file for another backend is an error."""
    backend = args.backend or ("tensorrt" if args.engine else "onnxruntime" if args.onnx else "torch")
    needs = {"onnxruntime": ("--onnx", args.onnx), "tensorrt": ("--engine", args.engine)}
    if backend in needs and needs[backend][1] is None:
        raise UserError(f"--backend {backend} runs an exported model: give it {needs[backend][0]} PATH (tensorrt_convert.py makes one)")
    for other, (flag, value) in needs.items():
        if other != backend and value is not None:
            raise UserError(f"{flag} is for --backend {other}, not {backend}")
    if backend != "torch" and args.quantized is not None:
        raise UserError(f"--quantized is a torch backend model; --backend {backend} takes its own file")
    return backend


def main(args: argparse.Namespace) -> dict[str, Any]:
    args.backend = resolve_backend(args)  # before --out exists: a wrong combination leaves nothing behind
    out, created = prepare_out_dir(args.out)
    try:
        return find_main_person(args, out)
    except BaseException:
        remove_if_empty(out, created)  # whatever failed, no empty --out is left behind
        raise


def detector_options(args: argparse.Namespace, first: Geometry) -> dict[str, Any]:
    """What the detector is built with so that it works at the size of the frames it is given (--detector-size)."""
    sides = (first.detector.content_width, first.detector.content_height)
    if args.detector == "yolox_nano":  # people only, dropped before NMS
        return {"size": yolox_size_for(*sides), "classes": (PERSON,)}
    if args.detector not in TORCHVISION_DETECTORS:
        return {}
    options: dict[str, Any] = {"proposals": args.proposals}
    if args.quantized is None and args.onnx is None and args.engine is None:  # works at the frame's size
        options.update(min_size=min(sides), max_size=max(sides))
    return options


def find_main_person(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    seed_everything(args.seed)
    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 4)  # batches of 4: +10-20% FPS on 2 CPU cores
    detector_height = OUTPUT_HEIGHT if args.detector_size is None else args.detector_size
    source = VideoSource(args.source, max_pixels=args.max_pixels)
    first = Geometry.for_size(source.width, source.height, detector_height)
    detector, load_s = load_detector(args, device, threads, first, batch_size)
    selector = make_selector(
        args.association, OUTPUT_WIDTH, OUTPUT_HEIGHT, args.switch_margin, args.switch_frames, args.hold_frames, frame_rate=source.fps
    )
    timer = StageTimer(cuda_sync=device.type == "cuda")
    with open_outputs(args, out, source.fps) as (jsonl, video):
        prepare = frame_preparer(first, (source.width, source.height), detector_height, with_canvas=video is not None)
        # A short queue: enough to overlap decoding with inference, short enough that frames do not wait in a backlog.
        reader = ThreadedReader(source, prepare, max_frames=args.max_frames, queue_size=batch_size, timer=timer)
        expected = min(filter(None, (source.frame_count, args.max_frames)), default=None)
        log = run_frames(reader, batch_size, expected, FrameSteps(detector, selector, timer, jsonl, video, source.fps))
        if not log.latencies:
            raise UserError(f"{args.source}: no frame could be decoded")
    frames = len(log.latencies)
    results = {
        "source": str(args.source),
        "frames": frames,
        "bad_frames": source.bad_frames,
        "frames_with_main_person": log.with_main_person,
        "fps_end_to_end": frames / log.wall_s,
        "wall_s": log.wall_s,
        "load_s": load_s,
        "latency_ms": summarize(log.latencies),
        "stages": timer.summary(),
        "detector": detector.describe(),
        "backend": args.backend,
        "detector_size": detector_height,
        "association": args.association,
        "device": str(device),
        "threads": threads,
        "batch_size": batch_size,
        "output_size": [OUTPUT_WIDTH, OUTPUT_HEIGHT],
        "letterbox": log.geometry_runs,
        "video": None if video is None else str(video.path),
        "jsonl": "-" if jsonl.to_stdout else str(jsonl.path),
        "stopped_early": log.stopped_early,
    }
    write_run(out, results)
    report_run(results, source, f"{detector.name}, {device}, {threads} threads, batch {batch_size}", out)
    return results


def load_detector(args: argparse.Namespace, device: Any, threads: int, first: Geometry, batch_size: int) -> tuple[Any, float]:
    """The detector, built and warmed up at the first frame's size, and the seconds that took."""
    load_start = time.perf_counter()
    detector = build_detector(
        args.detector,
        args.weights,
        device,
        score_thresh=args.min_score,
        threads=threads,
        quantized=args.quantized,
        onnx=args.onnx,
        engine=args.engine,
        **detector_options(args, first),
    )
    detector.warmup(first.detector.content_width, first.detector.content_height, batch_size)
    return detector, time.perf_counter() - load_start


@contextlib.contextmanager
def open_outputs(args: argparse.Namespace, out: Path, fps: float) -> Iterator[tuple[JsonLines, VideoWriter | None]]:
    """The JSONL and video writers: closed when the block ends, both aborted (once, here) when it raises."""
    jsonl = JsonLines(args.jsonl or str(out / "main_person.jsonl"))
    video = None
    try:
        video = None if args.no_video else VideoWriter(out / "main_person.mp4", fps, OUTPUT_WIDTH, OUTPUT_HEIGHT)
        yield jsonl, video
    except BaseException:
        if video is not None:
            video.abort()
        jsonl.abort()
        raise
    if video is not None:
        video.close()
    jsonl.close()


def frame_preparer(
    first: Geometry, first_size: tuple[int, int], detector_height: int, with_canvas: bool
) -> Callable[[np.ndarray], Prepared]:
    """What the reader thread does to each frame, overlapping inference: resize for the detector and the canvas."""
    geometries = {first_size: first}  # an image folder may mix sizes: one geometry per size

    def prepare(frame: np.ndarray) -> Prepared:
        height, width = frame.shape[:2]
        if (width, height) not in geometries:
            geometries[width, height] = Geometry.for_size(width, height, detector_height)
        geometry = geometries[width, height]
        detector_bgr = geometry.detector.resize(frame)
        canvas_bgr = geometry.canvas.resize(frame) if with_canvas else None
        return Prepared(cv2.cvtColor(detector_bgr, cv2.COLOR_BGR2RGB), canvas_bgr, geometry, (width, height))

    return prepare


@dataclass
class FrameSteps:
    """What every frame goes through after decoding: the detector, the selector, the timer and the writers."""

    detector: Any
    selector: Any
    timer: StageTimer
    jsonl: JsonLines
    video: VideoWriter | None
    fps: float


@dataclass
class FrameLog:
    """What the frame loop measured."""

    latencies: list[float] = field(default_factory=list)
    with_main_person: int = 0
    geometry_runs: list[dict[str, Any]] = field(default_factory=list)  # consecutive frames of one source size
    stopped_early: str | None = None
    wall_s: float = 0.0


def run_frames(reader: ThreadedReader, batch_size: int, expected: int | None, steps: FrameSteps) -> FrameLog:
    """Detect in batches, pick the main person in each frame, write its JSON line and video frame."""
    log = FrameLog()
    progress = tqdm(total=expected, unit="frame", desc="main person", file=sys.stderr, mininterval=0.5)
    start = time.perf_counter()
    try:
        for batch in reader.batches(batch_size):
            with steps.timer.stage("inference"):
                detections = steps.detector.detect([frame.image.detector_rgb for frame in batch])
            for frame, found in zip(batch, detections, strict=True):
                process_frame(frame, found, steps, log)
            steps.jsonl.flush()
            progress.update(len(batch))
    except BrokenPipeError:  # `... --jsonl - | head`: the reader of stdout is gone; stop cleanly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.stopped_early = "stdout closed"
    finally:
        reader.close()
        progress.close()
    log.wall_s = time.perf_counter() - start
    return log


def process_frame(frame: Any, found: Any, steps: FrameSteps, log: FrameLog) -> None:
    """One frame: select the main person, write its JSON line (and video frame), record its latency."""
    prepared: Prepared = frame.image
    with steps.timer.stage("postprocess"):
        runs = log.geometry_runs
        if not runs or runs[-1]["source_size"] != list(prepared.source_size):
            steps.selector.reset()  # a frame of another size is another picture: no box is carried onto it
            runs.append({"first_frame": frame.index, "frames": 0, "source_size": list(prepared.source_size)})
            runs[-1].update(prepared.geometry.describe())
        runs[-1]["frames"] += 1
        persons = found.persons(steps.detector.score_thresh)
        person_boxes = prepared.geometry.detector_to_canvas(persons.boxes)
        main_person = steps.selector.update(person_boxes, persons.scores)
    with steps.timer.stage("encode"):
        record = frame_record(frame.index, steps.fps, main_person, person_boxes, persons.scores, prepared.geometry)
        if steps.video is not None:
            canvas = prepared.geometry.canvas.canvas(prepared.canvas_bgr)
            annotate(canvas, person_boxes, persons.scores, main_person, f"frame {frame.index}")
            steps.video.write(canvas)
    # decode start -> outputs written, less the queue backlog that only a faster-than-real-time source builds
    latency = time.perf_counter() - frame.start_time - frame.queue_wait
    record["latency_ms"] = round(latency * 1e3, 1)
    steps.jsonl.write(record)
    log.latencies.append(latency)
    log.with_main_person += main_person is not None


def frame_record(
    index: int, fps: float, main_person: MainPerson | None, person_boxes: np.ndarray, scores: np.ndarray, geometry: Geometry
) -> dict[str, Any]:
    """The frame's JSON line (latency_ms is added once its outputs are written)."""
    return {
        "frame": index,
        "time_s": round(index / fps, 3),
        "main_person": None if main_person is None else rounded(main_person.box),
        "score": None if main_person is None else round(main_person.score, 3),
        "held": bool(main_person is not None and main_person.held),
        "persons": [{"box": rounded(box), "score": round(float(score), 3)} for box, score in zip(person_boxes, scores, strict=True)],
        "letterbox": geometry.describe(),
    }


def report_run(results: dict[str, Any], source: VideoSource, setup: str, out: Path) -> None:
    """The run's summary on stderr."""
    if source.bad_frames:
        print(f"warning: skipped {len(source.bad_frames)} unreadable frame(s): {source.bad_frames[:10]}", file=sys.stderr)
    print(
        f"{results['frames']} frames, {results['frames_with_main_person']} with a main person, "
        f"{results['fps_end_to_end']:.1f} FPS end to end, "
        f"latency median {results['latency_ms']['median_ms']:.0f} ms p95 {results['latency_ms']['p95_ms']:.0f} ms "
        f"({setup})\n{format_summary(results['stages'])}\n"
        f"results: {out / 'results.json'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
