import io
import itertools
import shutil
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest
from conftest import TUD_CAMPUS, TUD_CLIP
from PIL import Image, ImageFile

from utils.cli import UserError
from utils.video import (
    ImageTooLargeError,
    Letterbox,
    ThreadedReader,
    VideoSource,
    VideoWriter,
    jpeg_is_complete,
    read_rgb_image,
)

FRAME = TUD_CAMPUS / "img1" / "000001.jpg"  # a real 640x480 JPEG


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


######################################################################################################################
# Images: one reader for single files and folders


def exif_rotated_jpeg(path, orientation: int):
    """TUD-Campus frame 1 stored as is, with an EXIF orientation tag that says how to turn it for display."""
    image = Image.open(FRAME)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("orientation, turn", [(6, cv2.ROTATE_90_CLOCKWISE), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)])
def test_exif_rotation_applied_alike_to_a_file_and_a_folder(tmp_path, orientation, turn):
    (tmp_path / "folder").mkdir()
    path = exif_rotated_jpeg(tmp_path / "folder" / "rotated.jpg", orientation)
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert stored.shape == (480, 640, 3)
    single, folder = VideoSource(str(path)), VideoSource(str(tmp_path / "folder"))
    assert (single.width, single.height, single.frame_count) == (folder.width, folder.height, folder.frame_count) == (480, 640, 1)
    [(index, from_file)] = list(single)
    [(_, from_folder)] = list(folder)
    assert index == 0 and np.array_equal(from_file, from_folder)
    assert np.array_equal(from_file, cv2.rotate(stored, turn))  # turned as the tag says, not merely transposed


def truncated(source, path, keep: float):
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_jpeg_in_a_folder_is_a_bad_frame(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in range(1, 6):
        shutil.copy(TUD_CAMPUS / "img1" / f"{number:06d}.jpg", folder)
    truncated(TUD_CAMPUS / "img1" / "000003.jpg", folder / "000003.jpg", 0.6)
    assert cv2.imread(str(folder / "000003.jpg")) is not None  # what OpenCV alone does: a half-grey "good" frame
    source = VideoSource(str(folder))
    assert [index for index, _ in source] == [0, 1, 3, 4] and source.bad_frames == [2]
    assert "000003.jpg: truncated JPEG" in capsys.readouterr().err


def test_truncated_single_images_are_errors(tmp_path):
    with pytest.raises(UserError, match=r"truncated JPEG") as error:
        VideoSource(str(truncated(FRAME, tmp_path / "cut.jpg", 0.95)))
    assert "\n" not in str(error.value)
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.imread(str(FRAME)))
    with pytest.raises(UserError, match=r"truncated PNG"):
        read_rgb_image(truncated(tmp_path / "frame.png", tmp_path / "cut.png", 0.9))


