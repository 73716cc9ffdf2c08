"""How often video_main_person.py's main person is a real person: the pipeline run on MOT sequences, scored against
their ground truth.

For every sequence given (a MOTChallenge folder with img1/ and gt/gt.txt), video_main_person.main() runs on the
frames exactly as a user would run it on that image folder, and its JSON lines are compared, frame by frame, with the
gt boxes mapped into the same 427x240 canvas (each frame's letterbox is in its JSON line):

- main_match: share of the frames with people in which the main person matches a gt person at IoU >= 0.5;
- no_main: share of the frames with people in which no main person was given;
- false_main: share of the frames without people in which a main person was given anyway;
- id_switches: how often the gt identity under the main person changes between matched frames, and how many of
  those happened while the previous person was still in the picture (the others follow someone leaving).

Run:
    python benchmarks/eval_main_person.py                          # TUD-Campus (bundled) + ../shared/data/mot-extra
    python benchmarks/eval_main_person.py --sequences path/to/MOT15/train --detector-size 240
Measured (2-core x86 CPU, ssdlite_person, defaults): see README.md ("Main person against ground truth").
Last line: {"sequences": {NAME: {...}}, "mean_main_match": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import video_main_person
from utils.cli import ArgumentParser, UserError, number, run_cli
from utils.metrics import box_iou
from utils.mot import find_mot_sequences, read_mot_sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SEQUENCES = [REPO / "assets" / "data" / "TUD-Campus", REPO.parent / "shared" / "data" / "mot-extra"]
MATCH_IOU = 0.5  # the usual detection criterion: a main person that overlaps a real one by half is that person


def score_sequence(records: list[dict[str, Any]], gt: dict[int, np.ndarray]) -> dict[str, Any]:
    """The measures of the module docstring for one sequence: JSON lines (frame = MOT frame - 1) against gt rows
    (x1, y1, x2, y2, id, ...) in source pixels."""
    with_people = matched = no_main = without_people = false_main = switches = switches_while_visible = 0
    previous_id = None
    for record in records:
        people = gt.get(record["frame"] + 1, np.zeros((0, 6), np.float32))
        main = record["main_person"]
        if not len(people):
            without_people += 1
            false_main += main is not None
            continue
        with_people += 1
        if main is None:
            no_main += 1
            continue
        letterbox = record["letterbox"]
        truth = people[:, :4] * letterbox["scale"] + np.array([letterbox["left"], letterbox["top"]] * 2, np.float32)
        overlaps = box_iou(np.asarray(main, np.float32), truth)[0]
        if overlaps.max() < MATCH_IOU:
            continue
        matched += 1
        person_id = int(people[overlaps.argmax(), 4])
        if previous_id is not None and person_id != previous_id:
            switches += 1
            switches_while_visible += bool((people[:, 4] == previous_id).any())
        previous_id = person_id
    return {
        "frames": len(records),
        "frames_with_people": with_people,
        "main_match": matched / with_people if with_people else None,
        "no_main": no_main / with_people if with_people else None,
        "false_main": false_main / without_people if without_people else None,
        "id_switches": switches,
        "id_switches_while_visible": switches_while_visible,
    }


def run_pipeline(sequence: Path, pipeline_args: list[str], out: Path) -> tuple[list[dict[str, Any]], float]:
    """video_main_person.py on the sequence's frames, as a user would run it; its JSON lines and FPS end to end."""
    argv = ["--source", str(sequence / "img1"), "--out", str(out), "--no-video", *pipeline_args]
    results = video_main_person.main(video_main_person.get_args_parser().parse_args(argv))
    return [json.loads(line) for line in Path(results["jsonl"]).read_text().splitlines()], results["fps_end_to_end"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sequences",
        nargs="+",
        default=None,
        help="MOT sequence folders, or folders of them (default: assets/data/TUD-Campus, and ../shared/data/mot-extra when present)",
    )
    parser.add_argument("--detector", default="ssdlite_person", help="video_main_person.py's --detector (the bundled pretrained one)")
    parser.add_argument("--weights", default="DEFAULT", help="video_main_person.py's --weights")
    parser.add_argument("--detector-size", type=number(int, 0), default=None, help="video_main_person.py's --detector-size")
    parser.add_argument("--hold-frames", type=number(int, 0), default=5, help="video_main_person.py's --hold-frames")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--out", default=None, help="keep each sequence's JSON lines and results.json here (default: a temporary folder)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    roots = args.sequences or [path for path in DEFAULT_SEQUENCES if path.exists()]
    sequences = [folder for root in roots for folder in find_mot_sequences(root)]
    pipeline_args = ["--detector", args.detector, "--weights", args.weights, "--hold-frames", str(args.hold_frames)]
    pipeline_args += [] if args.detector_size is None else ["--detector-size", str(args.detector_size)]
    pipeline_args += [] if args.threads is None else ["--threads", str(args.threads)]
    scores: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        out = Path(args.out or workdir)
        for folder in sequences:
            sequence = read_mot_sequence(folder)
            records, fps = run_pipeline(folder, pipeline_args, out / sequence.name)
            scores[sequence.name] = {**score_sequence(records, sequence.gt), "fps_end_to_end": round(fps, 1)}
    if not scores:
        raise UserError("no sequence to evaluate")
    print(f"\n{'sequence':<16}{'frames':>7}{'main_match':>12}{'no_main':>9}{'false_main':>12}{'switches':>10}{'FPS':>16}", file=sys.stderr)
    for name, score in scores.items():
        false_main = "-" if score["false_main"] is None else f"{score['false_main']:.3f}"
        print(
            f"{name:<16}{score['frames']:>7}{score['main_match']:>12.3f}{score['no_main']:>9.3f}{false_main:>12}"
            f"{score['id_switches']:>6} ({score['id_switches_while_visible']} visible){score['fps_end_to_end']:>8.1f}",
            file=sys.stderr,
        )
    result = {
        "sequences": scores,
        "mean_main_match": float(np.mean([s["main_match"] for s in scores.values() if s["main_match"] is not None] or [np.nan])),
        "min_main_match": min((s["main_match"] for s in scores.values() if s["main_match"] is not None), default=None),
        "pipeline_args": pipeline_args,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
