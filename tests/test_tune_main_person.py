"""benchmarks/tune_main_person.py: the coordinate search keeps what the tuning sequences prefer, reports held-out
sequences beside it, and refuses to tune without a tuning sequence."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, TUD_CAMPUS, make_sequence

sys.path.insert(0, str(REPO / "benchmarks"))
import tune_main_person

from utils.cli import UserError


def test_parse_stage():
    assert tune_main_person.parse_stage("hold-frames=0,2,5") == ("--hold-frames", ["0", "2", "5"])
    for bad in ("hold-frames", "=1,2", "--hold-frames=1", "hold-frames="):
        with pytest.raises(UserError, match="FLAG=V1,V2"):
            tune_main_person.parse_stage(bad)


def test_search_keeps_the_tuning_best_and_reports_held_out_beside_it(tmp_path):
    """TUD-Campus (tuning) and a renamed copy of its first frames (held out): a score floor of 0.99 leaves no main
    person, so the search must keep 0.4; the held-out column is filled from the copy, which played no part."""
    held_out = make_sequence(tmp_path / "mot", "Held-Out-Copy", range(1, 5))
    flags = ["--stage", "min-score=0.99,0.4", "--base", "--detector ssdlite_person --max-frames 4", "--out", str(tmp_path / "out")]
    args = tune_main_person.get_args_parser().parse_args([*flags, "--sequences", str(TUD_CAMPUS), str(held_out)])
    summary = tune_main_person.main(args)
    rows = summary["rows"]
    assert [row["value"] for row in rows] == ["0.99", "0.4"] and [row["kept"] for row in rows] == [False, True]
    assert rows[0]["tuning"]["main_match"] == 0.0 and rows[1]["tuning"]["main_match"] == 1.0
    assert rows[1]["tuning"]["sequences"] == ["TUD-Campus"] and rows[1]["held_out"]["sequences"] == ["Held-Out-Copy"]
    assert summary["chosen"] == {"--detector": "ssdlite_person", "--max-frames": "4", "--min-score": "0.4"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["chosen"] == summary["chosen"] and saved["rows"][1]["scores"]["Held-Out-Copy"]["role"] == "held-out"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| --min-score | 0.4 | 1.000 |" in report and "Chosen: `--detector ssdlite_person --max-frames 4 --min-score 0.4`" in report


def test_no_tuning_sequence_is_refused(tmp_path):
    other = make_sequence(tmp_path / "mot", "Other", range(1, 4))
    args = tune_main_person.get_args_parser().parse_args(["--stage", "hold-frames=0,5", "--sequences", str(other)])
    with pytest.raises(UserError, match="none of the tuning sequences"):
        tune_main_person.main(args)


def test_a_tuning_gain_that_does_worse_held_out_is_not_kept():
    def row(tuning, held_out, held_out_switches=1.0):
        held = {"main_match": held_out, "id_switches_while_visible": held_out_switches}
        return {"tuning": {"main_match": tuning, "id_switches_while_visible": 1.0}, "held_out": held}

    incumbent, overfit, honest = row(0.90, 0.95), row(0.97, 0.94), row(0.93, 0.95)
    assert tune_main_person.pick([incumbent, overfit]) is incumbent
    assert overfit["verdict"] == "tuning-best, held-out worse" and incumbent["verdict"] == "kept"
    assert tune_main_person.pick([incumbent, honest, overfit]) is incumbent  # the tuning-best decides, then the check
    tie = row(0.90, 0.99)
    assert tune_main_person.pick([incumbent, tie]) is incumbent  # equal on tuning: the incumbent stays
    flickering = row(0.95, 0.96, held_out_switches=2.5)  # better everywhere but switches more often held out
    assert tune_main_person.pick([incumbent, flickering]) is incumbent
    assert tune_main_person.pick([incumbent, honest]) is honest and honest["verdict"] == "kept"
