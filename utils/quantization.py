"""INT8 recipes shared by quantise.py (which makes and measures them) and the detector interface (which runs saved ones).

    set_engine("fbgemm")
    quantize_detector(model, "static", "fbgemm", calibrate=lambda: detector.detect(frames))
    save_artefact(path, model, {"model": name, "scheme": "static", "backend": "fbgemm", ...})

Static INT8 uses FX graph mode (torch.ao.quantization.quantize_fx), not PT2E: in torch 2.14 PT2E lives in the extra
package torchao, and its X86InductorQuantizer only pays off after torch.compile (minutes of compilation per process on
2 cores, and nothing that can be saved and reloaded as a plain state_dict), whereas FX runs on fbgemm/oneDNN kernels
in eager mode and its result is an ordinary module: state_dict in, state_dict out, loaded with weights_only=True.

Choices, with the evidence (efficientnet_lite0, 100 ImageNet images, 2-core AVX2 CPU; see docs/quantise.md):
- activations: HistogramObserver, 7-bit (reduce_range) on fbgemm/x86. 8-bit activations overflow the int16 sums of
  AVX2 without VNNI (top-1 0.89 -> 0.80); MinMax observers 0.88 vs histogram 0.89.
- weights: per-channel symmetric INT8 (torch's default for fbgemm/x86/onednn; per-tensor on qnnpack).
- a conv followed by ReLU6 gets the output range [0, 6] (what TFLite does): otherwise its observer records the
  pre-activation range (about +-90 in EfficientNet's stem) and ReLU6 keeps a handful of the 128 levels (top-1 0.69).
- depthwise convs that need a separate (asymmetric TF 'SAME') pad stay float: without the conv's own symmetric
  padding fbgemm falls off its depthwise fast path (27 ms instead of 0.7 ms for one 96x112x112 layer).
- the first conv of a classifier stays float (its input is the raw image): Tiny-ImageNet val top-1 0.242 -> 0.260
  (FP32 0.272), ImageNet samples 0.88 -> 0.89; cheap, it has 3 input channels.
- detectors: backbone + FPN and the RPN head conv static INT8, RoI box head MLP dynamic INT8 (its input, RoIAlign
  output, changes range per box; the 12544x1024 Linear is a weight-bound layer dynamic quantisation suits).

ONNX Runtime static INT8 has ONE pipeline too, quantize_onnx_static: quantise.py's ONNX detectors and
utils.onnx_export.quantize_int8_qdq (TensorRT's Q/DQ graphs) both call it, with their own options, and both calibrate
in chunks of at most ORT_CALIB_CHUNK inputs.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.cli import UserError
from utils.outputs import atomic_path

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
OBSERVERS = ("histogram", "minmax")
ARTEFACT_FORMAT = "quantise.py/1"  # bump when the layout of saved artefacts changes

# torch warns on every FX call that FX quantisation is deprecated in favour of torchao; say it once, in the docstring
warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in.*")
warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated.*")
warnings.filterwarnings("ignore", message="TypedStorage is deprecated")


def supported_engines() -> list[str]:
    """The quantised engines this torch build can run on this CPU (fbgemm/x86 need AVX2)."""
    return list(torch.backends.quantized.supported_engines)


def set_engine(name: str) -> None:
    """Select the quantised engine for INT8 kernels; UserError if unknown or not runnable here."""
    if name not in ENGINES:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(ENGINES)}")
    if name not in supported_engines():
        capability = torch.backends.cpu.get_cpu_capability()
        raise UserError(
            f"backend {name} cannot run on this CPU/torch build (CPU capability {capability}; "
            f"supported here: {', '.join(e for e in supported_engines() if e != 'none')})"
        )
    torch.backends.quantized.engine = name


######################################################################################################################
# FX static INT8


class ReLU6RangeObserver(torch.ao.quantization.MinMaxObserver):
    """Records the range [0, 6] whatever it sees: the output range of a conv whose output goes through ReLU6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.min_val.fill_(0.0)
        self.max_val.fill_(6.0)
        return x


