import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_quantise_ends_with_its_json_line():
    argv = ["benchmarks/bench_quantise.py", "--only", "efficientnet", "--rounds", "1", "--calls", "2", "--calib-images", "16"]
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "fbgemm" and result["threads"] == 2
    assert result["efficientnet_speedup"] == pytest.approx(result["efficientnet_fp32_ms"] / result["efficientnet_int8_ms"], rel=0.01)
    assert result["efficientnet_top1_fp32"] >= 0.85  # real weights on the bundled ImageNet images
    assert result["efficientnet_top1_drop"] == pytest.approx(result["efficientnet_top1_fp32"] - result["efficientnet_top1_int8"], abs=1e-3)
    assert "detector_speedup" not in result  # --only runs one part
