"""Train the stateful Faster R-CNN (task2) on windows of MOT frames (task1), and show that the stateful layer trains:
every logged step prints its gradient norm and how far its weights have moved since step 0.

Modes: --mode random resets the state for every (shuffled) window; --mode stream carries it across consecutive
windows of each stream, detached between windows (truncated BPTT), reset where a stream starts a new sequence.
AdamW with linear warm-up then cosine decay, gradient clipping, AMP on CUDA, --freeze-detector (train only the
stateful layer), checkpoint/resume of everything (model, optimizer, scheduler, scaler, step, RNG, stream state),
metrics to JSON/CSV and a loss plot, evaluation (COCO mAP@0.5 and @0.5:0.95 via torchmetrics + pycocotools) of the
model with its state against the same weights without it. DDP under torchrun (gloo on CPU, nccl on CUDA).

Run:
    python task3_train_seq.py --data assets/data --max-steps 5
    python task3_train_seq.py --data assets/data --max-steps 10 --resume runs/train_seq/checkpoint.pt
    torchrun --nproc-per-node 2 task3_train_seq.py --data assets/data --max-steps 20
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from task1_seq_loader import build_loader, load_sequences, make_windows, split_frames, stream_resets, window_batches
from task2_stateful_rcnn import StatefulFasterRCNN, add_data_and_model_args, build_stateful_model
from utils.cli import HelpFormatter, UserError, resolve_device, run_cli, seed_everything, set_threads
from utils.detectors import PERSON

######################################################################################################################
# Set-up: distributed, model, optimizer


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); under torchrun, joins the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def auto_chunk(choice: str, device: torch.device) -> int | None:
    """--backbone-chunk: 'auto' is 4 frames per call on CPU, where 20 frames of activations overflow the cache and
    one big call measured 1.5x slower (benchmarks/bench_seq_train.py), and all at once on CUDA."""
    if choice == "auto":
        return None if device.type == "cuda" else 4
    return None if choice == "all" else int(choice)


def stateful_parameters(model: StatefulFasterRCNN) -> list[nn.Parameter]:
    return list(model.temporal.parameters())


def flat_copy(parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in parameters]).clone()


def gradient_norm(parameters: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in parameters if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 1% to the full rate, then cosine decay to 10% at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def reset_streams(model: StatefulFasterRCNN, previous_meta: list[dict] | None, meta: list[dict]) -> None:
    """Reset the state of the streams whose window does not continue their previous one."""
    resets = stream_resets(previous_meta, meta)
    if len(resets) == len(meta):
        model.reset_state()
    elif resets:
        model.reset_state(resets)


def to_device(targets: list[list[dict[str, torch.Tensor]]], device: torch.device) -> list[list[dict[str, torch.Tensor]]]:
    return [[{key: value.to(device) for key, value in target.items()} for target in window] for window in targets]


######################################################################################################################
# Checkpoints


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **contents: Any) -> None:
    """Atomic: written beside, then renamed, so an interrupted save never corrupts the last good checkpoint."""
    partial = path.with_name(f".{path.name}.partial")
    torch.save(contents, partial)
    os.replace(partial, path)


######################################################################################################################
# Evaluation


@torch.inference_mode()
def evaluate(model: StatefulFasterRCNN, loader: Any, device: torch.device, use_state: bool) -> dict[str, float]:
    """Person mAP@0.5 and mAP@0.5:0.95 (COCO, torchmetrics + pycocotools) over the val windows, walked in order with
    the state carried (reset at each new sequence); use_state=False is the same detector without the layer."""
    from torchmetrics.detection import MeanAveragePrecision

    model.eval()
    model.use_state = use_state
    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools", sync_on_compute=False)  # rank 0 evaluates alone
    previous = None
    for frames, targets, meta in loader:
        reset_streams(model, previous, meta)
        previous = meta
        outputs = model(frames.to(device))
        for window_outputs, window_targets in zip(outputs, targets, strict=True):
            predictions = [{k: v[o["labels"] == PERSON].cpu() for k, v in o.items()} for o in window_outputs]
            metric.update(predictions, [{"boxes": t["boxes"], "labels": t["labels"]} for t in window_targets])
    model.use_state = True
    model.reset_state()
    scores = metric.compute()
    return {"map_50": float(scores["map_50"]), "map": float(scores["map"])}


######################################################################################################################
# Reporting


def write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    (out / "metrics.json").write_text(json.dumps(history, indent=1) + "\n")
    with (out / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def plot_training(out: Path, history: list[dict[str, float]]) -> None:
    """Loss, the stateful layer's gradient norm and its weight change, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, key, title in zip(
        axes,
        ("loss", "stateful_grad_norm", "stateful_weight_change"),
        ("training loss", "stateful layer: gradient norm", "stateful layer: ||w - w0||"),
        strict=True,
    ):
        axis.plot(steps, [row[key] for row in history], marker="o", markersize=3)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "training.png", dpi=110)
    plt.close(figure)


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_data_and_model_args(parser)
    parser.add_argument("--mode", choices=("random", "stream"), default="stream", help="reset the state per window, or carry it (TBPTT)")
    parser.add_argument("--seq-len", type=int, default=10, help="frames per window")
    parser.add_argument("--stride", type=int, default=5, help="frames between window starts (random mode)")
    parser.add_argument("--batch-size", type=int, default=2, help="windows per step (per process under torchrun)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(240, 320), help="frame size (TUD-Campus is 4:3)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="last share of every sequence's frames held out")
    parser.add_argument("--val-sequences", nargs="*", default=(), help="sequences held out whole instead")
    parser.add_argument("--max-steps", type=int, default=200, help="optimizer steps in all")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW)")
    parser.add_argument("--stateful-lr-scale", type=float, default=10.0, help="the new layer learns this much faster than the detector")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps")
    parser.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (all trained parameters)")
    parser.add_argument("--freeze-detector", action="store_true", help="train only the stateful layer (default: train all)")
    parser.add_argument("--backbone-chunk", default="auto", help="frames per backbone call: auto (4 on CPU, all on CUDA), all, or N")
    parser.add_argument("--proposals", type=int, default=300, help="RPN proposals per frame at evaluation")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: 0, only at the end)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="save a checkpoint every N steps (and at the end)")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from, bit for bit")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="leave after this many steps in this run, schedule unchanged (time-limited jobs)"
    )
    parser.add_argument("--out", default="runs/train_seq", help="folder for checkpoint.pt, metrics.json/.csv, training.png")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights init, shuffling and sampling")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_steps < 1 or args.batch_size < 1 or args.seq_len < 1:
        raise UserError("--max-steps, --batch-size and --seq-len must be at least 1")
    device = resolve_device(args.device)
    rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    seed_everything(args.seed)
    set_threads(args.threads)
    out = Path(args.out)
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    size = tuple(args.size)

    ##### data: windows of the training frames, deterministic per (seed, epoch), and the held-out tail
    sequences = load_sequences(args.data)
    train_ranges, val_ranges = split_frames(sequences, args.val_sequences, args.val_fraction)
    stride = args.seq_len if args.mode == "stream" else args.stride
    train_windows = make_windows(sequences, args.seq_len, stride, train_ranges)
    if not train_windows:
        raise UserError(f"no training window of {args.seq_len} frames (shorter sequences, or too much held out)")
    steps_per_epoch = len(window_batches(train_windows, args.batch_size, args.mode, args.seed, 0, rank, world))
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_windows)} training windows make no batch for {world} process(es)")
    has_val = bool(make_windows(sequences, args.seq_len, args.seq_len, val_ranges))

    ##### model and optimizer: the stateful layer gets its own (higher) learning rate
    model = build_stateful_model(args.detector, args.weights, size, proposals=args.proposals).to(device)
    model.backbone_chunk = auto_chunk(args.backbone_chunk, device)
    if args.freeze_detector:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("temporal.")
    stateful = stateful_parameters(model)
    others = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("temporal.")]
    groups = [{"params": stateful, "lr": args.lr * args.stateful_lr_scale}] + ([{"params": others}] if others else [])
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args.warmup_steps, args.max_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    trained = [p for group in groups for p in group["params"]]
    initial_stateful = flat_copy(stateful)
    step, history, stream_state, previous_meta = 0, [], None, None
    if args.resume:
        try:
            checkpoint = torch.load(args.resume, map_location=device, weights_only=False)
            model.load_state_dict(checkpoint["model"])
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
            message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise UserError(f"cannot resume from {args.resume}: {message}") from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        step, history = checkpoint["step"], checkpoint["history"]
        initial_stateful = checkpoint["initial_stateful"].to(device)
        stream_state, previous_meta = checkpoint["stream_state"], checkpoint["previous_meta"]
        set_rng_state(checkpoint["rng"])
        if rank == 0:
            print(f"resumed from {args.resume} at step {step}", file=sys.stderr)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    model.set_state(stream_state)

    ##### training loop
    stop_at = min(args.max_steps, step + args.stop_after) if args.stop_after else args.max_steps
    progress = tqdm(total=args.max_steps, initial=step, unit="step", desc="train", file=sys.stderr, disable=rank != 0)
    started = time.perf_counter()
    while step < stop_at:
        epoch, position = divmod(step, steps_per_epoch)
        loader = build_loader(
            sequences, train_ranges, args.seq_len, args.batch_size, args.mode, stride, size,
            seed=args.seed, epoch=epoch, skip=position, rank=rank, world=world, workers=args.workers,
        )  # fmt: skip
        for frames, targets, meta in loader:
            model.train()
            if args.freeze_detector:  # frozen means its batch-norm statistics too, not only its weights
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            if args.mode == "random":
                model.reset_state()
            else:
                reset_streams(model, previous_meta, meta)
                previous_meta = meta
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                losses = ddp_model(frames.to(device), to_device(targets, device))
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise UserError(
                    f"step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} }); lower --lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            stateful_norm = gradient_norm(stateful)  # before clipping: what actually reached the layer
            torch.nn.utils.clip_grad_norm_(trained, args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            model.detach_state()  # truncated BPTT: the next window sees this state as a constant
            step += 1
            row = {
                "step": step,
                "loss": loss.item(),
                **{name: value.item() for name, value in losses.items()},
                "lr": optimizer.param_groups[-1]["lr"],
                "stateful_grad_norm": stateful_norm,
                "stateful_weight_change": float((flat_copy(stateful) - initial_stateful).norm()),
                "gate_mean_abs": model.temporal.gate.detach().abs().mean().item(),
            }
            history.append(row)
            if rank == 0:
                progress.update()
                tqdm.write(
                    f"step {step:>5}  loss {row['loss']:.4f}  stateful grad norm {stateful_norm:.3e}  "
                    f"weight change {row['stateful_weight_change']:.3e}  gate {row['gate_mean_abs']:.4f}  lr {row['lr']:.2e}",
                    file=sys.stderr,
                )
            if rank == 0 and (step % args.checkpoint_every == 0 or step == stop_at):
                save_checkpoint(
                    out / "checkpoint.pt",
                    model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), step=step, args=vars(args), rng=rng_state(), history=history,
                    initial_stateful=initial_stateful, stream_state=model.get_state(), previous_meta=previous_meta,
                )  # fmt: skip
            if step >= stop_at:
                break
    progress.close()
    train_s = time.perf_counter() - started

    ##### evaluation: the stateful model against the same detector without its state
    results: dict[str, Any] = {"steps": step, "train_s": train_s, "final": history[-1] if history else None, "world_size": world}
    if rank == 0 and has_val and step == args.max_steps:  # a run left early (--stop-after) is not finished
        val_loader = build_loader(sequences, val_ranges, args.seq_len, 1, "stream", size=size)
        saved_state = model.get_state()
        results["eval"] = {"stateful": evaluate(model, val_loader, device, True), "stateless": evaluate(model, val_loader, device, False)}
        model.set_state(saved_state)
        print(
            f"val person mAP@0.5 / mAP@0.5:0.95: with state {results['eval']['stateful']['map_50']:.3f} / {results['eval']['stateful']['map']:.3f}, "
            f"without {results['eval']['stateless']['map_50']:.3f} / {results['eval']['stateless']['map']:.3f}",
            file=sys.stderr,
        )
    if rank == 0 and history:
        write_metrics(out, history)
        plot_training(out, history)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"checkpoint, metrics and plot in {out}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
