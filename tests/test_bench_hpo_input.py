import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_hpo_input_ends_with_its_json_line():
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_hpo_input.py",
            "--images",
            "256",
            "--batch-size",
            "32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["baseline"] in ("pil_workers0", "pil_workers2") and set(result["all"]) == {"tensor", "pil_workers0", "pil_workers2"}
    assert result["speedup"] == pytest.approx(result["tensor_images_per_s"] / result["pil_images_per_s"], rel=0.01)
    # the baseline is the fastest reference, never a slower one that would flatter the speed-up
    assert result["pil_images_per_s"] == pytest.approx(
        max(result["all"][name]["train"]["median"] for name in ("pil_workers0", "pil_workers2")), rel=0.01
    )
    assert result["target_met"] == (result["speedup"] >= 3.0) and result["model"]["parameters"] > 0
    assert "pil_workers2" in done.stderr  # the table
