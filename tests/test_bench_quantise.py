import importlib.util
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


@pytest.mark.parametrize("flag", ["--rounds", "--calls", "--threads", "--calib-images", "--calib-frames"])
def test_bench_quantise_numbers_below_one_are_one_line_errors(flag, capsys):
    spec = importlib.util.spec_from_file_location("bench_quantise", REPO / "benchmarks" / "bench_quantise.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exit_info:
        bench.get_args_parser().parse_args([flag, "0"])
    assert exit_info.value.code == 1  # out of range: bad input, one line (utils.cli.ArgumentParser)
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
