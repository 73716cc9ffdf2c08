"""The main person of a video, frame after frame: salience, then association, hysteresis and hold.

Why this definition: video_main_person.py's docstring. Boxes are xyxy in the pixels of the frame given to the
selector (video_main_person.py: the 427x240 output canvas).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.metrics import box_iou

CENTRE_WEIGHT = 0.5  # a person at the very edge keeps half their salience: centrality helps, never vetoes
MATCH_IOU = 0.3  # same person in the next frame (at the predicted place): people move well under a box width per frame
VELOCITY_MEMORY = 0.5  # weight of the past in the velocity average: half-life of one frame, follows turns quickly


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
    """Picks the main person frame after frame, with association, hysteresis and hold (video_main_person.py's docstring).

    The current main person's box moves at its recent velocity (an average of its last frame-to-frame shifts):
    the new frame is searched around where they will be, and a held box keeps walking instead of going stale. At
    7 fps (PETS09-S2L1) that raised the share of frames whose main person matches a real one from 0.85 to 0.87
    (benchmarks/eval_main_person.py).
    """

    def __init__(self, width: int, height: int, switch_margin: float = 1.3, switch_frames: int = 3, hold_frames: int = 5) -> None:
        self.width, self.height = width, height
        self.switch_margin = switch_margin
        self.switch_frames = switch_frames
        self.hold_frames = hold_frames
        self.reset()

    def reset(self) -> None:
        """Forget the main person (a new shot, or a frame of another size: nothing carries over)."""
        self.current: MainPerson | None = None
        self.velocity = np.zeros(4, np.float32)  # xyxy shift per frame of the current main person's box
        self.missed = 0  # consecutive frames the current main person was not found
        self.challenger_frames = 0  # consecutive frames someone else beat the current one by the margin

    def predicted_box(self) -> np.ndarray:
        """Where the current main person should be in the next frame: the last box moved by its velocity."""
        box = self.current.box + self.velocity
        return box.clip(0, [self.width, self.height, self.width, self.height]).astype(np.float32)

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> MainPerson | None:
        """The main person of the next frame, given that frame's person boxes and scores (output pixels)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        salient = salience(boxes, scores, self.width, self.height)
        incumbent = None
        if self.current is not None and len(boxes):
            overlaps = box_iou(self.predicted_box()[None], boxes)[0]
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
        if chosen == incumbent:  # average of the recent shifts: one noisy box does not set the course
            self.velocity = VELOCITY_MEMORY * self.velocity + (1 - VELOCITY_MEMORY) * (boxes[chosen] - self.current.box)
        else:
            self.velocity[:] = 0
        self.current = MainPerson(boxes[chosen].copy(), float(scores[chosen]), held=False)
        return self.current

    def _lost(self, boxes: np.ndarray, scores: np.ndarray, salient: np.ndarray) -> MainPerson | None:
        """No detection continues the current main person: hold it a few frames (moving on), then pick afresh."""
        if self.current is not None and self.missed < self.hold_frames:
            self.missed += 1
            self.current = MainPerson(self.predicted_box(), self.current.score, held=True)
            return self.current
        self.reset()
        if not len(boxes):
            return None
        best = int(salient.argmax())
        self.current = MainPerson(boxes[best].copy(), float(scores[best]), held=False)
        return self.current
