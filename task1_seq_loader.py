"""MOTChallenge loader for sequence models: batches of windows of consecutive frames, (B, T, C, H, W), with targets.

A window is --seq-len consecutive frames of ONE sequence; windows never cross sequences. Targets come from
gt/gt.txt (never det.txt): boxes (xyxy, scaled with --size, clipped to the frame), labels (1 = person), track ids,
visibility. Two ways to sample:
- random: windows start every --stride frames and are shuffled (the windows, never the frames inside one);
- stream: B parallel streams, each walking its sequence window after window in order (stride = seq-len), so a
  recurrent state can be carried from one window to the next (truncated BPTT in task3_train_seq.py).
Train/val split: whole sequences (--val-sequences), or the last --val-fraction of every sequence's frames with no
window straddling the cut.

Run:
    python task1_seq_loader.py --data assets/data --seq-len 10 --batch-size 2
    python task1_seq_loader.py --data assets/data --mode stream --batch-size 2 --size 240 320 --plot runs/seq/batch.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.cli import ArgumentParser, UserError, number, run_cli, seed_everything
from utils.draw import MAIN_COLOR, draw_box, draw_caption
from utils.mot import MotSequence, find_mot_sequences, read_mot_sequence
from utils.video import read_rgb_image

PERSON = 1  # COCO id, so torchvision's COCO-pretrained heads fit without a new class layout
MIN_BOX_SIDE = 1.0  # boxes thinner than this after clipping are dropped: torchvision refuses degenerate boxes

######################################################################################################################
# Windows and splits


@dataclass(frozen=True)
class Window:
    """seq_len consecutive frames of one sequence, starting at 1-based frame `start`."""

    sequence: int  # index into the dataset's sequences
    start: int
    length: int

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.length)


def make_windows(sequences: Sequence[MotSequence], seq_len: int, stride: int, frame_ranges: Sequence[range] | None = None) -> list[Window]:
    """Every window of seq_len frames, starts `stride` apart, inside each sequence's frame range (default: all)."""
    windows = []
    for index, sequence in enumerate(sequences):
        frames = frame_ranges[index] if frame_ranges else range(1, len(sequence) + 1)
        if len(frames) < seq_len:
            if frames:  # an empty range is a sequence held out whole, not a short one
                print(f"warning: {sequence.name} has {len(frames)} frames here, fewer than --seq-len {seq_len}: skipped", file=sys.stderr)
            continue
        windows += [Window(index, start, seq_len) for start in range(frames.start, frames.stop - seq_len + 1, stride)]
    return windows


def split_frames(
    sequences: Sequence[MotSequence], val_sequences: Sequence[str] = (), val_fraction: float = 0.0
) -> tuple[list[range], list[range]]:
    """(train, val) frame ranges per sequence: named sequences go to val whole; else the last val_fraction of each."""
    unknown = set(val_sequences) - {sequence.name for sequence in sequences}
    if unknown:
        raise UserError(f"--val-sequences: no sequence called {', '.join(sorted(unknown))}")
    train, val = [], []
    for sequence in sequences:
        every = range(1, len(sequence) + 1)
        if sequence.name in val_sequences:
            train.append(range(1, 1))
            val.append(every)
        else:
            cut = len(sequence) - round(len(sequence) * val_fraction) + 1  # first val frame
            train.append(range(1, cut))
            val.append(range(cut, len(sequence) + 1))
    return train, val


######################################################################################################################
# Dataset, collate, samplers


class MotWindowDataset(Dataset):
    """Item i: (frames float32 (T, 3, H, W) in [0, 1], targets: T dicts, meta: sequence name and frame numbers)."""

    def __init__(self, sequences: Sequence[MotSequence], windows: Sequence[Window], size: tuple[int, int] | None = None) -> None:
        self.sequences = list(sequences)
        self.windows = list(windows)
        self.size = size  # (height, width), or None for each sequence's own size

    def __len__(self) -> int:
        return len(self.windows)

    def load_frame(self, sequence: MotSequence, frame: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_rgb_image(sequence.image_paths[frame - 1])  # a truncated frame is an error, not a half-grey target
        height, width = image.shape[:2]
        rows = sequence.boxes(frame)
        boxes = rows[:, :4].copy()
        if self.size is not None and (height, width) != self.size:
            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
            boxes *= np.array([self.size[1] / width, self.size[0] / height] * 2, dtype=np.float32)
            height, width = self.size
        boxes = boxes.clip(0, [width, height, width, height])  # MOT boxes may stick out of the frame
        keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        target = {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.full((int(keep.sum()),), PERSON, dtype=torch.int64),
            "track_ids": torch.from_numpy(rows[keep, 4].astype(np.int64)),
            "visibility": torch.from_numpy(rows[keep, 5]),
        }
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        return tensor, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], dict[str, Any]]:
        window = self.windows[index]
        sequence = self.sequences[window.sequence]
        frames, targets = zip(*(self.load_frame(sequence, frame) for frame in window.frames), strict=True)
        return torch.stack(frames), list(targets), {"sequence": sequence.name, "frames": list(window.frames)}