def qconfig_mapping(backend: str, observer: str = "histogram") -> Any:
    """torch's default FX mapping for `backend` (per-channel weights, 7-bit activations on fbgemm/x86), with MinMax
    activation observers if asked."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping

    if observer not in OBSERVERS:
        raise UserError(f"unknown observer {observer!r}; choose from {', '.join(OBSERVERS)}")
    mapping = get_default_qconfig_mapping(backend)
    if observer == "minmax":
        default = mapping.global_qconfig
        reduce_range = backend in ("fbgemm", "x86")
        mapping.set_global(QConfig(activation=MinMaxObserver.with_args(reduce_range=reduce_range), weight=default.weight))
    return mapping


def pin_relu6_ranges(prepared: nn.Module) -> int:
    """Give the observers around every ReLU6 of an FX-prepared model the range [0, 6]; returns how many."""
    targets = set()
    for node in prepared.graph.nodes:
        if node.op == "call_module" and isinstance(prepared.get_submodule(node.target), nn.ReLU6):
            for neighbour in (node.args[0], *node.users):
                if neighbour.op == "call_module" and "activation_post_process" in str(neighbour.target):
                    targets.add(neighbour.target)
    for target in targets:
        old = prepared.get_submodule(target)
        setattr(prepared, target, ReLU6RangeObserver(dtype=old.dtype, quant_min=old.quant_min, quant_max=old.quant_max))
    return len(targets)


def padded_depthwise_convs(module: nn.Module) -> list[str]:
    """Names of depthwise convs with no padding of their own (they follow a separate pad): kept float, see above."""
    return [
        name
        for name, conv in module.named_modules()
        if isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels > 1 and conv.padding == (0, 0) and conv.kernel_size != (1, 1)
    ]


def convs_kept_float(module: nn.Module) -> list[str]:
    """The convs static INT8 leaves float in a classifier: the first (it sees the raw image, where 8 bits lose the
    most and 3 input channels gain the least) and the padded depthwise ones."""
    first = next(name for name, conv in module.named_modules() if isinstance(conv, nn.Conv2d))
    return [first, *padded_depthwise_convs(module)]


def without_identities(module: nn.Module) -> nn.Module:
    """FX-trace `module` and drop its nn.Identity calls (left by BatchNorm folding), so that FX sees conv -> relu and
    fuses them, and the conv's observer records the post-ReLU range."""
    traced = torch.fx.symbolic_trace(module)
    for node in list(traced.graph.nodes):
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    return traced


def prepare_static(
    module: nn.Module, example_inputs: tuple, backend: str, observer: str = "histogram", float_modules: list[str] = ()
) -> nn.Module:
    """FX-prepare an eval-mode module for static INT8: observers in place, to be run on calibration data, then convert."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    mapping = qconfig_mapping(backend, observer)
    for name in float_modules:
        mapping.set_module_name(name, None)
    prepared = prepare_fx(without_identities(module.eval()), mapping, example_inputs)
    pin_relu6_ranges(prepared)
    return prepared


def convert_static(prepared: nn.Module) -> nn.Module:
    """Calibrated FX module -> INT8 module."""
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(prepared)


def quantize_linear_dynamic(module: nn.Module) -> nn.Module:
    """Every nn.Linear (and LSTM/GRU) -> dynamic INT8 (weights INT8, activations quantised per call), in place."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(module, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8, inplace=True)


######################################################################################################################
# Models


