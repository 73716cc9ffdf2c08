import json
import subprocess
import sys

import pytest
from conftest import REPO, TUD_CAMPUS


@pytest.mark.slow
def test_bench_seq_train_ends_with_its_json_line():
    command = [
        sys.executable,
        "benchmarks/bench_seq_train.py",
        "--data",
        str(TUD_CAMPUS),
        "--detector",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
    ]
    done = subprocess.run([*command, "--seq-len", "2", "--size", "96", "128", "--repeats", "1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= {"batched_step_s", "loop_step_s", "speedup", "batched_all_at_once_step_s"}
    assert result["speedup"] == pytest.approx(result["loop_step_s"] / result["batched_step_s"], rel=0.02)
    assert result["backbone_chunk"] == 4  # CPU default
