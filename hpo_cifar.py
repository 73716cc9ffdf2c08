"""Optuna search over a small CNN for CIFAR-100 (or CIFAR-10, or any labelled image folder), then one final model:
retrained with the best parameters on train+val, measured once on the test set, saved with its parameters.

The search trains on the training set minus a seeded, stratified validation split (--val-fraction) and ranks trials
by validation top-1 after --epochs; the test set is read once, by the final model. The data are decoded once into
uint8 tensors on the training device (GPU when there is one) and augmented a whole batch at a time there (random crop
with 4 px padding, flip, CIFAR mean/std): no per-image PIL work per epoch (benchmarks/bench_hpo_input.py).

Search: multivariate TPE (seeded; it models how learning rate, optimiser and batch size interact instead of sampling
each alone) over learning rate and weight decay (log), batch size, optimiser (SGD+Nesterov momentum / AdamW), depth,
width, dropout and label smoothing. Pruner: MedianPruner by default, reported to after every epoch: a trial stops when
its validation accuracy is below the median of earlier trials at the same epoch. Chosen over Hyperband because it is
predictable at the budgets this runs at (tens of trials of a few epochs): Hyperband splits trials into brackets that
each need their own start-up trials and compares only within a bracket, so with few trials per bracket it prunes
late or by chance, and with a few epochs it has hardly any rungs; the median rule pools every finished trial, also
those of other workers and machines. --pruner hyperband is there for long runs (many trials, tens of epochs).
A sampled configuration that makes no valid network (depth that pools the image to nothing) or diverges (non-finite
loss) is recorded as a pruned trial with the reason in its user attributes; the study goes on.

Storage: an SQLite file in --out by default; --n-workers N runs N processes here over an Optuna JournalStorage file;
a PostgreSQL URL lets workers on many machines share one study (Optuna's RDB storage; pip install 'psycopg[binary]').

Run:
    python hpo_cifar.py --dataset imagefolder --data-root assets/data/tiny-imagenet-10 --n-trials 4 --epochs 2 --final-epochs 2
    python hpo_cifar.py --dataset cifar100 --data-root data --download --n-trials 50 --epochs 15 --final-epochs 40
    python hpo_cifar.py --dataset cifar100 --data-root data --n-trials 20 --resume          # 20 more trials, same study
    python hpo_cifar.py --dataset cifar100 --data-root data --n-trials 40 --n-workers 4     # 4 processes, one journal
  Many machines, one study (machine A creates it and runs the final model; B and any others join and add trials):
    A: python hpo_cifar.py --dataset cifar100 --data-root data --storage postgresql://hpo:SECRET@db-host:5432/optuna \\
           --study-name cifar100-cnn --n-trials 30 --epochs 15 --final-epochs 40
    B: python hpo_cifar.py --dataset cifar100 --data-root data --storage postgresql://hpo:SECRET@db-host:5432/optuna \\
           --study-name cifar100-cnn --n-trials 30 --epochs 15 --resume --final-epochs 0
    optuna-dashboard postgresql://hpo:SECRET@db-host:5432/optuna      # or: optuna-dashboard sqlite:///runs/hpo_cifar/study.db
Writes to --out: study.db (or study.journal), results.json, report.md, optimization_history.png, param_importances.png,
intermediate_values.png, model.pt (final weights with their parameters).

Measured (2-core x86 CPU, AVX2, shared with other jobs, so noisy; 2 threads; the bundled Tiny-ImageNet 10-class
subset at 32x32, 90 train / 10 val / 100 test images: NOT a CIFAR-100 figure): the acceptance command (4 trials x 2
epochs, final 2 epochs) 35 s wall, 12.5 trials/min, test top-1 0.10 = chance (2 epochs on 100 images teach nothing);
8 trials x 6 epochs (--max-depth 3 --max-width 32 --val-fraction 0.2), final 15 epochs: 86 s, test top-1 0.23,
top-5 0.76 (chance 0.10 / 0.50). No CIFAR-100 figure: the data cannot be downloaded here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
import torch
from torch import nn
from tqdm import tqdm

from utils.cifar import (
    CIFAR_STATS,
    ImageSet,
    channel_stats,
    cifar_folder,
    download_cifar,
    normalise,
    random_crop_flip,
    read_cifar,
    read_image_folder,
    stratified_split,
)
from utils.cli import ArgumentParser, HelpFormatter, UserError, first_line, number, resolve_device, run_cli, seed_everything, set_threads
from utils.outputs import save_figure, write_run
from utils.timing import device_name
from utils.training import save_checkpoint, warmup_cosine

DATASETS = ("cifar100", "cifar10", "imagefolder")
CROP_PADDING = 4  # the CIFAR recipe: pad 4 px, crop back to 32
BATCH_SIZES = (32, 64, 128, 256)  # 32 still fits many steps into a small data set; 256 is about what 2 CPU cores or a GPU keep busy
MIN_DEPTH = 1  # stages of two 3x3 convs + 2x2 max-pool
WIDTH_STEP = 16  # first-stage channels are sampled in steps of 16 (SIMD- and tensor-core-friendly)
MAX_STAGE_MULTIPLIER = 4  # channels double per stage up to 4x the first stage's: deeper nets stay "small"
WARMUP_SHARE = 0.05  # linear learning-rate warm-up over the first 5% of steps, then cosine to zero: SGD at lr 0.3 survives it
MEDIAN_STARTUP_TRIALS = 5  # the median rule needs a few finished trials before it prunes anything
MEDIAN_WARMUP_EPOCHS = 1  # never prune on the first epoch's accuracy: high-lr SGD starts slowly, then overtakes
EVAL_BATCH = 1024  # evaluation has no gradients: large batches
POLL_SECONDS = 0.5  # how often the parent of --n-workers processes reads the study to move its progress bar
CONNECT_TIMEOUT_S = 10  # a PostgreSQL host that does not answer fails in 10 s instead of hanging the run
SETUP_KEYS = (
    "dataset",
    "classes",
    "train_images",
    "val_images",
    "image_size",
    "seed",
    "epochs",
    "max_depth",
    "max_width",
    "norm",
    "activation",
)

######################################################################################################################
# Data: read once, split, keep as uint8 tensors


@dataclass
class Data:
    train: ImageSet  # the whole training set; the search uses train_index / val_index of it, the final model all of it
    test: ImageSet
    train_index: torch.Tensor
    val_index: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def load_data(args: argparse.Namespace) -> Data:
    """Read and check the data set before anything is written; a missing or broken file is a UserError here."""
    if args.dataset == "imagefolder":
        train, test = read_image_folder(args.data_root, args.image_size, args.seed)
        mean, std = channel_stats(train.images)  # a folder has no published statistics: the training images' own
    else:
        if args.download:
            download_cifar(args.data_root, args.dataset)
        elif not cifar_folder(args.data_root, args.dataset).is_dir():
            raise UserError(
                f"{args.dataset} not found in {cifar_folder(args.data_root, args.dataset)}; add --download (needs "
                f"internet) to fetch it there, or extract the archive from www.cs.toronto.edu/~kriz/cifar.html into {args.data_root}"
            )
        train, test = read_cifar(args.data_root, args.dataset, "train"), read_cifar(args.data_root, args.dataset, "test")
        mean, std = CIFAR_STATS[args.dataset]
    if args.max_train_images and args.max_train_images < len(train.labels):  # quick runs: a seeded random subset
        keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(args.seed))[: args.max_train_images]
        train = train.subset(keep.sort().values)
    train_index, val_index = stratified_split(train.labels, args.val_fraction, args.seed)
    return Data(train, test, train_index, val_index, mean, std, train.images.shape[-1])


def setup_of(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """What makes trials of one study comparable; a worker or a resumed run with another setup is refused."""
    return {
        "dataset": args.dataset,
        "classes": len(data.train.classes),
        "train_images": len(data.train_index),
        "val_images": len(data.val_index),
        "image_size": data.image_size,
        "seed": args.seed,
        "epochs": args.epochs,
        "max_depth": args.max_depth,
        "max_width": args.max_width,
        "norm": args.norm,
        "activation": args.activation,
    }


######################################################################################################################
# Model: a small CNN family


class SmallCNN(nn.Module):
    """`depth` stages of [3x3 conv, norm, activation] x 2 + 2x2 max-pool, channels `width` doubling per stage (up to
    MAX_STAGE_MULTIPLIER x width), then global average pool, dropout and a linear classifier."""

    def __init__(self, classes: int, depth: int, width: int, dropout: float, norm: str, activation: str, image_size: int) -> None:
        super().__init__()
        if image_size >> depth < 1:
            raise ValueError(f"depth {depth} halves a {image_size} px image to nothing (at most {image_size.bit_length() - 1} stages)")
        make_norm = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(min(8, c), c), "none": lambda c: nn.Identity()}[norm]
        make_activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]
        layers: list[nn.Module] = []
        channels_in = 3
        for stage in range(depth):
            channels = width * min(2**stage, MAX_STAGE_MULTIPLIER)
            for conv_in in (channels_in, channels):
                layers += [nn.Conv2d(conv_in, channels, 3, padding=1, bias=norm == "none"), make_norm(channels), make_activation()]
            layers.append(nn.MaxPool2d(2))
            channels_in = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels_in, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def build_model(params: dict[str, Any], classes: int, image_size: int, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The network of a trial's parameters, channels_last on `device`; ValueError when they make no valid network."""
    model = SmallCNN(classes, params["depth"], params["width"], params["dropout"], args.norm, args.activation, image_size)
    return model.to(device, memory_format=torch.channels_last)


