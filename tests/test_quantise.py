"""quantise.py end to end on bundled data: every scheme's row and columns, real accuracy where weights are real,
the saved INT8 detector running in video_main_person.py, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, TUD_CLIP

import quantise
import video_main_person
from utils.cli import UserError


def run(tmp_path, *argv: str) -> dict:
    args = quantise.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out"), *argv])
    return quantise.main(args)


@pytest.mark.slow
def test_efficientnet_every_scheme_reports_real_accuracy(tmp_path, capsys):
    results = run(tmp_path, "--model", "efficientnet_lite0", "--scheme", "all", "--max-images", "24")
    rows = {row["scheme"]: row for row in results["rows"]}
    assert list(rows) == ["fp32", "dynamic", "static", "bf16", "fp16"]
    assert "CUDA" in rows["fp16"]["skipped"]  # no GPU here
    for scheme in ("fp32", "dynamic", "static", "bf16"):
        row = rows[scheme]
        for key in ("load_s", "peak_rss_mb", "size_mb", "throughput_per_s", "speedup_batch1"):
            assert row[key] > 0, (scheme, key)
        assert row["latency_batch1"]["p95_ms"] >= row["latency_batch1"]["median_ms"] > 0
        assert 0.7 <= row["accuracy"]["imagenet_top1"] <= 1.0  # real weights: real accuracy
        assert 0.0 < row["accuracy"]["tiny_top5"] <= 1.0
    assert rows["static"]["accuracy"]["imagenet_agree_top1"] >= 0.9
    assert rows["static"]["size_mb"] < rows["fp32"]["size_mb"] / 3  # INT8 weights: about a quarter
    assert rows["static"]["quantised_layers"] == {"static Conv2d": 44, "static Linear": 1}
    table = capsys.readouterr().out
    for column in (
        "b1 median ms",
        "b1 p95 ms",
        "b4 median ms",
        "items/s",
        "size MB",
        "peak RSS MB",
        "load s",
        "imagenet_top1",
        "tiny_top1",
        "tiny_agree_top1",
    ):
        assert column in table
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["scheme"] for row in saved["rows"]] == list(rows)
    assert (tmp_path / "out" / "quantise.png").stat().st_size > 10_000


@pytest.mark.slow
def test_ssdlite_onnx_runtime_int8_measures_ap_and_agreement(tmp_path):
    results = run(tmp_path, "--model", "ssdlite_person", "--scheme", "static", "--eval-frames", "8")
    fp32, static = results["rows"]
    assert static["artefact"].endswith("ssdlite_person-static.onnx")
    assert 0.5 <= fp32["accuracy"]["ap50"] <= 1.0  # a real pretrained detector on real gt
    assert abs(static["accuracy"]["ap50"] - fp32["accuracy"]["ap50"]) <= 0.15
    assert static["accuracy"]["matched_iou"] >= 0.7
    assert static["size_mb"] < fp32["size_mb"]
    assert static["quantised_layers"] == {"static Conv (QDQ)": 55}  # 88 convs, of which 33 depthwise stay float


@pytest.mark.slow
def test_offline_detector_falls_back_to_random_weights_says_not_measured_and_its_int8_model_runs_in_video_main_person(
    tmp_path, offline, capsys
):
    results = run(tmp_path, "--scheme", "static", "--proposals", "50", "--calib-frames", "4")  # default --weights auto
    assert "--weights auto: random weights" in capsys.readouterr().err
    fp32, static = results["rows"]
    assert set(static["accuracy"].values()) == {quantise.NOT_MEASURED}
    assert static["quantised_layers"]["dynamic Linear"] == 4
    assert static["size_mb"] < fp32["size_mb"] / 2
    video_args = video_main_person.get_args_parser().parse_args(
        [
            "--source",
            str(TUD_CLIP),
            "--detector",
            "fasterrcnn_resnet50_fpn",
            "--quantized",
            static["artefact"],
            "--max-frames",
            "4",
            "--batch-size",
            "2",
            "--min-score",
            "0.0",
            "--out",
            str(tmp_path / "video"),
        ]
    )
    summary = video_main_person.main(video_args)
    assert summary["frames"] == 4
    assert "static" in summary["detector"]["weights"]
    assert (tmp_path / "video" / "main_person.mp4").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "yolo"], "unknown model 'yolo'"),
        (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["--model", "dinov2_vits14", "--scheme", "static"], "not offered for dinov2_vits14"),
        (["--model", "efficientnet_lite0", "--scheme", "static", "--calib-frames", "0"], "needs calibration data"),
        (["--model", "ssdlite_person", "--scheme", "static", "--calib", "nowhere.mp4"], "nowhere.mp4: no such file"),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path, *argv)


def test_offline_default_weights_and_dinov2_are_one_line_errors(tmp_path, offline, monkeypatch):
    with pytest.raises(UserError, match="cannot download fasterrcnn_resnet50_fpn weights"):
        run(tmp_path, "--scheme", "dynamic", "--weights", "DEFAULT")
    monkeypatch.setattr(quantise.torch.hub, "load", lambda *a, **k: (_ for _ in ()).throw(OSError("no internet connection")))
    with pytest.raises(UserError, match=r"dinov2_vits14 comes from torch.hub .* needs internet"):
        run(tmp_path, "--model", "dinov2_vits14", "--scheme", "dynamic")


def test_cli_error_exit_code_and_single_line():
    result = subprocess.run([sys.executable, "quantise.py", "--backend", "nope"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: unknown backend 'nope'; choose from fbgemm, x86, qnnpack, onednn"]
