import itertools
import threading

import cv2
import numpy as np
import pytest
from conftest import TUD_CAMPUS, TUD_CLIP

from utils.cli import UserError
from utils.video import Letterbox, ThreadedReader, VideoSource, VideoWriter


def test_letterbox_4_3_into_427x240():
    box = Letterbox.fit(640, 480, 427, 240)
    assert (box.content_width, box.content_height, box.left, box.top) == (320, 240, 53, 0)
    np.testing.assert_allclose(box.source_to_canvas([[0, 0, 640, 480]]), [[53, 0, 373, 240]])
    canvas = box.canvas(np.full((240, 320, 3), 255, np.uint8))
    assert canvas.shape == (240, 427, 3) and canvas[:, :53].max() == 0 and canvas[:, 53:373].min() == 255


def test_letterbox_16_9_fills_the_canvas():
    box = Letterbox.fit(768, 432, 427, 240)
    assert (box.content_width, box.content_height, box.left, box.top) == (427, 240, 0, 0)
    assert box.resize(np.zeros((432, 768, 3), np.uint8)).shape == (240, 427, 3)


def test_video_file_every_frame_in_order():
    source = VideoSource(str(TUD_CLIP))
    assert (source.width, source.height, source.fps, source.frame_count) == (640, 480, 25.0, 71)
    indices = [index for index, _ in source]
    assert indices == list(range(71)) and source.bad_frames == []


def test_image_folder_skips_and_counts_a_corrupt_frame(frame_folder):
    source = VideoSource(str(frame_folder))
    indices = [index for index, frame in source if frame.shape == (480, 640, 3)]
    assert indices == [0, 1, 2, 4, 5]
    assert source.bad_frames == [3]


def test_video_file_skips_and_counts_a_corrupt_frame(corrupt_video):
    source = VideoSource(str(corrupt_video))
    assert [index for index, _ in source] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert source.bad_frames == [5]


def written(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: str(tmp / "missing.mp4"), "no such file"),
        (lambda tmp: written(tmp / "empty.mp4", b""), "empty file"),
        (lambda tmp: written(tmp / "notes.mp4", b"not a video\n" * 50), "no readable video"),
        (lambda tmp: (tmp / "images").mkdir() or str(tmp / "images"), "holds no images"),
        (lambda tmp: "7", "camera 7 could not be opened"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, make_source, message):
    with pytest.raises(UserError, match=message) as error:
        VideoSource(make_source(tmp_path))
    assert "\n" not in str(error.value)


def test_zero_frame_video_is_an_error(tmp_path):
    path = tmp_path / "zero.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    writer.release()  # a container with no frames
    with pytest.raises(UserError, match=r"no readable video|gave no frame"):
        VideoSource(str(path))


def test_threaded_reader_keeps_order_prepares_and_batches():
    reader = ThreadedReader(VideoSource(str(TUD_CAMPUS / "img1")), prepare=lambda f: f[::2, ::2], max_frames=10, queue_size=2)
    batches = list(reader.batches(4))
    reader.close()
    assert [len(batch) for batch in batches] == [4, 4, 2]
    frames = [frame for batch in batches for frame in batch]
    assert [frame.index for frame in frames] == list(range(10))
    assert frames[0].image.shape == (240, 320, 3)
    assert all(a.start_time <= b.start_time for a, b in itertools.pairwise(frames))


def test_threaded_reader_reraises_errors_from_its_thread():
    def broken(frame):
        raise ValueError("prepare failed")

    reader = ThreadedReader(VideoSource(str(TUD_CLIP)), prepare=broken)
    with pytest.raises(ValueError, match="prepare failed"):
        list(reader)
    reader.close()


def test_threaded_reader_close_early_does_not_hang():
    reader = ThreadedReader(VideoSource(str(TUD_CLIP)), queue_size=1)
    next(iter(reader))
    reader.close()
    assert not any(thread.name == "video-reader" and thread.is_alive() for thread in threading.enumerate())


def test_video_writer_exact_size_and_frame_count(tmp_path):
    path = tmp_path / "out.mp4"
    writer = VideoWriter(path, 25, 427, 240)
    for value in range(12):
        writer.write(np.full((240, 427, 3), value * 20, np.uint8))
    assert not path.exists()  # only under its final name once complete
    writer.close()
    capture = cv2.VideoCapture(str(path))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (427, 240)
    assert sum(1 for _ in iter(lambda: capture.read()[0] or None, None)) == 12


def test_video_writer_abort_leaves_nothing(tmp_path):
    writer = VideoWriter(tmp_path / "out.mp4", 25, 427, 240)
    writer.write(np.zeros((240, 427, 3), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_video_writer_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write a video"):
        VideoWriter(blocker / "out.mp4", 25, 427, 240)
