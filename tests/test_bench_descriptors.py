"""benchmarks/bench_descriptors.py: crops/s per backbone and batch, interleaved rounds, the target flag."""

import json
import subprocess
import sys

from conftest import REPO


def test_bench_descriptors_ends_with_its_json_line():
    command = [sys.executable, "benchmarks/bench_descriptors.py", "--backbones", "reid-0288", "efficientnet_lite0"]
    command += ["--batch-sizes", "1", "8", "--rounds", "2", "--repeats", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # the table went to stderr
    result = json.loads(lines[0])
    reid = result["crops_per_second"]["reid-0288"]
    assert set(reid) == {"1", "8"} and all(value > 0 for value in reid.values())
    assert len(result["per_round"]["efficientnet_lite0"]["8"]) == 2
    assert result["met"] == {"reid-0288": max(reid.values()) >= 200}  # the target is judged on re-id backbones only
    assert "reid-0288" in done.stderr and "batch 8" in done.stderr
