"""A REST API that segments a posted image with the shipped Mask R-CNN and says how much of it the masks cover.

POST an image, get JSON with every instance (label, score, box, mask pixel count) and the share of the image under
the UNION of the masks (a pixel under two masks counts once), or the image with the masks drawn as PNG. The model
(assets/models, trained by maskrcnn_train.py on the balloon set) loads once at start-up; no training is needed.

Run:
    flask run                                               # the shipped model on 127.0.0.1:5000 (.flaskenv)
    MASK_API_CHECKPOINT=runs/maskrcnn/checkpoint.pt flask run    # another checkpoint
    python mask_api.py --host 0.0.0.0 --port 8080 --threads 4    # production: waitress, not Flask's dev server
    curl -F image=@balloon.jpg localhost:5000/predict                            # JSON
    curl -F image=@balloon.jpg "localhost:5000/predict?format=png" -o masks.png  # the image with its masks
    curl --data-binary @balloon.jpg -H "Content-Type: image/jpeg" localhost:5000/predict   # the raw body works too

Endpoints: POST /predict (multipart field `image` or the raw body; `score_threshold` in the query or form; PNG with
`?format=png` or `Accept: image/png`), GET /health, GET /model, GET / (a form to try it in a browser). Every error is
JSON {"error", "status"}: 400 no image / bad parameter, 413 upload or pixel count too large, 415 not a readable image.
Measured: docs/measured.md, "bench_mask_api.py" (benchmarks/bench_mask_api.py).
"""

from __future__ import annotations

import argparse
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, current_app, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from utils.assets import BALLOON_MASKRCNN_PATH
from utils.cli import ArgumentParser, UserError, number, run_cli, set_threads
from utils.video import ImageTooLargeError, read_rgb_image

DEFAULT_CHECKPOINT = BALLOON_MASKRCNN_PATH
MAX_UPLOAD_BYTES = 20 * 2**20  # a 12-megapixel phone JPEG is 3-8 MB; more is an error, not a slow request
MAX_PIXELS = 40_000_000  # decoded size limit: a small file that decodes to gigabytes (a decompression bomb) is refused

FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>mask_api</title></head>
<body style="font-family: sans-serif; max-width: 48em; margin: 2em auto">
<h1>Mask R-CNN: {classes}</h1>
<form action="/predict?format=png" method="post" enctype="multipart/form-data">
  <input type="file" name="image" accept="image/*" required>
  score threshold <input type="number" name="score_threshold" min="0" max="1" step="0.05" value="{threshold}">
  <button type="submit">segment</button>
</form>
<p>JSON instead: <code>curl -F image=@photo.jpg {root}predict</code>. Model: <a href="/model">/model</a>.</p>
</body></html>
"""


class ApiError(Exception):
    """An error the client caused: its HTTP status and a one-line message, returned as JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


######################################################################################################################
# Request -> RGB image


def read_upload() -> bytes:
    """The posted image's bytes: the multipart field `image`, else the raw body."""
    if request.files:
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, f"no 'image' field in the form (fields: {', '.join(request.files)})")
        data = upload.read()
    else:
        data = request.get_data(cache=False)
    if not data:
        raise ApiError(400, "no image: post it as the multipart field 'image' or as the request body")
    return data


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The upload through the project's one image reader (utils.video.read_rgb_image, as maskrcnn_train reads its
    training images): RGB uint8, EXIF orientation applied, every colour mode converted. Over max_pixels: 413, from
    the header, before decoding; not an image, truncated or corrupt: 415."""
    try:
        return read_rgb_image(data, max_pixels)
    except ImageTooLargeError as error:
        raise ApiError(413, str(error)) from None
    except UserError as error:
        raise ApiError(415, str(error)) from None


def score_threshold(default: float) -> float:
    """`score_threshold` from the query string or form, 0..1; absent: the checkpoint's."""
    text = request.args.get("score_threshold") or request.form.get("score_threshold")
    if text in (None, ""):
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"score_threshold={text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, f"score_threshold={value} is outside 0..1")
    return value


def wants_png() -> bool:
    """?format=png, or an Accept header that prefers PNG to JSON."""
    asked = request.args.get("format", "").lower()
    if asked and asked not in ("png", "json"):
        raise ApiError(400, f"format={asked!r}: use png or json")
    if asked:
        return asked == "png"
    return request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"


######################################################################################################################
# The app


class Segmenter:
    """The model, its metadata and the lock that serialises inference: one model, many request threads. Two requests
    at once would only split the same cores between them, and torch modules are not documented as thread-safe."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        from utils.maskrcnn import load_checkpoint

        if not checkpoint.is_file():
            raise UserError(f"{checkpoint}: no such checkpoint (train one with maskrcnn_train.py, or set MASK_API_CHECKPOINT)")
        start = time.perf_counter()
        self.model, self.meta = load_checkpoint(checkpoint, device)
        self.load_s = time.perf_counter() - start
        self.checkpoint = checkpoint
        self.lock = threading.Lock()

    def __call__(self, image: np.ndarray, threshold: float) -> tuple[list, float]:
        from utils.maskrcnn import predict

        with self.lock:
            start = time.perf_counter()
            instances = predict(self.model, image, score_threshold=threshold)
            return instances, time.perf_counter() - start


def instance_json(instance: Any) -> dict[str, Any]:
    """One detected instance as /predict's JSON lists it (its mask as a pixel count only)."""
    return {
        "label": instance.name,
        "label_id": instance.label,
        "score": round(instance.score, 4),
        "box": [round(value, 1) for value in instance.box],
        "mask_pixels": int(instance.mask.sum()),
    }