def collate_windows(batch: list) -> tuple[torch.Tensor, list[list[dict[str, torch.Tensor]]], list[dict[str, Any]]]:
    """(frames (B, T, C, H, W), targets [B][T], meta [B]); frames with no boxes keep empty (0, 4) targets."""
    frames, targets, meta = zip(*batch, strict=True)
    if len({f.shape for f in frames}) > 1:
        raise UserError(f"windows of different frame sizes in one batch {sorted({tuple(f.shape) for f in frames})}: pass --size H W")
    return torch.stack(frames), list(targets), list(meta)


class StreamBatchSampler(Sampler[list[int]]):
    """B streams; batch k holds window k of every stream, and each stream walks consecutive windows in order.

    Each sequence's windows form a chain; chains are split in halves until there are at least B of them, then
    dealt out to the streams (longest first, to the shortest stream). A stream moving to a new chain starts a new
    sequence (or jumps inside one): `stream_resets` tells the trainer to reset that stream's state.
    Batches stop when the shortest stream runs out, so every batch is full.
    """

    def __init__(self, windows: Sequence[Window], batch_size: int) -> None:
        chains: list[list[int]] = []
        for index, window in enumerate(windows):
            previous = windows[index - 1] if index else None
            if previous is not None and previous.sequence == window.sequence and previous.start + previous.length == window.start:
                chains[-1].append(index)
            else:
                chains.append([index])
        while len(chains) < batch_size:
            chains.sort(key=len)
            longest = chains.pop()
            if len(longest) < 2:
                raise UserError(f"only {len(windows)} windows: too few for {batch_size} streams (lower --batch-size)")
            chains += [longest[: len(longest) // 2], longest[len(longest) // 2 :]]
        self.streams: list[list[int]] = [[] for _ in range(batch_size)]
        for chain in sorted(chains, key=len, reverse=True):
            min(self.streams, key=len).extend(chain)

    def __len__(self) -> int:
        return min(len(stream) for stream in self.streams)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(len(self)):
            yield [stream[step] for stream in self.streams]


def stream_resets(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]) -> list[int]:
    """Streams whose window does not continue their previous one (new sequence, or a jump): reset their state."""
    if previous is None:
        return list(range(len(current)))
    return [
        index
        for index, (before, now) in enumerate(zip(previous, current, strict=True))
        if before["sequence"] != now["sequence"] or before["frames"][-1] + 1 != now["frames"][0]
    ]


######################################################################################################################


def load_sequences(data: str) -> list[MotSequence]:
    return [read_mot_sequence(path) for path in find_mot_sequences(data)]


def window_batches(
    windows: Sequence[Window],
    batch_size: int,
    mode: str,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """One epoch's batches of window indices for one rank (of `world`). Deterministic in (seed, epoch), so a resumed
    run meets exactly the batches it would have met, and every rank gets as many batches as the others (DDP)."""
    if mode == "stream":
        return [batch[rank::world] for batch in StreamBatchSampler(windows, batch_size * world)]
    order = list(range(len(windows)))
    if shuffle:  # windows are shuffled; the frames inside each stay in order
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    order = order[: len(order) // world * world][rank::world]
    return [order[first : first + batch_size] for first in range(0, len(order), batch_size)]


def build_loader(
    sequences: Sequence[MotSequence],
    frame_ranges: Sequence[range] | None,
    seq_len: int,
    batch_size: int,
    mode: str = "random",
    stride: int = 1,
    size: tuple[int, int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> DataLoader:
    """A DataLoader over one epoch of window batches (from batch `skip` on): shuffled windows, or B ordered streams."""
    if frame_ranges is not None and not any(frame_ranges):
        raise UserError("no frame to load: every frame range is empty (for training: --val-sequences/--val-fraction hold out everything)")
    windows = make_windows(sequences, seq_len, seq_len if mode == "stream" else stride, frame_ranges)
    if not windows:
        raise UserError(f"no sequence has {seq_len} frames: nothing to load (lower --seq-len)")
    batches = window_batches(windows, batch_size, mode, seed, epoch, rank, world, shuffle)[skip:]
    dataset = MotWindowDataset(sequences, windows, size)
    # Its own generator: a DataLoader otherwise draws its base seed from the global RNG, so that a resumed run (a new
    # loader mid-epoch) would see different random numbers from then on than the run it continues.
    generator = torch.Generator().manual_seed(seed + epoch)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_windows, num_workers=workers, generator=generator)


def draw_contact_sheet(frames: torch.Tensor, targets: list[list[dict[str, torch.Tensor]]], meta: list[dict[str, Any]], path: Path) -> None:
    """One row per window, one column per frame, gt boxes drawn, written as a PNG."""
    rows = []
    for window, window_targets, info in zip(frames, targets, meta, strict=True):
        tiles = []
        for image, target, frame in zip(window, window_targets, info["frames"], strict=True):
            tile = cv2.cvtColor((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)  # OpenCV draws BGR
            for box, track in zip(target["boxes"].tolist(), target["track_ids"].tolist(), strict=True):
                draw_box(tile, box, MAIN_COLOR, str(track))
            draw_caption(tile, f"{info['sequence']} #{frame}")
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    scale = min(1.0, 4000 / sheet.shape[1])  # keep the PNG a viewable size
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="assets/data", help="a MOTChallenge sequence folder, or a folder of them")
    parser.add_argument("--seq-len", type=number(int, 1), default=10, help="frames per window")
    parser.add_argument("--stride", type=number(int, 1), default=1, help="frames between window starts (random mode)")
    parser.add_argument("--batch-size", type=number(int, 1), default=2, help="windows per batch (streams, in stream mode)")
    parser.add_argument("--mode", choices=("random", "stream"), default="random", help="shuffled windows, or ordered streams")
    parser.add_argument(
        "--size", type=number(int, 1), nargs=2, metavar=("H", "W"), default=None, help="resize frames (boxes follow) (default: keep)"
    )
    parser.add_argument("--val-sequences", nargs="*", default=(), help="sequences held out whole for validation")
    parser.add_argument("--val-fraction", type=number(float, 0, 1), default=0.0, help="last share of each sequence's frames for validation")
    parser.add_argument("--batches", type=number(int, 0), default=3, help="batches to print")
    parser.add_argument("--plot", default=None, help="save a contact sheet PNG of the first batch here")
    parser.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0, help="shuffling seed (NumPy takes 0 to 2^32-1)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    sequences = load_sequences(args.data)
    train_ranges, val_ranges = split_frames(sequences, args.val_sequences, args.val_fraction)
    loader = build_loader(
        sequences,
        train_ranges,
        args.seq_len,
        args.batch_size,
        args.mode,
        args.stride,
        tuple(args.size) if args.size else None,
        seed=args.seed,
    )
    val_windows = make_windows(sequences, args.seq_len, args.seq_len, val_ranges) if (args.val_sequences or args.val_fraction) else []
    print(
        f"{len(sequences)} sequence(s), {len(loader.dataset)} train windows, {len(val_windows)} val windows, {len(loader)} batches ({args.mode})"
    )
    shapes, batches = [], []
    for batch_number, (frames, targets, meta) in zip(range(args.batches), loader, strict=False):
        shapes.append(tuple(frames.shape))
        batches.append([[info["sequence"], info["frames"]] for info in meta])
        boxes = sum(len(target["boxes"]) for window in targets for target in window)
        print(f"batch {batch_number}: frames {tuple(frames.shape)} {frames.dtype}, {boxes} gt boxes")
        for info in meta:
            print(f"  {info['sequence']}: frames {info['frames'][0]}..{info['frames'][-1]} {info['frames']}")
        if batch_number == 0 and args.plot:
            draw_contact_sheet(frames, targets, meta, Path(args.plot))
            print(f"contact sheet: {args.plot}")
    return {
        "shapes": shapes,
        "batches": batches,
        "train_windows": len(loader.dataset),
        "val_windows": len(val_windows),
        "num_batches": len(loader),
    }


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
