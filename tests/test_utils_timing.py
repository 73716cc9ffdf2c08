import math

from utils.timing import StageTimer, format_summary, summarize


def test_summarize_median_p95_total():
    row = summarize([0.001 * value for value in range(1, 101)])  # 1..100 ms
    assert row["count"] == 100
    assert math.isclose(row["median_ms"], 50.5)
    assert math.isclose(row["p95_ms"], 95.05)
    assert math.isclose(row["total_s"], 5.05)


def test_summarize_empty_is_nan_not_an_error():
    row = summarize([])
    assert row["count"] == 0 and math.isnan(row["median_ms"])


def test_stage_timer_records_each_stage_and_formats():
    timer = StageTimer()
    for _ in range(3):
        with timer.stage("inference"):
            sum(range(1000))
    timer.add("decode", 0.004)
    summary = timer.summary()
    assert summary["inference"]["count"] == 3 and summary["inference"]["median_ms"] > 0
    assert summary["decode"]["median_ms"] == 4.0
    table = format_summary(summary)
    assert "inference" in table and "decode" in table and "p95" in table
