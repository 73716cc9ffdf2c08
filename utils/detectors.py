"""ONE detector interface for every script: RGB frames in, boxes/scores/labels out in each frame's own pixels.

    detector = build_detector("fasterrcnn_resnet50_fpn", weights="DEFAULT", device="cpu")
    detections = detector.detect([rgb_frame, ...])   # list of Detections, one per frame

Implementations:
- TorchvisionDetector: torchvision's Faster R-CNN family, made fast for small frames (see its docstring).
- OnnxTorchvisionDetector: a torchvision detector exported by utils/onnx_export.py, run by ONNX Runtime.
- TensorRTTorchvisionDetector: the same export built into a TensorRT engine (tensorrt_convert.py), on a CUDA GPU.
- OnnxSSDLitePersonDetector: the bundled pretrained person-only SSDLite (assets/models), run by ONNX Runtime.
- OnnxYoloxDetector: the bundled pretrained YOLOX-nano, 80 COCO classes (assets/models), run by ONNX Runtime.
A backend subclasses Detector and registers in build_detector.
Labels are COCO category ids (1 = person) whatever the backend.

Middle layer: weights and asset paths come from utils.assets, sessions from utils.onnx_runtime and
utils.tensorrt_runtime, INT8 recipes from utils.quantization; the tools that export and build engines sit above.
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from utils.assets import (
    REPO_ROOT,
    SSDLITE_PERSON_PATH,
    TORCHVISION_DETECTORS,
    YOLOX_NANO_PATH,
    download_once,
    load_weights_file,
    resolve_weights,
)
from utils.cli import UserError
from utils.onnx_runtime import (
    create_session,
    execution_providers,
    frame_to_input,
    graph_dims,
    load_onnx_model,
    load_onnx_session,
    metadata_path,
    run_detector_session,
)
from utils.quantization import load_state, quantize_detector, read_artefact, set_engine
from utils.tensorrt_runtime import TensorRTRunner, check_engine_compatible, read_engine_metadata

PERSON = 1  # COCO category id of 'person'
DETECTORS = (*TORCHVISION_DETECTORS, "ssdlite_person", "yolox_nano")


@dataclass
class Detections:
    """Detections of one frame: boxes (N, 4) xyxy float32 in that frame's pixels, scores (N,), labels (N,) COCO ids."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> Detections:
        """The detections where the boolean mask (or index array) `keep` holds."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])

    def persons(self, min_score: float = 0.0) -> Detections:
        """Only the people scoring at least min_score."""
        return self.select((self.labels == PERSON) & (self.scores >= min_score))


class Detector(ABC):
    """Frames in (RGB uint8 H x W x 3, any size), one Detections per frame out."""

    name: str
    default_score_thresh: float  # a sensible confidence floor for this model's scores

    @abstractmethod
    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in a batch of frames; frames of one batch should share a size for speed."""

    def warmup(self, width: int, height: int, batch_size: int = 1) -> None:
        """Run once on a black batch so one-off start-up costs (allocator, kernel choice) stay out of timings."""
        self.detect([np.zeros((height, width, 3), np.uint8)] * batch_size)

    def describe(self) -> dict[str, Any]:
        """What results.json records about this detector."""
        return {"name": self.name}


######################################################################################################################
# torchvision Faster R-CNN


