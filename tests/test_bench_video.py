import json
import subprocess
import sys

import pytest
from conftest import REPO, TUD_CLIP


@pytest.mark.slow
def test_bench_video_ends_with_its_json_line():
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_video.py",
            "--source",
            str(TUD_CLIP),
            "--max-frames",
            "2",
            "--weights",
            "none",
            "--calib-frames",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= {"reference_fps", "pipeline_fps", "speedup", "agreement", "ssdlite_person_fps", "int8_fps", "speedup_int8"}
    assert result["yolox_nano_fps"] > 0
    assert result["frames"] == 2 and result["pretrained_weights"] is False
    assert result["agreement"] is None  # random weights: agreement is not a number we may report
    assert result["speedup"] == pytest.approx(result["pipeline_fps"] / result["reference_fps"], rel=0.02)
    assert result["speedup_int8"] == pytest.approx(result["int8_fps"] / result["reference_fps"], rel=0.02)
    assert result["speedup_yolox_nano"] == pytest.approx(result["yolox_nano_fps"] / result["reference_fps"], rel=0.02)
    assert result["agreement_int8"] is None and result["agreement_yolox_nano"] is None  # against a random reference
    assert "--quantized" in done.stderr  # the INT8 row of the table
    yolox_row = next(line for line in done.stderr.splitlines() if line.startswith("video_main_person.py yolox_nano "))
    assert float(yolox_row.split()[-2]) == pytest.approx(result["yolox_nano_fps"], abs=0.01)  # its FPS in the table
    assert "random weights find no one" in done.stderr
