"""Training-step time of the stateful Faster R-CNN: backbone batched over the B*T frames (task2's forward) against a
frame-by-frame loop of the same model on the same windows (T calls of one frame per stream, state carried).
"batched" runs the backbone in chunks of --backbone-chunk frames (task3's default: 4 on CPU, all on CUDA);
"batched, all at once" is one call on all B*T frames.

Both do the same work per step: forward over B*T frames with the ConvGRU walking T steps, one backward through
all T steps (BPTT), one AdamW step. The loop's loss is the mean of its T per-frame losses, so both optimise the
same quantity. Steps alternate between the two (round-robin) so that drift in the machine's speed hits both alike.

Measured (2-core AMD EPYC, resnet50-FPN, B=2, T=10, 240x427, median of 3 rounds): loop 39.3 s, batched in chunks
of 4 39.1 s (1.01x), batched all at once 53.3 s. On this CPU the convolutions are compute-bound and 20 frames of activations overflow the
32 MB L3, so one big batch is slower, not faster; batching pays where per-call overhead dominates (a GPU).

Those figures predate GroupNorm: a model trained from scratch (as here, random weights) now normalises each frame
with GroupNorm instead of batch statistics over the frames of a call (task2), which costs some speed on the CPU.

Run:
    python benchmarks/bench_seq_train.py                      # resnet50-FPN, B=2, T=10, 240x427
    python benchmarks/bench_seq_train.py --quick --device cuda   # smoke run (CI, the GPU lane): figures mean nothing
Last line: {"batched_step_s": ..., "loop_step_s": ..., "speedup": ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from task1_seq_loader import build_loader, load_sequences
from task2_stateful_rcnn import MIN_FRAME_SIDE, build_stateful_model
from task3_train_seq import auto_chunk, parse_backbone_chunk
from utils.assets import TORCHVISION_DETECTORS
from utils.cli import ArgumentParser, number, resolve_device, run_cli, seed_everything, set_threads

# --quick: the smallest detector on short windows of small frames, one timed round: does it run, not how fast
QUICK = {"detector": "fasterrcnn_mobilenet_v3_large_320_fpn", "seq_len": 2, "size": (96, 128), "repeats": 1}


def batched_step(model, optimizer, frames, targets) -> float:
    model.reset_state()
    loss = sum(model(frames, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def loop_step(model, optimizer, frames, targets) -> float:
    model.reset_state()
    steps = frames.shape[1]
    loss = 0.0
    for step in range(steps):  # one frame per stream per call: backbone, GRU step and heads each time
        losses = model(frames[:, step : step + 1], [[window[step]] for window in targets])
        loss = loss + sum(losses.values()) / steps
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="assets/data", help="MOTChallenge sequence(s)")
    parser.add_argument("--detector", default="fasterrcnn_resnet50_fpn", choices=TORCHVISION_DETECTORS, help="base detector")
    parser.add_argument("--seq-len", type=number(int, 1), default=10, help="frames per window (T)")
    parser.add_argument("--batch-size", type=number(int, 1), default=2, help="windows per step (B)")
    parser.add_argument("--size", type=number(int, MIN_FRAME_SIDE), nargs=2, metavar=("H", "W"), default=(240, 427), help="frame size")
    parser.add_argument(
        "--backbone-chunk",
        type=parse_backbone_chunk,
        default="auto",
        help="frames per backbone call: auto (4 on CPU, all on CUDA), all, or N",
    )
    parser.add_argument("--repeats", type=number(int, 1), default=3, help="timed steps of each kind, after one warm-up step each")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK} (default: off)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.quick:
        args = argparse.Namespace(**{**vars(args), **QUICK})
    seed_everything(0)
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    size = tuple(args.size)
    loader = build_loader(load_sequences(args.data), None, args.seq_len, args.batch_size, size=size, shuffle=False, stride=args.seq_len)
    frames, targets, _ = next(iter(loader))
    frames = frames.to(device)
    targets = [[{k: v.to(device) for k, v in t.items()} for t in window] for window in targets]
    model = build_stateful_model(args.detector, "none", size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    chunk = auto_chunk(args.backbone_chunk, device)
    variants = [("batched", chunk, batched_step), ("batched, all at once", None, batched_step), ("loop", None, loop_step)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for round_number in range(args.repeats + 1):  # round 0 warms them up and is dropped
        for name, backbone_chunk, step in variants:
            model.backbone_chunk = backbone_chunk
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(model, optimizer, frames, targets)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_number:
                times[name].append(time.perf_counter() - start)
            print(f"round {round_number} {name:<22} {time.perf_counter() - start:7.2f} s", file=sys.stderr)
    batched, loop = statistics.median(times["batched"]), statistics.median(times["loop"])
    all_at_once = statistics.median(times["batched, all at once"])
    result = {
        "batched_step_s": round(batched, 3),
        "loop_step_s": round(loop, 3),
        "speedup": round(loop / batched, 2),
        "batched_all_at_once_step_s": round(all_at_once, 3),
        "backbone_chunk": chunk,
        "detector": args.detector,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "size": list(size),
        "threads": threads,
        "device": str(device),
        "quick": args.quick,
    }
    print(
        f"batched backbone (chunks of {chunk or 'all'}) {batched:.2f} s/step, all at once {all_at_once:.2f}, "
        f"frame-by-frame loop {loop:.2f}: {loop / batched:.2f}x",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
