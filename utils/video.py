"""Video in and out: any OpenCV source read on a background thread, atomic MP4 writing (PyAV), letterbox resize.

A source is a video file, a stream URL (rtsp://, http://...), a camera index ("0") or a folder of images.
Frames are BGR uint8 (OpenCV's layout). Bad sources raise UserError with one line that says what is wrong.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own chatter would break the one-line errors
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2
import numpy as np

from utils.cli import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_FPS = 25.0  # image folders and streams that do not say their rate
# FFmpeg's 'tty' demuxer plays these text files as ANSI-art "video": refuse them instead of detecting in ASCII art
TEXT_EXTENSIONS = {".txt", ".ans", ".art", ".asc", ".diz", ".ice", ".nfo", ".vt"}
MAX_CONSECUTIVE_BAD_FRAMES = 25  # past this many unreadable frames in a row, a file is taken to be over


@dataclass
class Letterbox:
    """Where a source frame lands inside a fixed output canvas: scaled by `scale`, shifted by (left, top)."""

    scale: float
    left: int
    top: int
    content_width: int
    content_height: int
    width: int
    height: int

    @classmethod
    def fit(cls, source_width: int, source_height: int, width: int, height: int) -> Letterbox:
        """Largest aspect-preserving fit of the source inside width x height, centred."""
        scale = min(width / source_width, height / source_height)
        content_width = min(width, round(source_width * scale))
        content_height = min(height, round(source_height * scale))
        return cls(scale, (width - content_width) // 2, (height - content_height) // 2, content_width, content_height, width, height)

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The frame scaled to the content size (no padding): what the detector sees."""
        if frame.shape[1] == self.content_width and frame.shape[0] == self.content_height:
            return frame
        interpolation = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR  # AREA avoids aliasing when shrinking
        return cv2.resize(frame, (self.content_width, self.content_height), interpolation=interpolation)

    def canvas(self, content: np.ndarray) -> np.ndarray:
        """The resized frame pasted into a black width x height canvas."""
        if content.shape[1] == self.width and content.shape[0] == self.height:
            return content.copy()
        canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        canvas[self.top : self.top + self.content_height, self.left : self.left + self.content_width] = content
        return canvas

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in content pixels -> canvas pixels."""
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + np.array([self.left, self.top] * 2, dtype=np.float32)

    def source_to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in source-frame pixels -> canvas pixels."""
        return self.to_canvas(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * self.scale)


