import json
import subprocess
import sys

import pytest
from conftest import REPO, TUD_CAMPUS


def run_quick(*argv):
    command = [sys.executable, "benchmarks/bench_seq_train.py", "--data", str(TUD_CAMPUS), "--quick", *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_seq_train_ends_with_its_json_line():
    result = run_quick()
    assert set(result) >= {"batched_step_s", "loop_step_s", "speedup", "batched_all_at_once_step_s"}
    assert result["speedup"] == pytest.approx(result["loop_step_s"] / result["batched_step_s"], rel=0.02)
    assert result["backbone_chunk"] == 4  # CPU default
    assert result["quick"] and result["detector"] == "fasterrcnn_mobilenet_v3_large_320_fpn" and result["seq_len"] == 2


def test_bench_seq_train_numbers_are_range_checked():
    command = [sys.executable, "benchmarks/bench_seq_train.py", "--repeats", "0"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == ["error: argument --repeats: must be at least 1, got 0"]


@pytest.mark.cuda
def test_bench_seq_train_quick_on_cuda():
    result = run_quick("--device", "cuda")
    assert result["device"].startswith("cuda") and result["backbone_chunk"] is None  # CUDA default: all frames at once
    assert result["batched_step_s"] > 0 and result["loop_step_s"] > 0
