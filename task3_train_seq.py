"""Train the stateful Faster R-CNN (task2) on windows of MOT frames (task1), and show that the stateful layer trains:
every logged step prints its gradient norm and how far its weights have moved since step 0.

Modes: --mode random resets the state for every (shuffled) window; --mode stream carries it across consecutive
windows of each stream, detached between windows (truncated BPTT), reset where a stream starts a new sequence.
AdamW with linear warm-up then cosine decay, gradient clipping, AMP on CUDA (the schedule advances only on the steps
the GradScaler took), --freeze-detector (train only the stateful layer), checkpoint/resume of everything (model,
optimizer, scheduler, scaler, step, and every rank's RNG and stream state), metrics to JSON/CSV and a loss plot,
evaluation (COCO mAP@0.5 and @0.5:0.95 via torchmetrics + pycocotools) of the model with its state against the same
weights without it, at the end and every --eval-every steps. DDP under torchrun (gloo on CPU, nccl on CUDA).
Normalisation never mixes frames or streams: frozen batch norms for loaded weights, GroupNorm from scratch (task2).

main() reads as its steps: start (device, ranks, seeds) -> prepare_data -> build_run -> resume -> train_step per
batch, evaluate_run every --eval-every steps, save_checkpoint every --checkpoint-every -> final evaluation -> report.

Run:
    python task3_train_seq.py --data assets/data --max-steps 5
    python task3_train_seq.py --data assets/data --max-steps 10 --resume runs/train_seq/checkpoint.pt
    torchrun --nproc-per-node 2 task3_train_seq.py --data assets/data --max-steps 20
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from task1_seq_loader import build_loader, load_sequences, make_windows, split_frames, stream_resets, window_batches
from task2_stateful_rcnn import MAX_SEED, MIN_FRAME_SIDE, StatefulFasterRCNN, add_data_and_model_args, build_stateful_model
from utils.cli import ArgumentParser, OutOfRange, UserError, number, resolve_device, run_cli, seed_everything, set_threads
from utils.detectors import PERSON
from utils.mot import MotSequence
from utils.outputs import atomic_path, new_figure, save_figure, write_json
from utils.training import (
    check_resume_flags,
    load_checkpoint,
    restore_rng_state,
    restore_states,
    rng_state,
    save_checkpoint,
    warmup_cosine,
)

# Flags that make a run what it is: resuming with other values would not continue the run the checkpoint belongs to
# (other windows, streams, state shapes or trained parameters). --max-steps may change: a longer schedule is the point.
RUN_DEFINING_FLAGS = ("detector", "size", "seq_len", "batch_size", "mode", "stride", "val_fraction", "val_sequences", "freeze_detector")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "args", "history", "initial_stateful", "ranks")

######################################################################################################################
# Command-line types


def share_below_one(text: str) -> float:
    """--val-fraction: a share in [0, 1); all of every sequence held out would leave nothing to train on."""
    value = number(float, 0, 1)(text)
    if value >= 1:
        raise OutOfRange(f"must be below 1 (all frames held out leaves none to train on), got {text}")
    return value


def parse_backbone_chunk(text: str) -> str | int:
    """--backbone-chunk: 'auto', 'all' or a number of frames (at least 1)."""
    if text in ("auto", "all"):
        return text
    if not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"must be auto, all or a number of frames, got {text!r}")
    return number(int, 1)(text)


######################################################################################################################
# Set-up: device and ranks, data, model and optimizer


def start(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """(device, rank, world size); under torchrun, joins the process group (nccl on CUDA, gloo on CPU)."""
    device = resolve_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)  # nccl collectives (gather_object included) run on the current device
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    set_threads(args.threads)
    return device, rank, world


@dataclass
class TrainingData:
    """The sequences, the train/val frame ranges of each, and how many steps make one epoch on this rank."""

    sequences: list[MotSequence]
    train_ranges: list[range]
    val_ranges: list[range]
    stride: int
    steps_per_epoch: int
    has_val: bool


def prepare_data(args: argparse.Namespace, rank: int, world: int) -> TrainingData:
    """Windows of the training frames (deterministic per (seed, epoch)) and the held-out tail of each sequence."""
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
    if args.eval_every and not has_val:
        raise UserError(
            f"--eval-every {args.eval_every}: no held-out window of {args.seq_len} frames; raise --val-fraction or name --val-sequences"
        )
    return TrainingData(sequences, train_ranges, val_ranges, stride, steps_per_epoch, has_val)


def training_batches(data: TrainingData, args: argparse.Namespace, step: int, stop_at: int, rank: int, world: int) -> Iterator:
    """The batches of steps step..stop_at-1, epoch after epoch: exactly those a run from step 0 meets there."""
    while step < stop_at:
        epoch, position = divmod(step, data.steps_per_epoch)
        loader = build_loader(
            data.sequences, data.train_ranges, args.seq_len, args.batch_size, args.mode, data.stride, tuple(args.size),
            seed=args.seed, epoch=epoch, skip=position, rank=rank, world=world, workers=args.workers,
        )  # fmt: skip
        for batch in loader:
            yield batch
            step += 1
            if step >= stop_at:
                return


def auto_chunk(choice: str | int, device: torch.device) -> int | None:
    """--backbone-chunk: 'auto' is 4 frames per call on CPU, where 20 frames of activations overflow the cache and
    one big call measured 1.5x slower (benchmarks/bench_seq_train.py), and all at once on CUDA."""
    if choice == "auto":
        return None if device.type == "cuda" else 4
    return None if choice == "all" else int(choice)


def flat_copy(parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in parameters]).clone()


@dataclass
class Run:
    """What a checkpoint holds: the model and its optimisation, and where the run stands (this rank's part)."""

    model: StatefulFasterRCNN
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    initial_stateful: torch.Tensor  # the stateful layer's weights at step 0: its ||w - w0|| is logged
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    previous_meta: list[dict] | None = None  # this rank's last batch: which of its streams continue

    @property
    def stateful(self) -> list[nn.Parameter]:
        return list(self.model.temporal.parameters())


def build_run(args: argparse.Namespace, device: torch.device, rank: int) -> Run:
    """Model, AdamW (the stateful layer at --stateful-lr-scale times the rate), schedule and GradScaler (AMP on CUDA)."""
    seed_everything(args.seed)  # the same initial weights on every rank
    model = build_stateful_model(args.detector, args.weights, tuple(args.size), proposals=args.proposals).to(device)
    model.backbone_chunk = auto_chunk(args.backbone_chunk, device)
    if args.freeze_detector:  # its normalisations hold no statistics to update (task2): requires_grad is all it takes
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("temporal.")
    stateful = list(model.temporal.parameters())
    others = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("temporal.")]
    groups = [{"params": stateful, "lr": args.lr * args.stateful_lr_scale}] + ([{"params": others}] if others else [])
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = warmup_cosine(optimizer, args.warmup_steps, args.max_steps, floor=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    seed_everything((args.seed + rank) % (MAX_SEED + 1))  # from here on (RoI sampling...) every rank draws its own random numbers
    return Run(model, optimizer, scheduler, scaler, flat_copy(stateful))


######################################################################################################################
# Checkpoints: one file, written by rank 0, holding every rank's RNG and stream state


def gather_rank_states(run: Run, world: int) -> list[dict[str, Any]] | None:
    """Every rank's RNG, stream state and last batch, on rank 0 (None on the others).

    Gathered into the one checkpoint rather than written as per-rank files: a single file renamed into place is
    always a consistent snapshot, while per-rank files can mix steps when a job dies between two ranks' writes, and
    would need a file system shared by every node. The gathered part is small (the ConvGRU state is 32 channels).
    """
    stream_state = run.model.get_state()
    own = {
        "rng": rng_state(),
        "stream_state": None if stream_state is None else {level: value.cpu() for level, value in stream_state.items()},
        "previous_meta": run.previous_meta,
    }
    if world == 1:
        return [own]
    gathered: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(own, gathered, dst=0)
    return gathered


def save_run(path: Path, run: Run, args: argparse.Namespace, ranks: list[dict[str, Any]]) -> None:
    """Rank 0's checkpoint: the run's states, its flags, history and every rank's part (written atomically)."""
    save_checkpoint(
        path,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=run.scaler,  # {} without AMP
        step=run.step,
        args=args,
        history=run.history,
        initial_stateful=run.initial_stateful.cpu(),
        ranks=ranks,
    )


def read_run(path: str, args: argparse.Namespace, world: int) -> dict[str, Any]:
    """A checkpoint of this script for this very run (same run-defining flags and process count), all on the CPU:
    loading to the GPU would move the saved CPU RNG state there too, and torch.set_rng_state refuses it."""
    checkpoint = load_checkpoint(path, required=CHECKPOINT_KEYS, context="cannot resume from")
    check_resume_flags(checkpoint["args"], args, RUN_DEFINING_FLAGS, path)
    if len(checkpoint["ranks"]) != world:
        raise UserError(f"cannot resume from {path}: it was written by {len(checkpoint['ranks'])} process(es), this run has {world}")
    return checkpoint


def resume(run: Run, checkpoint: dict[str, Any], path: str, rank: int, device: torch.device) -> None:
    """Restore everything the checkpoint holds; model and optimizer states land on the model's device."""
    restore_states(checkpoint, path, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler)
    run.step, run.history = checkpoint["step"], checkpoint["history"]
    run.initial_stateful = checkpoint["initial_stateful"].to(device)
    own = checkpoint["ranks"][rank]
    stream_state = own["stream_state"]
    run.model.set_state(None if stream_state is None else {level: value.to(device) for level, value in stream_state.items()})
    run.previous_meta = own["previous_meta"]
    restore_rng_state(own["rng"])


######################################################################################################################
# One training step


def reset_streams(model: StatefulFasterRCNN, previous_meta: list[dict] | None, meta: list[dict]) -> None:
    """Reset the state of the streams whose window does not continue their previous one."""
    resets = stream_resets(previous_meta, meta)
    if len(resets) == len(meta):
        model.reset_state()
    elif resets:
        model.reset_state(resets)


def to_device(targets: list[list[dict[str, torch.Tensor]]], device: torch.device) -> list[list[dict[str, torch.Tensor]]]:
    return [[{key: value.to(device) for key, value in target.items()} for target in window] for window in targets]


def gradient_norm(parameters: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in parameters if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clip_grad: float,
    watched: list[nn.Parameter],
) -> tuple[float, bool]:
    """Backward, clip, step: (gradient norm of `watched` before clipping, whether the optimizer stepped).

    With AMP the GradScaler skips the step when the gradients hold inf/nan and then lowers its scale: the schedule
    advances only when the scale did not drop, so skipped steps do not eat the warm-up or the decay.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    watched_norm = gradient_norm(watched)  # before clipping: what actually reached those parameters
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_grad)
    scale = scaler.get_scale()  # 1.0 with AMP off: never drops
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale
    if stepped:
        scheduler.step()
    return watched_norm, stepped


def train_step(run: Run, ddp_model: nn.Module, batch: tuple, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One optimizer step on one batch of windows; returns its history row."""
    frames, targets, meta = batch
    run.model.train()
    if args.mode == "random":
        run.model.reset_state()
    else:
        reset_streams(run.model, run.previous_meta, meta)
        run.previous_meta = meta
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        losses = ddp_model(frames.to(device), to_device(targets, device))
        loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise UserError(
            f"step {run.step}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} }); lower --lr or check the data"
        )
    stateful_norm, stepped = optimizer_step(loss, run.optimizer, run.scaler, run.scheduler, args.clip_grad, run.stateful)
    run.model.detach_state()  # truncated BPTT: the next window sees this state as a constant
    run.step += 1
    return {
        "step": run.step,
        "loss": loss.item(),
        **{name: value.item() for name, value in losses.items()},
        "lr": run.optimizer.param_groups[-1]["lr"],
        "optimizer_stepped": int(stepped),  # 0: AMP found inf/nan gradients and skipped the step
        "stateful_grad_norm": stateful_norm,
        "stateful_weight_change": float((flat_copy(run.stateful) - run.initial_stateful).norm()),
        "gate_mean_abs": run.model.temporal.gate.detach().abs().mean().item(),
    }


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


def evaluate_run(run: Run, data: TrainingData, args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """The model with its state and without it, on the held-out windows; the training goes on as if this had not
    happened: the stream state, every RNG and the training mode are put back (bit-for-bit resume depends on it)."""
    saved_state, saved_rng = run.model.get_state(), rng_state()
    val_loader = build_loader(data.sequences, data.val_ranges, args.seq_len, 1, "stream", size=tuple(args.size))
    scores = {"stateful": evaluate(run.model, val_loader, device, True), "stateless": evaluate(run.model, val_loader, device, False)}
    run.model.set_state(saved_state)
    restore_rng_state(saved_rng)
    run.model.train()
    return scores


def eval_columns(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """evaluate_run()'s scores as history columns."""
    return {
        f"val_{'' if kind == 'stateful' else 'stateless_'}{name}": value
        for kind, values in scores.items()
        for name, value in values.items()
    }


######################################################################################################################
# Reporting


def write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    """metrics.json and metrics.csv; the val_* columns are empty on the steps without an evaluation."""
    write_json(out / "metrics.json", history)
    columns = list(dict.fromkeys(key for row in history for key in row))
    with atomic_path(out / "metrics.csv") as partial, partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(history)


def plot_training(out: Path, history: list[dict[str, float]]) -> None:
    """Loss, the stateful layer's gradient norm and its weight change, against the step."""
    steps = [row["step"] for row in history]
    figure, axes = new_figure(1, 3, figsize=(13, 3.6))
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
    save_figure(figure, out / "training.png", dpi=110)


def print_step(row: dict[str, float]) -> None:
    tqdm.write(
        f"step {row['step']:>5}  loss {row['loss']:.4f}  stateful grad norm {row['stateful_grad_norm']:.3e}  "
        f"weight change {row['stateful_weight_change']:.3e}  gate {row['gate_mean_abs']:.4f}  lr {row['lr']:.2e}"
        + (f"  val mAP@0.5 {row['val_map_50']:.3f} (without state {row['val_stateless_map_50']:.3f})" if "val_map_50" in row else ""),
        file=sys.stderr,
    )


######################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_and_model_args(parser)
    parser.add_argument("--mode", choices=("random", "stream"), default="stream", help="reset the state per window, or carry it (TBPTT)")
    parser.add_argument("--seq-len", type=number(int, 1), default=10, help="frames per window")
    parser.add_argument("--stride", type=number(int, 1), default=5, help="frames between window starts (random mode)")
    parser.add_argument("--batch-size", type=number(int, 1), default=2, help="windows per step (per process under torchrun)")
    parser.add_argument(
        "--size", type=number(int, MIN_FRAME_SIDE), nargs=2, metavar=("H", "W"), default=(240, 320), help="frame size (TUD-Campus is 4:3)"
    )
    parser.add_argument(
        "--val-fraction", type=share_below_one, default=0.2, help="last share of every sequence's frames held out, in [0, 1)"
    )
    parser.add_argument("--val-sequences", nargs="*", default=(), help="sequences held out whole instead")
    parser.add_argument("--max-steps", type=number(int, 1), default=200, help="optimizer steps in all")
    parser.add_argument("--lr", type=number(float, 0), default=1e-4, help="peak learning rate (AdamW)")
    parser.add_argument(
        "--stateful-lr-scale", type=number(float, 0), default=10.0, help="the new layer learns this much faster than the detector"
    )
    parser.add_argument("--weight-decay", type=number(float, 0), default=1e-4, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=number(int, 0), default=20, help="linear warm-up steps")
    parser.add_argument("--clip-grad", type=number(float, 0), default=10.0, help="max gradient norm (all trained parameters)")
    parser.add_argument("--freeze-detector", action="store_true", help="train only the stateful layer (default: train all)")
    parser.add_argument(
        "--backbone-chunk",
        type=parse_backbone_chunk,
        default="auto",
        help="frames per backbone call: auto (4 on CPU, all on CUDA), all, or N",
    )
    parser.add_argument("--proposals", type=number(int, 1), default=300, help="RPN proposals per frame at evaluation")
    parser.add_argument(
        "--eval-every", type=number(int, 0), default=0, help="evaluate on the held-out frames every N steps (default: 0, only at the end)"
    )
    parser.add_argument("--checkpoint-every", type=number(int, 1), default=50, help="save a checkpoint every N steps (and at the end)")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from, bit for bit (same flags, same process count)")
    parser.add_argument(
        "--stop-after",
        type=number(int, 1),
        default=None,
        help="leave after this many steps in this run, schedule unchanged (time-limited jobs; default: run to --max-steps)",
    )
    parser.add_argument("--out", default="runs/train_seq", help="folder for checkpoint.pt, metrics.json/.csv, training.png")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--workers", type=number(int, 0), default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0, help="seed of weights init, shuffling and sampling")
    return parser


def train(
    run: Run,
    ddp_model: torch.nn.Module,
    data: TrainingData,
    args: argparse.Namespace,
    device: torch.device,
    rank: int,
    world: int,
    out: Path,
) -> tuple[float, tuple[int, dict] | None]:
    """One step per batch up to --max-steps (or --stop-after), evaluations and checkpoints on their steps; returns the
    seconds it took and the last evaluation as (step, evaluation)."""
    stop_at = min(args.max_steps, run.step + args.stop_after) if args.stop_after else args.max_steps
    progress = tqdm(total=args.max_steps, initial=run.step, unit="step", desc="train", file=sys.stderr, disable=rank != 0)
    last_eval: tuple[int, dict] | None = None  # the final evaluation reuses one made on the last step
    started = time.perf_counter()
    for batch in training_batches(data, args, run.step, stop_at, rank, world):
        row = train_step(run, ddp_model, batch, args, device)
        if rank == 0 and args.eval_every and run.step % args.eval_every == 0:
            last_eval = (run.step, evaluate_run(run, data, args, device))
            row.update(eval_columns(last_eval[1]))
        run.history.append(row)
        if rank == 0:
            progress.update()
            print_step(row)
        if run.step % args.checkpoint_every == 0 or run.step == stop_at:
            ranks = gather_rank_states(run, world)  # every rank takes part
            if rank == 0:
                save_run(out / "checkpoint.pt", run, args, ranks)
    progress.close()
    return time.perf_counter() - started, last_eval


def final_results(
    run: Run,
    data: TrainingData,
    args: argparse.Namespace,
    device: torch.device,
    rank: int,
    world: int,
    train_s: float,
    last_eval: tuple[int, dict] | None,
) -> dict[str, Any]:
    """results.json: steps, time, the last history row and, on a finished run, the final evaluation (a run left
    early with --stop-after is not finished)."""
    results: dict[str, Any] = {
        "steps": run.step,
        "train_s": train_s,
        "final": run.history[-1] if run.history else None,
        "world_size": world,
    }
    if rank == 0 and data.has_val and run.step == args.max_steps:
        results["eval"] = last_eval[1] if last_eval and last_eval[0] == run.step else evaluate_run(run, data, args, device)
        stateful, stateless = results["eval"]["stateful"], results["eval"]["stateless"]
        print(
            f"val person mAP@0.5 / mAP@0.5:0.95: with state {stateful['map_50']:.3f} / {stateful['map']:.3f}, "
            f"without {stateless['map_50']:.3f} / {stateless['map']:.3f}",
            file=sys.stderr,
        )
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    device, rank, world = start(args)
    out = Path(args.out)
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    data = prepare_data(args, rank, world)
    checkpoint = read_run(args.resume, args, world) if args.resume else None  # a bad one fails before the build
    run = build_run(args, device, rank)
    if checkpoint is not None:
        resume(run, checkpoint, args.resume, rank, device)
        if rank == 0:
            print(f"resumed from {args.resume} at step {run.step}", file=sys.stderr)
    ddp_model = torch.nn.parallel.DistributedDataParallel(run.model) if world > 1 else run.model

    train_s, last_eval = train(run, ddp_model, data, args, device, rank, world, out)
    results = final_results(run, data, args, device, rank, world, train_s, last_eval)
    if rank == 0 and run.history:
        write_metrics(out, run.history)
        plot_training(out, run.history)
        write_json(out / "results.json", results)
        print(f"checkpoint, metrics and plot in {out}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
