"""MOTChallenge sequences: seqinfo.ini, img1/, gt/gt.txt (targets), det/det.txt (public detections).

Annotation files come in three layouts, told apart per FILE by column count and content (every row must agree):
  MOT15 gt and det    10 columns: frame, id, x, y, w, h, conf, wx, wy, wz. wx, wy, wz are world coordinates
                      (PETS09-S2L1 fills them in) or -1 -1 -1. In gt, conf is a flag: 1 evaluate, 0 ignore.
  MOT16/17/20 gt       9 columns: frame, id, x, y, w, h, flag, class, visibility. flag 0 = ignore; class 1
                      pedestrian, 2 person on vehicle, 7 static person, 3 car, 8 distractor...; visibility in [0, 1].
  MOT16/17/20 det     10 columns: frame, -1, x, y, w, h, score, -1, -1, -1: the MOT15 layout, conf a detector score.
MOT's x, y are 1-based (the top-left pixel is (1, 1)); every box returned here is in 0-based pixels.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.cli import UserError
from utils.video import IMAGE_EXTENSIONS, read_image

MOT15, MOT16 = "MOT15 (10 columns)", "MOT16+ gt (9 columns)"
GT_LAYOUTS = {10: MOT15, 9: MOT16}
DET_LAYOUTS = {10: "MOT det (10 columns)"}  # MOT15 and MOT16+ det files share it
# MOT16+ classes that are people: a detector that learns them as background would learn to miss cyclists and people
# standing still. Distractors (8) and reflections (12) are left out: the benchmark neither rewards nor punishes them.
PERSON_CLASSES = (1, 2, 7)


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


def read_mot_boxes(path: str | Path, gt: bool = True) -> dict[int, np.ndarray]:
    """Boxes per frame number (1-based, as in the file) as (N, 6) float32: x1, y1, x2, y2, track id, and
    visibility (gt) or detection score (det).

    Coordinates are 0-based pixels: x1 = x - 1, y1 = y - 1, x2 = x1 + w, y2 = y1 + h (MOT's x, y count from 1).
    The layout (module docstring) is decided by the file's first row; a row that fits no layout or another
    layout than the first is a UserError naming file:line. gt files: ignore rows (conf/flag 0, also used by MOT15
    PETS) and, in MOT16+, non-person classes are dropped; visibility is MOT16+'s 9th column, 1.0 for MOT15 (which has
    none). A gt file left with no box at all is a UserError: it is a misread or unusable file, never "nobody there".
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such annotation file")
    rows = _numeric_rows(path)
    if not rows:
        if gt:
            raise UserError(f"{path}: empty: a gt file with no rows gives nothing to train or evaluate on")
        return {}
    layouts = GT_LAYOUTS if gt else DET_LAYOUTS
    first_line, first_fields = rows[0]
    layout = layouts.get(len(first_fields))
    if layout is None:
        expected = " or ".join(f"{columns} ({name})" for columns, name in layouts.items())
        raise UserError(f"{path}:{first_line}: {len(first_fields)} fields fit no MOT {'gt' if gt else 'det'} layout: expected {expected}")
    boxes: dict[int, list[list[float]]] = {}
    ignored = other_classes = 0
    for line_number, fields in rows:
        where = f"{path}:{line_number}"
        if len(fields) != len(first_fields):
            raise UserError(f"{where}: {len(fields)} fields in a {layout} file (line {first_line}): mixed formats")
        frame, track_id, x, y, width, height, conf = fields[:7]
        if frame < 1 or not frame.is_integer():
            raise UserError(f"{where}: frame must be a whole number >= 1, got {frame:g}")
        if width <= 0 or height <= 0:
            raise UserError(f"{where}: box width and height must be positive, got {width:g} x {height:g}")
        extra = conf  # a det row keeps its score
        if gt:
            if conf not in (0, 1) or track_id < 0 or not track_id.is_integer():
                raise UserError(f"{where}: not a gt row: conf/flag must be 0 or 1 and the id a whole number >= 0 (a det file read as gt?)")
            extra = 1.0  # MOT15 gt has no visibility: taken as fully visible rather than lost to a visibility filter
            if layout == MOT16:
                category, extra = fields[7], fields[8]
                if not category.is_integer() or category < 1 or not 0 <= extra <= 1:
                    raise UserError(f"{where}: class must be a whole number >= 1 and visibility in [0, 1], got {category:g}, {extra:g}")
            if conf == 0:
                ignored += 1
                continue
            if layout == MOT16 and int(fields[7]) not in PERSON_CLASSES:
                other_classes += 1
                continue
        boxes.setdefault(int(frame), []).append([x - 1, y - 1, x - 1 + width, y - 1 + height, track_id, extra])
    if gt and not boxes:
        raise UserError(
            f"{path}: no gt box left of {len(rows)} rows ({ignored} ignore rows with conf 0, {other_classes} non-person classes):"
            " nothing to train or evaluate on"
        )
    return {frame: np.asarray(frame_boxes, dtype=np.float32) for frame, frame_boxes in sorted(boxes.items())}


@dataclass
class MotSequence:
    """One sequence: its frames in order (frame k is image_paths[k - 1]) and its gt boxes per frame."""

    name: str
    root: Path
    image_paths: list[Path]
    width: int
    height: int
    frame_rate: float
    gt: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_paths)

    def boxes(self, frame: int) -> np.ndarray:
        """gt rows (x1, y1, x2, y2 in 0-based pixels, id, visibility) of a 1-based frame number; (0, 6) when nobody is there."""
        return self.gt.get(frame, np.zeros((0, 6), np.float32))


def read_mot_sequence(root: str | Path, need_gt: bool = True) -> MotSequence:
    """A sequence folder. seqinfo.ini may be missing: then img1/ holds the frames and the first gives the size.

    Every frame from 1 to seqLength must exist: a missing one is a UserError that names it. A gt/gt.txt that is
    there is read (read_mot_boxes: a malformed one, or one with no box left, is a UserError even if need_gt is off).
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
        height, width = read_image(image_paths[0]).shape[:2]
    gt_path = root / "gt" / "gt.txt"
    if need_gt and not gt_path.is_file():
        raise UserError(f"{root.name}: no gt/gt.txt (targets come from the ground truth, not det.txt)")
    gt = read_mot_boxes(gt_path) if gt_path.is_file() else {}
    return MotSequence(section.get("name", root.name), root, image_paths, width, height, float(section.get("frameRate", 25)), gt)


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
