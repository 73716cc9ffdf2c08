"""Drawing on BGR uint8 frames (OpenCV's layout), in place."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

MAIN_COLOR = (0, 220, 0)  # BGR green: the main person
OTHER_COLOR = (200, 160, 0)  # BGR teal: every other person
HELD_COLOR = (0, 200, 255)  # BGR amber: main person held over a detector miss


def draw_box(frame: np.ndarray, box: Sequence[float], color: tuple[int, int, int], text: str = "", thickness: int = 1) -> None:
    """One xyxy box with an optional label above it."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    cv2.rectangle(frame, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
    if text:
        (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        top = max(y1 - text_h - 3, 0)
        cv2.rectangle(frame, (x1, top), (x1 + text_w + 2, top + text_h + 3), color, -1)
        cv2.putText(frame, text, (x1 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)


def draw_caption(frame: np.ndarray, text: str) -> None:
    """White text on a dark strip in the top-left corner (frame counter, FPS...)."""
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(frame, (0, 0), (text_w + 6, text_h + 6), (0, 0, 0), -1)
    cv2.putText(frame, text, (3, text_h + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
