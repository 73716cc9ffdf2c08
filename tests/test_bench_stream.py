"""benchmarks/bench_stream.py for a few seconds: its figures hang together and its last line is one JSON object."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_stream


@pytest.mark.slow
def test_short_run_reports_latency_inference_and_drops(capsys):
    args = bench_stream.get_args_parser().parse_args(["--seconds", "4", "--warmup-seconds", "1", "--threads", "1"])
    results = bench_stream.main(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results
    assert results["messages"] >= 6 and 0 <= results["dropped_share"] < 1
    # capture -> subscriber contains the inference: a capture time taken after it would break this
    assert results["latency"]["p50_ms"] > results["inference"]["p50_ms"] > 0
    assert 0 < results["inference_share_p50"] < 1
    assert results["overhead"]["p50_ms"] > 0 and results["publish_to_subscriber"]["p50_ms"] >= 0
    assert results["frame_age"]["p50_ms"] >= 0 and results["messages_dropped"] == 0
    assert results["source_fps"] == 30 and results["threads"] == 1 and results["broker"] == "embedded"
