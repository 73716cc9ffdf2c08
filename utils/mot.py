"""MOTChallenge annotation files (gt/gt.txt, det/det.txt): frame,id,x,y,w,h,conf[,class,visibility | ,x,y,z]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.cli import UserError

# MOT16+ gt classes that are people (1 pedestrian, 7 static person); MOT15 writes -1 there, which also counts.
PERSON_CLASSES = (-1, 1, 7)


def read_mot_boxes(path: str | Path, gt: bool = True) -> dict[int, np.ndarray]:
    """Boxes per frame number (1-based, as in the file) as (N, 5) float arrays: x1, y1, x2, y2, track id.

    For gt files, rows whose conf/flag column is 0 (MOT16+ 'ignore') and non-person classes are dropped.
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
        if width <= 0 or height <= 0:
            raise UserError(f"{path}:{line_number}: box width and height must be positive")
        if gt and (flag == 0 or (len(fields) >= 8 and int(fields[7]) not in PERSON_CLASSES)):
            continue
        rows.setdefault(int(frame), []).append([x, y, x + width, y + height, track_id])
    return {frame: np.asarray(boxes, dtype=np.float32) for frame, boxes in sorted(rows.items())}
