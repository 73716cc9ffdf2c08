"""web_server.py: the API on Flask's test client, then real processes on loopback: results over MQTT and HTTP, bad
messages that leave it serving, and the page in headless Chromium showing the detections (with a screenshot)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, TUD_CLIP
from test_utils_mqtt import good_message

from utils.mqtt import MAX_MESSAGE_BYTES, free_port
from web_server import Detections, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SELENIUM = importlib.util.find_spec("selenium") is not None
SCREENSHOT = REPO / "runs" / "web_server" / "screenshot.png"  # what the README shows


@pytest.fixture
def client():
    return create_app().test_client()


def test_post_latest_history_health(client):
    assert client.post("/api/detections", json=good_message(frame=1)).status_code == 202
    assert client.post("/api/detections", data=json.dumps(good_message(frame=2, camera="cam1"))).status_code == 202
    assert client.get("/api/latest").get_json()["cam1"]["frame"] == 2
    assert [m["frame"] for m in client.get("/api/history?n=1").get_json()] == [2]
    assert [m["frame"] for m in client.get("/api/history").get_json()] == [1, 2]
    assert client.get("/api/history?n=0").status_code == 400
    health = client.get("/health").get_json()
    assert health["cameras"] == ["cam0", "cam1"] and health["received"]["http"] == 2 and health["rejected"] == 0


def test_bad_and_oversized_messages_are_dropped_and_the_server_goes_on(client, caplog):
    bad = [b"not json", json.dumps(good_message(frame=-5)).encode(), json.dumps(good_message(camera="<img onerror=x>")).encode()]
    for payload in bad:
        response = client.post("/api/detections", data=payload)
        assert response.status_code == 400 and "error" in response.get_json()
    response = client.post("/api/detections", data=b"{" + b" " * MAX_MESSAGE_BYTES + b"}")
    assert response.status_code == 413
    assert client.get("/health").get_json()["rejected"] == 4
    assert client.get("/api/latest").get_json() == {}
    assert sum("dropped a message from http" in record.message for record in caplog.records) == 4
    assert client.post("/api/detections", json=good_message()).status_code == 202  # still serving


def test_mqtt_callback_never_raises_and_checks_frames():
    store = Detections()
    store.on_mqtt("detections/cam0", b"\x00garbage")
    store.on_mqtt("detections/cam0/frame", b"not a jpeg")
    store.on_mqtt("detections/cam0", json.dumps(good_message()).encode())
    store.on_mqtt("detections/cam0/frame", b"\xff\xd8jpeg")
    assert store.rejected == 2 and store.received == {"mqtt": 1, "http": 0, "frames": 1}
    assert json.loads(store.latest_frames["cam0"])["camera"] == "cam0"


def test_stream_pushes_server_sent_events():
    app = create_app()
    client = app.test_client()
    client.post("/api/detections", json=good_message(frame=3))
    response = client.get("/api/stream", buffered=False)
    assert response.mimetype == "text/event-stream"
    chunks = iter(response.response)
    assert next(chunks) == b"retry: 1000\n\n"
    seen = next(chunks)  # what a new tab gets at once: the latest message of every camera
    app.extensions["detections"].add_message(good_message(frame=4), "http")
    seen += next(chunks)  # pushed as it arrives
    response.close()
    events = [json.loads(line[len(b"data: ") :]) for line in seen.splitlines() if line.startswith(b"data: ")]
    assert [event["frame"] for event in events] == [3, 4] and b"event: detections" in seen


def test_page_and_its_script_are_served_by_the_app(client):
    page = client.get("/").get_data(as_text=True)
    assert '<script src="/static/app.js"></script>' in page and "http" not in page.split("<body>")[1]  # no CDN
    assert "EventSource" in client.get("/static/app.js").get_data(as_text=True)


######################################################################################################################
# Real processes


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "web_server.py", "--port", str(port), *flags], cwd=REPO, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            get_json(f"{url}/health")
            return server, url
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None:
                raise AssertionError(server.stderr.read()) from None
            time.sleep(0.2)
    server.kill()
    raise AssertionError("web_server.py did not answer /health")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


@pytest.mark.slow
def test_receives_over_mqtt_and_http_and_survives_bad_input():
    broker_port = free_port()
    server, url = start_server("--broker", f"embedded:{broker_port}")
    try:
        time.sleep(0.5)  # its subscription is through
        publisher = subprocess.run(
            [sys.executable, "webcam_mqtt.py", "--source", str(TUD_CLIP), "--max-frames", "10", "--qos", "1", "--publish-frames",
             "--broker", f"127.0.0.1:{broker_port}", "--http", f"{url}/api/detections"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert publisher.returncode == 0, publisher.stderr
        for payload in (b"\x00\x01", b"{" + b" " * (2 * MAX_MESSAGE_BYTES) + b"}", json.dumps(good_message(detections=[{}])).encode()):
            request = urllib.request.Request(f"{url}/api/detections", payload, {"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code in (400, 413)
        time.sleep(1)
        health = get_json(f"{url}/health")
        history = get_json(f"{url}/api/history?n=1000")
    finally:
        stderr = stop(server)
    assert health["received"] == {"mqtt": 10, "http": 10, "frames": 10} and health["rejected"] == 3
    assert sorted(m["frame"] for m in history) == sorted(list(range(10)) * 2)
    assert server.returncode == 0 and "dropped a message from http" in stderr


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
@pytest.mark.skipif(not SELENIUM, reason="needs selenium (pip install selenium==4.51.0)")
def test_page_in_headless_chromium_shows_the_detections(tmp_path):
    """The one-command demo (--with-camera): the page draws the boxes, the main person highlighted, on the real frame."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server, url = start_server("--with-camera", str(TUD_CLIP), "--broker", f"embedded:{free_port()}")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,660"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        browser.get(url)
        state = None
        deadline = time.time() + 90
        while time.time() < deadline:
            state = browser.execute_script(
                "const c = document.querySelector('.camera'); if (!c) return null;"
                "const v = c.querySelector('.view'), d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;"
                "let main = 0, other = 0, grey = 0;"
                "for (let i = 0; i < d.length; i += 4) {"
                "  if (d[i] === 0x39 && d[i + 1] === 0xff && d[i + 2] === 0x14) main++;"
                "  else if (d[i] === 0x00 && d[i + 1] === 0xbf && d[i + 2] === 0xff) other++;"
                "  else if (d[i] === 0x33 && d[i + 1] === 0x33 && d[i + 2] === 0x33) grey++; }"
                "return {camera: c.dataset.camera, frame: +c.dataset.frame, people: +c.dataset.people, main: +c.dataset.main,"
                " mainPixels: main, otherPixels: other, greyShare: grey / (d.length / 4), stats: c.querySelector('.stats').textContent};"
            )
            if state and state["frame"] >= 30 and state["mainPixels"] > 100 and state["greyShare"] < 0.5:
                break
            time.sleep(0.5)
        screenshot = tmp_path / "web_server.png"
        browser.save_screenshot(str(screenshot))
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, SCREENSHOT)
        print(f"screenshot: {SCREENSHOT}")
    finally:
        browser.quit()
        stderr = stop(server)
    assert state is not None, stderr
    assert state["camera"] == "tud-campus" and state["frame"] >= 5 and state["people"] >= 2 and state["main"] == 1
    assert state["mainPixels"] > 100 and state["otherPixels"] > 100  # the boxes are on the canvas
    assert state["greyShare"] < 0.5  # drawn on the real frame, not the empty placeholder
    assert "FPS" in state["stats"] and "latency" in state["stats"]
    assert Path(screenshot).stat().st_size > 10_000
    assert "frames published on detections/tud-campus" in stderr  # the camera child stopped cleanly with its summary
    # stopped mid-stream, yet every message the camera published reached the server: its own stop waits for the
    # acknowledgements, the embedded broker hands on what it holds, the subscriber stays until the broker is quiet
    published = int(re.search(r"(\d+) frames published on detections/tud-campus", stderr).group(1))
    assert f"all {2 * published} messages delivered to the broker" in stderr
    received = json.loads(stderr.rsplit("web_server: ", 1)[1].splitlines()[0])["received"]
    assert received["mqtt"] == received["frames"] == published