class RPNHeadLevel(nn.Module):
    """torchvision's RPNHead on ONE feature level: FX cannot trace RPNHead's loop over a list of levels."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.conv, self.cls_logits, self.bbox_pred = head.conv, head.cls_logits, head.bbox_pred

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.conv(features)
        return self.cls_logits(hidden), self.bbox_pred(hidden)


class LevelwiseRPNHead(nn.Module):
    """Drop-in RPNHead that runs a (quantised) RPNHeadLevel on every level, sharing its weights and qparams."""

    def __init__(self, level: nn.Module) -> None:
        super().__init__()
        self.level = level

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outputs = [self.level(level_features) for level_features in features]
        return [logits for logits, _ in outputs], [deltas for _, deltas in outputs]


DETECTOR_SCHEMES = ("dynamic", "static")
CLASSIFIER_SCHEMES = ("dynamic", "static")


def quantize_detector(
    model: nn.Module, scheme: str, backend: str, calibrate: Callable[[], Any], observer: str = "histogram"
) -> dict[str, int]:
    """Quantise a torchvision Faster R-CNN in place; returns the count of each kind of layer replaced.

    dynamic: the RoI box head and predictor Linears -> dynamic INT8.
    static:  backbone + FPN and the RPN head -> static INT8 (FX), calibrated by `calibrate()` (which must run the
             whole detector on real frames), plus the dynamic INT8 box head.
    """
    if scheme not in DETECTOR_SCHEMES:
        raise UserError(f"scheme {scheme!r} is not an INT8 scheme for detectors ({', '.join(DETECTOR_SCHEMES)})")
    if scheme == "static":
        model.backbone._forward_pre_hooks.clear()  # the channels_last hook: quantised kernels pick their own layout
        channels = model.backbone.out_channels
        model.backbone = prepare_static(model.backbone, (torch.rand(1, 3, 64, 64),), backend, observer)
        level = prepare_static(RPNHeadLevel(model.rpn.head), (torch.rand(1, channels, 16, 16),), backend, observer)
        model.rpn.head = LevelwiseRPNHead(level)
        calibrate()
        model.backbone = convert_static(model.backbone)
        model.rpn.head.level = convert_static(level)
    quantize_linear_dynamic(model.roi_heads)
    return count_quantized(model)


def quantize_classifier(
    model: nn.Module, scheme: str, backend: str, calibrate: Callable[[nn.Module], Any], observer: str = "histogram"
) -> nn.Module:
    """The INT8 version of an image classifier (a new module; `model` is left as it was).

    dynamic: Linear layers -> dynamic INT8 (for a ViT, every block's attention and MLP).
    static:  FX static INT8 of the whole network but convs_kept_float(); `calibrate(prepared)` runs the
             prepared model on real images.
    """
    if scheme not in CLASSIFIER_SCHEMES:
        raise UserError(f"scheme {scheme!r} is not an INT8 scheme for classifiers ({', '.join(CLASSIFIER_SCHEMES)})")
    model = copy.deepcopy(model).eval()
    if scheme == "dynamic":
        return quantize_linear_dynamic(model)
    size = getattr(model, "image_size", 224)
    prepared = prepare_static(model, (torch.rand(1, 3, size, size),), backend, observer, convs_kept_float(model))
    calibrate(prepared)
    return convert_static(prepared)


def count_quantized(model: nn.Module) -> dict[str, int]:
    """How many layers of each quantised kind the model holds, e.g. {'static Conv2d': 45, 'dynamic Linear': 4}."""
    counts: dict[str, int] = {}
    for module in model.modules():
        where, kind = type(module).__module__, type(module).__name__
        if where.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")) and "PackedParams" not in kind:
            kind = f"{'dynamic' if '.dynamic' in where else 'static'} {kind}"
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


######################################################################################################################
# Artefacts: {format, model, scheme, backend, settings..., state_dict}, loadable with weights_only=True


def save_artefact(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write model.state_dict() with `meta` (model, scheme, backend, settings) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        torch.save({"format": ARTEFACT_FORMAT, **meta, "state_dict": model.state_dict()}, partial)
    return path


def read_artefact(path: str | Path, model: str | None = None) -> dict[str, Any]:
    """A saved artefact's dict; UserError if it is not one, or holds another model than `model`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such quantised model (make one with quantise.py)")
    try:
        artefact = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean: not a loadable artefact
        raise UserError(f"{path} is not a readable quantised model ({type(error).__name__})") from None
    if not isinstance(artefact, dict) or artefact.get("format") != ARTEFACT_FORMAT:
        raise UserError(f"{path} is not a quantise.py artefact (a plain checkpoint? use --weights for those)")
    if model is not None and artefact["model"] != model:
        raise UserError(f"{path} holds a quantised {artefact['model']}, not {model}")
    return artefact


def load_state(model: nn.Module, state: dict[str, Any], path: str | Path, what: str = "the model it claims to be") -> None:
    """load_state_dict, strict, with a mismatch as one UserError line: '{path} does not match {what}: ...'."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        first = " ".join(str(error).strip().splitlines()[:2])[:200]
        raise UserError(f"{path} does not match {what}: {first}") from None


######################################################################################################################
# ONNX Runtime static INT8 (QDQ): ONE pipeline for quantise.py's ONNX detectors and onnx_export's TensorRT graphs

# calibration inputs ONNX Runtime holds the activations of at once: given all at once it keeps every activation of every
# input (~85 MB a yolox_nano frame: 192 frames passed 16 GB)
ORT_CALIB_CHUNK = 8


def calibration_chunk(count: int, most: int = ORT_CALIB_CHUNK) -> int:
    """The most inputs, up to `most`, that divide `count`: ONNX Runtime's CalibStridedMinMax requires a divisor."""
    return max(size for size in range(1, most + 1) if count % size == 0)


class _ChunkedFeeds:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds, with set_range for calibration in chunks."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]], progress: Any) -> None:
        self.all_feeds, self.progress = feeds, progress
        self.feeds = iter(feeds)

    def __len__(self) -> int:
        return len(self.all_feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = iter(self.all_feeds[start_index:end_index])

    def get_next(self) -> dict | None:
        feed = next(self.feeds, None)
        self.progress.update(feed is not None)
        return feed


def quantize_onnx_static(
    prepared: str | Path,
    path: str | Path,
    feeds: Sequence[dict[str, np.ndarray]],
    method: str,
    activation_type: str = "QUInt8",
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    extra_options: dict[str, Any] | None = None,
) -> None:
    """Static INT8 QDQ copy at `path` of the ONNX graph `prepared` (already through quant_pre_process): weights
    per-channel signed INT8, activations `activation_type` ('QUInt8' or 'QInt8') calibrated with `method` (a
    CalibrationMethod name: 'MinMax', 'Percentile', 'Entropy') on `feeds` (one {input name: array} per run), in chunks
    of calibration_chunk(len(feeds)) inputs. op_types: what to quantise (default all); the calibrator's progress goes
    to stderr."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = {**(extra_options or {}), "CalibStridedMinMax": calibration_chunk(len(feeds))}  # chunks, any method
    with tqdm(total=len(feeds), desc="calibrating", leave=False) as progress, contextlib.redirect_stdout(sys.stderr):
        quantize_static(
            str(prepared), str(path), _ChunkedFeeds(feeds, progress), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=reduce_range, activation_type=QuantType[activation_type], weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None, calibrate_method=CalibrationMethod[method],
            nodes_to_exclude=list(nodes_to_exclude), extra_options=options,
        )  # fmt: skip
