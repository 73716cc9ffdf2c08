"""MOTChallenge sequences: seqinfo.ini, img1/, gt/gt.txt (targets), det/det.txt (public detections).

Annotation rows: frame,id,x,y,w,h,conf[,class,visibility] (MOT16+) or frame,id,x,y,w,h,conf,-1,-1,-1 (MOT15).
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.cli import UserError
from utils.video import IMAGE_EXTENSIONS

# MOT16+ gt classes that are people (1 pedestrian, 7 static person); MOT15 writes -1 there, which also counts.
PERSON_CLASSES = (-1, 1, 7)


def read_mot_boxes(path: str | Path, gt: bool = True) -> dict[int, np.ndarray]:
    """Boxes per frame number (1-based, as in the file) as (N, 6) float32: x1, y1, x2, y2, track id, visibility.

    For gt files, rows whose conf/flag column is 0 (MOT16+ 'ignore') and non-person classes are dropped.
    Visibility is MOT16+'s 9th column; MOT15 has none (-1 or a world coordinate there) and gets 1.0.
    A malformed line is a UserError naming file:line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such annotation file")
    rows: dict[int, list[list[float]]] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = [float(value) for value in line.replace(" ", "").split(",")]
        except ValueError:
            raise UserError(f"{path}:{line_number}: not a comma-separated row of numbers: {line[:60]!r}") from None
        if len(fields) < 7:
            raise UserError(f"{path}:{line_number}: expected at least 7 fields, found {len(fields)}")
        frame, track_id, x, y, width, height, flag = fields[:7]
        if width <= 0 or height <= 0 or frame < 1:
            raise UserError(f"{path}:{line_number}: frame must be >= 1 and box width and height positive")
        if gt and (flag == 0 or (len(fields) >= 8 and int(fields[7]) not in PERSON_CLASSES)):
            continue
        visibility = fields[8] if len(fields) == 9 and 0 <= fields[8] <= 1 else 1.0
        rows.setdefault(int(frame), []).append([x, y, x + width, y + height, track_id, visibility])
    return {frame: np.asarray(boxes, dtype=np.float32) for frame, boxes in sorted(rows.items())}


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
        """gt rows (x1, y1, x2, y2, id, visibility) of a 1-based frame number; (0, 6) when nobody is there."""
        return self.gt.get(frame, np.zeros((0, 6), np.float32))


def read_mot_sequence(root: str | Path, need_gt: bool = True) -> MotSequence:
    """A sequence folder. seqinfo.ini may be missing: then img1/ holds the frames and the first gives the size.

    Every frame from 1 to seqLength must exist: a missing one is a UserError that names it.
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
        first = cv2.imread(str(image_paths[0]))
        if first is None:
            raise UserError(f"{image_paths[0]}: not a readable image")
        height, width = first.shape[:2]
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