def png_response(image: np.ndarray, instances: list[Any], masks: np.ndarray, share: float, classes: list[str]) -> Response:
    """The image with its masks drawn, as a PNG answer; the masked share rides in a header."""
    from utils.instances import draw_masks

    drawn = draw_masks(image, masks, [i.label for i in instances], [i.score for i in instances], classes)
    buffer = io.BytesIO()
    Image.fromarray(drawn).save(buffer, format="PNG")
    response = Response(buffer.getvalue(), mimetype="image/png")
    response.headers["X-Masked-Percent"] = f"{share * 100:.3f}"
    return response


def model_json(segmenter: Segmenter, score_threshold: float) -> dict[str, Any]:
    """What /model answers: the checkpoint, its classes, thresholds, input size and evaluation figures."""
    meta = segmenter.meta
    return {
        "checkpoint": segmenter.checkpoint.name,
        "classes": list(meta["class_names"]),
        "backbone": meta.get("backbone"),
        "score_threshold": score_threshold,
        "mask_threshold": float(meta.get("mask_threshold", 0.5)),
        "input_size": {"min_size": meta.get("min_size"), "max_size": meta.get("max_size")},
        "evaluation": meta.get("figures"),
        "load_s": round(segmenter.load_s, 3),
    }


def create_app(checkpoint: str | Path | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Flask:
    """The Flask app, with its model loaded. checkpoint: default MASK_API_CHECKPOINT, else the shipped model."""
    from utils.instances import masked_share

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes  # Flask answers 413 before reading a larger body
    segmenter = Segmenter(Path(checkpoint or os.environ.get("MASK_API_CHECKPOINT") or DEFAULT_CHECKPOINT))
    app.extensions["segmenter"] = segmenter  # app state, not a module global: two apps in one process stay apart
    classes = list(segmenter.meta["class_names"])
    default_threshold = float(segmenter.meta.get("score_threshold", 0.5))

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        return jsonify(error=error.message, status=error.status), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:  # 404, 405, 413 from Flask itself: JSON too
        message = f"upload larger than {max_upload_bytes / 2**20:.0f} MB" if error.code == 413 else error.description
        return jsonify(error=message, status=error.code), error.code

    @app.get("/")
    def form() -> Response:
        return Response(FORM.format(classes=", ".join(classes), threshold=default_threshold, root=request.url_root), mimetype="text/html")

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok", model_loaded=True)

    @app.get("/model")
    def model_info() -> Response:
        return jsonify(model_json(segmenter, default_threshold))

    @app.post("/predict")
    def predict() -> Response:
        start = time.perf_counter()
        threshold, png = score_threshold(default_threshold), wants_png()
        image = decode_image(read_upload(), max_pixels)
        decoded = time.perf_counter()
        instances, inference_s = current_app.extensions["segmenter"](image, threshold)
        height, width = image.shape[:2]
        masks = np.stack([instance.mask for instance in instances]) if instances else np.zeros((0, height, width), bool)
        share = masked_share(masks)
        if png:
            return png_response(image, instances, masks, share, classes)
        return jsonify(
            image={"width": width, "height": height},
            instances=[instance_json(instance) for instance in instances],
            masked_percent=round(share * 100, 3),
            unmasked_percent=round(100 - share * 100, 3),
            score_threshold=threshold,
            timings_ms={
                "decode": round((decoded - start) * 1e3, 1),
                "inference": round(inference_s * 1e3, 1),
                "total": round((time.perf_counter() - start) * 1e3, 1),
            },
        )

    return app


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", default=None, help="a maskrcnn_train.py checkpoint (default: $MASK_API_CHECKPOINT, else the shipped balloon model)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=number(int, 1, 65535), default=5000, help="port to listen on")
    parser.add_argument("--threads", type=number(int, 1), default=4, help="waitress request threads (inference itself is serialised)")
    parser.add_argument("--torch-threads", type=number(int, 1), default=None, help="CPU threads for inference (default: all cores)")
    parser.add_argument("--max-upload-mb", type=number(float, 0.01), default=MAX_UPLOAD_BYTES / 2**20, help="largest accepted upload")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Serve with waitress (a production WSGI server) until interrupted."""
    import waitress

    set_threads(args.torch_threads)
    app = create_app(args.checkpoint, max_upload_bytes=int(args.max_upload_mb * 2**20))
    segmenter = app.extensions["segmenter"]
    print(f"mask_api: {segmenter.checkpoint.name} loaded in {segmenter.load_s:.1f} s; serving http://{args.host}:{args.port}/", flush=True)
    try:
        waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="mask_api")
    except OSError as error:  # port taken, address not on this machine
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    return {"host": args.host, "port": args.port}


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