######################################################################################################################
# Training and evaluation: one loop for the trials and the final model


class Diverged(Exception):
    """The loss became inf/nan (typically too high a learning rate)."""


def make_optimizer(model: nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer:
    if params["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9, nesterov=True, weight_decay=params["weight_decay"])
    return torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy (top-k with k = min(5, classes)) of uint8 images, no augmentation."""
    model.eval()
    top1 = top5 = 0
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=torch.float16, enabled=images.device.type == "cuda"):
        for start in range(0, len(labels), EVAL_BATCH):
            logits = model(normalise(images[start : start + EVAL_BATCH], mean, std)).float()
            target = labels[start : start + EVAL_BATCH]
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += int((ranked[:, 0] == target).sum())
            top5 += int((ranked == target[:, None]).any(dim=1).sum())
    return {"top1": top1 / len(labels), "top5": top5 / len(labels)}


def train(
    model: nn.Module,
    params: dict[str, Any],
    train_set: ImageSet,
    epochs: int,
    stats: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    after_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train `model` in place for `epochs` on `train_set` (uint8, on the model's device), augmenting each batch on the
    device; after_epoch(epoch) runs after every epoch (it may raise optuna.TrialPruned). Raises Diverged."""
    device = train_set.images.device
    generator = torch.Generator(device).manual_seed(seed)
    count = len(train_set.labels)
    batch_size = min(params["batch_size"], count)
    steps_per_epoch = count // batch_size  # the last partial batch is dropped: a batch of 1 breaks batch norm
    optimizer = make_optimizer(model, params)
    total_steps = epochs * steps_per_epoch
    warmup_steps = max(1, round(total_steps * WARMUP_SHARE))
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps, floor=0.0, start_factor=1 / warmup_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")  # fp16 autocast needs loss scaling
    loss_function = nn.CrossEntropyLoss(label_smoothing=params["label_smoothing"])
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(count, device=device, generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            images = normalise(random_crop_flip(train_set.images[index], CROP_PADDING, generator), *stats)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = loss_function(model(images), train_set.labels[index])
            if not torch.isfinite(loss):
                raise Diverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        if after_epoch is not None:
            after_epoch(epoch)


######################################################################################################################
# The search: space, objective, storage, workers


def suggest(trial: optuna.Trial, args: argparse.Namespace) -> dict[str, Any]:
    """The search space (bounds here and in --max-depth / --max-width)."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 0.3, log=True),  # AdamW likes ~1e-3, SGD ~0.05: one range, TPE learns which
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
        "optimizer": trial.suggest_categorical("optimizer", ("sgd", "adamw")),
        "depth": trial.suggest_int("depth", MIN_DEPTH, args.max_depth),
        "width": trial.suggest_int("width", WIDTH_STEP, args.max_width, step=WIDTH_STEP),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


SEARCH_SPACE_TEXT = {  # for the report, in suggest()'s order
    "lr": "log-uniform 1e-4 .. 0.3",
    "weight_decay": "log-uniform 1e-6 .. 0.1",
    "batch_size": ", ".join(map(str, BATCH_SIZES)),
    "optimizer": "sgd (momentum 0.9, Nesterov), adamw",
    "depth": f"{MIN_DEPTH} .. --max-depth stages",
    "width": f"{WIDTH_STEP} .. --max-width, step {WIDTH_STEP}",
    "dropout": "uniform 0 .. 0.5",
    "label_smoothing": "uniform 0 .. 0.2",
}


class Objective:
    """Validation top-1 of a trial's network after --epochs, reported to the pruner after every epoch."""

    def __init__(self, data: Data, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.train_set = data.train.subset(data.train_index).to(device)
        self.val_set = data.train.subset(data.val_index).to(device)
        self.stats = (torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device))
        self.classes, self.image_size = len(data.train.classes), data.image_size

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.args)
        seed_everything(self.args.seed + trial.number)  # each trial's initial weights: reproducible, yet not all alike
        try:
            model = build_model(params, self.classes, self.image_size, self.args, self.device)
        except ValueError as error:
            return self.prune(trial, f"invalid network: {error}")
        trial.set_user_attr("parameters", parameter_count(model))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        accuracy: list[float] = []

        def report(epoch: int) -> None:
            accuracy.append(evaluate(model, self.val_set.images, self.val_set.labels, *self.stats)["top1"])
            trial.report(accuracy[-1], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_because", f"below the pruner's bar at epoch {epoch + 1}")
                raise optuna.TrialPruned()

        try:
            train(model, params, self.train_set, self.args.epochs, self.stats, self.args.seed + trial.number, report)
        except Diverged as error:
            return self.prune(trial, f"diverged: {error}")
        except torch.OutOfMemoryError:
            return self.prune(trial, "out of memory on the device")
        return accuracy[-1]

    @staticmethod
    def prune(trial: optuna.Trial, reason: str) -> float:
        trial.set_user_attr("pruned_because", reason)
        raise optuna.TrialPruned(reason)


def redact(url: str) -> str:
    """The storage URL without its password, for messages and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def storage_spec(args: argparse.Namespace) -> str:
    """--storage, or the default in --out: SQLite for one process, a journal file for --n-workers > 1 (SQLite locks
    its whole file per write and fails under concurrent writers)."""
    if args.storage:
        return args.storage
    if args.n_workers > 1:
        return str(Path(args.out) / "study.journal")
    return f"sqlite:///{Path(args.out) / 'study.db'}"


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """An RDB storage for a URL (sqlite://, postgresql://, mysql://), else a JournalStorage over the file `spec`;
    a storage that cannot be reached is a UserError."""
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(spec))
        except OSError as error:
            raise UserError(f"cannot open the journal file {spec}: {error.strerror or error}") from None
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if spec.startswith("postgresql") else None
    try:
        return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs)
    except ImportError:  # SQLAlchemy 2.1 drives postgresql:// with psycopg (3)
        raise UserError(f"storage {redact(spec)} needs its database driver: pip install 'psycopg[binary]' (PostgreSQL)") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise UserError(f"cannot reach storage {redact(spec)}: {reason}") from None


def storage_lives_in_out(args: argparse.Namespace) -> bool:
    return not args.storage


def prepare_study(storage: optuna.storages.BaseStorage, args: argparse.Namespace, setup: dict[str, Any]) -> None:
    """Create the study, or check the one --resume continues: it must exist and have been made with the same setup."""
    exists = args.study_name in optuna.study.get_all_study_names(storage)
    if exists and not args.resume:
        raise UserError(f"study {args.study_name!r} exists already; add --resume to add trials to it, or choose another --study-name")
    if not exists and args.resume:
        raise UserError(f"--resume: no study {args.study_name!r} in the storage; run once without --resume to create it")
    if exists:
        saved = optuna.load_study(study_name=args.study_name, storage=storage).user_attrs.get("setup", {})
        differing = [key for key in SETUP_KEYS if saved.get(key) != setup[key]]
        if differing:
            changes = ", ".join(f"{key} {saved.get(key)} -> {setup[key]}" for key in differing)
            raise UserError(f"study {args.study_name!r} was made with another setup ({changes}); its trials would not compare")
        return
    study = optuna.create_study(study_name=args.study_name, storage=storage, direction="maximize")
    study.set_user_attr("setup", setup)


def build_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def worker_seed(seed: int, worker: int, finished: int) -> int:
    """The sampler's seed: the run's --seed for the first worker of a fresh study (reproducible), different for every
    other worker, machine and resumed run, so that none repeats another's random start-up trials."""
    if worker == 0 and finished == 0:
        return seed
    return zlib.crc32(f"{seed}/{socket.gethostname()}/{worker}/{finished}".encode())


def load_study(storage: optuna.storages.BaseStorage, args: argparse.Namespace, worker: int) -> optuna.Study:
    finished = 0 if worker else len(optuna.load_study(study_name=args.study_name, storage=storage).trials)
    sampler = optuna.samplers.TPESampler(seed=worker_seed(args.seed, worker, finished), multivariate=True)
    return optuna.load_study(study_name=args.study_name, storage=storage, sampler=sampler, pruner=build_pruner(args.pruner, args.epochs))


def trial_shares(trials: int, workers: int) -> list[int]:
    """--n-trials split over the workers so that the counts add up exactly."""
    return [trials // workers + (worker < trials % workers) for worker in range(workers)]


def run_worker(spec: str, args: argparse.Namespace, data: Data, worker: int, trials: int) -> None:
    """One search process of --n-workers (spawned): its own share of the trials on the shared storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_threads(args.threads)
    study = load_study(open_storage(spec), args, worker)
    study.optimize(Objective(data, args, resolve_device(args.device)), n_trials=trials, timeout=args.timeout)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return study.get_trials(deepcopy=False, states=done)


def best_text(study: optuna.Study) -> str:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return f"{max(trial.value for trial in complete):.3f}" if complete else "-"


def search(spec: str, args: argparse.Namespace, data: Data, device: torch.device) -> None:
    """--n-trials trials: in this process, or over --n-workers spawned processes on the same storage."""
    storage = open_storage(spec)
    before = len(finished_trials(optuna.load_study(study_name=args.study_name, storage=storage)))
    bar = tqdm(total=args.n_trials, desc="trials", unit="trial", file=sys.stderr)
    if args.n_workers == 1:
        study = load_study(storage, args, 0)

        def show(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
            bar.update(1)
            bar.set_postfix(best=best_text(study))

        study.optimize(Objective(data, args, device), n_trials=args.n_trials, timeout=args.timeout, callbacks=[show])
    else:
        import torch.multiprocessing as multiprocessing

        context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can deadlock
        worker_args = argparse.Namespace(**{**vars(args), "threads": max(1, args.threads // args.n_workers)})
        workers = [
            context.Process(target=run_worker, args=(spec, worker_args, data, worker, trials))
            for worker, trials in enumerate(trial_shares(args.n_trials, args.n_workers))
            if trials
        ]
        for process in workers:
            process.start()
        study = optuna.load_study(study_name=args.study_name, storage=storage)
        while any(process.is_alive() for process in workers):
            time.sleep(POLL_SECONDS)
            bar.update(len(finished_trials(study)) - before - bar.n)
            bar.set_postfix(best=best_text(study))
        for process in workers:
            process.join()
        failed = [index for index, process in enumerate(workers) if process.exitcode != 0]
        if failed:
            raise UserError(f"search worker(s) {', '.join(map(str, failed))} exited with an error (its traceback is above)")
        bar.update(len(finished_trials(study)) - before - bar.n)
    bar.close()


######################################################################################################################
# Final model, report


def final_model(best: dict[str, Any], data: Data, args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    """Retrain the best parameters on train+val for --final-epochs, measure test top-1/top-5 once, save model.pt."""
    seed_everything(args.seed)
    train_set, test_set = data.train.to(device), data.test.to(device)
    stats = (torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device))
    model = build_model(best, len(data.train.classes), data.image_size, args, device)
    epochs = tqdm(total=args.final_epochs, desc="final model", unit="epoch", file=sys.stderr)
    started = time.perf_counter()
    try:
        train(model, best, train_set, args.final_epochs, stats, args.seed, lambda epoch: epochs.update(1))
    except Diverged as error:
        raise UserError(f"the final model diverged with the best parameters ({error}); search again with more --epochs") from None
    epochs.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - started
    test = evaluate(model, test_set.images, test_set.labels, *stats)
    config = {"depth": best["depth"], "width": best["width"], "dropout": best["dropout"], "norm": args.norm, "activation": args.activation}
    save_checkpoint(
        out / "model.pt",
        model=model,
        params=best,
        model_config={**config, "classes": len(data.train.classes), "image_size": data.image_size},
        classes=data.train.classes,
        mean=data.mean,
        std=data.std,
        test=test,
        args=args,
    )
    return {
        **test,
        "chance_top1": 1 / len(data.train.classes),
        "epochs": args.final_epochs,
        "train_images": len(data.train.labels),
        "test_images": len(data.test.labels),
        "parameters": parameter_count(model),
        "train_seconds": round(train_seconds, 2),
        "model": str(out / "model.pt"),
    }


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        epochs = max(trial.intermediate_values) + 1 if trial.intermediate_values else 0
        duration = trial.duration.total_seconds() if trial.duration else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "epochs": epochs,
                "seconds": round(duration, 1) if duration is not None else None,
                "params": trial.params,
                "note": trial.user_attrs.get("pruned_because", ""),
            }
        )
    return rows


def format_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """A markdown table of every trial: number, state, validation top-1, epochs run, seconds, parameters, note."""
    header = ["#", "state", "val top-1", "epochs", "s", *names, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        value = f"{row['value']:.3f}" if row["value"] is not None else "-"
        cells = [str(row["number"]), row["state"], value, str(row["epochs"]), str(row["seconds"] or "-")]
        cells += [format_param(row["params"][name]) if name in row["params"] else "-" for name in names]
        lines.append("| " + " | ".join([*cells, row["note"]]) + " |")
    return "\n".join(lines)


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """optimization_history.png, param_importances.png, intermediate_values.png; {plot: why not} for those that
    cannot be drawn (importances need 2 complete trials, intermediate values a reported epoch)."""
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    reported = [trial for trial in study.get_trials(deepcopy=False) if trial.intermediate_values]
    plots = {
        "optimization_history": (optuna_plots.plot_optimization_history, None if complete else "no complete trial"),
        "param_importances": (
            optuna_plots.plot_param_importances,
            None if len(complete) >= 2 else f"needs 2 complete trials, has {len(complete)}",
        ),
        "intermediate_values": (optuna_plots.plot_intermediate_values, None if reported else "no trial reported an epoch"),
    }
    skipped = {}
    for name, (plot, why_not) in plots.items():
        if why_not:
            skipped[name] = why_not
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
            try:
                axes = plot(study)
            except (RuntimeError, ValueError) as error:  # e.g. importances when no parameter varies
                skipped[name] = first_line(error)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        save_figure(figure, out / f"{name}.png", dpi=100)
    return skipped


def report_text(results: dict[str, Any], table: str) -> str:
    best = results["best_params"] or {}
    final = results.get("final")
    lines = [
        f"# Hyper-parameter search: {results['study_name']}",
        "",
        f"Data: {results['setup']['dataset']} ({results['data_root']}), {results['setup']['classes']} classes, "
        f"{results['setup']['train_images']} train / {results['setup']['val_images']} validation images for the search, "
        f"{results['test_images']} test images for the final model only; {results['setup']['image_size']} px.",
        f"Machine: {results['machine']}; device {results['device']}; storage `{results['storage']}`.",
        f"Trials: {results['trials_total']} in the study ({results['trials_this_run']} this run): {results['complete']} complete, "
        f"{results['pruned']} pruned, {results['failed']} failed; pruner {results['pruner']}; {results['epochs']} epochs per trial.",
        f"Wall time: {results['wall_seconds']:.1f} s ({results['trials_per_minute']:.2f} trials/min in the search).",
        "",
        "## Search space",
        "",
        "| parameter | range |",
        "|---|---|",
        *[f"| {name} | {text} |" for name, text in SEARCH_SPACE_TEXT.items()],
        "",
        "## Trials",
        "",
        table,
        "",
        "## Best parameters",
        "",
        f"Trial {results['best_trial']}, validation top-1 {results['best_value']:.3f}:" if best else "No trial completed.",
        "",
        *[f"- {name}: {format_param(value)}" for name, value in best.items()],
        "",
        "## Final model",
        "",
    ]
    if final:
        lines.append(
            f"Retrained on train+val ({final['train_images']} images) for {final['epochs']} epochs, {final['parameters']:,} parameters: "
            f"test top-1 **{final['top1']:.3f}**, top-5 {final['top5']:.3f} on {final['test_images']} images "
            f"(chance {final['chance_top1']:.3f}). Saved as `model.pt`."
        )
    else:
        lines.append("Not trained (--final-epochs 0, or no complete trial).")
    lines += ["", "## Plots", ""]
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        reason = results["plots_skipped"].get(name)
        lines.append(f"- {name}: not drawn ({reason})" if reason else f"- ![{name}]({name}.png)")
    return "\n".join(lines) + "\n"


######################################################################################################################
# Command line


class Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every flag, and the description's commands kept line by line."""


def get_args_parser() -> argparse.ArgumentParser:
    description, commands = __doc__.split("\nRun:\n")
    parser = ArgumentParser(description=description, epilog="Run:\n" + commands.split("\nMeasured")[0], formatter_class=Formatter)
    parser.add_argument("--dataset", default="cifar100", choices=DATASETS, help="what --data-root holds")
    parser.add_argument(
        "--data-root",
        default="data",
        help="cifar100/cifar10: the folder holding cifar-100-python/ (cifar-10-batches-py/), where --download puts it; "
        "imagefolder: train/<class>/ + test/<class>/ (or val/<class>/), or <class>/ folders split 80/20 per class, "
        "seeded (default: data)",
    )
    parser.add_argument("--download", action="store_true", help="CIFAR: download into --data-root with torchvision first (needs internet)")
    parser.add_argument("--image-size", type=number(int, 8, 256), default=32, help="imagefolder: side every image is resized to, once")
    parser.add_argument(
        "--val-fraction", type=number(float, 0.01, 0.5), default=0.1, help="share of each class held out of train for the search"
    )
    parser.add_argument(
        "--max-train-images", type=number(int, 20), default=None, help="a seeded random subset of train for quick runs (default: all)"
    )
    parser.add_argument("--n-trials", type=number(int, 1), default=20, help="trials this run adds to the study (over all --n-workers)")
    parser.add_argument(
        "--timeout", type=number(float, 1), default=None, help="stop starting trials after this many seconds (default: none)"
    )
    parser.add_argument("--epochs", type=number(int, 1), default=10, help="training epochs per trial (the pruner's steps)")
    parser.add_argument(
        "--final-epochs",
        type=number(int, 0),
        default=30,
        help="epochs of the final model on train+val; 0: no final model (a joining worker)",
    )
    parser.add_argument("--study-name", default=None, help="(default: hpo-<dataset>)")
    parser.add_argument(
        "--storage",
        default=None,
        help="an RDB URL (sqlite:///path.db, postgresql://user:pass@host:5432/db) or a journal file path "
        "(default: sqlite:///<out>/study.db; <out>/study.journal with --n-workers > 1)",
    )
    parser.add_argument("--resume", action="store_true", help="add trials to the existing study of this name (must exist, same setup)")
    parser.add_argument("--n-workers", type=number(int, 1, 64), default=1, help="search processes on this machine, sharing the storage")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"), help="see the description for why median")
    parser.add_argument(
        "--max-depth", type=number(int, MIN_DEPTH, 10), default=4, help="search space: most conv stages (each halves the image)"
    )
    parser.add_argument(
        "--max-width", type=number(int, WIDTH_STEP, 512), default=64, help=f"search space: most first-stage channels (step {WIDTH_STEP})"
    )
    parser.add_argument("--norm", default="batch", choices=("batch", "group", "none"), help="normalisation after every conv")
    parser.add_argument("--activation", default="relu", choices=("relu", "gelu", "silu"), help="activation after every norm")
    parser.add_argument(
        "--enqueue", default=None, help='JSON parameters for the first trial, the rest sampled: \'{"optimizer": "sgd", "lr": 0.05}\''
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when a GPU is visible (default: auto)"
    )
    parser.add_argument(
        "--threads", type=number(int, 1), default=None, help="intra-op CPU threads, split over workers (default: all cores)"
    )
    parser.add_argument("--seed", type=number(int, 0), default=0, help="split, sampler and weights seed")
    parser.add_argument("--out", default="runs/hpo_cifar", help="study database, results.json, report.md, plots, model.pt")
    return parser


def parse_enqueue(text: str | None) -> dict[str, Any] | None:
    """--enqueue's JSON object of parameters, refused in one line when it is not JSON or names an unknown one."""
    if not text:
        return None
    try:
        enqueue = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--enqueue is not JSON ({error.msg}): {text}") from None
    unknown = sorted(set(enqueue) - set(SEARCH_SPACE_TEXT)) if isinstance(enqueue, dict) else ["(not an object)"]
    if unknown:
        raise UserError(f"--enqueue: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(SEARCH_SPACE_TEXT)}")
    return enqueue


def open_study(args: argparse.Namespace, setup: dict[str, Any], out: Path, enqueue: dict[str, Any] | None) -> tuple[str, optuna.Study]:
    """The storage spec and the study in it, created or checked against this run's setup; OUT is made only now."""
    spec = storage_spec(args)
    if storage_lives_in_out(args):
        if args.resume and not Path(spec.removeprefix("sqlite:///")).is_file():
            raise UserError(f"--resume: no study storage at {spec.removeprefix('sqlite:///')}; run once without --resume to create it")
        out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(spec)
    prepare_study(storage, args, setup)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(study_name=args.study_name, storage=storage)
    if enqueue:
        study.enqueue_trial(enqueue)
    return spec, study


def study_results(
    args: argparse.Namespace, spec: str, setup: dict[str, Any], data: Any, rows: list[dict[str, Any]], before: int, best: Any
) -> dict[str, Any]:
    """results.json's fields about the study (the final model, timings and plots are added after)."""
    states = [row["state"] for row in rows]
    return {
        "study_name": args.study_name,
        "storage": redact(spec),
        "data_root": str(args.data_root),
        "setup": setup,
        "test_images": len(data.test.labels),
        "pruner": args.pruner,
        "epochs": args.epochs,
        "trials_total": len(rows),
        "trials_this_run": len(rows) - before,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    args.study_name = args.study_name or f"hpo-{args.dataset}"
    enqueue = parse_enqueue(args.enqueue)
    # Everything that can be wrong is checked before --out gets a file: data, then storage, then the study
    data = load_data(args)
    setup = setup_of(data, args)
    out = Path(args.out)
    spec, study = open_study(args, setup, out, enqueue)
    before = len(study.trials)
    print(
        f"study {args.study_name!r} in {redact(spec)}: {before} trial(s) so far; {len(data.train_index)} train / "
        f"{len(data.val_index)} val / {len(data.test.labels)} test images, {len(data.train.classes)} classes, on {device_name(device)}",
        file=sys.stderr,
    )

    search_started = time.perf_counter()
    search(spec, args, data, device)
    search_seconds = time.perf_counter() - search_started

    study = optuna.load_study(study_name=args.study_name, storage=open_storage(spec))
    rows = trial_rows(study)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    table = trials_table(rows, list(SEARCH_SPACE_TEXT))
    print(table)
    if best:
        print(f"best: trial {best.number}, validation top-1 {best.value:.3f}, params {json.dumps(best.params)}")
    final = final_model(best.params, data, args, device, out) if best and args.final_epochs else None
    if final:
        print(
            f"final model ({args.final_epochs} epochs on train+val): test top-1 {final['top1']:.3f}, top-5 {final['top5']:.3f} (chance {final['chance_top1']:.3f})"
        )
    results = study_results(args, spec, setup, data, rows, before, best) | {
        "final": final,
        "search_seconds": round(search_seconds, 2),
        "trials_per_minute": (len(rows) - before) / search_seconds * 60 if search_seconds else 0.0,
        "machine": f"{platform.node()}: {device_name(torch.device('cpu'))}, {args.threads} threads, torch {torch.__version__}, optuna {optuna.__version__}",
        "device": device_name(device),
        "trials": rows,
    }
    results["plots_skipped"] = write_plots(study, out)
    results["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_run(out, results, report_text(results, table))
    print(f"wrote {out / 'report.md'}, {out / 'results.json'}", file=sys.stderr)
    if not best:
        raise UserError(f"no trial completed ({results['pruned']} pruned, {results['failed']} failed): see {out / 'report.md'}")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
