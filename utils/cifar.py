"""Image classification data as uint8 tensors, decoded once: CIFAR-10/100 (the python pickle format that torchvision
downloads) and labelled image folders; a seeded stratified validation split; whole-batch augmentation on tensors
(random crop with padding, horizontal flip, normalisation) that runs on the data's device, CPU or GPU."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.cli import UserError
from utils.video import read_rgb_image

# Per-channel mean/std of the training images (the values every CIFAR reference uses)
CIFAR_STATS = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Where torchvision's CIFAR100/CIFAR10(root, download=True) extract their archives, and the files each needs
CIFAR_LAYOUT = {
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta", "fine_labels", "fine_label_names"),
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        "labels",
        "label_names",
    ),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SINGLE_FOLDER_TEST_SHARE = 0.2  # a folder of class folders without train/ and test/: this share per class is the test set


@dataclass
class ImageSet:
    """Images as uint8 N x 3 x H x W, labels as int64 N, and the class names (label k is classes[k])."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


######################################################################################################################
# Readers


def cifar_folder(root: str | Path, name: str) -> Path:
    """The folder inside --data-root that holds the extracted CIFAR pickles (e.g. data/cifar-100-python)."""
    return Path(root) / CIFAR_LAYOUT[name][0]


def download_cifar(root: str | Path, name: str) -> None:
    """torchvision's download and md5 check into root (needs internet); offline a UserError saying where files go."""
    from torchvision import datasets

    dataset = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    try:
        for train in (True, False):
            dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a failed md5 check is a RuntimeError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"cannot download {name} into {cifar_folder(root, name)} ({reason}); offline, put the extracted "
            f"{CIFAR_LAYOUT[name][0]} folder there yourself"
        ) from None


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as file:
            content = pickle.load(file, encoding="latin1")  # the pickles were written by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UserError(f"{path}: truncated or not a CIFAR pickle ({type(error).__name__}); download it again") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: not a CIFAR pickle (holds a {type(content).__name__}, not a dict)")
    return content


def read_cifar(root: str | Path, name: str, split: str) -> ImageSet:
    """CIFAR-100 (fine labels) or CIFAR-10 `split` ('train' or 'test') from root/<cifar folder>/ as an ImageSet."""
    folder_name, files, meta_name, label_key, names_key = CIFAR_LAYOUT[name]
    folder = Path(root) / folder_name
    paths = [folder / file for file in (*files[split], meta_name)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{name} not found: {folder} lacks {', '.join(missing)}; run with --download (needs internet) or extract "
            f"{folder_name}.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) into {Path(root)}"
        )
    classes = list(_unpickle(folder / meta_name).get(names_key, []))
    images, labels = [], []
    for path in paths[:-1]:
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"{path}: not a {name} pickle (no 'data' or '{label_key}')")
        data, batch_labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise UserError(
                f"{path}: expected uint8 N x 3072 data with N labels, got {data.dtype} {data.shape}, {len(batch_labels)} labels"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))  # rows: 1024 R, 1024 G, 1024 B, row-major
        labels.append(torch.from_numpy(batch_labels.astype(np.int64)))
    labels_tensor = torch.cat(labels)
    if not classes or int(labels_tensor.max()) >= len(classes) or int(labels_tensor.min()) < 0:
        raise UserError(f"{folder / meta_name}: {len(classes)} class names do not cover labels up to {int(labels_tensor.max())}")
    return ImageSet(torch.cat(images), labels_tensor, classes)


def _class_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def _decode(paths: list[Path], size: int) -> torch.Tensor:
    """uint8 N x 3 x size x size of image files, each read by the one reader (utils.video.read_rgb_image) and resized
    with Pillow's bilinear filter (reducing_gap=None: one exact resampling, no box reduction first)."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    for row, path in enumerate(paths):
        images[row] = np.asarray(Image.fromarray(read_rgb_image(path)).resize((size, size), Image.BILINEAR, reducing_gap=None))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def read_image_folder(root: str | Path, size: int = 32, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a labelled image folder, every image resized to size x size once.

    Layouts: root/train/<class>/ with root/test/<class>/ (or root/val/<class>/ when there is no test/); or root/<class>/
    alone, whose images are split per class, seeded: SINGLE_FOLDER_TEST_SHARE of each class becomes the test set.
    Images may sit anywhere below their class folder (Tiny-ImageNet keeps them in <class>/images/).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (expected <class>/ folders, or train/<class>/ and test/<class>/)")
    test_folder = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    split_here = not ((root / "train").is_dir() and test_folder is not None)
    train_root = root if split_here else root / "train"
    classes = sorted(path.name for path in train_root.iterdir() if path.is_dir())
    train_paths = {name: _class_images(train_root / name) for name in classes}
    empty = [name for name, paths in train_paths.items() if not paths]
    if len(classes) < 2 or empty:
        raise UserError(f"{train_root}: need at least 2 class folders holding images, found {len(classes)} ({len(empty)} empty)")
    if split_here:
        generator = np.random.default_rng(seed)
        test_paths = {}
        for name, paths in train_paths.items():
            if len(paths) < 2:
                raise UserError(f"{train_root / name}: one image cannot be split into train and test")
            order = generator.permutation(len(paths))
            cut = max(1, round(len(paths) * SINGLE_FOLDER_TEST_SHARE))
            test_paths[name] = [paths[k] for k in sorted(order[:cut])]
            train_paths[name] = [paths[k] for k in sorted(order[cut:])]
    else:
        unknown = sorted({path.name for path in test_folder.iterdir() if path.is_dir()} - set(classes))
        if unknown:
            raise UserError(f"{test_folder}: class folders not in {train_root}: {', '.join(unknown[:3])}")
        test_paths = {name: _class_images(test_folder / name) for name in classes}
        if not any(test_paths.values()):
            raise UserError(f"{test_folder}: no images in its class folders")

    def image_set(paths_of: dict[str, list[Path]]) -> ImageSet:
        paths = [path for name in classes for path in paths_of[name]]
        labels = torch.tensor([label for label, name in enumerate(classes) for _ in paths_of[name]], dtype=torch.int64)
        return ImageSet(_decode(paths, size), labels, classes)

    return image_set(train_paths), image_set(test_paths)


######################################################################################################################
# Splits and augmentation


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, val index): a seeded `fraction` of every class held out (at least 1 image of a class with 2+),
    disjoint, together covering every index once."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in torch.unique(labels.cpu()):
        members = torch.nonzero(labels.cpu() == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = min(len(members) - 1, max(1, round(len(members) * fraction)))
        val.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] of uint8 N x 3 x H x W images: the normalisation of a dataset with no
    published statistics (image folders)."""
    pixels = images.float().div(255).transpose(0, 1).reshape(3, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of uint8 N x C x H x W images, each randomly cropped from its zero-padded copy (padding px each side)
    and flipped left-right with probability 1/2: one gather for the whole batch, on the batch's device."""
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (count, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (count, 1), device=device, generator=generator)
    flip = torch.rand(count, 1, device=device, generator=generator) < 0.5
    columns = torch.arange(width, device=device)
    rows = (top + torch.arange(height, device=device))[:, None, :, None]
    columns = (left + torch.where(flip, width - 1 - columns, columns))[:, None, None, :]
    batch = torch.arange(count, device=device)[:, None, None, None]
    return padded[batch, torch.arange(channels, device=device)[None, :, None, None], rows, columns]


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float (x / 255 - mean) / std, channels_last (the layout convolutions run fastest in)."""
    scaled = images.float().div_(255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return scaled.contiguous(memory_format=torch.channels_last)
