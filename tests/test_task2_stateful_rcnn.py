import pytest
import torch
from conftest import TINY_MODEL_ARGS, TUD_CAMPUS

import task2_stateful_rcnn as task2
from task1_seq_loader import build_loader, load_sequences
from task2_stateful_rcnn import SAME_TOLERANCE, build_stateful_model, check_state_behaviour
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
    assert len(results) == 5 and "FAILED" not in printed and printed.count(" ok") == 5