def build_torchvision_model(name: str, weights: str = "DEFAULT", **kwargs: Any) -> nn.Module:
    """A torchvision detection model with weights 'DEFAULT' (torchvision's, downloaded once into the torch cache),
    'none' (random init, for speed tests), a path to a state_dict (raw, or under a 'model' key), or 'auto'
    (DEFAULT when it can be had, else random init with a warning on stderr: for training scripts' defaults).

    kwargs go to the builder (min_size, max_size, rpn_post_nms_top_n_test, ...). Never falls back silently:
    DEFAULT offline and a checkpoint that does not fit are UserErrors.
    """
    weights = resolve_weights(name, weights)
    builder = torchvision.models.get_model_builder(name)
    if weights.upper() == "DEFAULT":
        default = torchvision.models.get_model_weights(name).DEFAULT
        download_once(name, default.url)
        return builder(weights=default, **kwargs)
    model = builder(weights=None, weights_backbone=None, num_classes=91, **kwargs)
    if weights.lower() == "none":
        return model
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: no such file (use DEFAULT, none or a state_dict path)")
    state = load_weights_file(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    load_state(model, state, path, name)
    return model


class ClassSubsetPredictor(nn.Module):
    """A FastRCNNPredictor restricted to some classes, with the SAME scores as the full model.

    Scores stay the softmax over all 91 classes; only the kept classes get box regression, so the post-processing
    (box decoding, clipping, per-class NMS) handles K classes instead of 90. The returned logits are the log of
    [1 - sum(kept probabilities), kept probabilities], whose softmax gives back exactly those probabilities.
    Output labels are 1..K (positions in `keep`); TorchvisionDetector maps them back to COCO ids.
    """

    def __init__(self, predictor: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        self.cls_score = predictor.cls_score
        rows = torch.tensor([4 * c + k for c in (0, *keep) for k in range(4)])
        full = predictor.bbox_pred
        self.bbox_pred = nn.Linear(full.in_features, len(rows), device=full.weight.device, dtype=full.weight.dtype)
        with torch.no_grad():
            self.bbox_pred.weight.copy_(full.weight[rows])
            self.bbox_pred.bias.copy_(full.bias[rows])
        self.register_buffer("keep", torch.tensor(list(keep)), persistent=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = features.flatten(start_dim=1)
        probabilities = self.cls_score(features).softmax(dim=-1)
        kept = probabilities[:, self.keep]
        background = (1 - kept.sum(dim=1, keepdim=True)).clamp_min(1e-12)
        return torch.cat([background, kept], dim=1).log(), self.bbox_pred(features)


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold an inference-mode batch norm into the convolution before it (exact up to float rounding)."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    bias = norm.bias - norm.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.clone())
        else:
            conv.bias.copy_(conv.bias * scale + bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every frozen/eval BatchNorm2d that directly follows a Conv2d into it; returns how many were folded.

    Only where the order of application is known: inside nn.Sequential and IntermediateLayerGetter (the detection
    backbones' ResNet stem), and the conv/bn pairs of torchvision's ResNet blocks. Saves one full pass over each activation map per layer (about 50 in ResNet-50).
    """
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    norms = (FrozenBatchNorm2d, nn.BatchNorm2d)
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, (nn.Sequential, IntermediateLayerGetter)):  # both run their children in order
            names = list(module._modules)
            pairs = list(itertools.pairwise(names))
        elif isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(module, f"bn{i}")]
        else:
            continue
        for conv_name, norm_name in pairs:
            conv, norm = module._modules.get(conv_name), module._modules.get(norm_name)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, norms) and not norm.training:
                _fold_pair(conv, norm)
                module._modules[norm_name] = nn.Identity()
                folded += 1
    return folded


class TorchvisionDetector(Detector):
    """torchvision Faster R-CNN, set up for small frames and low latency:

    - min_size/max_size: the model works at the frame's own size (default 240/427) instead of upsizing to 800 px;
    - proposals: RPN proposals kept per image at test time (torchvision: 1000; 300 is the Faster R-CNN paper's
      test setting and plenty for people);
    - classes: only these COCO ids are decoded and NMS-ed (default: person), with the full model's scores;
    - channels_last memory layout and batch norms folded into the convolutions (faster CPU convolutions);
    - batched inference under torch.inference_mode().
    """

    default_score_thresh = 0.5

    def __init__(
        self,
        name: str = "fasterrcnn_resnet50_fpn",
        weights: str = "DEFAULT",
        device: str | torch.device = "cpu",
        min_size: int = 240,
        max_size: int = 427,
        proposals: int = 300,
        score_thresh: float | None = None,
        classes: Sequence[int] | None = (PERSON,),
        channels_last: bool = True,
        fold_bn: bool = True,
    ) -> None:
        self.name = name
        self.weights = weights
        self.device = torch.device(device)
        self.score_thresh = self.default_score_thresh if score_thresh is None else score_thresh
        self.settings = {"min_size": min_size, "max_size": max_size, "proposals": proposals}
        self.autocast_dtype: torch.dtype | None = None  # bf16 (CPU) / fp16 (CUDA) autocast; None: full precision
        model = build_torchvision_model(
            name,
            weights,
            min_size=min_size,
            max_size=max_size,
            rpn_pre_nms_top_n_test=max(proposals, 1000),
            rpn_post_nms_top_n_test=proposals,
            box_score_thresh=self.score_thresh,
        )
        model.eval()
        self.classes = list(classes) if classes else None
        if self.classes:
            model.roi_heads.box_predictor = ClassSubsetPredictor(model.roi_heads.box_predictor, self.classes)
        self.folded = fold_batchnorm(model) if fold_bn else 0
        self.channels_last = channels_last and self.device.type == "cpu"
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            model.backbone.register_forward_pre_hook(lambda _, inputs: (inputs[0].contiguous(memory_format=torch.channels_last),))
        self.model = model

    @torch.inference_mode()
    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        images = [torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1).float().div_(255) for frame in frames]
        with torch.autocast(self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            outputs = self.model(images)
        results = []
        for output in outputs:
            labels = output["labels"].cpu().numpy()
            if self.classes:
                labels = np.asarray(self.classes, dtype=np.int64)[labels - 1]
            results.append(Detections(output["boxes"].float().cpu().numpy(), output["scores"].float().cpu().numpy(), labels))
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": self.weights,
            "device": str(self.device),
            "classes": self.classes,
            "score_thresh": self.score_thresh,
            "channels_last": self.channels_last,
            "folded_batchnorms": self.folded,
            "autocast": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None,
            **self.settings,
        }


def load_quantized_detector(
    path: str | Path, name: str | None = None, score_thresh: float | None = None, **options: Any
) -> TorchvisionDetector:
    """A torchvision detector saved by quantise.py (any scheme), rebuilt and loaded on the CPU.

    The artefact holds the state_dict and the recipe (model, scheme, engine, sizes): the FP32 structure is built
    with random weights, the same quantisation applied (calibrated on a black frame: the real qparams come with the
    state_dict), then the state_dict is loaded strictly. options override the saved sizes/proposals.
    """
    artefact = read_artefact(path, name)
    if artefact["model"] not in TORCHVISION_DETECTORS:
        raise UserError(f"{path} holds {artefact['model']}, which is not a torchvision detector")
    set_engine(artefact["backend"])
    detector = TorchvisionDetector(artefact["model"], "none", "cpu", score_thresh=score_thresh, **{**artefact["settings"], **options})
    if artefact["scheme"] in ("dynamic", "static"):
        quantize_detector(detector.model, artefact["scheme"], artefact["backend"], lambda: detector.warmup(64, 64))
    load_state(detector.model, artefact["state_dict"], path)
    detector.weights = f"{path} ({artefact['scheme']}, {artefact['backend']})"
    return detector


######################################################################################################################
# torchvision detectors exported to ONNX (utils/onnx_export.py), on ONNX Runtime


class ExportedTorchvisionDetector(Detector):
    """A torchvision Faster R-CNN exported by utils.onnx_export (batch 1, a fixed input size), run by another runtime.

    Each frame is scaled to fit the exported size (never up), padded at the right and bottom, and its boxes are scaled
    back to the frame's pixels. Subclasses load the model and run one (1, 3, H, W) float image in _infer.
    """

    default_score_thresh = 0.5  # Faster R-CNN's, as TorchvisionDetector
    height: int
    width: int

    def __init__(self, metadata: dict[str, Any], path: Path, score_thresh: float | None) -> None:
        try:
            model, (self.height, self.width) = metadata["model"], metadata["settings"]["image_size"]
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{path}: its metadata JSON does not say which model and input size (export with tensorrt_convert.py)"
            ) from None
        if model not in TORCHVISION_DETECTORS:
            raise UserError(f"{path} holds {model!r}, not one of the torchvision detectors ({', '.join(TORCHVISION_DETECTORS)})")
        self.path, self.model_name = path, model
        self.score_thresh = self.default_score_thresh if score_thresh is None else score_thresh

    @abstractmethod
    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes (D, 4), scores (D,), labels (D,) of one (1, 3, height, width) float32 image in [0, 1]."""

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        import cv2

        results = []
        for frame in frames:  # the graph is batch 1
            height, width = frame.shape[:2]
            scale = min(self.height / height, self.width / width, 1.0)
            if scale < 1:
                frame = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            padded = np.zeros((self.height, self.width, 3), np.uint8)
            padded[: frame.shape[0], : frame.shape[1]] = frame
            boxes, scores, labels = self._infer(frame_to_input(padded))
            keep = scores >= self.score_thresh
            boxes = (boxes[keep] / scale).clip(0, [width, height, width, height]).astype(np.float32)
            results.append(Detections(boxes, scores[keep].astype(np.float32), labels[keep].astype(np.int64)))
        return results

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.path), "input_size": [self.height, self.width], "score_thresh": self.score_thresh}


class OnnxTorchvisionDetector(ExportedTorchvisionDetector):
    """An exported torchvision detector (.onnx, its JSON beside it) on ONNX Runtime: CPU, or CUDA with onnxruntime-gpu."""

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None, score_thresh: float | None = None
    ) -> None:
        path = Path(path)
        try:
            metadata = json.loads(metadata_path(path).read_text())
        except (OSError, ValueError):
            raise UserError(f"{path}: no readable {metadata_path(path).name} beside it (export with tensorrt_convert.py)") from None
        super().__init__(metadata, path, score_thresh)
        providers = execution_providers(cuda=torch.device(device).type == "cuda", required=True)  # asked for CUDA: no quiet CPU run
        self.session = load_onnx_session(path, threads, providers)
        self.name = f"{self.model_name} (onnxruntime)"

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return run_detector_session(self.session, image)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.session.get_providers()}


class TensorRTTorchvisionDetector(ExportedTorchvisionDetector):
    """An exported torchvision detector built into a TensorRT engine by tensorrt_convert.py, on a CUDA GPU.

    The engine's metadata JSON is checked before TensorRT deserialises anything: an engine from another TensorRT
    version or GPU, or without its JSON, is a one-line error.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cuda", score_thresh: float | None = None) -> None:
        path = Path(path)
        metadata = read_engine_metadata(path)
        super().__init__(metadata, path, score_thresh)
        if torch.device(device).type != "cuda":
            raise UserError("a TensorRT engine runs on a CUDA GPU: use --device cuda (or auto on a GPU machine)")
        check_engine_compatible(metadata)
        self.runner = TensorRTRunner(path, device)
        self.device = self.runner.device
        self.name = f"{self.model_name} (tensorrt {metadata['precision']})"

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = self.runner(images=torch.from_numpy(image).to(self.device))
        return tuple(outputs[name].cpu().numpy() for name in ("boxes", "scores", "labels"))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self.runner.metadata["tensorrt"], "precision": self.runner.metadata["precision"]}


######################################################################################################################
# Bundled SSDLite person detector (ONNX Runtime)


class OnnxSSDLitePersonDetector(Detector):
    """The bundled pretrained person-only SSDLite-MobileNetV2 (TF OD API export, MIT) on ONNX Runtime.

    Input uint8 NHWC RGB of any size (the graph resizes to 300x300 itself); boxes come back normalised
    [ymin, xmin, ymax, xmax] and are scaled to each frame's pixels here.
    """

    name = "ssdlite_person"
    default_score_thresh = 0.4  # its person scores run lower than Faster R-CNN's: real people score 0.4-0.9

    def __init__(
        self,
        path: str | Path = SSDLITE_PERSON_PATH,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        score_thresh: float | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: the ONNX person detector is missing (it ships in assets/models)")
        self.session = create_session(self.path, threads, execution_providers(cuda=torch.device(device).type == "cuda"))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = ["detection_boxes:0", "detection_scores:0", "detection_classes:0"]
        self.score_thresh = self.default_score_thresh if score_thresh is None else score_thresh

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        if len({frame.shape for frame in frames}) > 1:  # one batch needs one size: run mixed sizes one by one
            return [self.detect([frame])[0] for frame in frames]
        batch = np.ascontiguousarray(np.stack(frames))
        boxes, scores, classes = self.session.run(self.output_names, {self.input_name: batch})
        height, width = frames[0].shape[:2]
        to_pixels = np.array([height, width, height, width], dtype=np.float32)
        results = []
        for frame_boxes, frame_scores, frame_classes in zip(boxes, scores, classes, strict=True):
            keep = frame_scores >= self.score_thresh
            yx = frame_boxes[keep] * to_pixels
            results.append(
                Detections(
                    yx[:, [1, 0, 3, 2]].astype(np.float32), frame_scores[keep].astype(np.float32), frame_classes[keep].astype(np.int64)
                )
            )
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": str(self.path.relative_to(REPO_ROOT) if self.path.is_relative_to(REPO_ROOT) else self.path),
            "score_thresh": self.score_thresh,
            "providers": self.session.get_providers(),
        }


######################################################################################################################
# Bundled YOLOX-nano, 80 COCO classes (ONNX Runtime)

# The size YOLOX-nano was trained and checked at (assets/models/SOURCE.yolox_nano.txt); a placeholder until the size is
# tuned on named tuning sequences: smaller is faster, larger finds smaller people.
YOLOX_DEFAULT_SIZE = 416
YOLOX_STRIDES = (8, 16, 32)  # the head's three grids; every input side must be a multiple of the largest
YOLOX_PAD_VALUE = 114  # the grey the YOLOX authors pad with in training: other values shift the scores near the edges
YOLOX_NMS_IOU = 0.45  # the YOLOX authors' default for COCO
YOLOX_OUTPUTS = 85  # per anchor point: dx, dy, log w, log h, objectness, 80 class probabilities
# YOLOX's contiguous class index 0..79 -> COCO category id (torchvision's 91-entry numbering, gaps at the ids that
# COCO never annotated: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83), so labels mean the same as every other backend's.
COCO_80_TO_CATEGORY_ID = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


class Letterbox(NamedTuple):
    """Where a frame goes in the model input: resized to width x height at the top-left of a canvas, the rest grey."""

    canvas_width: int
    canvas_height: int
    width: int
    height: int


def _make_yolox_dynamic(model: Any, path: Path) -> None:
    """Check that `model` (an onnx.ModelProto) is a YOLOX COCO head and free its batch, height, width and anchor dims.

    The export fixes all of them (1 x 3 x 416 x 416): the input and output dims become names, the stale inner shapes
    are dropped (ONNX Runtime infers them again; kept, they make it warn on every run), and the head's Reshapes to
    [1, 85, -1] become [0, 85, -1] (0 = keep the batch dim): with a literal 1, a batch of B frames comes out as ONE
    image of B x A anchors with the frames' values interleaved, silently wrong.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    input_shape = graph_dims(inputs[0]) if inputs else []
    output_shape = graph_dims(graph.output[0]) if graph.output else []
    if len(inputs) != 1 or len(input_shape) != 4 or input_shape[1] != 3 or len(output_shape) != 3 or output_shape[2] != YOLOX_OUTPUTS:
        raise UserError(
            f"{path} is not a YOLOX COCO model: input {input_shape} output {output_shape} "
            f"(expected one input [N, 3, H, W] and output [N, A, {YOLOX_OUTPUTS}])"
        )
    for value, dims in ((inputs[0], {0: "batch", 2: "height", 3: "width"}), (graph.output[0], {0: "batch", 1: "anchors"})):
        for index, name in dims.items():
            value.type.tensor_type.shape.dim[index].dim_param = name
    del graph.value_info[:]
    reshape_shapes = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for tensor in graph.initializer:
        if tensor.name in reshape_shapes and numpy_helper.to_array(tensor).tolist() == [1, YOLOX_OUTPUTS, -1]:
            tensor.CopyFrom(numpy_helper.from_array(np.array([0, YOLOX_OUTPUTS, -1], np.int64), tensor.name))


def load_yolox_model(path: Path) -> Any:
    """The YOLOX graph at `path` as an onnx.ModelProto with free batch, height, width and anchor dims (what the
    detector runs and quantise.py quantises); a missing, non-ONNX or non-YOLOX file is a UserError of one line."""
    model = load_onnx_model(path, "YOLOX model (yolox_nano_416x416.onnx ships in assets/models)")
    _make_yolox_dynamic(model, path)
    return model


def load_yolox_session(path: Path, threads: int | None = None, cuda: bool = False) -> Any:
    """An onnxruntime.InferenceSession of the YOLOX model at `path` with free input/output dims (_make_yolox_dynamic).

    threads: intra-op threads (None: onnxruntime's default, all cores). cuda: put the CUDA provider first where this
    onnxruntime has it. A missing file, a file that is not ONNX or not YOLOX: a UserError of one line.
    """
    model = load_yolox_model(path)
    return create_session(path, threads, execution_providers(cuda), model=model.SerializeToString())


def yolox_size_for(width: int, height: int) -> int:
    """The yolox_nano size (long side) at which a width x height frame goes in unscaled: its long side rounded up to
    the coarsest grid (the scripts resize frames to --detector-size first, so that is the one knob)."""
    stride = YOLOX_STRIDES[-1]
    return -(-max(width, height) // stride) * stride


def _check_yolox_size(size: int | Sequence[int]) -> int | tuple[int, int]:
    """size as given (an int long side, or a (width, height) pair), after checking each side is a multiple of 32."""
    sides = [size] if np.ndim(size) == 0 else list(size)
    stride = YOLOX_STRIDES[-1]
    if len(sides) not in (1, 2) or any(not isinstance(side, int | np.integer) or side < stride or side % stride for side in sides):
        raise UserError(f"yolox_nano size {size!r}: give a long side or a (width, height), each a multiple of {stride} (e.g. 416)")
    return int(sides[0]) if np.ndim(size) == 0 else (int(sides[0]), int(sides[1]))


def _class_columns(classes: Collection[int] | None) -> np.ndarray | None:
    """The YOLOX class indices (0..79) of a collection of COCO category ids; None keeps all 80."""
    if classes is None:
        return None
    unknown = sorted(set(classes) - set(COCO_80_TO_CATEGORY_ID))
    if unknown or not classes:
        raise UserError(f"yolox_nano classes {sorted(classes)}: give one or more of the 80 COCO category ids it knows (1 = person)")
    return np.array(sorted(COCO_80_TO_CATEGORY_ID.index(category) for category in set(classes)), np.int64)


class OnnxYoloxDetector(Detector):
    """The bundled pretrained YOLOX-nano (Megvii, Apache-2.0; 80 COCO classes) on ONNX Runtime.

    Each frame is letterboxed as the authors do (resized keeping its aspect ratio into the top-left corner, grey
    padding), run through the raw head and decoded here: per-anchor boxes from the 8/16/32-stride grids, score =
    objectness x class probability of the best allowed class, per-class NMS, boxes back in the frame's pixels.
    size: an int is the long side and the short side is rounded up to a multiple of 32 (rectangular inference:
    16:9 video costs about 40% fewer pixels than a square); a (width, height) pair is a fixed canvas.
    classes: COCO category ids to keep (e.g. {1}: people only), dropped before NMS; None keeps all 80.
    """

    name = "yolox_nano"
    default_score_thresh = 0.3  # chosen on the tuning sequences (benchmarks/tune_main_person.py; reports/tune_main_person)

    def __init__(
        self,
        path: str | Path = YOLOX_NANO_PATH,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        score_thresh: float | None = None,
        size: int | Sequence[int] = YOLOX_DEFAULT_SIZE,
        classes: Collection[int] | None = None,
    ) -> None:
        self.size = _check_yolox_size(size)
        self.class_columns = _class_columns(classes)
        self.path = Path(path)
        self.session = load_yolox_session(self.path, threads, cuda=torch.device(device).type == "cuda")
        self.input_name = self.session.get_inputs()[0].name
        self.score_thresh = self.default_score_thresh if score_thresh is None else score_thresh
        self.category_ids = np.asarray(COCO_80_TO_CATEGORY_ID, np.int64)
        if self.class_columns is not None:
            self.category_ids = self.category_ids[self.class_columns]
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def letterbox(self, width: int, height: int) -> Letterbox:
        """Where a width x height frame goes in the model input at this detector's size."""
        long_side = isinstance(self.size, int)
        ratio = self.size / max(width, height) if long_side else min(self.size[0] / width, self.size[1] / height)
        resized_width, resized_height = max(1, round(width * ratio)), max(1, round(height * ratio))
        if not long_side:
            return Letterbox(*self.size, resized_width, resized_height)
        stride = YOLOX_STRIDES[-1]  # the short side rounded UP to the grid: the fewest pixels that hold the whole frame
        return Letterbox(-(-resized_width // stride) * stride, -(-resized_height // stride) * stride, resized_width, resized_height)

    def preprocess(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, Letterbox]:
        """The model input (B, 3, H, W) float32 BGR 0-255 of RGB frames sharing one shape, and their letterbox."""
        import cv2

        height, width = frames[0].shape[:2]
        box = self.letterbox(width, height)
        batch = np.full((len(frames), 3, box.canvas_height, box.canvas_width), YOLOX_PAD_VALUE, np.float32)
        for image, frame in zip(batch, frames, strict=True):
            resized = frame if (box.width, box.height) == (width, height) else cv2.resize(frame, (box.width, box.height))
            image[:, : box.height, : box.width] = resized[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR (as trained), HWC -> CHW
        return batch, box

    def grid(self, canvas_width: int, canvas_height: int) -> tuple[np.ndarray, np.ndarray]:
        """Each anchor point's grid cell (A, 2) as (x, y) and stride (A, 1), float32, in the head's order:
        the stride-8 grid row-major, then 16, then 32. Cached per canvas size."""
        key = (canvas_width, canvas_height)
        if key not in self._grids:
            cells, strides = [], []
            for stride in YOLOX_STRIDES:
                ys, xs = np.mgrid[: canvas_height // stride, : canvas_width // stride]
                cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
                strides.append(np.full((xs.size, 1), stride))
            self._grids[key] = (np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32))
        return self._grids[key]

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        if len({frame.shape for frame in frames}) > 1:  # one batch needs one size: run mixed sizes one by one
            return [self.detect([frame])[0] for frame in frames]
        if not frames:
            return []
        batch, box = self.preprocess(frames)
        (raw,) = self.session.run(None, {self.input_name: batch})
        cells, strides = self.grid(box.canvas_width, box.canvas_height)
        if len(cells) != raw.shape[1]:  # another head layout (strides, anchors per cell): decoding would be garbage
            raise UserError(f"{self.path}: {raw.shape[1]} anchors at {box.canvas_width}x{box.canvas_height}, YOLOX has {len(cells)}")
        height, width = frames[0].shape[:2]
        scale = np.array([box.width / width, box.height / height] * 2, np.float32)  # the exact per-axis resize factors
        return [self._decode(frame_raw, cells, strides, scale, width, height) for frame_raw in raw]

    def _decode(self, raw: np.ndarray, cells: np.ndarray, strides: np.ndarray, scale: np.ndarray, width: int, height: int) -> Detections:
        """Detections of one frame's raw head output (A, 85), in the frame's pixels."""
        # score = objectness x class probability <= objectness: this drops nearly all of the anchors before any class work
        candidates = np.flatnonzero(raw[:, 4] >= self.score_thresh)
        class_probabilities = raw[candidates, 5:]
        if self.class_columns is not None:
            class_probabilities = class_probabilities[:, self.class_columns]
        best = class_probabilities.argmax(axis=1)
        scores = raw[candidates, 4] * class_probabilities[np.arange(len(candidates)), best]
        keep = scores >= self.score_thresh
        rows, scores, labels = candidates[keep], scores[keep].astype(np.float32), self.category_ids[best[keep]]
        centres = (raw[rows, :2] + cells[rows]) * strides[rows]
        half_sizes = np.exp(raw[rows, 2:4]) * strides[rows] / 2
        boxes = np.concatenate([centres - half_sizes, centres + half_sizes], axis=1) / scale
        boxes = boxes.clip(0, [width, height, width, height]).astype(np.float32)
        kept = torchvision.ops.batched_nms(*map(torch.from_numpy, (boxes, scores, labels)), YOLOX_NMS_IOU).numpy()
        return Detections(boxes[kept], scores[kept], labels[kept])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": str(self.path.relative_to(REPO_ROOT) if self.path.is_relative_to(REPO_ROOT) else self.path),
            "size": self.size if isinstance(self.size, int) else list(self.size),
            "classes": None if self.class_columns is None else self.category_ids.tolist(),
            "score_thresh": self.score_thresh,
            "nms_iou": YOLOX_NMS_IOU,
            "providers": self.session.get_providers(),
        }


######################################################################################################################


def build_detector(
    name: str,
    weights: str = "DEFAULT",
    device: str | torch.device = "cpu",
    score_thresh: float | None = None,
    threads: int | None = None,
    quantized: str | Path | None = None,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    **options: Any,
) -> Detector:
    """The detector called `name` (one of DETECTORS); options go to the implementation (sizes, proposals...).

    quantized: a model saved by quantise.py (a .pt artefact for torchvision detectors, a .onnx for ssdlite_person and
    yolox_nano). yolox_nano's options: size (long side or (width, height)), classes (COCO ids; None: all 80).
    onnx: a torchvision detector exported by utils.onnx_export (its model comes from the JSON beside it; `name`,
    `weights` and options do not apply). engine: the same for a TensorRT engine built by tensorrt_convert.py (CUDA).
    """
    if engine is not None:
        return TensorRTTorchvisionDetector(engine, device=device, score_thresh=score_thresh)
    if onnx is not None:
        return OnnxTorchvisionDetector(onnx, device=device, threads=threads, score_thresh=score_thresh)
    if quantized is not None:
        if name == "ssdlite_person":
            return OnnxSSDLitePersonDetector(quantized, device=device, threads=threads, score_thresh=score_thresh)
        if name == "yolox_nano":
            return OnnxYoloxDetector(quantized, device=device, threads=threads, score_thresh=score_thresh, **options)
        if torch.device(device).type != "cpu":
            raise UserError("quantised INT8 detectors run on the CPU: use --device cpu")
        return load_quantized_detector(quantized, name, score_thresh=score_thresh, **options)
    if name == "ssdlite_person":
        path = SSDLITE_PERSON_PATH if weights.upper() == "DEFAULT" else Path(weights)
        return OnnxSSDLitePersonDetector(path, device=device, threads=threads, score_thresh=score_thresh)
    if name == "yolox_nano":
        path = YOLOX_NANO_PATH if weights.upper() == "DEFAULT" else Path(weights)
        return OnnxYoloxDetector(path, device=device, threads=threads, score_thresh=score_thresh, **options)
    if name in TORCHVISION_DETECTORS:
        return TorchvisionDetector(name, weights, device=device, score_thresh=score_thresh, **options)
    raise UserError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
