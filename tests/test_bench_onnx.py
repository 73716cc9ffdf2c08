import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_onnx_ends_with_its_json_line():
    command = [sys.executable, "benchmarks/bench_onnx.py", "--models", "efficientnet_lite0", "--runs", "1", "--repeats", "3"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # stdout holds the JSON line only: the tables went to stderr
    result = json.loads(lines[0])
    lite0 = result["cpu"]["efficientnet_lite0"]
    assert lite0["eager_ms"] > 0 and lite0["ort_ms"] > 0 and len(lite0["speedup_per_run"]) == 1
    assert lite0["speedup"] == pytest.approx(lite0["eager_ms"] / lite0["ort_ms"], rel=1e-2)
    assert lite0["target"] == 1.3 and lite0["met"] == (lite0["speedup"] >= 1.3)
    assert "no CUDA GPU" in result["gpu"]["skipped"]
