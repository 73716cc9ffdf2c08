"""The main person of a video, frame after frame: salience, then association, hysteresis and hold.

Why this definition: video_main_person.py's docstring. Boxes are xyxy in the pixels of the frame given to the
selector (video_main_person.py: the 427x240 output canvas).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.metrics import box_iou

CENTRE_WEIGHT = 0.5  # a person at the very edge keeps half their salience: centrality helps, never vetoes
MATCH_IOU = 0.3  # same person in the next frame: people move well under a box width per frame at >= 10 fps


def salience(boxes: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """How much each person box looks like the subject of the frame (video_main_person.py's docstring says why)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    size = np.sqrt(area / (width * height))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    distance = np.hypot(centre[:, 0] - width / 2, centre[:, 1] - height / 2) / np.hypot(width / 2, height / 2)
    return np.asarray(scores, dtype=np.float64) * size * (1 - CENTRE_WEIGHT * distance.clip(0, 1))


@dataclass
class MainPerson:
    box: np.ndarray  # xyxy in output-frame pixels
    score: float
    held: bool  # True when the box is carried over a detector miss


class MainPersonSelector:
    """Picks the main person frame after frame, with association, hysteresis and hold (video_main_person.py's docstring)."""

    def __init__(self, width: int, height: int, switch_margin: float = 1.3, switch_frames: int = 3, hold_frames: int = 5) -> None:
        self.width, self.height = width, height
        self.switch_margin = switch_margin
        self.switch_frames = switch_frames
        self.hold_frames = hold_frames
        self.current: MainPerson | None = None
        self.missed = 0  # consecutive frames the current main person was not found
        self.challenger_frames = 0  # consecutive frames someone else beat the current one by the margin

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> MainPerson | None:
        """The main person of the next frame, given that frame's person boxes and scores (output pixels)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        salient = salience(boxes, scores, self.width, self.height)
        incumbent = None
        if self.current is not None and len(boxes):
            overlaps = box_iou(self.current.box[None], boxes)[0]
            if overlaps.max() >= MATCH_IOU:
                incumbent = int(overlaps.argmax())
        if incumbent is None:
            return self._lost(boxes, scores, salient)
        self.missed = 0
        best = int(salient.argmax())
        chosen = incumbent
        if best != incumbent and salient[best] > self.switch_margin * salient[incumbent]:
            self.challenger_frames += 1
            if self.challenger_frames >= self.switch_frames:
                chosen, self.challenger_frames = best, 0
        else:
            self.challenger_frames = 0
        self.current = MainPerson(boxes[chosen].copy(), float(scores[chosen]), held=False)
        return self.current

    def _lost(self, boxes: np.ndarray, scores: np.ndarray, salient: np.ndarray) -> MainPerson | None:
        """No detection continues the current main person: hold it a few frames, then pick afresh."""
        if self.current is not None and self.missed < self.hold_frames:
            self.missed += 1
            self.current = MainPerson(self.current.box, self.current.score, held=True)
            return self.current
        self.missed, self.challenger_frames = 0, 0
        if not len(boxes):
            self.current = None
            return None
        best = int(salient.argmax())
        self.current = MainPerson(boxes[best].copy(), float(scores[best]), held=False)
        return self.current
