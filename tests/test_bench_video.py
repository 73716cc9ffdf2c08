import json
import subprocess
import sys

import pytest
from conftest import REPO, TUD_CLIP


@pytest.mark.slow
def test_bench_video_ends_with_its_json_line():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_video.py", "--source", str(TUD_CLIP), "--max-frames", "2", "--weights", "none"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= {"reference_fps", "pipeline_fps", "speedup", "agreement", "ssdlite_person_fps"}
    assert result["frames"] == 2 and result["pretrained_weights"] is False
    assert result["agreement"] is None  # random weights: agreement is not a number we may report
    assert result["speedup"] == pytest.approx(result["pipeline_fps"] / result["reference_fps"], rel=0.02)
    assert "random weights find no one" in done.stderr
