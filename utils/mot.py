"""MOTChallenge sequences: seqinfo.ini, img1/, gt/gt.txt (targets), det/det.txt (public detections).

Annotation files come in three layouts, told apart per FILE by column count and content (every row must agree):
  MOT15 gt and det    10 columns: frame, id, x, y, w, h, conf, wx, wy, wz. wx, wy, wz are world coordinates
                      (PETS09-S2L1 fills them in) or -1 -1 -1. In gt, conf 0 marks an ignore row and any other value
                      counts (1, or -1 in some public copies of MOT15), as TrackEval reads it.
  MOT16/17/20 gt       9 columns: frame, id, x, y, w, h, flag, class, visibility. flag 0 = ignore; class 1
                      pedestrian, 2 person on vehicle, 7 static person, 3 car, 8 distractor...; visibility in [0, 1].
  MOT16/17/20 det     10 columns: frame, -1, x, y, w, h, score, -1, -1, -1: the MOT15 layout, conf a detector score.
MOT's x, y are 1-based (the top-left pixel is (1, 1)); every box returned here is in 0-based pixels.
A gt file is told from a det file by its ids: a det row's id is -1. A gt file gives people and, kept apart, ignore
regions (read_mot_gt): its conf-0 rows and the person-like classes not counted as people, which an evaluation should
neither reward nor punish a detection for.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.cli import UserError
from utils.video import IMAGE_EXTENSIONS, read_rgb_image

MOT15, MOT16 = "MOT15 (10 columns)", "MOT16+ gt (9 columns)"
GT_LAYOUTS = {10: MOT15, 9: MOT16}
DET_LAYOUTS = {10: "MOT det (10 columns)"}  # MOT15 and MOT16+ det files share it
# MOT16+ classes that are people: a detector that learns them as background would learn to miss cyclists and people
# standing still. Distractors (8) and reflections (12) are left out: the benchmark neither rewards nor punishes them.
PERSON_CLASSES = (1, 2, 7)
# TrackEval's pedestrian and distractor classes (person on vehicle, static person, distractor, reflection): a detection
# on one of them is not wrong, so those not counted as people become ignore regions. Vehicles and occluders do not.
PERSON_LIKE_CLASSES = (1, 2, 7, 8, 12)


def _numeric_rows(path: Path) -> list[tuple[int, list[float]]]:
    """(line number, fields) of every non-blank line; a non-numeric one is a UserError naming file:line."""
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_number, [float(value) for value in line.replace(" ", "").split(",")]))
        except ValueError:
            raise UserError(f"{path}:{line_number}: not a comma-separated row of numbers: {line[:60]!r}") from None
    return rows


def _check_row(fields: list[float], layout: str, gt: bool, where: str) -> None:
    """A UserError naming `where` (file:line) when one row's frame, box, id or MOT16 class/visibility is impossible."""
    frame, track_id, _, _, width, height = fields[:6]
    if frame < 1 or not frame.is_integer():
        raise UserError(f"{where}: frame must be a whole number >= 1, got {frame:g}")
    if width <= 0 or height <= 0:
        raise UserError(f"{where}: box width and height must be positive, got {width:g} x {height:g}")
    if gt and track_id == -1:  # what MOT det files put in the id column; conf says nothing (MOT15 gt may hold -1)
        raise UserError(f"{where}: not a gt row: id -1 marks a detection (a det file read as gt?)")
    if gt and (track_id < 0 or not track_id.is_integer()):
        raise UserError(f"{where}: a gt id must be a whole number >= 0, got {track_id:g}")
    if layout == MOT16:
        category, visibility = fields[7], fields[8]
        if not category.is_integer() or category < 1 or not 0 <= visibility <= 1:
            raise UserError(f"{where}: class must be a whole number >= 1 and visibility in [0, 1], got {category:g}, {visibility:g}")


