import copy

import pytest
import torch
import torchvision
from conftest import TINY_MODEL_ARGS, TUD_CAMPUS
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import task2_stateful_rcnn as task2
from task1_seq_loader import build_loader, load_sequences
from task2_stateful_rcnn import SAME_TOLERANCE, build_stateful_model, check_state_behaviour, max_difference
from utils.cli import UserError

SIZE = (120, 160)


@pytest.fixture(scope="module")
def batch():
    loader = build_loader(load_sequences(TUD_CAMPUS), None, 3, 2, size=SIZE, shuffle=False, stride=30)
    return next(iter(loader))


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none", SIZE)


def test_one_backward_reaches_every_stateful_parameter_and_a_step_moves_them(batch):
    frames, targets, _ = batch
    model = tiny_model().train()
    losses = model(frames, targets)
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    for name, parameter in model.temporal.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    before = {name: p.detach().clone() for name, p in model.temporal.named_parameters()}
    torch.optim.AdamW(model.temporal.parameters(), lr=1e-3).step()
    for name, parameter in model.temporal.named_parameters():
        assert not torch.equal(parameter, before[name]), name


def test_state_reset_restore_round_robin_and_stream_independence(batch):
    frames, _, _ = batch
    model = tiny_model()
    with torch.no_grad():  # a trained-looking layer: a gate far from its 0.01 start shows the state's influence
        model.temporal.gate.fill_(1.0)
    results = check_state_behaviour(model, frames[:1], frames[1:])
    influence, *same = results.values()
    assert influence > 100 * SAME_TOLERANCE
    assert all(difference <= SAME_TOLERANCE for difference in same), results


def test_a_different_prior_state_changes_the_detections(batch):
    frames, _, _ = batch
    model = tiny_model().eval()
    model.roi_heads.score_thresh = 0.0  # a random model's scores are tiny: keep every box
    with torch.no_grad():
        model.temporal.gate.fill_(1.0)
        fresh = model(frames[:1])
        model.reset_state()
        model(frames[:1])
        model.set_state({level: torch.randn_like(value) * 3 for level, value in model.get_state().items()})
        primed = model(frames[:1])
    first_fresh, first_primed = fresh[0][0], primed[0][0]
    assert first_fresh["boxes"].shape != first_primed["boxes"].shape or not torch.allclose(first_fresh["scores"], first_primed["scores"])


def test_eval_returns_detections_per_window_and_frame(batch):
    frames, _, _ = batch
    model = tiny_model().eval()
    with torch.no_grad():
        outputs = model(frames)
    assert len(outputs) == 2 and all(len(window) == 3 for window in outputs)
    assert {"boxes", "scores", "labels"} <= set(outputs[0][0])


def test_state_for_the_wrong_batch_or_shape_is_an_error(batch):
    frames, _, _ = batch
    model = tiny_model().eval()
    with torch.no_grad():
        model(frames)  # state for 2 streams
        saved = model.get_state()
        model.set_state(saved)
        with pytest.raises(UserError, match="restore a state saved for the same batch size"):
            model(frames[:1])
        with pytest.raises(UserError, match=r"needs \(B, 32, H, W\)"):
            model.set_state({level: value[:, :8] for level, value in saved.items()})
        model.set_state(saved)
        with pytest.raises(UserError, match="same batch size and frame size"):
            model(frames[..., :80])  # narrower frames: other feature-map widths


def test_reset_some_streams_only(batch):
    frames, _, _ = batch
    model = tiny_model().eval()
    with torch.no_grad():
        model(frames)
        model.reset_state([1])
    state = model.get_state()
    assert all(value[1].abs().max() == 0 and value[0].abs().max() > 0 for value in state.values())


def test_cli_demo_passes_every_check(capsys):
    args = task2.get_args_parser().parse_args(["--data", str(TUD_CAMPUS), *TINY_MODEL_ARGS])
    results = task2.main(args)
    printed = capsys.readouterr().out
    assert len(results) == 6 and "FAILED" not in printed and printed.count(" ok") == 6


