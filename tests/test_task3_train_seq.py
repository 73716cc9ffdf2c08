import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_MODEL_ARGS, TUD_CAMPUS

import task3_train_seq as task3
from task1_seq_loader import build_loader, load_sequences
from task2_stateful_rcnn import StatefulFasterRCNN, build_stateful_model
from utils.cli import UserError
from utils.training import warmup_cosine

TINY = [*TINY_MODEL_ARGS, "--warmup-steps", "1"]
VAL_COLUMNS = {"val_map_50", "val_map", "val_stateless_map_50", "val_stateless_map"}


def train(out, *argv):
    args = task3.get_args_parser().parse_args(["--data", str(TUD_CAMPUS), "--out", str(out), *TINY, *argv])
    return task3.main(args)


def load(path):
    return torch.load(path, weights_only=False, map_location="cpu")


def assert_same_weights(first, second):
    for name, value in first["model"].items():
        assert torch.equal(value, second["model"][name]), name


@pytest.mark.slow
def test_training_shows_the_stateful_layer_learning_and_evaluates_every_n_steps(tmp_path):
    results = train(tmp_path, "--max-steps", "3", "--val-fraction", "0.1", "--eval-every", "2")
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(row["stateful_grad_norm"] > 0 and row["optimizer_stepped"] == 1 for row in history)
    changes = [row["stateful_weight_change"] for row in history]
    assert 0 < changes[0] < changes[1] < changes[2]
    assert [set(row) >= VAL_COLUMNS for row in history] == [False, True, False]  # step 2 only
    assert all(0 <= history[1][column] <= 1 for column in VAL_COLUMNS)
    assert {"stateful", "stateless"} == set(results["eval"]) and 0 <= results["eval"]["stateful"]["map_50"] <= 1
    for name in ("checkpoint.pt", "metrics.csv", "training.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    header, first, second = (line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()[:3])
    assert "stateful_grad_norm" in header and set(header) >= VAL_COLUMNS
    assert first[header.index("val_map_50")] == "" and second[header.index("val_map_50")] != ""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stream", "random"])
def test_resume_continues_bit_for_bit(tmp_path, mode):
    """Stream mode also evaluates every step in the stopped and the resumed run, never in the straight one: an
    evaluation that touched the stream state, the RNG or the training mode would show in the weights."""
    common = ["--max-steps", "4", "--val-fraction", "0.1" if mode == "stream" else "0", "--mode", mode, "--batch-size", "2"]
    evaluations = ["--eval-every", "1"] if mode == "stream" else []
    train(tmp_path / "straight", *common)
    train(tmp_path / "resumed", *common, *evaluations, "--stop-after", "2")
    stopped = load(tmp_path / "resumed" / "checkpoint.pt")
    assert stopped["step"] == 2 and len(stopped["ranks"]) == 1
    assert stopped["ranks"][0]["stream_state"] is not None  # the state after window 2: stream mode carries it on
    train(tmp_path / "resumed", *common, *evaluations, "--resume", str(tmp_path / "resumed" / "checkpoint.pt"))
    straight = load(tmp_path / "straight" / "checkpoint.pt")
    resumed = load(tmp_path / "resumed" / "checkpoint.pt")
    assert straight["step"] == resumed["step"] == 4
    assert_same_weights(straight, resumed)
    assert [row["loss"] for row in straight["history"]] == [row["loss"] for row in resumed["history"]]
    assert all(set(row) >= VAL_COLUMNS for row in resumed["history"]) == (mode == "stream")


def test_freeze_detector_trains_only_the_stateful_layer(tmp_path):
    torch.manual_seed(0)
    initial = build_stateful_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none", (120, 160)).state_dict()
    train(tmp_path, "--max-steps", "1", "--val-fraction", "0", "--freeze-detector", "--batch-size", "1")
    trained = load(tmp_path / "checkpoint.pt")["model"]
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


def test_a_step_the_grad_scaler_skips_does_not_advance_the_schedule():
    """AMP's GradScaler skips the optimizer step on inf/nan gradients; the schedule must wait for it (CPU scaler:
    the same logic as CUDA's)."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = warmup_cosine(optimizer, warmup_steps=5, total_steps=20, floor=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    norm, stepped = task3.optimizer_step((weight * float("inf")).sum(), optimizer, scaler, scheduler, 10.0, [weight])
    assert not stepped and scheduler.last_epoch == 0 and torch.equal(weight, torch.ones(3)) and scaler.get_scale() == 512.0
    norm, stepped = task3.optimizer_step((weight * 2).sum(), optimizer, scaler, scheduler, 10.0, [weight])
    assert stepped and scheduler.last_epoch == 1 and not torch.equal(weight, torch.ones(3))
    assert norm == pytest.approx(2 * 3**0.5)  # unscaled, before clipping
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # CPU training: every step counts
    assert task3.optimizer_step((weight * 2).sum(), optimizer, disabled, scheduler, 10.0, [weight])[1] and scheduler.last_epoch == 2


def test_non_finite_loss_stops_with_a_message(tmp_path, monkeypatch):
    def nan_losses(self, frames, targets=None):
        return {"loss_classifier": self.temporal.gate.sum() * float("nan")}

    monkeypatch.setattr(StatefulFasterRCNN, "forward", nan_losses)
    with pytest.raises(UserError, match="step 0: loss is nan"):
        train(tmp_path, "--max-steps", "2", "--val-fraction", "0")


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-steps", "0"],
        ["--val-fraction", "1"],
        ["--val-fraction", "-0.1"],
        ["--backbone-chunk", "0"],
        ["--size", "8", "160"],
        ["--lr", "-1"],
        ["--eval-every", "-1"],
        ["--seed", "-1"],
    ],
)
def test_out_of_range_numbers_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        task3.get_args_parser().parse_args(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(error) == 1 and error[0].startswith(f"error: argument {argv[0]}: must be")


def test_backbone_chunk_that_is_no_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        task3.get_args_parser().parse_args(["--backbone-chunk", "some"])
    assert exit_info.value.code == 2 and "must be auto, all or a number of frames" in capsys.readouterr().err


def fake_checkpoint(path, **changes):
    """A checkpoint with every key, for this test's TINY run unless `changes` say otherwise."""
    args = task3.get_args_parser().parse_args(["--data", str(TUD_CAMPUS), *TINY])
    contents = {key: None for key in task3.CHECKPOINT_KEYS} | {"args": vars(args), "ranks": [{}]} | changes
    torch.save(contents, path)
    return path


def test_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        task3.main(task3.get_args_parser().parse_args(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]))
    with pytest.raises(UserError, match="no training window of 80 frames"):
        train(tmp_path, "--seq-len", "80", "--max-steps", "1")
    with pytest.raises(UserError, match="--eval-every 2: no held-out window"):
        train(tmp_path, "--max-steps", "1", "--val-fraction", "0", "--eval-every", "2")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match=r"cannot resume from .*bad\.pt"):
        train(tmp_path, "--max-steps", "1", "--resume", str(tmp_path / "bad.pt"))
    with pytest.raises(UserError, match=r"tensor\.pt: not a checkpoint of this script"):
        train(tmp_path, "--max-steps", "1", "--resume", str(tmp_path / "tensor.pt"))
    other_size = fake_checkpoint(tmp_path / "size.pt")
    with pytest.raises(UserError, match="trained with --size 120 160, this run has 96 128"):
        train(tmp_path, "--max-steps", "1", "--resume", str(other_size), "--size", "96", "128")
    with pytest.raises(
        UserError, match="trained with --detector fasterrcnn_mobilenet_v3_large_320_fpn, this run has fasterrcnn_resnet50_fpn"
    ):
        train(tmp_path, "--max-steps", "1", "--resume", str(other_size), "--detector", "fasterrcnn_resnet50_fpn")
    other_model = fake_checkpoint(tmp_path / "model.pt", model={"backbone.body.0.0.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"model\.pt: it does not fit this model"):
        train(tmp_path, "--max-steps", "1", "--resume", str(other_model))


@pytest.mark.slow
def test_a_bad_checkpoint_is_one_line_and_exit_code_1(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated zip")
    command = [sys.executable, "task3_train_seq.py", "--data", str(TUD_CAMPUS), "--out", str(tmp_path), *TINY]
    done = subprocess.run([*command, "--resume", str(tmp_path / "bad.pt")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: cannot resume from")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def torchrun(out, *argv):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "task3_train_seq.py", "--data", str(TUD_CAMPUS)]
    command += [*TINY, "--threads", "1", "--val-fraction", "0", "--mode", "stream", "--batch-size", "1", "--out", str(out), *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_ddp_resume_restores_every_ranks_stream_state_and_rng(tmp_path):
    """2 gloo processes on the CPU, one stream each: a stopped-and-resumed run ends with the straight run's weights
    only if rank 1 gets back its own stream state, last batch and RNG (it draws its own: seed + rank)."""
    torchrun(tmp_path / "straight", "--max-steps", "3")
    torchrun(tmp_path / "resumed", "--max-steps", "3", "--stop-after", "2")
    stopped = load(tmp_path / "resumed" / "checkpoint.pt")
    first, second = stopped["ranks"]
    assert first["previous_meta"] != second["previous_meta"]  # the two ranks walk different streams
    assert not torch.equal(first["rng"]["torch"], second["rng"]["torch"])
    assert not torch.equal(first["stream_state"]["0"], second["stream_state"]["0"])
    torchrun(tmp_path / "resumed", "--max-steps", "3", "--resume", str(tmp_path / "resumed" / "checkpoint.pt"))
    straight, resumed = load(tmp_path / "straight" / "checkpoint.pt"), load(tmp_path / "resumed" / "checkpoint.pt")
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["world_size"] == 2
    assert straight["step"] == resumed["step"] == 3
    assert_same_weights(straight, resumed)
    with pytest.raises(UserError, match="written by 2 process\\(es\\), this run has 1"):
        train(
            tmp_path / "single",
            "--max-steps",
            "3",
            "--val-fraction",
            "0",
            "--batch-size",
            "1",
            "--resume",
            str(tmp_path / "resumed" / "checkpoint.pt"),
        )


######################################################################################################################
# The CUDA lane (make test-gpu): skipped where no GPU is visible


@pytest.mark.cuda
def test_amp_training_on_cuda_steps_the_schedule_only_with_the_optimizer(tmp_path):
    results = train(tmp_path, "--device", "cuda", "--max-steps", "3", "--val-fraction", "0")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)  # each tensor back on the device it was saved from
    history = checkpoint["history"]
    assert results["steps"] == 3 and [row["step"] for row in history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in history)
    assert checkpoint["scaler"]["scale"] > 0  # AMP was on: a disabled scaler saves {}
    assert checkpoint["scheduler"]["last_epoch"] == sum(row["optimizer_stepped"] for row in history)
    assert checkpoint["model"]["temporal.gate"].device.type == "cuda"
    assert checkpoint["ranks"][0]["rng"]["torch"].device.type == "cpu" and checkpoint["ranks"][0]["rng"]["cuda"][0].device.type == "cpu"


@pytest.mark.cuda
def test_evaluation_every_n_steps_on_cuda(tmp_path):
    pytest.importorskip("pycocotools", reason="mAP needs pycocotools (requirements.txt); carry it to the GPU machine")
    results = train(tmp_path, "--device", "cuda", "--max-steps", "2", "--val-fraction", "0.1", "--eval-every", "1")
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert all(set(row) >= VAL_COLUMNS for row in history) and 0 <= results["eval"]["stateful"]["map_50"] <= 1


@pytest.mark.cuda
def test_stop_and_resume_on_cuda_continues_the_run(tmp_path):
    """With AMP and atomics in roi_align's backward, CUDA runs are not bit-for-bit: what must hold is that the resumed
    run continues at the right step with the checkpoint's history, schedule and scale, and follows the straight run."""
    common = ["--device", "cuda", "--max-steps", "4", "--val-fraction", "0", "--mode", "stream"]
    train(tmp_path / "straight", *common)
    train(tmp_path / "resumed", *common, "--stop-after", "2")
    stopped = load(tmp_path / "resumed" / "checkpoint.pt")
    results = train(tmp_path / "resumed", *common, "--resume", str(tmp_path / "resumed" / "checkpoint.pt"))
    straight, resumed = load(tmp_path / "straight" / "checkpoint.pt"), load(tmp_path / "resumed" / "checkpoint.pt")
    assert results["steps"] == resumed["step"] == 4 and [row["step"] for row in resumed["history"]] == [1, 2, 3, 4]
    assert json.dumps(resumed["history"][:2]) == json.dumps(stopped["history"])  # as saved (NaN-safe: a skipped step's norm)
    assert resumed["scheduler"]["last_epoch"] == sum(row["optimizer_stepped"] for row in resumed["history"])
    for mine, theirs in zip(resumed["history"][2:], straight["history"][2:], strict=True):  # the same batches, nearly the same weights
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=2e-2)
    gate = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]["temporal.gate"]
    assert gate.device.type == "cuda"  # trained on the GPU after the checkpoint was read onto the CPU