def _annotation_rows(path: Path, gt: bool) -> tuple[str, list[list[float]]]:
    """The file's layout and the fields of its rows, checked; the layout is decided by the first row, and a
    row that fits no layout, or another layout than the first, is a UserError naming file:line."""
    if not path.is_file():
        raise UserError(f"{path}: no such annotation file")
    rows = _numeric_rows(path)
    if not rows:
        if gt:
            raise UserError(f"{path}: empty: a gt file with no rows gives nothing to train or evaluate on")
        return DET_LAYOUTS[10], []
    layouts = GT_LAYOUTS if gt else DET_LAYOUTS
    first_line, first_fields = rows[0]
    layout = layouts.get(len(first_fields))
    if layout is None:
        expected = " or ".join(f"{columns} ({name})" for columns, name in layouts.items())
        raise UserError(f"{path}:{first_line}: {len(first_fields)} fields fit no MOT {'gt' if gt else 'det'} layout: expected {expected}")
    checked = []
    for line_number, fields in rows:
        where = f"{path}:{line_number}"
        if len(fields) != len(first_fields):
            raise UserError(f"{where}: {len(fields)} fields in a {layout} file (line {first_line}): mixed formats")
        _check_row(fields, layout, gt, where)
        checked.append(fields)
    return layout, checked


def _box_row(fields: list[float], extra: float) -> list[float]:
    """x1, y1, x2, y2 (0-based pixels), id, extra from a MOT row (x, y 1-based, then width and height)."""
    _, track_id, x, y, width, height = fields[:6]
    return [x - 1, y - 1, x - 1 + width, y - 1 + height, track_id, extra]


def _by_frame(boxes: dict[int, list[list[float]]]) -> dict[int, np.ndarray]:
    return {frame: np.asarray(frame_boxes, dtype=np.float32) for frame, frame_boxes in sorted(boxes.items())}


def read_mot_gt(path: str | Path, person_classes: tuple[int, ...] = PERSON_CLASSES) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """People and ignore regions of a gt file, per frame number (1-based, as in the file), each as (N, 6) float32:
    x1, y1, x2, y2 (0-based pixels), track id, visibility (MOT16+'s 9th column; 1.0 for MOT15, which has none).

    People: rows whose conf is not 0 and whose class (MOT16+; MOT15 rows are class 1) is in person_classes
    (training takes PERSON_CLASSES; an evaluation as TrackEval's takes (1,), pedestrians only). Ignore regions: every
    conf-0 row of MOT15 or of a PERSON_LIKE_CLASSES class, and the person-like classes left out of person_classes.
    Other classes (vehicles, occluders) are in neither. A file left with no person at all is a UserError: a misread or
    unusable file, never "nobody there".
    """
    path = Path(path)
    layout, rows = _annotation_rows(path, gt=True)
    people: dict[int, list[list[float]]] = {}
    ignore: dict[int, list[list[float]]] = {}
    ignored = other_classes = 0
    for fields in rows:
        conf = fields[6]
        # MOT15 has neither class nor visibility: its rows are pedestrians, fully visible (not lost to a visibility filter)
        category, visibility = (int(fields[7]), fields[8]) if layout == MOT16 else (1, 1.0)
        if conf != 0 and category in person_classes:
            people.setdefault(int(fields[0]), []).append(_box_row(fields, visibility))
            continue
        if conf == 0:
            ignored += 1
        else:
            other_classes += 1
        if category in PERSON_LIKE_CLASSES:
            ignore.setdefault(int(fields[0]), []).append(_box_row(fields, visibility))
    if not people:
        raise UserError(
            f"{path}: no gt box left of {len(rows)} rows ({ignored} ignore rows with conf 0, {other_classes} non-person classes):"
            " nothing to train or evaluate on"
        )
    return _by_frame(people), _by_frame(ignore)


def read_mot_boxes(path: str | Path, gt: bool = True) -> dict[int, np.ndarray]:
    """Boxes per frame number (1-based, as in the file) as (N, 6) float32: x1, y1, x2, y2, track id, and
    visibility (gt) or detection score (det).

    Coordinates are 0-based pixels: x1 = x - 1, y1 = y - 1, x2 = x1 + w, y2 = y1 + h (MOT's x, y count from 1).
    gt files give the people of read_mot_gt (PERSON_CLASSES; ignore regions dropped); det files every row, with its
    score (never filtered: ACF scores can be negative).
    """
    if gt:
        return read_mot_gt(path)[0]
    _, rows = _annotation_rows(Path(path), gt=False)
    boxes: dict[int, list[list[float]]] = {}
    for fields in rows:
        boxes.setdefault(int(fields[0]), []).append(_box_row(fields, fields[6]))
    return _by_frame(boxes)


