import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_mask_api_ends_with_its_json_line():
    command = [sys.executable, "benchmarks/bench_mask_api.py", "--rounds", "1", "--clients", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 13 and result["inference_p50_ms"] > 0 and result["api_p50_ms"] > 0
    assert -0.01 < result["overhead"] <= result["overhead_p95"]  # the client never waits less than the model ran
    assert result["met"] == (result["overhead"] <= 0.15) and result["requests_per_s"] > 0
