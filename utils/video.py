"""Image and video in and out: the one image reader, any OpenCV source read on a background thread, atomic MP4
writing (PyAV), letterbox resize.

read_rgb_image is the project's only image decoder: every image file or upload (video folders, the Mask R-CNN's
training images and its API, the classification folders) goes through it and comes out RGB uint8, upright (EXIF),
with truncated files and files over a pixel limit refused, so training and serving see the same pixels.
A video source is a video file, a stream URL (rtsp://, http://...), a camera index ("0"), a folder of images or one
image. Its frames are BGR uint8 (OpenCV's layout, which its drawing and VideoWriter take); images in it are read by
read_rgb_image and turned to BGR in one place. Bad sources raise UserError with one line that says what is wrong.
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own chatter would break the one-line errors
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2
import numpy as np
from PIL import Image, ImageOps

from utils.cli import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_FPS = 25.0  # image folders and streams that do not say their rate
# FFmpeg's 'tty' demuxer plays these text files as ANSI-art "video": refuse them instead of detecting in ASCII art
TEXT_EXTENSIONS = {".txt", ".ans", ".art", ".asc", ".diz", ".ice", ".nfo", ".vt"}
MAX_CONSECUTIVE_BAD_FRAMES = 25  # past this many unreadable frames in a row, a file is taken to be over
# Frames above this many pixels are refused before decoding. 8192 x 8192 = 67 MP takes every 8K video frame (33 MP)
# and camera photos up to 64 MP (9248 x 6936), decodes to 200 MB of RGB, and stays under Pillow's own decompression
# bomb warning (89 MP), so Pillow never speaks first. A 20000 x 20000 PNG (400 MP, 1.2 GB decoded) is refused.
MAX_PIXELS = 8192 * 8192
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk with its CRC: the last thing a complete PNG holds
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's 16/32-bit integer greyscale modes


@contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's own log lines off for a call whose failure we report ourselves, in one line."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG runs to its end-of-image marker (OpenCV decodes a truncated JPEG into a half-grey frame without
    complaint). Walks the marker segments: lengths skip headers (and an EXIF thumbnail's own markers); after each
    start-of-scan the compressed data runs to the next marker (0xFF not followed by 0x00 stuffing or RST0-7).
    Data after the end marker (phone 'motion photos' append a video) is allowed. ~0.1 ms for a 640x480 frame.
    """
    buffer = np.frombuffer(data, np.uint8)
    starts = np.flatnonzero(buffer[:-1] == 0xFF)
    following = buffer[starts + 1]
    markers = starts[(following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))]
    position = 2  # past the start-of-image marker
    while position + 1 < len(data):
        if data[position] != 0xFF:
            return False  # not at a marker: a length pointed into nowhere
        marker = data[position + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, or a marker without a length
            position += 1 if marker == 0xFF else 2
            continue
        if position + 4 > len(data):
            return False
        position += 2 + (data[position + 2] << 8 | data[position + 3])
        if marker == 0xDA:  # start of scan: skip the compressed data to the next marker
            following_marker = int(np.searchsorted(markers, position))
            if following_marker == len(markers):
                return False
            position = int(markers[following_marker])
    return False


class ImageTooLargeError(UserError):
    """An image over the pixel limit, refused from its header before decoding (the API answers it with 413)."""


def read_rgb_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The one image reader: a file (path) or an upload (bytes) as RGB uint8, H x W x 3, C-contiguous and writable.

    Guarantees, in the order they are checked:
    - more than max_pixels (width x height from the header): ImageTooLargeError, before a pixel is decoded;
    - a JPEG without its end marker or a PNG without its IEND chunk: a UserError (OpenCV fills the missing part
      with grey without a word), as is anything Pillow cannot identify or decode;
    - EXIF orientation applied (wherever Pillow finds the tag: JPEG, PNG, WebP, TIFF), so the pixels are upright
      as a viewer shows them; an unreadable EXIF block counts as no orientation, as in OpenCV;
    - every colour mode becomes 8-bit RGB: grey, bilevel, palette, CMYK and YCbCr as Pillow converts them; 16-bit
      grey scaled over its full range (not clipped at 255); anything with alpha (RGBA, LA, a transparent palette)
      composited onto white. A multi-frame file (GIF, TIFF) gives its first frame.
    Every error is a UserError of one line that starts with the file's path, or "upload" for bytes. Pixels are
    Pillow's (libjpeg-turbo); for the bundled 8-bit JPEGs and PNGs they equal cv2.imread's, channel order aside.
    """
    name = "upload" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else _read_bytes(Path(source))
    image = _open_header(data, name, max_pixels)
    try:
        if (image.format in ("JPEG", "MPO") and not jpeg_is_complete(data)) or (image.format == "PNG" and PNG_END not in data):
            raise UserError(f"{name}: truncated {image.format} (its end marker is missing)")
        _decode_upright(image, name)
        return _rgb_pixels(image, name)
    finally:
        image.close()


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing or unreadable file is a one-line UserError."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None


def _open_header(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image opened lazily (header only: nothing decoded yet), refused when its size is over max_pixels."""
    try:
        with warnings.catch_warnings():  # our one line replaces Pillow's warnings (decompression bomb)
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageTooLargeError(
            f"{name}: more than {pillow_limit:.0f} MP (Pillow's decompression-bomb limit; max_pixels is {_pixel_count(max_pixels)}): not decoded"
        ) from None
    except Image.UnidentifiedImageError:
        raise UserError(f"{name}: not a readable image (no image format recognised)") from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... on broken headers
        raise UserError(f"{name}: not a readable image ({_first_line(error)})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"{name}: {width}x{height} is {_pixel_count(width * height)}, over the limit of {_pixel_count(max_pixels)} (max_pixels): not decoded"
        )
    return image


def _decode_upright(image: Image.Image, name: str) -> None:
    """Decode the pixels, then turn them as the EXIF orientation tag says (in place)."""
    try:
        image.load()
    except Exception as error:  # OSError (broken data stream), SyntaxError, ValueError, zlib/struct errors...
        raise UserError(f"{name}: a {image.format} header, but the pixels could not be decoded ({_first_line(error)})") from None
    try:
        with warnings.catch_warnings():  # a corrupt EXIF block warns; it only means "no orientation" here
            warnings.simplefilter("ignore")
            ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # an EXIF block Pillow cannot parse: shown as stored, as OpenCV does
        pass


def _rgb_pixels(image: Image.Image, name: str) -> np.ndarray:
    """A decoded image of any colour mode as RGB uint8 (the conversions read_rgb_image documents)."""
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's own convert('L') would clip at 255: scale the full range instead
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or pixels.max() <= 65535 else float(pixels.max())
        grey = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    try:
        if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
            rgba = image.convert("RGBA")  # what a transparent pixel shows on a white page, not its hidden colour
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as error:  # a mode Pillow cannot convert (LAB, HSV...)
        raise UserError(f"{name}: colour mode {image.mode} cannot be converted to RGB ({_first_line(error)})") from None
    return np.array(rgb)  # a copy: np.asarray of a Pillow image is read-only


def _pixel_count(pixels: int) -> str:
    """'67.1 MP', or the exact count under 1 MP, where one decimal of a megapixel would hide the difference."""
    return f"{pixels / 1e6:.1f} MP" if pixels >= 1_000_000 else f"{pixels:,} pixels"


def _first_line(error: Exception) -> str:
    """'Type: first line of the message', short: what a one-line error can say about a library's exception."""
    message = str(error).splitlines()[0][:120] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


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


def _image_as_frame(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as a VideoSource frame: read_rgb_image's pixels in BGR, the order VideoCapture's frames have."""
    return cv2.cvtColor(read_rgb_image(path, max_pixels), cv2.COLOR_RGB2BGR)


class VideoSource:
    """Frames of a file, URL, camera, image folder or single image, in order; unreadable frames are skipped and counted.

    Opening reads the first frame, so that an unreadable source fails here with a clear message rather than
    later as an empty result. `width` and `height` are the first frame's size: the images of a folder may differ in
    size, and each is yielded at its own. Images go through read_rgb_image: in a folder, one that is corrupt, truncated
    or over max_pixels is a bad frame (skipped, counted in bad_frames, a warning on stderr) like an undecodable video
    frame, and the run goes on; a single image file has no other frame, so there it is a UserError. max_pixels also
    refuses a video whose frame size (from the container) is over it.
    """

    def __init__(self, source: str | int, max_pixels: int = MAX_PIXELS) -> None:
        self.name = str(source)
        self.max_pixels = max_pixels
        self.bad_frames: list[int] = []  # indices of frames that could not be decoded
        self._images: list[Path] | None = None
        self._capture: Any = None
        self._first: np.ndarray | None = None
        self._first_index = 0  # an image folder's first readable image, decoded on opening and yielded from memory
        text = str(source)
        if text.isdigit():
            self._open_capture(int(text), f"camera {text} could not be opened (is a camera attached, and free?)")
        elif "://" in text:
            self._open_capture(text, f"stream {text} could not be opened")
        elif Path(text).is_dir():
            self._open_images(sorted(path for path in Path(text).iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS))
        elif Path(text).is_file():
            if Path(text).stat().st_size == 0:
                raise UserError(f"{text} is an empty file, not a video or image")
            if Path(text).suffix.lower() in TEXT_EXTENSIONS:
                raise UserError(f"{text} is a text file, not a video")
            if Path(text).suffix.lower() in IMAGE_EXTENSIONS:
                self._open_images([Path(text)])  # a one-frame source
            else:
                self._open_capture(text, f"{text} holds no readable video (not a video, corrupt, or zero frames)")
        else:
            raise UserError(f"{text}: no such file, folder, URL or camera index")
        self.height, self.width = self._first.shape[:2]

    def _open_capture(self, target: str | int, failure: str) -> None:
        with opencv_quiet():
            capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            raise UserError(failure)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > self.max_pixels:
            capture.release()
            raise UserError(f"{self.name}: {width}x{height} frames are over the limit of {self.max_pixels / 1e6:.1f} MP (max_pixels)")
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

    def _open_images(self, images: list[Path]) -> None:
        if not images:
            raise UserError(f"{self.name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self._images = images
        self.fps = DEFAULT_FPS
        self.frame_count = len(images)
        errors = []
        for index, path in enumerate(images):  # the bad ones before it are reported when iterating, once
            try:
                self._first, self._first_index = _image_as_frame(path, self.max_pixels), index
                return
            except UserError as error:
                errors.append(error)
        if len(images) == 1:
            raise errors[0]  # a single image: its own one-line reason
        raise UserError(f"{self.name}: none of its {len(images)} images could be read (the first: {errors[0]})")

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR frame) for every readable frame; indices of unreadable ones go to bad_frames."""
        if self._images is not None:
            for index, path in enumerate(self._images):
                if index == self._first_index and self._first is not None:
                    image, self._first = self._first, None
                    yield index, image
                    continue
                try:
                    image = _image_as_frame(path, self.max_pixels)
                except UserError as error:
                    print(f"warning: {error}: frame {index} skipped", file=sys.stderr)
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


def read_spread_frames(source: str, count: int) -> list[np.ndarray]:
    """`count` RGB frames spread evenly over a video or image folder: calibration data for static INT8."""
    if count <= 0:
        raise UserError("static quantisation needs calibration data: --calib-frames must be at least 1")
    video = VideoSource(source)
    try:
        step = max((video.frame_count or count) // count, 1)
        frames = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for index, frame in video if index % step == 0][:count]
    finally:
        video.close()
    if not frames:
        raise UserError(f"{source}: no readable calibration frames")
    return frames
