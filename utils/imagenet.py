"""Readers of labelled ImageNet-1k images: the bundled ImageNet samples and Tiny-ImageNet (wnids mapped into the
1000-class head through the sorted ILSVRC-2012 wnid list), returned as (PIL RGB images, class indices)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image

from utils.assets import IMAGENET_SAMPLES, IMAGENET_WNIDS, TINY_IMAGENET
from utils.cli import UserError
from utils.video import read_rgb_image


def _open_rgb(path: Path) -> Image.Image:
    """An image file as a PIL RGB image (what the classifiers' preprocessing takes), decoded by the one reader."""
    return Image.fromarray(read_rgb_image(path))


def read_imagenet_samples(root: str | Path = IMAGENET_SAMPLES, limit: int | None = None) -> tuple[list, torch.Tensor]:
    """(PIL RGB images, ImageNet-1k class indices) of a folder with images/ and labels.csv (filename, class_index)."""
    root = Path(root)
    if not (root / "labels.csv").is_file():
        raise UserError(f"{root}: no labels.csv (expected images/ and labels.csv with filename,class_index)")
    with (root / "labels.csv").open() as file:
        rows = list(csv.DictReader(file))[:limit]
    images = [_open_rgb(root / "images" / row["filename"]) for row in rows]
    return images, torch.tensor([int(row["class_index"]) for row in rows])


def imagenet_class_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index (the position in the sorted list of the 1000 ILSVRC-2012 wnids)."""
    return {wnid: index for index, wnid in enumerate(IMAGENET_WNIDS.read_text().split())}


def read_tiny_imagenet(root: str | Path = TINY_IMAGENET, split: str = "val", limit: int | None = None) -> tuple[list, torch.Tensor]:
    """Tiny-ImageNet images of `split` (val: val_annotations.txt; train: train/<wnid>/images/) with their wnids mapped
    to ImageNet-1k class indices. limit: at most this many, spread over the classes in file order."""
    root = Path(root)
    if not (root / "wnids.txt").is_file():
        raise UserError(f"{root}: not a Tiny-ImageNet folder (no wnids.txt)")
    to_index = imagenet_class_index()
    if split == "val":
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise UserError(f"{root}: no val/val_annotations.txt")
        pairs = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        items = [(root / "val" / "images" / name, wnid) for name, wnid in pairs]
    else:
        items = [(path, path.parent.parent.name) for path in sorted((root / "train").glob("*/images/*.JPEG"))]
    if not items:
        raise UserError(f"{root}: no {split} images")
    unknown = sorted({wnid for _, wnid in items if wnid not in to_index})
    if unknown:
        raise UserError(f"{root}: wnids not in ImageNet-1k: {', '.join(unknown[:3])}")
    if limit is not None and limit < len(items):  # round-robin over classes, so a small limit still spans many
        by_class: dict[str, list] = {}
        for item in items:
            by_class.setdefault(item[1], []).append(item)
        queues = list(by_class.values())
        items = [queue[depth] for depth in range(max(map(len, queues))) for queue in queues if depth < len(queue)][:limit]
    return [_open_rgb(path) for path, _ in items], torch.tensor([to_index[wnid] for _, wnid in items])
