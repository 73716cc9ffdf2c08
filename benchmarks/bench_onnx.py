"""ONNX Runtime (and on a GPU the fast PyTorch rows) against PyTorch eager FP32, side by side, --runs times over.

Each run is one tensorrt_convert.main() per model, so every ratio compares rows timed in the same process, on the
same inputs, with the same threads. Reported: per run and median over runs.
- CPU target (issue 11): ONNX Runtime >= 1.3x eager for efficientnet_lite0 at batch 1; fasterrcnn_resnet50_fpn
  (240x427, batch 1) reported beside it.
- GPU target (when torch sees one): the best non-TensorRT row >= 4x eager FP32 for efficientnet_lite0 at batch 8
  and for fasterrcnn_resnet50_fpn at batch 1. TensorRT rows are left to tensorrt_convert.py (its build times
  would dominate here).

Run:
    python benchmarks/bench_onnx.py                  # both models, 3 runs
    python benchmarks/bench_onnx.py --runs 1 --models efficientnet_lite0
Last line: {"cpu": {"efficientnet_lite0": {"eager_ms": ..., "ort_ms": ..., "speedup": ..., "target": 1.3, "met": ...}, ...},
"gpu": {...} or {"skipped": reason}}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tensorrt_convert
from utils.cli import ArgumentParser, number, run_cli

MODELS = ("efficientnet_lite0", "fasterrcnn_resnet50_fpn")
CPU_TARGET = 1.3  # ONNX Runtime over eager, efficientnet_lite0, batch 1
GPU_TARGET = 4.0  # best non-TensorRT row over eager FP32 (anchor: TensorRT FP16 on ViT-B, 4.1x)
GPU_BATCH = {"efficientnet_lite0": 8, "fasterrcnn_resnet50_fpn": 1}  # the batch each GPU target is set at
GPU_ROWS = ("eager", "eager-fp16", "compile", "cuda-graphs", "ort-cuda")
# A row whose top-1 agrees with eager FP32 on fewer inputs is wrong, not fast (the floor tests/test_tensorrt_convert.py
# sets for FP16); seen: cuda-graphs replaying NaN logits on an H200 with torch 2.11 was the fastest row
PARITY_FLOOR = 0.875


def run_convert(model: str, rows: list[str], batch_sizes: list[int], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """tensorrt_convert.main for one model and some rows; its table goes to stderr, the results come back."""
    argv = ["--model", model, "--rows", *rows, "--batch-sizes", *map(str, batch_sizes), "--out", str(out)]
    argv += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--weights", args.weights]
    argv += ["--device", "cuda" if "ort-cuda" in rows or "eager-fp16" in rows else "cpu"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # only this script's JSON goes to stdout
        results = tensorrt_convert.main(tensorrt_convert.get_args_parser().parse_args(argv))
    print(stdout.getvalue(), file=sys.stderr)
    return results


def median_ms(results: dict[str, Any], row: str, device: str, batch: int) -> float | None:
    """The row's median latency at `batch` on `device`, None where it did not run or its outputs disagree with eager."""
    for measured in results["rows"]:
        agrees = measured.get("parity", {}).get("top1_agreement", 1.0) >= PARITY_FLOOR  # detectors: no top-1
        if measured["row"] == row and measured["device"] == device and "median_ms" in measured.get(f"batch{batch}", {}) and agrees:
            return measured[f"batch{batch}"]["median_ms"]
    return None


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median over runs of each figure, plus the per-run ratios (the spread)."""
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]} | {
        "speedup_per_run": [round(run["speedup"], 3) for run in runs]
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to time (default: both)")
    parser.add_argument("--runs", type=number(int, 1), default=3, help="repeated runs; medians and per-run ratios are reported")
    parser.add_argument("--repeats", type=number(int, 1), default=30, help="timed calls per row at batch 1")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads")
    parser.add_argument(
        "--weights", default="auto", help="detector weights: auto (DEFAULT when it can be had, else random: speed is the same)"
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    on_gpu = torch.cuda.is_available()
    cpu: dict[str, list] = {model: [] for model in args.models}
    gpu: dict[str, list] = {model: [] for model in args.models}
    with tempfile.TemporaryDirectory(prefix="bench_onnx-") as workdir:
        for run in range(args.runs):
            for model in args.models:
                batch_sizes = [1, 8] if model == "efficientnet_lite0" else [1]
                out = Path(workdir) / model  # the same folder each run: the export is redone, nothing is reused
                results = run_convert(model, ["eager", "ort-cpu"], [1], args, out)
                eager, ort = median_ms(results, "eager", "cpu", 1), median_ms(results, "ort-cpu", "cpu", 1)
                cpu[model].append({"eager_ms": eager, "ort_ms": ort, "speedup": eager / ort})
                print(
                    f"run {run + 1}/{args.runs} {model} CPU: eager {eager:.1f} ms, ONNX Runtime {ort:.1f} ms, {eager / ort:.2f}x",
                    file=sys.stderr,
                )
                if on_gpu:
                    results = run_convert(model, list(GPU_ROWS), batch_sizes, args, out)
                    batch = GPU_BATCH[model]
                    eager_gpu = median_ms(results, "eager", "cuda", batch)
                    best_row, best_ms = min(
                        ((row, ms) for row in GPU_ROWS[1:] if (ms := median_ms(results, row, "cuda", batch)) is not None),
                        key=lambda pair: pair[1],
                    )
                    gpu[model].append({"eager_ms": eager_gpu, "best_ms": best_ms, "speedup": eager_gpu / best_ms, "best_row": best_row})
    report: dict[str, Any] = {"cpu": {}, "threads": args.threads, "runs": args.runs, "torch": torch.__version__}
    for model, runs in cpu.items():
        report["cpu"][model] = summarise(runs)
        if model == "efficientnet_lite0":
            report["cpu"][model].update(target=CPU_TARGET, met=report["cpu"][model]["speedup"] >= CPU_TARGET)
    if on_gpu:
        report["gpu"] = {"device": torch.cuda.get_device_name()}
        for model, runs in gpu.items():
            best_rows = [run.pop("best_row") for run in runs]
            summary = summarise(runs)
            summary.update(best_rows=best_rows, batch=GPU_BATCH[model], target=GPU_TARGET, met=summary["speedup"] >= GPU_TARGET)
            report["gpu"][model] = summary
    else:
        report["gpu"] = {"skipped": "no CUDA GPU visible to torch"}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
