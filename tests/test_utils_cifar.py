import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from utils.cifar import (
    channel_stats,
    download_cifar,
    normalise,
    random_crop_flip,
    read_cifar,
    read_image_folder,
    stratified_split,
)
from utils.cli import UserError

DEMO = REPO / "assets" / "data" / "tiny-imagenet-10"  # 10 classes x (10 train + 10 test) real 64x64 photos


def demo_images(split: str) -> tuple[np.ndarray, list[int], list[str], list[str]]:
    """The demo folder's `split` at 32x32 as HWC uint8 (decoded independently of utils.cifar), labels, filenames, classes."""
    classes = sorted(path.name for path in (DEMO / "train").iterdir())
    images, labels, names = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((DEMO / split / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR, reducing_gap=None)))
            labels.append(label)
            names.append(path.name)
    return np.stack(images), labels, names, classes


def to_rows(images: np.ndarray) -> np.ndarray:
    """HWC uint8 -> the CIFAR row layout: N x 3072, 1024 red then 1024 green then 1024 blue values, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar100(root: Path) -> Path:
    """root/cifar-100-python/{meta,train,test}, exactly as CIFAR-100's python version: pickles of dicts with data (uint8
    N x 3072), fine_labels, coarse_labels, filenames, batch_label; meta with fine/coarse label names. From real photos."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, source in (("train", "train"), ("test", "test")):
        images, labels, names, classes = demo_images(source)
        content = {
            "filenames": names,
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "data": to_rows(images),
        }
        (folder / split).write_bytes(pickle.dumps(content, protocol=2))
    meta = {"fine_label_names": classes, "coarse_label_names": ["first_half", "second_half"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar10(root: Path) -> Path:
    """root/cifar-10-batches-py: data_batch_1..5 (the demo train images dealt over them), test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels, names, classes = demo_images("train")
    for batch in range(5):
        rows = slice(batch, None, 5)
        content = {
            "data": to_rows(images[rows]),
            "labels": labels[rows],
            "filenames": names[rows],
            "batch_label": f"training batch {batch + 1} of 5",
        }
        (folder / f"data_batch_{batch + 1}").write_bytes(pickle.dumps(content, protocol=2))
    images, labels, names, _ = demo_images("test")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": to_rows(images), "labels": labels, "filenames": names}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes, "num_vis": 3072}, protocol=2))
    return folder


def test_cifar100_fixture_is_read_exactly_as_torchvision_reads_it(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    train, test = read_cifar(tmp_path, "cifar100", "train"), read_cifar(tmp_path, "cifar100", "test")
    source, labels, _, classes = demo_images("train")
    assert train.images.dtype == torch.uint8 and train.images.shape == (100, 3, 32, 32) and test.images.shape == (100, 3, 32, 32)
    assert train.classes == classes and train.labels.tolist() == labels
    assert torch.equal(train.images.permute(0, 2, 3, 1), torch.from_numpy(source))  # planes and rows in the right order
    from torchvision import datasets
    from torchvision.datasets import cifar

    monkeypatch.setattr(datasets.CIFAR100, "_check_integrity", lambda self: True)  # the fixture's md5 is not CIFAR's
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    reference = datasets.CIFAR100(str(tmp_path), train=False, download=False)
    assert torch.equal(test.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data))
    assert test.labels.tolist() == reference.targets and test.classes == reference.classes


def test_cifar10_batches_are_concatenated_in_order(tmp_path):
    write_cifar10(tmp_path)
    train = read_cifar(tmp_path, "cifar10", "train")
    source, labels, _, _ = demo_images("train")
    order = [index for batch in range(5) for index in range(batch, 100, 5)]
    assert train.labels.tolist() == [labels[index] for index in order]
    assert torch.equal(train.images.permute(0, 2, 3, 1), torch.from_numpy(source[order]))
    assert len(read_cifar(tmp_path, "cifar10", "test").labels) == 100


def test_missing_partial_and_corrupt_cifar_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"cifar-100-python lacks train, meta; run with --download"):
        read_cifar(tmp_path, "cifar100", "train")
    folder = write_cifar100(tmp_path)
    (folder / "test").unlink()
    with pytest.raises(UserError, match="lacks test;"):
        read_cifar(tmp_path, "cifar100", "test")
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(UserError, match="truncated or not a CIFAR pickle") as error:
        read_cifar(tmp_path, "cifar100", "train")
    assert "\n" not in str(error.value)
    (folder / "train").write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1]}))
    with pytest.raises(UserError, match="expected uint8 N x 3072 data with N labels"):
        read_cifar(tmp_path, "cifar100", "train")


def test_download_offline_says_where_the_files_go(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import cifar

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    with pytest.raises(UserError, match=rf"cannot download cifar100 into {tmp_path}/cifar-100-python .*Name or service"):
        download_cifar(tmp_path, "cifar100")


def test_image_folder_with_train_and_test(tmp_path):
    train, test = read_image_folder(DEMO, 32)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(train.classes) == 10 and torch.bincount(test.labels).tolist() == [10] * 10
    source, labels, _, _ = demo_images("test")
    assert torch.equal(test.images.permute(0, 2, 3, 1), torch.from_numpy(source)) and test.labels.tolist() == labels


def test_single_image_folder_is_split_per_class_without_overlap(tmp_path):
    for name in ("a", "b", "c"):  # three classes of 10 real photos each, no train/ or test/
        (tmp_path / name).mkdir()
        for path in sorted((DEMO / "train" / sorted(p.name for p in (DEMO / "train").iterdir())[ord(name) - 97]).iterdir()):
            (tmp_path / name / path.name).write_bytes(path.read_bytes())
    train, test = read_image_folder(tmp_path, 16, seed=3)
    assert torch.bincount(test.labels).tolist() == [2, 2, 2] and torch.bincount(train.labels).tolist() == [8, 8, 8]
    train_rows = {bytes(row) for row in train.images.flatten(1).numpy()}
    assert not train_rows & {bytes(row) for row in test.images.flatten(1).numpy()}
    assert read_image_folder(tmp_path, 16, seed=3)[1].images.equal(test.images)  # seeded
    assert not read_image_folder(tmp_path, 16, seed=4)[1].images.equal(test.images)


def test_bad_image_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        read_image_folder(tmp_path / "nothing")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.jpg").write_bytes((DEMO / "test" / "n01641577" / "val_1144.JPEG").read_bytes())
    with pytest.raises(UserError, match="need at least 2 class folders"):
        read_image_folder(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "other" / "broken2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "only" / "y.jpg").write_bytes((DEMO / "test" / "n01641577" / "val_1144.JPEG").read_bytes())
    with pytest.raises(UserError, match=r"broken2?\.jpg: not a readable image"):
        read_image_folder(tmp_path)


def test_stratified_split_is_disjoint_complete_seeded_and_per_class():
    labels = torch.arange(7).repeat_interleave(torch.tensor([50, 20, 10, 5, 3, 2, 2]))
    train, val = stratified_split(labels, 0.1, seed=0)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val]).tolist() == [5, 2, 1, 1, 1, 1, 1]  # every class is validated, none emptied
    assert torch.bincount(labels[train]).min() >= 1
    assert torch.equal(stratified_split(labels, 0.1, seed=0)[1], val)
    assert not torch.equal(stratified_split(labels, 0.1, seed=1)[1], val)


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding shows as 0
    out = random_crop_flip(images, 2, generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips, offsets = 0, set()
    for index in range(len(images)):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(out[index], (lambda crop: crop.flip(-1) if flip else crop)(padded[index, :, top : top + 8, left : left + 8]))
        ]
        assert len(matches) == 1, index
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert 16 < flips < 48 and len(offsets) > 10  # both ways and many offsets: random per image, not per batch


def test_normalise_and_channel_stats():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    out = normalise(images, torch.tensor(mean), torch.tensor(std))
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
