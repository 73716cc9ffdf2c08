import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from maskrcnn_train import get_args_parser, main
from utils.cli import UserError
from utils.maskrcnn import load_checkpoint, predict

BALLOON = REPO / "assets" / "data" / "balloon"
# Small and fast: 2 real train images (one batch: the same images every step), 2 val images, 256-320 px
TINY = ["--min-size", "256", "--max-size", "320", "--max-side", "320", "--batch-size", "2", "--samples", "1", "--threads", "2"]


@pytest.fixture
def tiny_balloon(tmp_path):
    """A balloon root with the first 2 train and 2 val images of the bundled set and their polygons."""
    root = tmp_path / "balloon"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        data = json.loads((BALLOON / split / "via_region_data.json").read_text())
        kept = dict(sorted(data.items(), key=lambda item: item[1]["filename"])[:2])
        for entry in kept.values():
            shutil.copy(BALLOON / split / entry["filename"], root / split / entry["filename"])
        (root / split / "via_region_data.json").write_text(json.dumps(kept))
    return root


def run(root, out, *extra):
    return main(get_args_parser().parse_args(["--data", str(root), "--out", str(out), *TINY, *extra]))


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_and_write_a_loadable_checkpoint(tiny_balloon, tmp_path):
    out = tmp_path / "run"
    results = run(tiny_balloon, out, "--max-steps", "6", "--warmup-steps", "0", "--no-augment", "--lr", "0.01")
    losses = [row["loss"] for row in results["history"]]
    assert len(losses) == 6 and results["steps"] == 6
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])  # the same batch every step: the loss must fall
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        assert 0.0 <= results[key] <= 1.0
    assert (out / "loss.png").stat().st_size > 0 and len(list((out / "samples").glob("*.jpg"))) == 1
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    model, meta = load_checkpoint(out / "model.pt")  # from the file alone: no data, no flags
    assert meta["backbone"] == "efficientnet_lite0" and meta["class_names"] == ["balloon"] and meta["min_size"] == [256]
    assert meta["figures"]["segm_AP50"] == results["segm_AP50"] and "maskrcnn_train.py" in meta["command"]
    assert (out / "model.pt").stat().st_size < (out / "checkpoint.pt").stat().st_size / 2  # FP16, no optimizer state
    assert isinstance(predict(model, torch.zeros(64, 64, 3, dtype=torch.uint8).numpy(), 0.0), list)


@pytest.mark.slow
def test_resume_continues_the_same_run(tiny_balloon, tmp_path):
    out = tmp_path / "run"
    first = run(tiny_balloon, out, "--max-steps", "2", "--weights", "none", "--samples", "0")
    second = run(tiny_balloon, out, "--max-steps", "3", "--weights", "none", "--samples", "0", "--resume", str(out / "checkpoint.pt"))
    assert second["steps"] == 3 and len(second["history"]) == 3
    assert second["history"][:2] == first["history"]  # the saved history is carried on, not restarted
    assert second["history"][2]["lr"] != first["history"][1]["lr"]  # the schedule continued from where it was
    with pytest.raises(UserError, match="trained with --backbone efficientnet_lite0, this run has efficientnet_lite2"):
        run(
            tiny_balloon,
            out,
            "--max-steps",
            "4",
            "--weights",
            "none",
            "--backbone",
            "efficientnet_lite2",
            "--resume",
            str(out / "checkpoint.pt"),
        )
    with pytest.raises(UserError, match="not a training checkpoint"):
        run(tiny_balloon, out, "--max-steps", "4", "--weights", "none", "--resume", str(out / "model.pt"))
    with pytest.raises(UserError, match="beyond --max-steps 1"):
        run(tiny_balloon, out, "--max-steps", "1", "--weights", "none", "--resume", str(out / "checkpoint.pt"))


@pytest.mark.slow
def test_compare_keeps_a_row_for_a_backbone_without_weights(tiny_balloon, tmp_path, offline):
    out = tmp_path / "cmp"
    results = run(
        tiny_balloon,
        out,
        "--compare",
        "mobilenet_v3_large",
        "efficientnet_lite0",
        "--max-steps",
        "1",
        "--latency-repeats",
        "1",
        "--samples",
        "0",
    )
    rows = {row["backbone"]: row for row in results["comparison"]}
    assert rows["mobilenet_v3_large"]["status"].startswith("not trained: needs torchvision MobileNetV3-Large ImageNet weights")
    assert "segm_AP50" not in rows["mobilenet_v3_large"] and rows["mobilenet_v3_large"]["parameters_M"] > 1
    assert rows["efficientnet_lite0"]["status"].startswith("trained here") and 0 <= rows["efficientnet_lite0"]["segm_AP50"] <= 1
    assert all(row["cpu_latency_ms"]["median_ms"] > 0 for row in rows.values())
    table = (out / "comparison.md").read_text()
    assert table.count("\n") == 4 and "not trained: needs" in table and (out / "comparison.png").is_file()


def test_bad_inputs_are_user_errors(tiny_balloon, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        run(tmp_path / "nowhere", tmp_path / "o", "--max-steps", "1")
    with pytest.raises(UserError, match="unknown backbone 'vgg16'"):
        run(tiny_balloon, tmp_path / "o", "--backbone", "vgg16")
    (tiny_balloon / "val" / "via_region_data.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="neither a VIA region JSON nor a COCO"):
        run(tiny_balloon, tmp_path / "o", "--max-steps", "1")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    shutil.rmtree(tiny_balloon / "val")
    shutil.copytree(tiny_balloon / "train", tiny_balloon / "val")
    with pytest.raises(UserError, match="not readable"):
        run(tiny_balloon, tmp_path / "o", "--max-steps", "1", "--weights", "none", "--resume", str(tmp_path / "junk.pt"))


def test_cli_prints_one_line_and_exits_1(tmp_path):
    done = subprocess.run(
        [sys.executable, "maskrcnn_train.py", "--data", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'nowhere'}: no such folder"]
    done = subprocess.run(
        [sys.executable, "maskrcnn_train.py", "--data", "x", "--max-steps", "-1"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.cuda
def test_amp_training_on_cuda(tiny_balloon, tmp_path):
    results = run(tiny_balloon, tmp_path / "gpu", "--max-steps", "3", "--device", "cuda", "--samples", "0")
    assert results["steps"] == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in results["history"])
    assert results["device"] == torch.cuda.get_device_name(0)
