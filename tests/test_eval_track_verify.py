"""benchmarks/eval_track_verify.py: the tuning and held-out protocols on real data, the tables, and the report."""

import json
import shutil
import sys

import pytest
from conftest import REPO, TUD_CAMPUS

sys.path.insert(0, str(REPO / "benchmarks"))
import eval_track_verify

from utils.assets import TRACK_CROPS
from utils.cli import UserError


def held_out_copy(tmp_path):
    """TUD-Campus under another name, to stand for a held-out sequence (its people are TUD-Campus's own: fine for the
    code paths, meaningless as a figure)."""
    copy = tmp_path / "sequences" / "TUD-Copy"
    shutil.copytree(TUD_CAMPUS, copy)
    (copy / "seqinfo.ini").write_text((TUD_CAMPUS / "seqinfo.ini").read_text().replace("name=TUD-Campus", "name=TUD-Copy"))
    return copy


def test_tuning_sequences_fall_back_to_the_bundled_crops_and_others_are_held_out(tmp_path):
    tuning, held_out = eval_track_verify.find_sequences([TUD_CAMPUS, held_out_copy(tmp_path)])
    assert tuning == [TUD_CAMPUS, TRACK_CROPS / "PETS09-S2L1", TRACK_CROPS / "ADL-Rundle-6"]
    assert [path.name for path in held_out] == ["TUD-Copy"]
    with pytest.raises(UserError, match="no MOTChallenge sequence"):
        eval_track_verify.find_sequences([tmp_path / "sequences" / "TUD-Copy" / "gt"])


def test_both_protocols_per_backbone_with_tables_and_roc(tmp_path):
    copy = held_out_copy(tmp_path)
    argv = ["--sequences", str(TUD_CAMPUS), str(copy), "--backbones", "reid-0288", "--seeds", "0", "1"]
    argv += ["--steps", "20", "--bootstrap", "50", "--threads", "2", "--out", str(tmp_path / "out")]
    result = eval_track_verify.main(eval_track_verify.get_args_parser().parse_args(argv))
    assert result["tuning_sequences"] == ["TUD-Campus", "PETS09-S2L1", "ADL-Rundle-6"] and result["held_out_sequences"] == ["TUD-Copy"]
    entry = result["backbones"]["reid-0288"]
    assert set(entry["tuning"]["median"]) >= {"single", "mean", "whitened", "attention", "gru", "gru (1 crop)"}
    assert set(entry["all_sequences"]["median"]) == set(entry["tuning"]["median"])
    assert len(entry["all_sequences"]["mean_false_positive_pairs_per_seed"]) == 2
    assert len(entry["tuning"]["test_set_per_seed"]["negative_pairs"]) == 2
    held = entry["held_out"]["results"]
    assert held["mean"]["identities"] == 7  # TUD-Copy's identities only: the test set is the held-out sequence, whole
    assert 0 <= held["mean"]["tpr_at_fpr"]["0.001"]["tpr"] <= 1
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["backbones"]["reid-0288"]["held_out"]["results"]["mean"]["negative_pairs"] == held["mean"]["negative_pairs"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| reid-0288 |" in report and "| whitened |" in report and f"{held['mean']['negative_pairs']:,} negative pairs" in report
    assert (tmp_path / "out" / "roc.png").stat().st_size > 10_000
    cached = sorted(path.name for path in (tmp_path / "out" / "cache" / "reid-0288").iterdir())
    assert cached == ["ADL-Rundle-6.npz", "PETS09-S2L1.npz", "TUD-Campus.npz", "TUD-Copy.npz"]  # one cache per backbone
