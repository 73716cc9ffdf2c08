"""torchvision Faster R-CNN with a trainable stateful layer: a ConvGRU on the FPN features, between the backbone and
the RPN/RoI heads, whose state resets, saves, restores and round-robins between sequences.

    frames (B, T, C, H, W) -> backbone + FPN on all B*T frames (stateless: the expensive part, batched; in chunks of
                              backbone_chunk frames where one big batch overflows the CPU's cache)
                           -> ConvGRU walks t = 0..T-1 on every FPN level, one state per stream and level
                           -> RPN + RoI heads on all B*T frames at once
                           -> training: dict of losses over the B*T frames; eval: detections [B][T]

The ConvGRU adds `gate * expand(h)` to each level's features (a residual): the per-channel gate starts at 0.01,
so a pretrained detector starts almost undisturbed, but not at exactly 0, which would stop every gradient to the
GRU's weights on the first step (the gradient of gate * f with respect to f is gate). It works in a narrow hidden
space (256 -> 32 channels) so that it costs a few percent of the backbone on the stride-4 level.

Normalisation never mixes frames: torchvision builds a randomly initialised detector with trainable BatchNorm2d,
whose training-mode statistics come from every frame of a backbone call, so one stream's features would depend on
the other streams' frames (measured: up to 2.96 in stream A's features when only stream B's frames changed), and
loaded weights would get their statistics re-estimated on batches of 4 frames. So, as torchvision's detection
references do, loaded weights (DEFAULT or a path) run with FrozenBatchNorm2d; a model trained from scratch uses
GroupNorm instead (see `normalise_per_frame`).

State API (per stream = per row of the batch): reset_state(streams=None), get_state() (a detached copy),
set_state(state), detach_state() (truncated BPTT between windows). A state whose batch size or feature shape does
not fit the next input is an error, never a broadcast.

Run:
    python task2_stateful_rcnn.py --data assets/data            # checks reset, restore, round-robin on real frames
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from task1_seq_loader import MotWindowDataset, Window, load_sequences
from utils.assets import TORCHVISION_DETECTORS, resolve_weights
from utils.cli import ArgumentParser, UserError, number, resolve_device, run_cli, seed_everything, set_threads
from utils.detectors import build_torchvision_model

HIDDEN_CHANNELS = 32  # GRU width: enough to carry "who was where"; 8x narrower than the FPN to stay cheap
GATE_INIT = 0.01  # residual gate at step 0: near-identity, yet every GRU weight gets a gradient at once
# Float rounding between differently batched runs: ~1e-9 with frozen batch norms, up to 1.2e-5 with GroupNorm (its
# per-frame sums run in another order for 1 frame than for 6) on features up to ~5; the state's influence is >= 1e-3
SAME_TOLERANCE = 1e-4
GROUP_NORM_GROUPS = 32  # He et al. 2018's default, where it divides the channels (group_norm() says what happens where not)
MIN_FRAME_SIDE = 32  # the backbones' coarsest level has stride 32: smaller frames leave it without a single cell
MAX_SEED = 2**32 - 1  # NumPy's seeds stop there

State = dict[str, torch.Tensor]

######################################################################################################################
# The stateful layer


class ConvGRUCell(nn.Module):
    """A convolutional GRU over one feature map, in a narrow hidden space, added back to the input through a gate."""

    def __init__(self, channels: int = 256, hidden: int = HIDDEN_CHANNELS, gate_init: float = GATE_INIT) -> None:
        super().__init__()
        self.hidden = hidden
        self.squeeze = nn.Conv2d(channels, hidden, kernel_size=1)
        self.gates = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size=3, padding=1)  # update z and reset r
        self.candidate = nn.Conv2d(2 * hidden, hidden, kernel_size=3, padding=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Parameter(torch.full((1, channels, 1, 1), gate_init))

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squeezed = torch.relu(self.squeeze(features))
        update, reset = torch.sigmoid(self.gates(torch.cat([squeezed, state], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([squeezed, reset * state], dim=1)))
        state = (1 - update) * state + update * candidate
        return features + self.gate * self.expand(state), state


class StatefulFasterRCNN(nn.Module):
    """A torchvision FasterRCNN's parts with a ConvGRUCell (shared by all FPN levels) between backbone and heads."""

    def __init__(self, detector: nn.Module, hidden: int = HIDDEN_CHANNELS, gate_init: float = GATE_INIT) -> None:
        super().__init__()
        self.transform = detector.transform
        self.backbone = detector.backbone
        self.rpn = detector.rpn
        self.roi_heads = detector.roi_heads
        self.temporal = ConvGRUCell(detector.backbone.out_channels, hidden, gate_init)
        self.use_state = True  # False: the plain detector (the stateless baseline), same weights
        self.backbone_chunk: int | None = None  # frames per backbone call; None: all B*T at once
        self.state: State | None = None

    # ---- state API ----------------------------------------------------------------------------------------------
    def reset_state(self, streams: Sequence[int] | None = None) -> None:
        """Forget everything (streams=None), or only the given streams (rows of the batch)."""
        if streams is None or self.state is None:
            self.state = None
            return
        rows = torch.as_tensor(list(streams), dtype=torch.long)
        state = {level: value.clone() for level, value in self.state.items()}
        for value in state.values():
            value[rows.to(value.device)] = 0
        self.state = state

    def get_state(self) -> State | None:
        """A detached copy of the state (one row per stream), to save now and restore later."""
        return None if self.state is None else {level: value.detach().clone() for level, value in self.state.items()}

    def set_state(self, state: State | None) -> None:
        """Restore a state from get_state(); checked against the next input's shape when it is used."""
        if state is not None:
            for level, value in state.items():
                if value.dim() != 4 or value.shape[1] != self.temporal.hidden:
                    raise UserError(
                        f"state level {level!r} has shape {tuple(value.shape)}; this model needs (B, {self.temporal.hidden}, H, W)"
                    )
            state = {level: value.clone() for level, value in state.items()}
        self.state = state

    def detach_state(self) -> None:
        """Cut the graph behind the state (truncated BPTT): the next window trains on it as a constant."""
        if self.state is not None:
            self.state = {level: value.detach() for level, value in self.state.items()}

    # ---- forward ------------------------------------------------------------------------------------------------
    def _state_for(self, level: str, like: torch.Tensor) -> torch.Tensor:
        expected = (like.shape[0], self.temporal.hidden, *like.shape[-2:])
        if self.state is None:
            return like.new_zeros(expected)
        if level not in self.state:
            raise UserError(f"the state has no FPN level {level!r} (levels {sorted(self.state)}): it belongs to another model")
        value = self.state[level]
        if tuple(value.shape) != expected:
            raise UserError(
                f"state level {level!r} has shape {tuple(value.shape)} but this input needs {expected}: restore a state "
                "saved for the same batch size and frame size, or reset_state()"
            )
        return value

    def _recur(self, features: OrderedDict[str, torch.Tensor], batch: int, steps: int) -> OrderedDict[str, torch.Tensor]:
        """Walk the ConvGRU over the T steps of every level; features are (B*T, C, H, W), window-major."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        new_state = {}
        for level, value in features.items():
            per_window = value.unflatten(0, (batch, steps))
            state = self._state_for(level, per_window[:, 0])
            outputs = []
            for step in range(steps):
                output, state = self.temporal(per_window[:, step], state)
                outputs.append(output)
            out[level] = torch.stack(outputs, dim=1).flatten(0, 1)
            new_state[level] = state
        self.state = new_state
        return out

    def _backbone(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The backbone on all frames, in chunks of backbone_chunk: one call per chunk, no order between frames."""
        if not self.backbone_chunk or len(images) <= self.backbone_chunk:
            return self.backbone(images)
        parts = [self.backbone(chunk) for chunk in images.split(self.backbone_chunk)]
        return OrderedDict((level, torch.cat([part[level] for part in parts])) for level in parts[0])

    def _encode(self, frames: torch.Tensor, targets: list[list[dict[str, torch.Tensor]]] | None) -> tuple:
        """Transform, backbone on all B*T frames at once (stateless: the expensive part, batched), then the GRU."""
        if frames.dim() != 5:
            raise UserError(f"frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
        batch, steps = frames.shape[:2]
        images = list(frames.flatten(0, 1))
        flat_targets = [target for window in targets for target in window] if targets is not None else None
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, flat_targets = self.transform(images, flat_targets)
        features = self._backbone(image_list.tensors)
        if self.use_state:
            features = self._recur(features, batch, steps)
        return image_list, flat_targets, features, original_sizes

    def forward(self, frames: torch.Tensor, targets: list[list[dict[str, torch.Tensor]]] | None = None) -> Any:
        """Training: dict of losses over all B*T frames. Eval: detections [B][T] in each frame's pixels."""
        batch, steps = frames.shape[:2]
        image_list, flat_targets, features, original_sizes = self._encode(frames, targets)
        proposals, rpn_losses = self.rpn(image_list, features, flat_targets)
        detections, head_losses = self.roi_heads(features, proposals, image_list.image_sizes, flat_targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        return [detections[index * steps : (index + 1) * steps] for index in range(batch)]

    def head_inputs(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The features the (stateless, per-frame) heads receive, per level as (B, T, C, H, W); advances the state.

        Everything the state can change in the outputs passes through these, so they are what to compare when
        checking the state: unlike ranked detections, they do not reorder on float noise.
        """
        batch, steps = frames.shape[:2]
        return {level: value.unflatten(0, (batch, steps)) for level, value in self._encode(frames, None)[2].items()}


def _replace_batchnorms(module: nn.Module, replacement: Any) -> int:
    """Swap every nn.BatchNorm2d below `module` for replacement(batchnorm); returns how many were swapped."""
    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, replacement(child))
            swapped += 1
        else:
            swapped += _replace_batchnorms(child, replacement)
    return swapped


def frozen_batchnorm(norm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """The same normalisation with its loaded statistics and affine fixed: per frame, in training too."""
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(norm, name))
    return frozen


def group_norm(norm: nn.BatchNorm2d) -> nn.GroupNorm:
    """GroupNorm over norm's channels, each frame by its own statistics: 32 groups where 32 divides the channels,
    else the largest divisor under 32 that leaves 2 channels a group (MobileNetV3's 72, 120 and 16 channels: 24, 30
    and 8 groups); 1 channel a group would be InstanceNorm, clearly worse in He et al.'s GN ablation."""
    most = max(1, min(GROUP_NORM_GROUPS, norm.num_features // 2))
    groups = max(g for g in range(1, most + 1) if norm.num_features % g == 0)
    return nn.GroupNorm(groups, norm.num_features, eps=norm.eps)


def normalise_per_frame(detector: nn.Module, pretrained: bool) -> int:
    """Make every normalisation of the detector see one frame (or one RoI) at a time; returns how many changed.

    Loaded weights: FrozenBatchNorm2d with their statistics, as torchvision's detection references train (batches of
    a few frames give noisy statistics, and they mix the frames). From scratch there are no statistics to keep, and
    frozen identity statistics would leave the deep backbone unnormalised: GroupNorm, with which He et al. (2018,
    "Rethinking ImageNet Pre-training") trained detectors from scratch to COCO accuracy, normalises each frame by its
    own channel groups. (torchvision already freezes the pretrained backbones; resnet50_fpn_v2's FPN and box head
    keep BatchNorm2d even then, so the whole detector is converted, not only its backbone.)
    """
    return _replace_batchnorms(detector, frozen_batchnorm if pretrained else group_norm)


def build_stateful_model(
    name: str = "fasterrcnn_resnet50_fpn",
    weights: str = "auto",
    frame_size: tuple[int, int] = (240, 427),
    proposals: int = 300,
    score_thresh: float = 0.05,
    hidden: int = HIDDEN_CHANNELS,
) -> StatefulFasterRCNN:
    """A stateful detector for frames of frame_size (H, W): the model works at that size, no upscaling.

    Its normalisations never mix frames (normalise_per_frame): frozen where weights are loaded, GroupNorm from scratch.
    """
    weights = resolve_weights(name, weights)  # settles 'auto' once: it decides the normalisation too
    detector = build_torchvision_model(
        name,
        weights,
        min_size=min(frame_size),
        max_size=max(frame_size),
        rpn_post_nms_top_n_test=proposals,
        box_score_thresh=score_thresh,
        # Training samples: a MOT frame holds a few to a few tens of people, so torchvision's 2000 proposals and 512
        # RoIs per image (set for 80-class COCO) mostly add background; Fast R-CNN itself sampled 64 RoIs per image.
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        box_batch_size_per_image=128,
    )
    normalise_per_frame(detector, pretrained=weights.lower() != "none")
    return StatefulFasterRCNN(detector, hidden)


######################################################################################################################
# Demo: the state behaves as specified, on real frames


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two head_inputs() results."""
    return max(float((first[level] - second[level]).abs().max()) for level in first)


@torch.inference_mode()
def save_restore_difference(model: StatefulFasterRCNN, window_a: torch.Tensor, window_b: torch.Tensor, fresh_a: dict) -> float:
    """A's first half, B in between, A's state put back, A's second half: against A run whole."""
    half = window_a.shape[1] // 2
    model.reset_state()
    first = model.head_inputs(window_a[:, :half])
    saved = model.get_state()
    model.reset_state()
    model.head_inputs(window_b)  # someone else uses the model in between
    model.set_state(saved)
    second = model.head_inputs(window_a[:, half:])
    joined = {level: torch.cat([first[level], second[level]], dim=1) for level in first}
    return max_difference(joined, fresh_a)


def round_robin_difference(
    model: StatefulFasterRCNN, window_a: torch.Tensor, window_b: torch.Tensor, fresh_a: dict, fresh_b: dict
) -> float:
    """A and B interleaved frame by frame, each with its own saved state: against each run alone."""
    states: dict[str, State | None] = {"A": None, "B": None}
    steps: dict[str, list] = {"A": [], "B": []}
    for step in range(window_a.shape[1]):  # round-robin, frame by frame
        for name, window in (("A", window_a), ("B", window_b)):
            model.set_state(states[name])
            steps[name].append(model.head_inputs(window[:, step : step + 1]))
            states[name] = model.get_state()
    round_robin = {name: {level: torch.cat([s[level] for s in parts], dim=1) for level in fresh_a} for name, parts in steps.items()}
    return max(max_difference(round_robin["A"], fresh_a), max_difference(round_robin["B"], fresh_b))


def train_mode_difference(model: StatefulFasterRCNN, window_a: torch.Tensor, window_b: torch.Tensor) -> float:
    """In training mode (batch statistics would mix the frames of a backbone call), change only stream B's frames:
    how much stream A's features and state move. Leaves the model in training mode."""
    model.train()
    model.reset_state()
    together = model.head_inputs(torch.cat([window_a, window_b]))
    state = model.get_state()
    model.reset_state()
    other_b = model.head_inputs(torch.cat([window_a, window_b.flip(-1)]))  # B mirrored; A's frames are the same
    stream_a = {"features": (together, other_b), "state": (state, model.get_state())}
    return max(
        max_difference({k: v[:1] for k, v in first.items()}, {k: v[:1] for k, v in second.items()}) for first, second in stream_a.values()
    )


def check_state_behaviour(model: StatefulFasterRCNN, window_a: torch.Tensor, window_b: torch.Tensor) -> dict[str, float]:
    """Each check's largest difference in what the heads see; windows are (1, T, C, H, W) from two places.

    All in eval mode but the last check, which runs in training mode (the model is left in eval mode).

    Runs that batch frames differently (one call per frame vs one per window) differ by float rounding (~1e-5):
    "same" means below SAME_TOLERANCE. An untrained layer's influence is small by design (gate 0.01): it grows
    with training.
    """
    model.eval()
    results = {}

    model.reset_state()
    fresh_a = model.head_inputs(window_a)
    model.reset_state()
    fresh_b = model.head_inputs(window_b)
    after_a = model.head_inputs(window_b)  # B again, now carrying the state B left behind
    results["state influences outputs (B after B vs B fresh; > 0)"] = max_difference(after_a, fresh_b)

    model.reset_state()
    model.head_inputs(window_a)
    model.reset_state()
    results["reset: B after A+reset == B fresh"] = max_difference(model.head_inputs(window_b), fresh_b)

    results["save/restore: A split around B == A whole"] = save_restore_difference(model, window_a, window_b, fresh_a)
    results["round-robin A,B frame by frame == separate runs"] = round_robin_difference(model, window_a, window_b, fresh_a, fresh_b)

    model.reset_state()
    together = model.head_inputs(torch.cat([window_a, window_b]))
    results["streams in one batch independent"] = max(
        max_difference({k: v[:1] for k, v in together.items()}, fresh_a), max_difference({k: v[1:] for k, v in together.items()}, fresh_b)
    )
    results["train mode: stream A's features and state unchanged when only B's frames change"] = train_mode_difference(
        model, window_a, window_b
    )
    model.eval()
    return results


def add_data_and_model_args(parser: argparse.ArgumentParser) -> None:
    """--data, --detector, --weights: the flags every script built on this model shares."""
    parser.add_argument("--data", default="assets/data", help="a MOTChallenge sequence folder, or a folder of them")
    parser.add_argument("--detector", default="fasterrcnn_resnet50_fpn", choices=TORCHVISION_DETECTORS, help="base detector")
    parser.add_argument(
        "--weights",
        default="auto",
        help="auto (DEFAULT when it can be had, else random, with a warning), DEFAULT, none or a path; loaded weights train "
        "with frozen batch norms, random ones with GroupNorm (default: auto)",
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_and_model_args(parser)
    parser.add_argument("--seq-len", type=number(int, 2), default=4, help="frames per window in the demo (split in two halves)")
    parser.add_argument("--size", type=number(int, MIN_FRAME_SIDE), nargs=2, metavar=("H", "W"), default=(240, 320), help="frame size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=number(int, 1), default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0, help="seed (random-weight runs are then reproducible)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    set_threads(args.threads)
    device = resolve_device(args.device)
    sequences = load_sequences(args.data)
    size = tuple(args.size)
    # Two windows far apart: A from the start of the first sequence, B from the end of the last one.
    last = len(sequences) - 1
    windows = [Window(0, 1, args.seq_len), Window(last, len(sequences[last]) - args.seq_len + 1, args.seq_len)]
    dataset = MotWindowDataset(sequences, windows, size)
    window_a, window_b = (dataset[index][0][None].to(device) for index in range(2))
    model = build_stateful_model(args.detector, args.weights, size).to(device)
    results = check_state_behaviour(model, window_a, window_b)
    width = max(len(check) for check in results)
    for check, difference in results.items():
        ok = difference > SAME_TOLERANCE if "> 0" in check else difference <= SAME_TOLERANCE
        print(f"{check:<{width}}  max |diff| {difference:.2e}  {'ok' if ok else 'FAILED'}")
    parameters = sum(p.numel() for p in model.temporal.parameters())
    print(f"stateful layer: {parameters:,} parameters ({parameters / sum(p.numel() for p in model.parameters()):.2%} of the model)")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
