"""Descriptor throughput of track_verify.py's backbones: crops per second through each --backbone at several batch
sizes, on real person crops (the bundled PETS09-S2L1 crops at 256x128), the backbones interleaved round by round so
that a slow minute of a shared machine hits them all alike.

Target (issue 24): a person re-id model >= 200 crops/s on 2 CPU cores (ONNX Runtime, batched, its thread count
fixed). efficientnet_lite0 (PyTorch eager, what track_verify.py used before) is measured beside them.

Run:
    python benchmarks/bench_descriptors.py                                   # 3 backbones x batch 1, 16, 64; 2 threads
    python benchmarks/bench_descriptors.py --backbones reid-0288 --batch-sizes 64 --rounds 5
Last line: {"crops_per_second": {BACKBONE: {BATCH: median}}, "per_round": {...}, "target": 200, "met": {BACKBONE: bool}, ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import track_verify
from utils.assets import TRACK_CROPS
from utils.cli import ArgumentParser, UserError, number, run_cli, set_threads
from utils.timing import device_name, time_calls
from utils.video import read_rgb_image

BACKBONES = ("efficientnet_lite0", "reid-0287", "reid-0288")
TARGET = 200.0  # crops/s of a re-id backbone on 2 cores, at its best batch size
CROPS = TRACK_CROPS / "PETS09-S2L1"


def read_crops(count: int) -> np.ndarray:
    """`count` real person crops (RGB uint8 at track_verify.CROP_SIZE), cycling through the bundled PETS09-S2L1 ones."""
    files = sorted(CROPS.rglob("*.jpg"))
    if not files:
        raise UserError(f"{CROPS}: no crops (the bundled track crops are missing)")
    picked = [files[index % len(files)] for index in np.linspace(0, len(files) - 1, count).round().astype(int)]
    return np.stack([track_verify.crop_pixels(read_rgb_image(path), track_verify.Crop(path, None, 0)) for path in picked])


def measure(backbones: list[str], batch_sizes: list[int], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """crops/s per backbone and batch size, one value per round; within a round every backbone runs once."""
    crops = read_crops(max(batch_sizes) * 2)
    describers = {name: track_verify.build_describer(name, "DEFAULT", torch.device("cpu"), args.threads) for name in backbones}
    per_round: dict[str, dict[str, list[float]]] = {name: {str(b): [] for b in batch_sizes} for name in backbones}
    for round_index in range(args.rounds):
        for name, describe in describers.items():
            for batch in batch_sizes:
                batches = [crops[start : start + batch] for start in (0, batch)]
                timing = time_calls(describe, batches, warmup=2, repeats=args.repeats, sync=False)
                per_round[name][str(batch)].append(batch / (timing["median_ms"] / 1e3))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    return per_round


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbones", nargs="+", default=list(BACKBONES), help=f"track_verify.py --backbone values (default: {' '.join(BACKBONES)})"
    )
    parser.add_argument("--batch-sizes", type=number(int, 1), nargs="+", default=[1, 16, 64], help="crops per call (default: 1 16 64)")
    parser.add_argument(
        "--rounds", type=number(int, 1), default=3, help="interleaved rounds; the median over them is reported (default: 3)"
    )
    parser.add_argument("--repeats", type=number(int, 1), default=5, help="timed calls per backbone, batch and round (default: 5)")
    parser.add_argument("--threads", type=number(int, 1), default=2, help="CPU threads (default: 2, the target's cores)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    per_round = measure(args.backbones, args.batch_sizes, args)
    medians = {name: {batch: statistics.median(values) for batch, values in rows.items()} for name, rows in per_round.items()}
    print(f"{'backbone':<20}" + "".join(f"{f'batch {b}':>12}" for b in args.batch_sizes) + "   crops/s, median of rounds", file=sys.stderr)
    for name, row in medians.items():
        print(f"{name:<20}" + "".join(f"{value:>12.0f}" for value in row.values()), file=sys.stderr)
    reid = [name for name in medians if track_verify.reid_model_path(name) is not None]
    result = {
        "crops_per_second": medians,
        "per_round": per_round,
        "target": TARGET,
        "met": {name: max(medians[name].values()) >= TARGET for name in reid},
        "threads": args.threads,
        "device": device_name(torch.device("cpu")),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