def test_jpeg_end_check_on_every_cut_and_with_data_after_the_end():
    data = FRAME.read_bytes()
    assert jpeg_is_complete(data)
    cuts = [*range(100, len(data), len(data) // 50), *range(len(data) - 8, len(data))]
    assert not any(jpeg_is_complete(data[:cut]) for cut in cuts)
    assert jpeg_is_complete(data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)))  # a phone's "motion photo" video
    # A header segment holding a whole small JPEG (as an EXIF thumbnail does), end marker included: only the main
    # image's own end counts, so cutting the main image is still caught
    thumbnail = cv2.imencode(".jpg", cv2.imread(str(FRAME))[::8, ::8])[1].tobytes()
    with_thumbnail = data[:2] + b"\xff\xfe" + struct.pack(">H", len(thumbnail) + 2) + thumbnail + data[2:]
    assert jpeg_is_complete(with_thumbnail) and not jpeg_is_complete(with_thumbnail[: len(thumbnail) + 1000])
    assert cv2.imdecode(np.frombuffer(with_thumbnail, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch, recwarn):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded despite the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # Pillow's decoding step: every format goes through it
    with pytest.raises(
        ImageTooLargeError, match=r"000001\.jpg: 640x480 is 307,200 pixels, over the limit of 307,199 pixels \(max_pixels\): not decoded"
    ):
        VideoSource(str(FRAME), max_pixels=640 * 480 - 1)
    with pytest.raises(UserError, match="decoded despite the limit"):  # at the limit it decodes: the patch sees it
        read_rgb_image(FRAME, max_pixels=640 * 480)

    # PNG headers of 10000x10000 and 20000x20000 (1.2 GB decoded) are refused from their few bytes, without warnings
    def png_header(path, width, height):
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
        return str(path)

    with pytest.raises(UserError, match=r"big\.png: 10000x10000 is 100\.0 MP, over the limit of 67\.1 MP \(max_pixels\)"):
        VideoSource(png_header(tmp_path / "big.png", 10000, 10000))
    with pytest.raises(UserError, match=r"huge\.png: more than 179 MP \(Pillow's decompression-bomb limit; max_pixels is 67\.1 MP\)"):
        VideoSource(png_header(tmp_path / "huge.png", 20000, 20000))
    assert len(recwarn) == 0


def mixed_size_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    frame = cv2.imread(str(FRAME))
    cv2.imwrite(str(folder / "a.jpg"), frame)
    cv2.imwrite(str(folder / "b.png"), cv2.resize(frame, (320, 240)))
    cv2.imwrite(str(folder / "c.jpg"), cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE))
    cv2.imwrite(str(folder / "d.bmp"), cv2.resize(frame, (160, 120)))
    return folder


def test_folder_of_mixed_sizes_yields_each_at_its_own_size(tmp_path):
    source = VideoSource(str(mixed_size_folder(tmp_path)))
    assert (source.width, source.height) == (640, 480)  # the first frame's
    assert [(index, frame.shape) for index, frame in source] == [
        (0, (480, 640, 3)),
        (1, (240, 320, 3)),
        (2, (640, 480, 3)),
        (3, (120, 160, 3)),
    ]
    assert source.bad_frames == []


def test_oversized_image_in_a_folder_is_a_bad_frame(tmp_path, capsys):
    source = VideoSource(str(mixed_size_folder(tmp_path)), max_pixels=320 * 240)
    assert (source.width, source.height) == (320, 240)  # the first image it could read
    assert [(index, frame.shape) for index, frame in source] == [(1, (240, 320, 3)), (3, (120, 160, 3))]
    assert source.bad_frames == [0, 2]
    assert capsys.readouterr().err.count("over the limit of 76,800 pixels (max_pixels)") == 2  # once each, not again on opening


