"""mask_api.py: every endpoint and bad input through Flask's test client, then real server processes (waitress and
`flask run`) under concurrent requests."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import mask_api
from utils.cli import UserError
from utils.maskrcnn import Instance

BALLOON_VAL = REPO / "assets" / "data" / "balloon" / "val"


def balloon_jpeg(index: int = 0) -> bytes:
    return sorted(BALLOON_VAL.glob("*.jpg"))[index].read_bytes()


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app():
    return mask_api.create_app()  # the shipped model, as `flask run` serves it


@pytest.fixture
def client(app):
    return app.test_client()


class FakeSegmenter:
    """Two overlapping square masks on whatever image comes in: the percentage arithmetic without the model."""

    def __call__(self, image: np.ndarray, threshold: float) -> tuple[list[Instance], float]:
        height, width = image.shape[:2]
        first, second = np.zeros((height, width), bool), np.zeros((height, width), bool)
        first[:50, :50] = True  # 2500 px
        second[25:75, 25:75] = True  # 2500 px, 625 of them under the first too
        return [Instance(1, "balloon", 0.9, [0, 0, 50, 50], first), Instance(1, "balloon", 0.8, [25, 25, 75, 75], second)], 0.001


@pytest.fixture
def fake_client(app, monkeypatch):
    monkeypatch.setitem(app.extensions, "segmenter", FakeSegmenter())
    return app.test_client()


######################################################################################################################
# The model's answers


def test_predict_returns_instances_and_the_union_share_for_a_real_balloon(client):
    response = client.post("/predict", data={"image": (io.BytesIO(balloon_jpeg()), "balloon.jpg")})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    width, height = Image.open(io.BytesIO(balloon_jpeg())).size
    assert body["image"] == {"width": width, "height": height}
    assert body["instances"] and all(item["label"] == "balloon" and item["score"] >= 0.5 for item in body["instances"])
    masked_pixels = body["masked_percent"] / 100 * width * height
    pixels = [item["mask_pixels"] for item in body["instances"]]
    assert max(pixels) - 1 <= masked_pixels <= sum(pixels) + 1  # a union: at least the largest, at most the sum
    assert body["masked_percent"] + body["unmasked_percent"] == pytest.approx(100.0)
    assert body["timings_ms"]["inference"] > 0


def test_overlapping_masks_are_counted_once(fake_client):
    image = encoded(Image.new("RGB", (100, 100), "white"))
    body = fake_client.post("/predict", data=image, content_type="image/png").get_json()
    assert [item["mask_pixels"] for item in body["instances"]] == [2500, 2500]
    assert body["masked_percent"] == pytest.approx((2500 + 2500 - 625) / 100**2 * 100)  # 43.75, not 50


def test_png_answer_has_the_input_size_and_the_share_in_a_header(client):
    for query, headers in (("?format=png", {}), ("", {"Accept": "image/png"})):
        response = client.post(f"/predict{query}", data=balloon_jpeg(1), content_type="image/jpeg", headers=headers)
        assert response.status_code == 200 and response.mimetype == "image/png"
        drawn = Image.open(io.BytesIO(response.data))
        assert drawn.size == Image.open(io.BytesIO(balloon_jpeg(1))).size
        assert 0 < float(response.headers["X-Masked-Percent"]) < 100


def test_score_threshold_parameter(client):
    assert client.post("/predict?score_threshold=1", data=balloon_jpeg(), content_type="image/jpeg").get_json()["instances"] == []
    for bad in ("abc", "1.5", "-0.1"):
        response = client.post(f"/predict?score_threshold={bad}", data=balloon_jpeg(), content_type="image/jpeg")
        assert response.status_code == 400 and "score_threshold" in response.get_json()["error"]


def test_score_threshold_from_the_form(fake_client):
    response = fake_client.post("/predict", data={"image": (io.BytesIO(balloon_jpeg()), "b.jpg"), "score_threshold": "0.3"})
    assert response.get_json()["score_threshold"] == 0.3


######################################################################################################################
# What real uploads look like


@pytest.mark.parametrize(
    "make",
    [
        lambda: encoded(Image.new("L", (120, 80), 128)),  # greyscale
        lambda: encoded(Image.new("RGBA", (120, 80), (255, 0, 0, 0))),  # transparent
        lambda: encoded(Image.new("P", (120, 80))),  # palette
        lambda: encoded(Image.fromarray(np.full((80, 120), 40000, np.uint16))),  # 16-bit
        lambda: encoded(Image.new("CMYK", (120, 80), (0, 255, 255, 0)), "JPEG"),  # CMYK JPEG
        lambda: encoded(Image.new("RGB", (120, 80), "blue"), "WEBP"),
    ],
    ids=["grey", "rgba", "palette", "16bit", "cmyk", "webp"],
)
def test_image_modes_are_converted(fake_client, make):
    body = fake_client.post("/predict", data=make(), content_type="application/octet-stream").get_json()
    assert body["image"] == {"width": 120, "height": 80}


def test_sixteen_bit_and_cmyk_pixels_come_out_right():
    grey = mask_api.decode_image(encoded(Image.fromarray(np.full((4, 6), 65535 // 2, np.uint16))))
    assert grey.shape == (4, 6, 3) and abs(int(grey[0, 0, 0]) - 128) <= 1  # scaled, not clipped to 255
    red = mask_api.decode_image(encoded(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG"))
    assert red[0, 0, 0] > 200 and red[0, 0, 1] < 60
    see_through = mask_api.decode_image(encoded(Image.new("RGBA", (6, 4), (0, 0, 0, 0))))
    assert (see_through == 255).all()  # transparent pixels land on white, not black


def test_exif_orientation_is_applied(fake_client):
    image = Image.new("RGB", (120, 80), "green")
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    body = fake_client.post("/predict", data=encoded(image, "JPEG", exif=exif), content_type="image/jpeg").get_json()
    assert body["image"] == {"width": 80, "height": 120}


def test_served_pixels_are_the_training_pixels_for_an_exif_rotated_photo(app, monkeypatch, tmp_path):
    """Training (utils.instances, as maskrcnn_train reads) and serving read an EXIF-rotated photo to the same pixels."""
    from utils.instances import load_image

    seen = []

    def recording_segmenter(image: np.ndarray, threshold: float) -> tuple[list, float]:
        seen.append(image)
        return [], 0.001

    monkeypatch.setitem(app.extensions, "segmenter", recording_segmenter)
    photo = Image.open(io.BytesIO(balloon_jpeg())).resize((80, 124))  # a real balloon photo, small: 80 wide, 124 high
    exif = photo.getexif()
    exif[0x0112] = 8  # Orientation: rotate 90 degrees counter-clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encoded(photo, "JPEG", exif=exif))
    body = app.test_client().post("/predict", data=path.read_bytes(), content_type="image/jpeg").get_json()
    trained_on, scale = load_image(path)
    assert body["image"] == {"width": 124, "height": 80} and scale == 1.0  # upright, as a viewer shows it
    assert np.array_equal(seen[0], trained_on)


######################################################################################################################
# Bad input: a JSON error, the server keeps serving


def test_bad_uploads_get_json_errors(app, fake_client):
    text = fake_client.post("/predict", data={"image": (io.BytesIO(b"just some text\n"), "notes.txt")})
    assert text.status_code == 415 and text.get_json()["status"] == 415
    truncated = fake_client.post("/predict", data=balloon_jpeg()[:5000], content_type="image/jpeg")
    assert truncated.status_code == 415 and truncated.get_json()["error"] == "upload: truncated JPEG (its end marker is missing)"
    missing = fake_client.post("/predict", data={"picture": (io.BytesIO(balloon_jpeg()), "b.jpg")})
    assert missing.status_code == 400 and "'image'" in missing.get_json()["error"]
    empty = fake_client.post("/predict", data=b"", content_type="image/jpeg")
    assert empty.status_code == 400
    assert fake_client.get("/predict").status_code == 405 and fake_client.get("/nothing").get_json()["status"] == 404
    assert fake_client.post("/predict?format=gif", data=balloon_jpeg()).status_code == 400
    assert fake_client.get("/health").get_json()["status"] == "ok"  # still serving


def test_too_large_uploads_and_decompression_bombs_get_413(monkeypatch, tmp_path):
    small = mask_api.create_app(max_upload_bytes=50_000, max_pixels=20_000)
    monkeypatch.setitem(small.extensions, "segmenter", FakeSegmenter())
    client = small.test_client()
    big = client.post("/predict", data={"image": (io.BytesIO(balloon_jpeg()), "b.jpg")})  # ~100+ kB
    assert big.status_code == 413 and big.get_json()["status"] == 413
    bomb = encoded(Image.new("L", (400, 300)))  # a few hundred bytes that decode to 120,000 pixels
    assert len(bomb) < 50_000
    response = client.post("/predict", data=bomb, content_type="image/png")
    assert response.status_code == 413 and "400x300" in response.get_json()["error"]


def test_model_health_and_form(client):
    model = client.get("/model").get_json()
    assert model["classes"] == ["balloon"] and model["backbone"] in ("efficientnet_lite0", "efficientnet_lite2")
    assert 0 < model["score_threshold"] < 1
    page = client.get("/")
    assert page.status_code == 200 and b'name="image"' in page.data and b"balloon" in page.data


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        mask_api.create_app(tmp_path / "nothing.pt")


######################################################################################################################
# Real server processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {seconds} s")


def post_image(url: str, data: bytes) -> dict:
    request = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_waitress_server_answers_concurrent_requests_each_with_its_own_image():
    port = free_port()
    command = [sys.executable, "mask_api.py", "--port", str(port), "--threads", "4", "--torch-threads", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        sizes = [(160 + 16 * index, 120 + 8 * index) for index in range(8)]  # every request a different size
        photo = Image.open(io.BytesIO(balloon_jpeg()))
        uploads = [encoded(photo.resize(size), "JPEG") for size in sizes]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda data: post_image(url, data), uploads))
        assert [(answer["image"]["width"], answer["image"]["height"]) for answer in answers] == sizes
        with pytest.raises(urllib.error.HTTPError) as error:
            post_image(url, b"not an image")
        assert error.value.code == 415 and json.loads(error.value.read())["status"] == 415
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_flask_run_from_the_repo_root_serves_the_shipped_model():
    port = free_port()
    flask = Path(sys.executable).with_name("flask")
    environment = {**os.environ, "FLASK_RUN_PORT": str(port)}  # .flaskenv gives FLASK_APP; only the port differs
    environment.pop("FLASK_APP", None)
    process = subprocess.Popen([str(flask), "run"], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        answer = post_image(url, balloon_jpeg(2))
        assert answer["instances"] and 0 < answer["masked_percent"] < 100
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_taken_port_is_one_line(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = mask_api.get_args_parser().parse_args(["--port", str(port)])
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            mask_api.main(args)
