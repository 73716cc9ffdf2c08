"""The main person of a video, frame after frame: salience, then association, hysteresis and hold.

Why this definition: video_main_person.py's docstring. Boxes are xyxy in the pixels of the frame given to the
selector (video_main_person.py: the 427x240 output canvas). Association comes in two kinds (--association): "iou"
(MainPersonSelector: the detection overlapping the main person's predicted box) and "bytetrack"
(TrackedMainPersonSelector: the detection carrying the main person's ByteTrack id); salience, hysteresis and hold are
the same code for both.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass

import numpy as np

from utils.metrics import box_iou

CENTRE_WEIGHT = 0.5  # a person at the very edge keeps half their salience: centrality helps, never vetoes
MATCH_IOU = 0.3  # same person in the next frame (at the predicted place): people move well under a box width per frame
VELOCITY_MEMORY = 0.5  # weight of the past in the velocity average: half-life of one frame, follows turns quickly

ASSOCIATIONS = ("iou", "bytetrack")  # --association: hand-written IoU matching, or supervision's ByteTrack
# ByteTrack's settings: supervision 0.30.9's defaults, not tuned here; the project tunes them on its named tuning
# sequences, never on the ones the association is evaluated on.
TRACK_ACTIVATION_THRESHOLD = 0.25  # default; detections this confident are matched first, 0.1 more starts a track
LOST_TRACK_BUFFER = 30  # default; frames at 30 fps a lost track waits to be found again (scaled by the frame rate: 1 s)
MINIMUM_MATCHING_THRESHOLD = 0.8  # default; a track and a detection match while 1 - IoU * score stays below this
MINIMUM_CONSECUTIVE_FRAMES = 1  # a new main person must be usable at once (ByteTrack still confirms on a 2nd frame: see below)
DEFAULT_FRAME_RATE = 30.0  # supervision's default, for a caller that does not know its source's rate
NO_TRACK = -1  # track id of a detection the tracker left out of its output (no confirmed track holds it), as supervision's


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
        self._release()

    def _release(self) -> None:
        """Forget the current main person (held too long, or reset): the next frame picks afresh."""
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
        incumbent = self._associate(boxes, scores)
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
        return self._take(boxes, scores, chosen)

    def _associate(self, boxes: np.ndarray, scores: np.ndarray) -> int | None:
        """Index of the detection that continues the current main person (None: not found); called once a frame."""
        if self.current is None or not len(boxes):
            return None
        overlaps = box_iou(self.predicted_box()[None], boxes)[0]
        return int(overlaps.argmax()) if overlaps.max() >= MATCH_IOU else None

    def _take(self, boxes: np.ndarray, scores: np.ndarray, index: int) -> MainPerson:
        """Detection `index` of this frame becomes the main person (its own box: never a predicted one)."""
        self.current = MainPerson(boxes[index].copy(), float(scores[index]), held=False)
        return self.current

    def _lost(self, boxes: np.ndarray, scores: np.ndarray, salient: np.ndarray) -> MainPerson | None:
        """No detection continues the current main person: hold it a few frames (moving on), then pick afresh."""
        if self.current is not None and self.missed < self.hold_frames:
            self.missed += 1
            self.current = MainPerson(self.predicted_box(), self.current.score, held=True)
            return self.current
        self._release()
        if not len(boxes):
            return None
        return self._take(boxes, scores, int(salient.argmax()))


class TrackedMainPersonSelector(MainPersonSelector):
    """MainPersonSelector whose association is ByteTrack's (supervision): the main person is followed by track id.

    Every frame's person boxes go through the tracker, so that tracks age over misses too. The incumbent is the
    detection carrying the main person's track id this frame; when no detection carries it, the hold applies (the box
    coasts at the main person's velocity) until the tracker finds the id again or --hold-frames run out. ByteTrack
    confirms a track only on its second frame (except in its own first frame): a main person picked while still
    without an id is found in the next frame as MainPersonSelector finds them, by IoU with their predicted box, and
    takes the id that detection carries. The box returned is always one of the frame's own detections, never the
    tracker's Kalman box.
    """

    def __init__(
        self,
        width: int,
        height: int,
        switch_margin: float = 1.3,
        switch_frames: int = 3,
        hold_frames: int = 5,
        frame_rate: float = DEFAULT_FRAME_RATE,
    ) -> None:
        # supervision takes ~0.5 s to import: only a selector that uses it pays that, not every script's start-up
        from supervision.detection.core import Detections
        from supervision.tracker.byte_tracker.core import ByteTrack

        self._detections = Detections
        with warnings.catch_warnings():  # sv.ByteTrack warns it is deprecated: requirements.txt pins the release that has it
            warnings.filterwarnings("ignore", message="The `ByteTrack` was deprecated", category=FutureWarning)
            self.tracker = ByteTrack(
                track_activation_threshold=TRACK_ACTIVATION_THRESHOLD,
                lost_track_buffer=LOST_TRACK_BUFFER,
                minimum_matching_threshold=MINIMUM_MATCHING_THRESHOLD,
                frame_rate=frame_rate,
                minimum_consecutive_frames=MINIMUM_CONSECUTIVE_FRAMES,
            )
        self.frame_track_ids = np.zeros(0, np.int64)  # this frame's track id per detection (NO_TRACK: none yet)
        super().__init__(width, height, switch_margin, switch_frames, hold_frames)

    def reset(self) -> None:
        """Forget the main person and every track (a new shot, or a frame of another size: no id carries over)."""
        self.tracker.reset()
        super().reset()

    def _release(self) -> None:
        super()._release()
        self.track_id: int | None = None  # the main person's track id; None: picked before their track was confirmed

    def track_ids(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Feed one frame to the tracker; every detection's track id, in the caller's order (NO_TRACK: none)."""
        detections = self._detections(
            xyxy=boxes.astype(np.float32),  # a copy: the tracker never touches the caller's boxes
            confidence=scores.astype(np.float32),
            class_id=np.zeros(len(boxes), np.int64),  # all persons: one class
            data={"index": np.arange(len(boxes))},  # the tracker returns only tracked detections: map them back
        )
        tracked = self.tracker.update_with_detections(detections)
        ids = np.full(len(boxes), NO_TRACK, np.int64)
        if len(tracked):  # with no track the tracker returns Detections.empty(), without our "index"
            ids[tracked.data["index"]] = tracked.tracker_id
        return ids

    def _associate(self, boxes: np.ndarray, scores: np.ndarray) -> int | None:
        self.frame_track_ids = self.track_ids(boxes, scores)  # every frame, whether or not there is a main person
        if self.current is None or self.track_id is None:
            return super()._associate(boxes, scores)  # None without a main person; IoU for one without a track id yet
        carrying = np.flatnonzero(self.frame_track_ids == self.track_id)
        return int(carrying[0]) if len(carrying) else None

    def _take(self, boxes: np.ndarray, scores: np.ndarray, index: int) -> MainPerson:
        track_id = int(self.frame_track_ids[index])
        self.track_id = None if track_id == NO_TRACK else track_id
        return super()._take(boxes, scores, index)


def make_selector(
    association: str,
    width: int,
    height: int,
    switch_margin: float = 1.3,
    switch_frames: int = 3,
    hold_frames: int = 5,
    frame_rate: float | None = None,
) -> MainPersonSelector:
    """The selector for --association: "iou" or "bytetrack" (frame_rate: the source's, for ByteTrack's lost-track wait)."""
    if association == "iou":
        return MainPersonSelector(width, height, switch_margin, switch_frames, hold_frames)
    if association == "bytetrack":
        return TrackedMainPersonSelector(width, height, switch_margin, switch_frames, hold_frames, frame_rate or DEFAULT_FRAME_RATE)
    raise ValueError(f"association must be one of {', '.join(ASSOCIATIONS)}, not {association!r}")


def add_association_argument(parser: argparse.ArgumentParser) -> None:
    """--association, the same in every script that selects a main person."""
    parser.add_argument(
        "--association",
        default="iou",
        choices=ASSOCIATIONS,
        help="how the main person is found again in the next frame: iou (the detection overlapping their box moved at "
        "their velocity by IoU >= 0.3) or bytetrack (the detection carrying their ByteTrack track id, supervision's "
        "tracker over all person boxes); salience, hysteresis and hold are the same (default: iou)",
    )
