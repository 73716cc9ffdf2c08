"""Shared fixtures: paths to the bundled real data, and a machine with no way to download weights."""

from __future__ import annotations

import contextlib
import shutil
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TUD_CAMPUS = REPO / "assets" / "data" / "TUD-Campus"
TUD_CLIP = REPO / "assets" / "videos" / "tud-campus.mp4"
# A small, fast stateful detector for the sequence scripts' tests: random weights, 120x160 frames, 3-frame windows
TINY_MODEL_ARGS = ["--detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none", "--size", "120", "160", "--seq-len", "3"]


def tensorrt_missing_reason() -> str | None:
    """Why tests marked `tensorrt` cannot run here, or None when TensorRT and a GPU are both present."""
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU: none visible to torch {torch.__version__} (run `make test-gpu` on a GPU machine)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs TensorRT: not installed (pip install -r requirements-gpu.txt on a CUDA machine)"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, with the reason, where no GPU is visible (CI, these 2-core machines); tests marked
    `tensorrt` also where TensorRT is not installed."""
    cuda_reason = (
        None
        if torch.cuda.is_available()
        else (f"needs a CUDA GPU: none visible to torch {torch.__version__} (run `make test-gpu` on a GPU machine)")
    )
    tensorrt_reason = tensorrt_missing_reason()
    for item in items:
        if "tensorrt" in item.keywords and tensorrt_reason:
            item.add_marker(pytest.mark.skip(reason=tensorrt_reason))
        elif "cuda" in item.keywords and cuda_reason:
            item.add_marker(pytest.mark.skip(reason=cuda_reason))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No torchvision weights in the cache and no network: what CI and these machines have."""

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def frame_folder(tmp_path) -> Path:
    """Frames 1-6 of TUD-Campus as an image folder, with frame 4 replaced by a corrupt JPEG."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in range(1, 7):
        shutil.copy(TUD_CAMPUS / "img1" / f"{number:06d}.jpg", folder / f"{number:06d}.jpg")
    (folder / "000004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture
def corrupt_video(tmp_path) -> Path:
    """A 10-frame MJPEG AVI of real TUD-Campus frames whose 6th frame (index 5) has its JPEG data wiped."""
    import cv2

    path = tmp_path / "corrupt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for number in range(1, 11):
        writer.write(cv2.imread(str(TUD_CAMPUS / "img1" / f"{number:06d}.jpg")))
    writer.release()
    data = bytearray(path.read_bytes())
    jpeg_starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(jpeg_starts) == 10
    data[jpeg_starts[5] : jpeg_starts[5] + 600] = bytes(600)  # destroys that frame's JPEG headers
    path.write_bytes(bytes(data))
    return path


def make_sequence(root: Path, name: str, frames: range, with_seqinfo: bool = True) -> Path:
    """A MOT sequence folder `name` holding the given TUD-Campus frames renumbered from 1, with their gt rows."""
    sequence = root / name
    (sequence / "img1").mkdir(parents=True)
    (sequence / "gt").mkdir()
    for new, old in enumerate(frames, start=1):
        shutil.copy(TUD_CAMPUS / "img1" / f"{old:06d}.jpg", sequence / "img1" / f"{new:06d}.jpg")
    renumber = {old: new for new, old in enumerate(frames, start=1)}
    lines = []
    for line in (TUD_CAMPUS / "gt" / "gt.txt").read_text().splitlines():
        fields = line.split(",")
        if int(fields[0]) in renumber:
            lines.append(",".join([str(renumber[int(fields[0])]), *fields[1:]]))
    (sequence / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    if with_seqinfo:
        (sequence / "seqinfo.ini").write_text(
            f"[Sequence]\nname={name}\nimDir=img1\nframeRate=25\nseqLength={len(frames)}\nimWidth=640\nimHeight=480\nimExt=.jpg\n"
        )
    return sequence


@pytest.fixture
def two_sequences(tmp_path) -> Path:
    """A MOT root with two short sequences cut from TUD-Campus: A (frames 1-14) and B (frames 40-51, no seqinfo)."""
    root = tmp_path / "mot"
    make_sequence(root, "A", range(1, 15))
    make_sequence(root, "B", range(40, 52), with_seqinfo=False)
    return root


def tud_frame(number: int) -> np.ndarray:
    """A TUD-Campus frame as RGB uint8 at the detectors' export size, 427 x 240."""
    from PIL import Image

    with Image.open(TUD_CAMPUS / "img1" / f"{number:06d}.jpg") as image:
        return np.asarray(image.convert("RGB").resize((427, 240), Image.BILINEAR))


def usable_random_detector(path: Path) -> str:
    """A seeded random-weight fasterrcnn_mobilenet_v3_large_320_fpn whose detections are worth comparing, saved as a state_dict at `path`.

    Plain random weights (--weights none) are degenerate: the MobileNet features shrink to about 1e-8, every box gets
    the same score (about 1/91) and which boxes survive is decided by ties, so PyTorch and ONNX Runtime may keep
    different ones without anything being wrong. Rescaling each conv/linear layer once so its output on a real frame
    has unit spread (LSUV-style) gives distinct scores and boxes.
    """
    from torch import nn

    from utils.onnx_export import build_export_model
    from utils.onnx_runtime import frame_to_input

    torch.manual_seed(0)
    model = build_export_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none")
    rescaled = set()

    def unit_spread(module, _, output):
        if module in rescaled:  # the RPN head runs once per feature level: rescale on its first call only
            return output
        rescaled.add(module)
        spread = output.std().clamp_min(1e-12)
        with torch.no_grad():
            module.weight.div_(spread)
            if module.bias is not None:
                module.bias.div_(spread)
        return output / spread

    hooks = [module.register_forward_hook(unit_spread) for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.from_numpy(frame_to_input(tud_frame(1))))
    for hook in hooks:
        hook.remove()
    torch.save(model.model.state_dict(), path)
    return str(path)


class StallingBroker:
    """A minimal MQTT 3.1.1 broker on 127.0.0.1 that acknowledges the first `ack_first` QoS-1 publishes and then none:
    a broker that stops answering before the last acknowledgement, deterministically. Counts what it received."""

    def __init__(self, ack_first: int) -> None:
        import socket

        self.ack_first, self.received, self.acked = ack_first, [], 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                threading.Thread(target=self._session, args=(connection,), daemon=True).start()

    @staticmethod
    def _read_exactly(connection, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = connection.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _packet(self, connection) -> tuple[int, bytes]:
        first = self._read_exactly(connection, 1)[0]
        length, shift = 0, 0
        while True:  # MQTT's variable-length remaining length
            byte = self._read_exactly(connection, 1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read_exactly(connection, length)

    def _session(self, connection) -> None:
        with connection, contextlib.suppress(OSError, ConnectionError):
            while True:
                first, body = self._packet(connection)
                kind = first >> 4
                if kind == 1:  # CONNECT -> CONNACK accepted
                    connection.sendall(b"\x20\x02\x00\x00")
                elif kind == 3:  # PUBLISH
                    qos, topic_length = (first >> 1) & 3, int.from_bytes(body[:2], "big")
                    self.received.append((body[2 : 2 + topic_length].decode(), qos))
                    if qos == 1 and self.acked < self.ack_first:
                        self.acked += 1
                        connection.sendall(b"\x40\x02" + body[2 + topic_length : 4 + topic_length])
                elif kind == 12:  # PINGREQ -> PINGRESP
                    connection.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return

    def close(self) -> None:
        self.listener.close()