def test_folder_with_no_readable_image_is_an_error(tmp_path):
    truncated(FRAME, tmp_path / "a.jpg", 0.5)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"none of its 2 images could be read \(the first: .*a\.jpg: truncated JPEG"):
        VideoSource(str(tmp_path))


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def asymmetric_photo() -> Image.Image:
    """64x48 with a different colour in each corner: any turn or mirror moves them."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:24, :32], pixels[:24, 32:], pixels[24:, :32], pixels[24:, 32:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)
    return Image.fromarray(pixels)


# EXIF orientation -> the numpy turn that shows the stored pixels upright (np.rot90 turns counter-clockwise)
UPRIGHT = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1), 2: lambda a: a[:, ::-1]}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_reader_turns_an_exif_oriented_jpeg_upright_from_a_path_and_from_bytes(tmp_path, orientation):
    photo = asymmetric_photo()
    exif = photo.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.jpg"
    path.write_bytes(encoded(photo, "JPEG", exif=exif, quality=95))
    with Image.open(path) as stored:  # the pixels as stored, the tag not applied
        as_stored = np.asarray(stored.convert("RGB"))
    upright = read_rgb_image(path)
    assert upright.dtype == np.uint8 and upright.flags.c_contiguous and upright.flags.writeable
    assert np.array_equal(upright, UPRIGHT[orientation](as_stored))
    assert np.array_equal(read_rgb_image(path.read_bytes()), upright)  # an upload: the same pixels


def test_reader_gives_opencvs_pixels_in_rgb_and_video_source_gives_them_in_bgr():
    bgr = cv2.imread(str(FRAME))
    assert np.array_equal(read_rgb_image(FRAME), bgr[:, :, ::-1])  # Pillow decodes the bundled JPEGs as OpenCV does
    [(_, frame)] = list(VideoSource(str(FRAME)))
    assert np.array_equal(frame, bgr)  # a VideoSource's image frames are BGR, like its video frames


def palette_png() -> bytes:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 200, 30, 10])  # index 1: a red
    return encoded(image)


@pytest.mark.parametrize(
    "make, expected",
    [
        (palette_png, (200, 30, 10)),
        (lambda: encoded(Image.new("RGBA", (6, 4), (255, 0, 0, 0))), (255, 255, 255)),  # transparent: white, not its red
        (lambda: encoded(Image.new("RGBA", (6, 4), (0, 0, 255, 255))), (0, 0, 255)),  # opaque: itself
        (lambda: encoded(Image.new("LA", (6, 4), (0, 128))), (127, 127, 127)),  # half-transparent black on white
        (lambda: encoded(Image.fromarray(np.full((4, 6), 65535, np.uint16))), (255, 255, 255)),  # 16-bit white
        (lambda: encoded(Image.fromarray(np.full((4, 6), 32896, np.uint16))), (128, 128, 128)),  # 16-bit mid: scaled
        (lambda: encoded(Image.new("L", (6, 4), 77)), (77, 77, 77)),
        (lambda: encoded(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG"), "red"),
    ],
    ids=["palette", "rgba-clear", "rgba-opaque", "la", "grey16-white", "grey16-mid", "grey8", "cmyk-jpeg"],
)
def test_reader_converts_every_colour_mode_to_rgb_uint8(make, expected):
    pixels = read_rgb_image(make())
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    if expected == "red":  # JPEG is lossy: red within a margin
        assert pixels[..., 0].min() > 200 and pixels[..., 1:].max() < 60
    else:
        assert (np.abs(pixels.astype(int) - expected) <= 1).all(), pixels[0, 0]


def test_reader_refuses_truncated_and_corrupt_files_in_one_line(tmp_path):
    corrupt_png = bytearray(encoded(asymmetric_photo()))
    start = corrupt_png.index(b"IDAT") + 8
    corrupt_png[start : start + 40] = bytes(40)  # IEND intact: only decoding can find this
    cases = [
        (truncated(FRAME, tmp_path / "cut.jpg", 0.6), r"cut\.jpg: truncated JPEG \(its end marker is missing\)"),
        (bytes(corrupt_png), r"^upload: a PNG header, but the pixels could not be decoded \(OSError"),
        (b"GIF89a" + bytes(range(256)), r"^upload: not a readable image"),
        (written(tmp_path / "notes.jpg", b"just text\n" * 20), r"notes\.jpg: not a readable image \(no image format recognised\)"),
        (tmp_path / "missing.png", r"missing\.png: cannot read \(No such file"),
    ]
    for source, message in cases:
        with pytest.raises(UserError, match=message) as error:
            read_rgb_image(source)
        assert "\n" not in str(error.value) and not isinstance(error.value, ImageTooLargeError)


def test_reader_refuses_a_huge_upload_from_its_header(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded despite the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = encoded(Image.new("L", (400, 300)))  # a few hundred bytes for 120,000 pixels
    with pytest.raises(ImageTooLargeError, match=r"^upload: 400x300 is 120,000 pixels, over the limit of 20,000 pixels"):
        read_rgb_image(bomb, max_pixels=20_000)


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
