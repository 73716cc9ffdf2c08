import json

import pytest
import torch
from conftest import TINY_MODEL_ARGS, TUD_CAMPUS

import task3_train_seq as task3
from task1_seq_loader import build_loader, load_sequences
from task2_stateful_rcnn import StatefulFasterRCNN, build_stateful_model
from utils.cli import UserError

TINY = [*TINY_MODEL_ARGS, "--warmup-steps", "1"]


def train(out, *argv):
    args = task3.get_args_parser().parse_args(["--data", str(TUD_CAMPUS), "--out", str(out), *TINY, *argv])
    return task3.main(args)


@pytest.mark.slow
def test_training_shows_the_stateful_layer_learning(tmp_path):
    results = train(tmp_path, "--max-steps", "3", "--val-fraction", "0.1")
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(row["stateful_grad_norm"] > 0 for row in history)
    changes = [row["stateful_weight_change"] for row in history]
    assert 0 < changes[0] < changes[1] < changes[2]
    assert {"stateful", "stateless"} == set(results["eval"]) and 0 <= results["eval"]["stateful"]["map_50"] <= 1
    for name in ("checkpoint.pt", "metrics.csv", "training.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "stateful_grad_norm" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stream", "random"])
def test_resume_continues_bit_for_bit(tmp_path, mode):
    common = ["--max-steps", "4", "--val-fraction", "0", "--mode", mode, "--batch-size", "2"]
    train(tmp_path / "straight", *common)
    train(tmp_path / "resumed", *common, "--stop-after", "2")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    train(tmp_path / "resumed", *common, "--resume", str(tmp_path / "resumed" / "checkpoint.pt"))
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 4
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert [row["loss"] for row in straight["history"]] == [row["loss"] for row in resumed["history"]]


def test_freeze_detector_trains_only_the_stateful_layer(tmp_path):
    torch.manual_seed(0)
    initial = build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none", (120, 160)).state_dict()
    train(tmp_path, "--max-steps", "1", "--val-fraction", "0", "--freeze-detector", "--batch-size", "1")
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    changed = {name for name, value in trained.items() if value.dtype.is_floating_point and not torch.equal(value, initial[name])}
    assert changed and all(name.startswith("temporal.") for name in changed), sorted(changed)[:5]


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    frames, targets, _ = next(iter(build_loader(load_sequences(TUD_CAMPUS), None, 2, 2, size=(120, 160), shuffle=False, stride=20)))
    model = build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none", (120, 160)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        model.reset_state()
        loss = sum(model(frames, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses


def test_non_finite_loss_stops_with_a_message(tmp_path, monkeypatch):
    def nan_losses(self, frames, targets=None):
        return {"loss_classifier": self.temporal.gate.sum() * float("nan")}

    monkeypatch.setattr(StatefulFasterRCNN, "forward", nan_losses)
    with pytest.raises(UserError, match="step 0: loss is nan"):
        train(tmp_path, "--max-steps", "2", "--val-fraction", "0")


def test_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        task3.main(task3.get_args_parser().parse_args(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]))
    with pytest.raises(UserError, match="no training window of 80 frames"):
        train(tmp_path, "--seq-len", "80", "--max-steps", "1")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot resume from"):
        train(tmp_path, "--max-steps", "1", "--resume", str(tmp_path / "bad.pt"))


@pytest.mark.slow
def test_runs_under_torchrun_ddp_on_cpu(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "task3_train_seq.py", "--data", str(TUD_CAMPUS)]
    command += [*TINY, "--max-steps", "2", "--threads", "1", "--val-fraction", "0", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 2