class VideoSource:
    """Frames of a file, URL, camera or image folder, in order; unreadable frames are skipped and counted.

    Opening reads the first frame, so that an unreadable source fails here with a clear message rather than
    later as an empty result.
    """

    def __init__(self, source: str | int) -> None:
        self.name = str(source)
        self.bad_frames: list[int] = []  # indices of frames that could not be decoded
        self._images: list[Path] | None = None
        self._capture: Any = None
        self._first: np.ndarray | None = None
        text = str(source)
        if text.isdigit():
            self._open_capture(int(text), f"camera {text} could not be opened (is a camera attached, and free?)")
        elif "://" in text:
            self._open_capture(text, f"stream {text} could not be opened")
        elif Path(text).is_dir():
            self._open_folder(Path(text))
        elif Path(text).is_file():
            if Path(text).stat().st_size == 0:
                raise UserError(f"{text} is an empty file, not a video")
            if Path(text).suffix.lower() in TEXT_EXTENSIONS:
                raise UserError(f"{text} is a text file, not a video")
            self._open_capture(text, f"{text} holds no readable video (not a video, corrupt, or zero frames)")
        else:
            raise UserError(f"{text}: no such file, folder, URL or camera index")
        height, width = self._first.shape[:2] if self._first is not None else self._first_image_size()
        self.width, self.height = width, height

    def _open_capture(self, target: str | int, failure: str) -> None:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line replaces OpenCV's warnings
        try:
            capture = cv2.VideoCapture(target)
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if not capture.isOpened():
            capture.release()
            raise UserError(failure)
        self._capture = capture
        ok, frame = capture.read()
        if not ok or frame is None:
            capture.release()
            kind = "camera" if isinstance(target, int) else "video"
            raise UserError(f"{self.name}: the {kind} opened but gave no frame (zero frames or an unreadable stream)")
        self._first = frame
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else DEFAULT_FPS
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 and not isinstance(target, int) and "://" not in str(target) else None

    def _open_folder(self, folder: Path) -> None:
        images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self._images = images
        self.fps = DEFAULT_FPS
        self.frame_count = len(images)

    def _first_image_size(self) -> tuple[int, int]:
        for path in self._images or []:
            image = cv2.imread(str(path))
            if image is not None:
                return image.shape[:2]
        raise UserError(f"{self.name}: none of the images could be decoded")

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR frame) for every readable frame; indices of unreadable ones go to bad_frames."""
        if self._images is not None:
            for index, path in enumerate(self._images):
                image = cv2.imread(str(path))
                if image is None:
                    self.bad_frames.append(index)
                    continue
                yield index, image
            return
        yield 0, self._first
        self._first = None
        index, consecutive_bad = 1, 0
        while True:
            ok, frame = self._capture.read()
            if ok and frame is not None:
                consecutive_bad = 0
                yield index, frame
            else:
                # A file whose container says more frames follow: skip the bad one and go on; else it is the end.
                more_expected = self.frame_count is not None and index < self.frame_count
                if not more_expected or consecutive_bad >= MAX_CONSECUTIVE_BAD_FRAMES:
                    break
                consecutive_bad += 1
                self.bad_frames.append(index)
            index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


@dataclass
class Frame:
    """A decoded (and prepared) frame with the times (perf_counter) that its latency is computed from."""

    index: int
    image: np.ndarray
    start_time: float  # decoding started
    ready_time: float  # decoded and prepared, about to be queued
    taken_time: float = 0.0  # handed to the consumer

    @property
    def queue_wait(self) -> float:
        """Seconds spent waiting for, and in, the queue: backlog of a source faster than the consumer."""
        return self.taken_time - self.ready_time


class ThreadedReader:
    """Decodes (and prepares) frames on a background thread into a bounded queue, so decoding overlaps inference.

    `prepare` runs on that thread too (e.g. resize + colour conversion). The queue bound caps memory when the
    consumer is slower than the decoder. An exception on the thread is re-raised in the consumer.
    """

    def __init__(
        self,
        source: VideoSource,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
        max_frames: int | None = None,
        queue_size: int = 16,
        timer: Any = None,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.max_frames = max_frames
        self.timer = timer  # a utils.timing.StageTimer, or None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._run, name="video-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            frames = iter(self.source)
            produced = 0
            while self.max_frames is None or produced < self.max_frames:
                start = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                decoded = time.perf_counter()
                index, image = item
                if self.prepare is not None:
                    image = self.prepare(image)
                ready = time.perf_counter()
                if self.timer is not None:
                    self.timer.add("decode", decoded - start)
                    self.timer.add("preprocess", ready - decoded)
                if not self._put(Frame(index, image, start, ready)):
                    return
                produced += 1
            self._put(self._done)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is self._done:
                return
            if isinstance(item, BaseException):
                raise item
            item.taken_time = time.perf_counter()
            yield item

    def batches(self, batch_size: int) -> Iterator[list[Frame]]:
        """Lists of up to batch_size frames, in order."""
        batch: list[Frame] = []
        for frame in self:
            batch.append(frame)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()


class VideoWriter:
    """MP4 (MPEG-4 Part 2) writer through PyAV, at exactly the size asked for (OpenCV's writer rounds 427 down to 426).

    The file only shows up under its final name once closed: an aborted run leaves no half-written video.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, bit_rate: int = 1_500_000) -> None:
        import av

        self.path = Path(path)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        try:
            self._partial.open("wb").close()  # PyAV opens the file lazily: find out now whether it can be written
            self._container = av.open(str(self._partial), mode="w", format="mp4")
        except OSError as error:
            raise UserError(f"cannot write a video to {self.path}: {error.strerror or error}") from None
        self._stream = self._container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.bit_rate = bit_rate  # ~1.5 Mb/s keeps thin boxes and text sharp at 427x240
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame of the writer's size."""
        import av

        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to its final name."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._container.close()
        self._partial.unlink(missing_ok=True)