def coco_like_state_dict(path, frames):
    """A torchvision detector's state_dict with real batch-norm statistics (measured on these frames), saved to
    path: what --weights PATH loads (the COCO file cannot be downloaded here). Random (0, 1) statistics would not do:
    they leave a random network's features nearly constant, and then nothing could leak."""
    torch.manual_seed(1)
    detector = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=91)
    detector.train()
    for module in detector.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calls
    with torch.no_grad():
        detector.backbone(detector.transform(list(frames.flatten(0, 1)))[0].tensors)
    torch.save(detector.state_dict(), path)
    return detector.state_dict()


@pytest.mark.parametrize("weights", ["none", "path"])
def test_in_train_mode_one_streams_frames_never_change_another_streams_features(batch, tmp_path, weights):
    """Batch statistics over a backbone call's frames would leak stream B's frames into stream A (old code: 2.96)."""
    frames, _, _ = batch
    saved = coco_like_state_dict(tmp_path / "coco.pt", frames) if weights == "path" else None
    torch.manual_seed(0)
    model = build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", str(tmp_path / "coco.pt") if saved else "none", SIZE)
    model.train()
    with torch.no_grad():
        model.temporal.gate.fill_(1.0)  # the state's share of the features as large as a trained layer's
        model.reset_state()
        together = model.head_inputs(frames)
        state = model.get_state()
        model.reset_state()
        other_b = model.head_inputs(torch.cat([frames[:1], frames[1:].flip(-1)]))  # only stream B's frames differ
    assert max_difference({k: v[1:] for k, v in together.items()}, {k: v[1:] for k, v in other_b.items()}) > 0.01  # B did change
    assert max_difference({k: v[:1] for k, v in together.items()}, {k: v[:1] for k, v in other_b.items()}) <= SAME_TOLERANCE
    assert max_difference({k: v[:1] for k, v in state.items()}, {k: v[:1] for k, v in model.get_state().items()}) <= SAME_TOLERANCE
    if saved:  # loaded statistics are kept, not re-estimated on the training batches
        norm = model.backbone.body["1"].block[0][1]
        assert isinstance(norm, FrozenBatchNorm2d)
        assert torch.equal(norm.running_mean, saved["backbone.body.1.block.0.1.running_mean"])
        assert torch.equal(norm.running_var, saved["backbone.body.1.block.0.1.running_var"])


def test_loaded_weights_freeze_every_batchnorm_and_random_ones_get_groupnorm():
    """resnet50_fpn_v2 keeps BatchNorm2d in its FPN and box head even when torchvision freezes the backbone's: the
    whole detector is converted, statistics and eps copied; GroupNorm groups divide their channels, 2+ channels each."""
    torch.manual_seed(0)
    detector = torchvision.models.get_model("fasterrcnn_resnet50_fpn_v2", weights=None, weights_backbone=None, num_classes=91)
    box_head_norm = detector.roi_heads.box_head[0][1]
    box_head_norm.running_mean.uniform_(-1, 1)
    box_head_norm.eps = 1e-3
    frozen = copy.deepcopy(detector)
    assert task2.normalise_per_frame(frozen, pretrained=True) == 65
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    frozen_box_head_norm = frozen.roi_heads.box_head[0][1]
    assert torch.equal(frozen_box_head_norm.running_mean, box_head_norm.running_mean) and frozen_box_head_norm.eps == 1e-3
    assert isinstance(frozen.backbone.fpn.inner_blocks[0][1], FrozenBatchNorm2d)
    task2.normalise_per_frame(detector, pretrained=False)
    norms = [m for m in detector.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 65 and not any(isinstance(m, nn.BatchNorm2d) for m in detector.modules())
    assert all(m.num_channels % m.num_groups == 0 and m.num_channels // m.num_groups >= 2 and m.num_groups <= 32 for m in norms)
    assert {m.num_groups for m in norms} == {32}  # ResNet's 64..2048 channels: the paper's 32 groups everywhere
    mobilenet = build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none", SIZE)
    groups = {m.num_channels: m.num_groups for m in mobilenet.modules() if isinstance(m, nn.GroupNorm)}
    assert groups[72] == 24 and groups[120] == 30 and groups[16] == 8 and groups[960] == 32