@dataclass
class MotSequence:
    """One sequence: its frames in order (frame k is image_paths[k - 1]), its gt people and ignore regions per frame."""

    name: str
    root: Path
    image_paths: list[Path]
    width: int
    height: int
    frame_rate: float
    gt: dict[int, np.ndarray] = field(default_factory=dict)
    ignore: dict[int, np.ndarray] = field(default_factory=dict)  # read_mot_gt's ignore regions, same row layout

    def __len__(self) -> int:
        return len(self.image_paths)

    def boxes(self, frame: int) -> np.ndarray:
        """gt rows (x1, y1, x2, y2 in 0-based pixels, id, visibility) of a 1-based frame number; (0, 6) when nobody is there."""
        return self.gt.get(frame, np.zeros((0, 6), np.float32))

    def ignore_regions(self, frame: int) -> np.ndarray:
        """Ignore regions of a 1-based frame number, in the layout of boxes(); (0, 6) when there is none."""
        return self.ignore.get(frame, np.zeros((0, 6), np.float32))


def read_mot_sequence(root: str | Path, need_gt: bool = True, person_classes: tuple[int, ...] = PERSON_CLASSES) -> MotSequence:
    """A sequence folder. seqinfo.ini may be missing: then img1/ holds the frames and the first gives the size.

    Every frame from 1 to seqLength must exist: a missing one is a UserError that names it. A gt/gt.txt that is
    there is read (read_mot_gt with person_classes: a malformed one, or one with no person left, is a UserError even
    if need_gt is off).
    """
    root = Path(root)
    info = configparser.ConfigParser()
    if (root / "seqinfo.ini").is_file():
        info.read(root / "seqinfo.ini")
    section = info["Sequence"] if info.has_section("Sequence") else {}
    image_dir = root / section.get("imDir", "img1")
    if not image_dir.is_dir():
        raise UserError(f"{root}: no {image_dir.name}/ folder of frames (not a MOTChallenge sequence)")
    extension = section.get("imExt") or next(
        (p.suffix for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS), ".jpg"
    )
    length = int(section.get("seqLength", 0)) or sum(1 for p in image_dir.iterdir() if p.suffix == extension)
    if length == 0:
        raise UserError(f"{image_dir}: no {extension} frames")
    image_paths = [image_dir / f"{frame:06d}{extension}" for frame in range(1, length + 1)]
    missing = next((path for path in image_paths if not path.is_file()), None)
    if missing is not None:
        raise UserError(f"{root.name}: frame file {missing} is missing (seqLength {length})")
    if "imWidth" in section and "imHeight" in section:
        width, height = int(section["imWidth"]), int(section["imHeight"])
    else:
        height, width = read_rgb_image(image_paths[0]).shape[:2]
    gt_path = root / "gt" / "gt.txt"
    if need_gt and not gt_path.is_file():
        raise UserError(f"{root.name}: no gt/gt.txt (targets come from the ground truth, not det.txt)")
    gt, ignore = read_mot_gt(gt_path, person_classes) if gt_path.is_file() else ({}, {})
    frame_rate = float(section.get("frameRate", 25))
    return MotSequence(section.get("name", root.name), root, image_paths, width, height, frame_rate, gt, ignore)


def find_mot_sequences(root: str | Path) -> list[Path]:
    """Sequence folders under root: root itself if it is one, else its sub-folders (any depth) that hold img1/."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if (root / "img1").is_dir() or (root / "seqinfo.ini").is_file():
        return [root]
    found = sorted(path.parent for path in root.rglob("img1") if path.is_dir())
    if not found:
        raise UserError(f"{root}: no MOTChallenge sequence (a folder with img1/) found")
    return found
