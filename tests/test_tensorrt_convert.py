"""tensorrt_convert.py: export, parity and timing rows on the CPU; the GPU and TensorRT rows where those exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, usable_random_detector

import tensorrt_convert
from utils.cli import UserError

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
AVAILABLE = {"cuda": None, "ort-cuda": None, "ort-tensorrt": None, "tensorrt": None}


def run(tmp_path, *argv):
    args = tensorrt_convert.get_args_parser().parse_args(["--out", str(tmp_path / "out"), *argv])
    return tensorrt_convert.main(args)


def row(results, name, device="cpu"):
    return next(measured for measured in results["rows"] if measured["row"] == name and measured["device"] == device)


######################################################################################################################
# Which rows run where


def test_plan_on_a_cpu_machine_runs_the_cpu_rows_and_says_why_the_others_cannot():
    missing = {"cuda": "needs CUDA", "ort-cuda": "no CUDA provider", "ort-tensorrt": "no TRT provider", "tensorrt": "no TensorRT"}
    plan = tensorrt_convert.plan_rows(list(tensorrt_convert.ROWS), "classifier", torch.device("cpu"), missing)
    ran = [(planned["row"], planned["device"]) for planned in plan if "skipped" not in planned]
    assert ran == [("eager", "cpu"), ("compile", "cpu"), ("ort-cpu", "cpu"), ("ort-cpu-int8", "cpu")]
    skipped = {planned["row"]: planned["skipped"] for planned in plan if "skipped" in planned}
    assert skipped["eager-fp16"] == skipped["cuda-graphs"] == "needs CUDA"
    assert skipped["tensorrt-fp16"] == "needs CUDA"  # the first missing piece is the one named


def test_plan_on_a_gpu_machine_times_eager_on_both_devices_and_never_graphs_a_detector():
    plan = tensorrt_convert.plan_rows(list(tensorrt_convert.ROWS), "detector", torch.device("cuda"), AVAILABLE)
    assert [(p["row"], p["device"]) for p in plan[:2]] == [("eager", "cpu"), ("eager", "cuda")]
    by_row = {p["row"]: p for p in plan if p["row"] != "eager"}
    assert "depend on the data" in by_row["cuda-graphs"]["skipped"]
    assert all("skipped" not in by_row[name] and by_row[name]["device"] == "cuda" for name in ("compile", "ort-cuda", "tensorrt-int8"))
    assert by_row["ort-cpu"]["device"] == "cpu"
    only_gpu = tensorrt_convert.plan_rows(["eager", "eager-fp16"], "classifier", torch.device("cuda"), AVAILABLE)
    assert [(p["row"], p["device"]) for p in only_gpu] == [("eager", "cuda"), ("eager-fp16", "cuda")]  # no CPU row needed


######################################################################################################################
# End to end on the CPU


def test_efficientnet_lite0_exports_checks_parity_and_times_onnx_runtime(tmp_path, capsys):
    rows = ["eager", "ort-cpu", "ort-cpu-int8", "eager-fp16", "tensorrt-fp16"]
    results = run(tmp_path, "--model", "efficientnet_lite0", "--quick", "--rows", *rows)
    out = tmp_path / "out"
    assert (out / "efficientnet_lite0.onnx").is_file() and (out / "efficientnet_lite0-int8.onnx").is_file()
    assert json.loads((out / "efficientnet_lite0.json").read_text())["opset"] == 17
    assert (out / "results.json").is_file() and (out / "tensorrt_convert.png").stat().st_size > 10_000
    ort = row(results, "ort-cpu")
    assert ort["parity"]["top1_agreement"] == 1.0 and ort["parity"]["max_abs_diff"] < 1e-3
    assert ort["parity"]["top1_accuracy"] == row(results, "eager")["parity"]["top1_accuracy"] >= 0.75  # 8 real images
    assert row(results, "eager")["parity"]["max_abs_diff"] == 0.0  # the reference against itself
    int8 = row(results, "ort-cpu-int8")
    assert int8["parity"]["top1_agreement"] >= 0.75 and int8["parity"]["max_abs_diff"] > 1e-3  # INT8 really changed it
    for measured in (ort, int8, row(results, "eager")):
        for batch in (1, 2):
            figures = measured[f"batch{batch}"]
            assert 0 < figures["median_ms"] <= figures["p95_ms"] and figures["speedup"] > 0
    assert row(results, "eager")["batch1"]["speedup"] == 1.0
    assert "CUDA" in row(results, "eager-fp16", "cuda")["skipped"]
    assert results["tensorrt"]["ran"] is False and results["tensorrt"]["skipped"]
    printed = capsys.readouterr()
    assert "| ort-cpu | fp32 | cpu |" in printed.out and "TensorRT: skipped (" in printed.out


def test_detector_parity_includes_the_black_frame_and_a_batch_1_graph_skips_batch_2(tmp_path):
    weights = usable_random_detector(tmp_path / "random.pt")
    results = run(tmp_path, "--model", DETECTOR, "--weights", weights, "--quick", "--rows", "eager", "ort-cpu")
    parity = row(results, "ort-cpu")["parity"]
    assert parity["frames"] == 5  # 4 TUD-Campus frames + the black one
    assert parity["matched"] >= 100 and parity["unmatched"] <= 4 and parity["mean_matched_iou"] > 0.99  # measured 402, 0, 0.999
    # this random model finds 2 boxes on black (a graph that is empty there: tests/test_utils_onnx_export.py)
    assert parity["black_frame_detections"] == row(results, "eager")["parity"]["black_frame_detections"]
    assert "batch 1" in row(results, "ort-cpu")["batch2"]["skipped"]
    assert row(results, "eager")["batch2"]["median_ms"] > 0  # eager PyTorch batches a list of frames


@pytest.mark.slow
def test_torch_compile_row_runs_on_the_cpu(tmp_path):
    results = run(tmp_path, "--model", "efficientnet_lite0", "--quick", "--rows", "eager", "compile", "--batch-sizes", "1")
    compiled = row(results, "compile")
    assert compiled["parity"]["top1_agreement"] == 1.0 and compiled["parity"]["max_abs_diff"] < 1e-3
    assert compiled["build_s"] > 1.0  # the compile time is counted, not hidden in the warm-up


def test_an_existing_onnx_file_is_benchmarked_without_exporting_again(tmp_path):
    first = run(tmp_path, "--model", "efficientnet_lite0", "--quick", "--rows", "eager", "--batch-sizes", "1")
    onnx = tmp_path / "out" / "efficientnet_lite0.onnx"
    moved = tmp_path / "mine.onnx"
    onnx.rename(moved)
    (tmp_path / "out" / "efficientnet_lite0.json").rename(tmp_path / "mine.json")
    results = run(tmp_path, "--onnx", str(moved), "--quick", "--rows", "ort-cpu", "--batch-sizes", "1", "--out", str(tmp_path / "again"))
    assert results["model"] == "efficientnet_lite0" and results["onnx"]["path"] == str(moved)
    assert not (tmp_path / "again" / "efficientnet_lite0.onnx").exists()
    assert first["onnx"]["file_bytes"] == results["onnx"]["file_bytes"]


######################################################################################################################
# Bad input: one line, exit 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--rows", "eager", "warp-drive"], "unknown --rows warp-drive"),
        (["--require-tensorrt", "--rows", "tensorrt-fp32"], "--require-tensorrt: TensorRT cannot run here"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        run(tmp_path, *argv)


def test_a_file_that_is_not_onnx_or_fails_the_checker_is_refused(tmp_path):
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(UserError, match="is not a valid ONNX model"):
        run(tmp_path, "--onnx", str(junk))
    node = onnx.helper.make_node("Relu", ["x", "x"], ["y"])  # Relu takes one input: a valid protobuf, an invalid model
    x, y = (onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in "xy")
    graph = onnx.helper.make_graph([node], "bad", [x], [y])
    bad = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), bad)
    with pytest.raises(UserError, match="is not a valid ONNX model"):
        run(tmp_path, "--onnx", str(bad))
    assert not (tmp_path / "out").exists()


def test_command_line_error_is_one_line_and_exit_1():
    done = subprocess.run([sys.executable, "tensorrt_convert.py", "--model", "nope"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "unknown model 'nope'" in done.stderr


######################################################################################################################
# GPU lanes (make test-gpu)


@pytest.mark.cuda
def test_gpu_rows_run_and_agree_with_the_cpu_reference(tmp_path):
    rows = ["eager", "eager-fp16", "compile", "cuda-graphs", "ort-cuda"]
    results = run(tmp_path, "--model", "efficientnet_lite0", "--quick", "--device", "cuda", "--rows", *rows)
    for name in ("eager", "eager-fp16", "compile", "cuda-graphs"):
        measured = row(results, name, "cuda")
        assert measured["parity"]["top1_agreement"] >= 0.875, name  # FP16 may flip one of 8 close calls
        assert measured["batch2"]["median_ms"] > 0
    assert results["devices"]["cuda"] == torch.cuda.get_device_name()


@pytest.mark.tensorrt
def test_tensorrt_engines_build_run_and_match(tmp_path):
    rows = ["eager", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"]
    results = run(tmp_path, "--model", "efficientnet_lite0", "--quick", "--device", "cuda", "--rows", *rows, "--require-tensorrt")
    assert results["tensorrt"]["ran"] is True
    assert row(results, "tensorrt-fp32", "cuda")["parity"]["max_abs_diff"] < 1e-2
    assert row(results, "tensorrt-fp16", "cuda")["parity"]["top1_agreement"] >= 0.875
    assert (tmp_path / "out" / "timing.cache").is_file()
    engine = json.loads((tmp_path / "out" / "efficientnet_lite0-trt-int8.json").read_text())
    assert engine["precision"] == "int8" and engine["profile"]["images"]["max"][0] == 2
