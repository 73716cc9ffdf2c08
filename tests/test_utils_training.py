import argparse
import itertools
import random

import numpy as np
import pytest
import torch

from utils.cli import UserError
from utils.training import check_resume_flags, load_checkpoint, restore_rng_state, restore_states, rng_state, save_checkpoint, warmup_cosine


def draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_round_trip_through_a_checkpoint_reproduces_python_numpy_and_torch(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    draws()  # somewhere in the middle of a run, not at the seed
    save_checkpoint(tmp_path / "rng.pt", rng=rng_state())
    expected = draws()
    draws()  # the run goes on, then a resumed run restores the saved state
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    python, numpy, torch_cpu = draws()
    assert python == expected[0] and numpy == expected[1] and torch.equal(torch_cpu, expected[2])


def test_save_stores_state_dicts_and_flags_and_leaves_no_partial_file(tmp_path):
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(lr=0.1, size=[120, 160])
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", model=model, optimizer=optimizer, step=7, args=args)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt", required=("model", "optimizer", "step", "args"))
    assert torch.equal(checkpoint["model"]["weight"], model.weight.detach()) and checkpoint["step"] == 7
    assert checkpoint["args"] == {"lr": 0.1, "size": [120, 160]} and checkpoint["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, step=1)

    def half_written(contents, file):
        file.write(b"PK\x03\x04 the first bytes of a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_missing_corrupt_and_foreign_files_are_one_line_user_errors(tmp_path):
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (tmp_path / "text.pt").write_text("not a checkpoint\nsecond line")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    expected = {
        "nowhere.pt": r"cannot resume from .*nowhere\.pt: no such file",
        "truncated.pt": r"cannot resume from .*truncated\.pt: not readable",
        "text.pt": r"cannot resume from .*text\.pt: not readable",
        "tensor.pt": r"tensor\.pt: not a checkpoint of this script \(no model, step\)",
        "other.pt": r"other\.pt: not a checkpoint of this script \(no step\)",
    }
    for name, message in expected.items():
        with pytest.raises(UserError, match=message) as error:
            load_checkpoint(tmp_path / name, required=("model", "step"), context="cannot resume from")
        assert "\n" not in str(error.value)


def test_check_resume_flags_names_every_differing_flag_and_only_those():
    saved = {"size": [120, 160], "mode": "stream", "seq_len": 10, "lr": 0.1}
    same = argparse.Namespace(size=(120, 160), mode="stream", seq_len=10, lr=0.5)  # a list saved, a tuple parsed: the same flag
    check_resume_flags(saved, same, ("size", "mode", "seq_len"), "run.pt")
    other = argparse.Namespace(size=(96, 128), mode="random", seq_len=10, lr=0.1)
    with pytest.raises(UserError) as error:
        check_resume_flags(saved, other, ("size", "mode", "seq_len"), "run.pt")
    assert (
        str(error.value)
        == "cannot resume from run.pt: it was trained with --size 120 160, this run has 96 128; --mode stream, this run has random"
    )


def test_restore_states_skips_an_empty_scaler_and_refuses_another_model():
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    model = torch.nn.Linear(2, 3)
    saved = {"model": torch.nn.Linear(2, 3).state_dict(), "scaler": {}}  # {}: saved by a disabled (CPU) scaler
    restore_states(saved, "run.pt", model=model, scaler=scaler)
    assert torch.equal(model.weight.detach(), saved["model"]["weight"]) and scaler.get_scale() == 256.0
    with pytest.raises(UserError, match=r"cannot resume from run\.pt: it does not fit this model"):
        restore_states({"model": torch.nn.Linear(2, 4).state_dict()}, "run.pt", model=model)


def learning_rates(steps: int, **schedule) -> list[float]:
    """The rate of each of the first `steps` optimizer steps, for a peak rate of 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, **schedule)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_cosine_warms_up_decays_to_the_floor_and_stays_there():
    rates = learning_rates(20, warmup_steps=4, total_steps=14, floor=0.1)
    assert rates[0] == pytest.approx(0.01) and rates[2] == pytest.approx(0.505)  # linear from 1% of the rate
    assert rates[4] == pytest.approx(1.0) and rates[9] == pytest.approx(0.55)  # cosine: halfway to the floor at mid-decay
    assert rates[14:] == pytest.approx([0.1] * 6)  # the floor, also past total_steps (a longer --max-steps on resume)
    assert all(a > b for a, b in itertools.pairwise(rates[4:15]))  # decays every step down to the floor
    quarter = learning_rates(5, warmup_steps=4, total_steps=10, start_factor=0.25)  # hpo_cifar: from 1/warm-up, cosine to 0
    assert quarter[:2] == pytest.approx([0.25, 0.4375]) and learning_rates(11, warmup_steps=0, total_steps=10)[10] == pytest.approx(0.0)


@pytest.mark.cuda
def test_rng_state_saved_on_cuda_restores_through_a_checkpoint_file(tmp_path):
    """Loading with map_location=cuda would move the CPU RNG state to the GPU, where set_rng_state refuses it."""
    device = torch.device("cuda")
    torch.manual_seed(3)
    torch.rand(5, device=device)
    save_checkpoint(tmp_path / "rng.pt", rng=rng_state())
    expected_cpu, expected_cuda = torch.rand(4), torch.rand(4, device=device)
    torch.rand(7), torch.rand(7, device=device)  # move on
    state = load_checkpoint(tmp_path / "rng.pt")["rng"]
    assert len(state["cuda"]) == torch.cuda.device_count() and state["cuda"][0].device.type == "cpu"
    restore_rng_state(state)
    assert torch.equal(torch.rand(4), expected_cpu) and torch.equal(torch.rand(4, device=device), expected_cuda)
