"""Where weights and data come from: the bundled asset paths, torchvision's downloadable detector weights, and the
repo's one offline policy (a cached file, else one download try, else one line saying what to do instead).

    weights = resolve_weights("fasterrcnn_resnet50_fpn", "auto")     # 'DEFAULT' when it can be had, else 'none'
    download_once("maskrcnn_resnet50_fpn", url)                      # into the torch hub cache, or a UserError
    state = load_weights_file("runs/model.pth")                      # a state_dict, or a one-line UserError

Bottom layer: imports nothing from utils but cli, so that every module above may use it.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import torch
import torchvision

from utils.cli import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"  # everything bundled, each file with its SOURCE (and LICENSE) beside it

# Bundled models (assets/models)
SSDLITE_PERSON_PATH = ASSETS / "models" / "ped_ssdlite_person.onnx"
YOLOX_NANO_PATH = ASSETS / "models" / "yolox_nano_416x416.onnx"
BALLOON_MASKRCNN_PATH = ASSETS / "models" / "balloon_maskrcnn_efficientnet_lite0.pt"  # maskrcnn_train.py's shipped model
REID_0287_PATH = ASSETS / "models" / "person-reidentification-retail-0287.onnx"  # Open Model Zoo person re-id, 256-D
REID_0288_PATH = ASSETS / "models" / "person-reidentification-retail-0288.onnx"  # its smaller sibling, 256-D
REID_MODELS = {"reid-0287": REID_0287_PATH, "reid-0288": REID_0288_PATH}  # track_verify.py --backbone names

# Bundled data the scripts default to (assets/data, assets/videos)
TUD_CAMPUS = ASSETS / "data" / "TUD-Campus"  # MOT15 sequence with person gt: detector accuracy and parity frames
BALLOON = ASSETS / "data" / "balloon"  # instance segmentation, VIA format: train/ and val/
IMAGENET_SAMPLES = ASSETS / "data" / "imagenet-sample-256"  # labelled ImageNet-1k images: images/ and labels.csv
IMAGENET_WNIDS = ASSETS / "data" / "imagenet_synsets.txt"  # line k = wnid of ImageNet-1k class index k
TINY_IMAGENET = ASSETS / "data" / "tiny-imagenet-200"
TINY_IMAGENET_10 = ASSETS / "data" / "tiny-imagenet-10"  # 10 classes as an image folder: hpo_cifar.py's demo
TRACK_CROPS = ASSETS / "data" / "track-crops"  # person crops per identity: track_verify.py
TRACK_SAME_PERSON = ASSETS / "data" / "track-verify-same-person.csv"  # gt ids that are one person: track_verify.py
TUD_CAMPUS_VIDEO = ASSETS / "videos" / "tud-campus.mp4"
ONE_BY_ONE_VIDEO = ASSETS / "videos" / "one-by-one-person-detection.mp4"  # another scene than TUD-Campus

# torchvision's detectors whose COCO weights resolve_weights knows how to get (utils.detectors builds them)
TORCHVISION_DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


def resolve_weights(name: str, weights: str) -> str:
    """The one place where --weights 'auto' is settled: 'DEFAULT' when torchvision's weights for `name` are cached or
    can be downloaded, else 'none' with a warning on stderr. Any other value comes back unchanged.

    Callers that must know whether the model is pretrained (accuracy columns, frozen vs trainable normalisation)
    resolve first and look at the answer.
    """
    if name not in TORCHVISION_DETECTORS:
        raise UserError(f"unknown torchvision detector {name!r}; choose from {', '.join(TORCHVISION_DETECTORS)}")
    if weights.lower() != "auto":
        return weights
    try:
        download_once(name, torchvision.models.get_model_weights(name).DEFAULT.url)
        return "DEFAULT"
    except UserError as error:
        print(f"warning: {error}\nwarning: --weights auto: {name} starts from RANDOM weights", file=sys.stderr)
        return "none"


def download_once(name: str, url: str) -> None:
    """Fetch torchvision weights into the torch hub cache (atomic, with a progress bar) unless already there.

    Done here rather than by the builder so that an offline failure is one line, without torch's "Downloading:".
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if cached.is_file():
        return
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot download {name} weights from {url} ({reason}); offline, use --weights PATH "
            "(a state_dict of this model), --weights none (random, speed only) or --detector ssdlite_person"
        ) from None


def load_weights_file(path: str | Path) -> Any:
    """What torch.load (weights_only) finds in the weights file at `path`, typically a state_dict; a file that is no
    PyTorch checkpoint is a UserError of one line that names `path` as the caller gave it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean: not a loadable checkpoint
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__})") from None
