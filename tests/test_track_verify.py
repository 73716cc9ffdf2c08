"""track_verify.py: TPR at low FPR against hand-computed values, identity-disjoint splits, track sampling, triplet
mining, training, the full report on the bundled data, and bad input."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TUD_CAMPUS

import track_verify
from utils.assets import REID_0287_PATH, REID_0288_PATH
from utils.cli import UserError
from utils.mot import read_mot_boxes
from utils.onnx_runtime import create_session
from utils.video import read_rgb_image

BUNDLED_CROPS = REPO / "assets" / "data" / "track-crops"


def run(tmp_path, *flags: str, cache=None) -> dict:
    cache = cache or tmp_path / "cache"
    quick = ["--steps", "40", "--bootstrap", "100", "--threads", "2", "--device", "cpu"]
    args = track_verify.get_args_parser().parse_args([*quick, "--cache-dir", str(cache), "--out", str(tmp_path / "out"), *flags])
    return track_verify.main(args)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One descriptor cache for the module: the backbone runs once per sequence."""
    return tmp_path_factory.mktemp("track-verify-cache")


@pytest.fixture(scope="module")
def bundled_report(tmp_path_factory, cache_dir):
    """The full report on the bundled data (TUD-Campus frames + PETS09-S2L1/ADL-Rundle-6 crops), both aggregators."""
    out = tmp_path_factory.mktemp("report")
    return out, run(out, "--aggregator", "all", "--steps", "150", cache=cache_dir)


########################################################################################################################
# TPR at FPR, by hand


def test_tpr_at_fpr_hand_computed_with_ties():
    # scores (label): 0.9 (+), 0.8 (+), 0.8 (-), 0.7 (+), 0.6 (-), 0.5 (-); 3 positives, 3 negatives.
    # Thresholds: > 0.9 accepts nothing; 0.9: TP 1 FP 0; 0.8 (the tie, accepted together): TP 2 FP 1; 0.7: TP 3 FP 1.
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([True, True, False, True, False, False])
    fpr, tpr, thresholds = track_verify.roc_points(scores, positive)
    assert thresholds[:4].tolist() == [np.inf, 0.9, 0.8, 0.7]
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    # FPR 0: the tie at 0.8 holds a negative, so its positive cannot be accepted: 1/3, not 2/3
    assert track_verify.tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)
    assert track_verify.tpr_at_fpr(fpr, tpr, 0.2) == pytest.approx(1 / 3)
    assert track_verify.tpr_at_fpr(fpr, tpr, 1 / 3) == pytest.approx(1.0)
    assert track_verify.tpr_at_fpr(fpr, tpr, 1.0) == pytest.approx(1.0)


def test_roc_weights_count_pairs():
    """A weight of 2 is the pair counted twice; weight rows are independent bootstraps."""
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    positive = np.array([True, False, True, False])
    duplicated = track_verify.roc_points(np.r_[scores, 0.8], np.r_[positive, False])
    weighted = track_verify.roc_points(scores, positive, np.array([[1, 2, 1, 1], [1, 1, 1, 1]]))
    assert weighted[0][0].tolist() == pytest.approx(duplicated[0].tolist())
    assert weighted[1][0].tolist() == pytest.approx(duplicated[1].tolist())
    assert weighted[0][1].tolist() == pytest.approx(track_verify.roc_points(scores, positive)[0].tolist())


def test_a_draw_without_negatives_has_no_tpr():
    """A bootstrap draw of one identity has positives only: its TPR at any FPR is undefined (NaN, dropped from the
    interval), not 0, which would drag every interval down on small sets."""
    scores, positive = np.array([0.9, 0.8, 0.7]), np.array([True, False, True])
    fpr, tpr, _ = track_verify.roc_points(scores, positive, np.array([[1, 0, 1], [1, 1, 1]]))
    values = track_verify.tpr_at_fpr(fpr, tpr, 0.0)
    assert np.isnan(values[0]) and values[1] == pytest.approx(0.5)


def test_bootstrap_weights_resample_identities():
    # pairs: (0,0) positive, (0,1) negative, (1,2) negative, (2,2) positive; identity 0 drawn twice, 1 never, 2 once
    first, second = np.array([0, 0, 1, 2]), np.array([0, 1, 2, 2])
    same = first == second
    rng = np.random.default_rng(0)
    weights = track_verify.bootstrap_weights(first, second, same, 3, 500, rng)
    draws_row = next(w for w in weights if w[0] == 2 and w[1] == 0 and w[3] == 1)  # 0 twice, 1 never, 2 once
    assert draws_row.tolist() == [2, 0, 0, 1]
    assert weights.shape == (500, 4)


def test_false_positives_where_the_fpr_cannot_be_resolved_are_not_none():
    rng = np.random.default_rng(0)
    owners = np.repeat(np.arange(4), 2)  # 8 tracks: 4 positive and 24 negative pairs, too few for FPR 1e-3
    embeddings = rng.normal(size=(8, 4))
    result = track_verify.evaluate(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), owners, (1e-3,), 0, 0, list("abcd"))
    assert result["false_positives_at"] == {"fpr": 1e-3, "identity_pairs": None}
    assert "not resolvable" in track_verify.confusion_statement({"mean": result})


def test_false_positive_identities_by_hand():
    # pairs: (b, c) negative 0.9, (a, a) positive 0.8, (a, b) negative 0.7, (a, c) negative 0.1
    scores, same = np.array([0.9, 0.8, 0.7, 0.1]), np.array([False, True, False, False])
    first, second, names = np.array([1, 0, 0, 0]), np.array([2, 0, 1, 2]), ["a", "b", "c"]
    assert track_verify.false_positive_identities(scores, same, first, second, names, 1 / 3) == {"b ~ c": 1}
    assert track_verify.false_positive_identities(scores, same, first, second, names, 0.0) == {}
    assert track_verify.false_positive_identities(scores, same, first, second, names, 1.0) == {"b ~ c": 1, "a ~ b": 1, "a ~ c": 1}


def test_evaluate_counts_pairs_and_flags_unresolvable_fprs():
    rng = np.random.default_rng(1)
    owners = np.repeat(np.arange(10), 3)  # 10 identities x 3 tracks: 30 positives, 405 - 30 ... see below
    centres = rng.normal(size=(10, 16))
    embeddings = centres[owners] + 0.3 * rng.normal(size=(30, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    result = track_verify.evaluate(embeddings, owners, (1e-3, 1e-2), rounds=200, seed=0)
    assert result["positive_pairs"] == 10 * 3 and result["negative_pairs"] == 30 * 29 // 2 - 30
    low, high = result["tpr_at_fpr"]["0.01"]["ci95"]
    assert low <= result["tpr_at_fpr"]["0.01"]["tpr"] <= high
    assert result["tpr_at_fpr"]["0.01"]["resolvable"]  # 405 negatives >= 100
    assert not result["tpr_at_fpr"]["0.001"]["resolvable"]  # 405 < 1000
    statement = track_verify.resolution_statement(result, (1e-3, 1e-2))
    assert "FPR 0.001 cannot be resolved" in statement and "405" in statement and "0.01" not in statement.split("cannot")[0]
    assert "n/a (< 1,000 neg.)" in track_verify.markdown_table({"x": result}, (1e-3, 1e-2))


########################################################################################################################
# Triplet loss, by hand


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def chord(degrees: float) -> float:
    """Distance between unit vectors this many degrees apart."""
    return 2 * math.sin(math.radians(degrees) / 2)


@pytest.fixture
def four_points():
    # identity 0 at 0 and 30 degrees, identity 1 at 90 and 200 degrees
    return torch.tensor([unit(0), unit(30), unit(90), unit(200)]), torch.tensor([0, 0, 1, 1])


def test_batch_hard_triplet_loss_by_hand(four_points):
    embeddings, labels = four_points
    m = 0.5
    expected = [
        max(0, chord(30) - min(chord(90), chord(160)) + m),  # anchor 0: its positive at 30, negatives at 90 and 160 degrees
        max(0, chord(30) - min(chord(60), chord(170)) + m),
        max(0, chord(110) - min(chord(90), chord(60)) + m),
        max(0, chord(110) - min(chord(160), chord(170)) + m),
    ]
    loss = track_verify.triplet_loss(embeddings, labels, m, "batch-hard")
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-5)


def test_semi_hard_triplet_loss_by_hand(four_points):
    embeddings, labels = four_points
    m = 0.5
    expected = [
        max(0, chord(30) - chord(90) + m),  # (0, 1): negatives 90, 160 are both farther: the closer one
        max(0, chord(30) - chord(60) + m),  # (1, 0): negatives 60, 170: 60
        max(0, chord(110) - chord(90) + m),  # (2, 3): none farther than 110 (90, 60): fall back to the farthest, 90
        max(0, chord(110) - chord(160) + m),  # (3, 2): negatives 160, 170 farther: 160
    ]
    loss = track_verify.triplet_loss(embeddings, labels, m, "semi-hard")
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-5)


def test_whitened_mean_fits_the_within_identity_spread():
    """Two identities that differ along axis 0 while each one's crops wander far along axis 1 (pose, light): raw
    cosine calls a crop closer to the other identity; whitening by the within-identity covariance fixes that."""
    rng = np.random.default_rng(0)
    identities = [
        np.c_[sign * 0.3 + rng.normal(0, 0.05, 200), rng.normal(0, 3, 200), rng.normal(0, 0.05, (200, 2))] + [0, 0, 5, 0]
        for sign in (-1, 1)
    ]
    model = track_verify.build_aggregator("whitened", 4, shrinkage=0.0)
    model.fit(identities)
    probe = torch.tensor([[[-0.3, 2.0, 5.0, 0.0]], [[-0.3, -2.0, 5.0, 0.0]], [[0.3, 2.0, 5.0, 0.0]]])  # ids 0, 0, 1
    raw = F.normalize(probe[:, 0], dim=1)
    assert (raw[0] @ raw[2]) > (raw[0] @ raw[1])  # raw: the other identity looks closer
    fitted = model(probe)
    assert (fitted[0] @ fitted[1]) > (fitted[0] @ fitted[2])
    assert torch.allclose(fitted.norm(dim=1), torch.ones(3))
    # shrinkage 1: the covariance becomes a multiple of the identity matrix, so only the centring is left
    centred = track_verify.build_aggregator("whitened", 4, shrinkage=1.0)
    centred.fit(identities)
    expected = F.normalize((probe - centred.center).mean(1), dim=1)
    assert torch.allclose(centred(probe), expected, atol=1e-5)


def test_whitened_mean_stays_finite_with_fewer_crops_than_dimensions():
    rng = np.random.default_rng(0)
    identities = [np.c_[rng.normal(size=(6, 20)), np.zeros((6, 236))] for _ in range(4)]  # 24 crops, 256-D, 236 dims dead
    model = track_verify.build_aggregator("whitened", 256, shrinkage=0.0)
    model.fit(identities)
    assert torch.isfinite(model.transform).all()
    assert torch.isfinite(model(torch.from_numpy(np.stack(identities)[:, :5].astype(np.float32)))).all()


########################################################################################################################
# Tracks and splits


def test_tracks_are_one_identity_in_time_order():
    """Every sampled crop is a gt box of its identity (checked against gt.txt), tracks are in time order, and two
    test tracks of one identity share no crop."""
    (sequence,) = track_verify.read_sequences([TUD_CAMPUS], track_length=10)
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    rng = np.random.default_rng(0)
    for identity in sequence.identities:
        crops = identity.sources[0]
        track_id = int(identity.name.split("/")[1])
        tracks = track_verify.evaluation_tracks(identity, 10, 4)
        assert tracks and len(tracks) <= 4
        used = np.concatenate(tracks)
        assert len(set(used.tolist())) == len(used)  # disjoint
        for indices in [*tracks, *(track_verify.random_track(identity, 10, rng) for _ in range(20))]:
            frames = [crops[i].time for i in indices]
            assert len(indices) == 10 and frames == sorted(frames) and len(set(frames)) == 10
            for index in indices:
                crop = crops[index]
                rows = gt[crop.time]
                row = rows[rows[:, 4] == track_id]
                assert len(row) == 1 and np.allclose(np.maximum(row[0, :2], 0), crop.box[:2])


def test_visible_shares_by_hand():
    # box 0 stands behind box 1 (bottom 100 < 120), which covers its right half; box 2 is alone; box 1 is in front
    boxes = np.array([[0, 0, 40, 100], [20, 0, 60, 120], [200, 0, 240, 100]], dtype=np.float32)
    shares = track_verify.visible_shares(boxes, np.ones(3))
    assert shares.tolist() == pytest.approx([0.5, 1.0, 1.0])
    # MOT16+ gt brings its own visibility (other occluders: cars, poles): the smaller one counts
    assert track_verify.visible_shares(boxes, np.array([1.0, 0.25, 0.8])).tolist() == pytest.approx([0.5, 0.25, 0.8])
    assert track_verify.visible_shares(boxes[:1], np.ones(1)).tolist() == [1.0]


def test_hidden_mot_crops_are_left_out():
    """TUD-Campus (MOT15: no visibility column): people walk past each other, so some boxes are mostly behind
    someone; --min-visibility leaves those crops out, and every crop kept is at least that visible."""
    (everything,) = track_verify.read_sequences([TUD_CAMPUS], 10)
    (visible,) = track_verify.read_sequences([TUD_CAMPUS], 10, min_visibility=0.5)
    assert everything.hidden_crops == 0 and visible.hidden_crops > 10
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    shares = {
        frame: dict(zip(rows[:, 4].astype(int), track_verify.visible_shares(rows[:, :4], rows[:, 5]), strict=True))
        for frame, rows in gt.items()
    }
    kept = [(crop.time, int(identity.name.split("/")[1])) for identity in visible.identities for crop in identity.sources[0]]
    assert min(shares[frame][track_id] for frame, track_id in kept) >= 0.5
    dropped = sum(share < 0.5 for rows in shares.values() for share in rows.values())
    assert visible.hidden_crops == dropped
    count = sum(len(identity.sources[0]) for identity in everything.identities)
    assert sum(len(identity.sources[0]) for identity in visible.identities) < count - dropped / 2


def test_tracks_are_spread_over_source_tracks_whatever_their_order():
    """An identity with several source tracks (merged ids, track folders) gets max_tracks tracks when its sources
    have room for them, spread one per source in turn, never across two sources."""
    for lengths in ([100, 10, 10], [10, 10, 100], [10, 100], [35]):
        sources = [[track_verify.Crop(Path(f"{k}-{i}.jpg"), None, i) for i in range(length)] for k, length in enumerate(lengths)]
        identity = track_verify.Identity("s/1", "s", sources)
        tracks = track_verify.evaluation_tracks(identity, 10, 8)
        assert len(tracks) == min(8, sum(length // 10 for length in lengths)), lengths
        per_source = [sum(track[0] in r for track in tracks) for r in identity.source_ranges]
        assert all(any(track[0] in r and track[-1] in r for r in identity.source_ranges) for track in tracks)
        assert min(per_source) >= 1 or len(lengths) == 1
        assert len(set(np.concatenate(tracks).tolist())) == 10 * len(tracks)  # disjoint


def test_split_has_no_identity_in_both(cache_dir):
    sequences = track_verify.read_sequences([TUD_CAMPUS, BUNDLED_CROPS / "PETS09-S2L1", BUNDLED_CROPS / "ADL-Rundle-6"], 10)
    for seed in range(5):
        train, test = track_verify.split_identities(sequences, 0.5, [], seed)
        assert not {i.name for i in train} & {i.name for i in test}
        assert len(train) + len(test) == sum(len(s.identities) for s in sequences)
        assert {i.sequence for i in test} == {s.name for s in sequences}  # each sequence in the test set
    train, test = track_verify.split_identities(sequences, 0.5, ["ADL-Rundle-6"], 0)
    assert {i.sequence for i in test} == {"ADL-Rundle-6"} and "ADL-Rundle-6" not in {i.sequence for i in train}
    with pytest.raises(UserError, match="--test-sequences MOT17-02: no such sequence; the data has ADL-Rundle-6"):
        track_verify.split_identities(sequences, 0.5, ["MOT17-02"], 0)


def fake_descriptors(sequences):
    for sequence in sequences:
        for number, identity in enumerate(sequence.identities):
            identity.descriptors = np.full((sum(len(crops) for crops in identity.sources), 2), number, dtype=np.float32)


def test_one_person_under_several_ids_becomes_one_identity(tmp_path):
    same = tmp_path / "same.csv"
    same.write_text(
        "# comment\nidentity,same_person_as,evidence\nTUD-Campus/1,TUD-Campus/2,coat\nTUD-Campus/3,TUD-Campus/2,coat\n"
        "PETS09-S2L1/1,TUD-Campus/4,hat\nMOT17-09/10,TUD-Campus/5,not in this data\n"
    )
    groups = track_verify.read_same_person(same)
    assert sorted(groups) == [
        ["MOT17-09/10", "TUD-Campus/5"],
        ["PETS09-S2L1/1", "TUD-Campus/4"],
        ["TUD-Campus/1", "TUD-Campus/2", "TUD-Campus/3"],
    ]
    sequences = track_verify.read_sequences([TUD_CAMPUS, BUNDLED_CROPS / "PETS09-S2L1"], 10)
    fake_descriptors(sequences)
    sizes = {identity.name: len(identity.descriptors) for sequence in sequences for identity in sequence.identities}
    merged = track_verify.merge_same_person(sequences, groups)
    assert sorted(merged) == ["PETS09-S2L1/1=TUD-Campus/4", "TUD-Campus/1=TUD-Campus/2=TUD-Campus/3"]  # TUD-Campus/5 alone: unchanged
    tud, pets = sequences
    assert len(tud.identities) == 7 - 3 and len(pets.identities) == 10
    person = next(identity for identity in tud.identities if identity.name.startswith("TUD-Campus/1="))
    assert len(person.sources) == 3 and len(person.descriptors) == sizes["TUD-Campus/1"] + sizes["TUD-Campus/2"] + sizes["TUD-Campus/3"]
    across = next(identity for identity in pets.identities if "=" in identity.name)
    assert across.sequence == "PETS09-S2L1" and across.also_in == ("TUD-Campus",)
    # held out whole: a person also seen in a test sequence is tested, never trained on
    train, test = track_verify.split_identities(sequences, 0.5, ["TUD-Campus"], 0)
    assert across in test and across not in train and {i.sequence for i in train} == {"PETS09-S2L1"}
    # its tracks come from both of its source tracks
    tracks = track_verify.evaluation_tracks(person, 10, 4)
    sources = [next(k for k, r in enumerate(person.source_ranges) if track[0] in r) for track in tracks]
    assert len(set(sources)) >= 2


def test_bad_same_person_file_is_one_line(tmp_path):
    bad = tmp_path / "same.csv"
    bad.write_text("a,b\nTUD-Campus/1,TUD-Campus/2\n")
    with pytest.raises(UserError, match="header must be identity,same_person_as"):
        track_verify.read_same_person(bad)
    bad.write_text("identity,same_person_as\nTUD-Campus/1,TUD-Campus/1\n")
    with pytest.raises(UserError, match=r"row 2: two different identities <sequence>/<id> expected"):
        track_verify.read_same_person(bad)
    with pytest.raises(UserError, match=r"--same-person .*: no such file"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--same-person", str(tmp_path / "missing.csv"))
    assert track_verify.read_same_person(None) == []


########################################################################################################################
# The whole report


def test_training_lowers_the_triplet_loss(tmp_path, cache_dir):
    """On re-id descriptors the default margin (0.3) is already met on the bundled data (loss 0 from the start); a
    margin of 1.0 leaves the learned aggregators something to learn, and a working training loop must learn it."""
    result = run(tmp_path, "--data", str(TUD_CAMPUS), "--aggregator", "all", "--margin", "1.0", "--steps", "150", cache=cache_dir)
    for name in ("attention", "gru"):
        training = result["training"][name]
        assert training["fixed_batch_loss_start"] > 0.05 and training["fixed_batch_loss_end"] < 0.5 * training["fixed_batch_loss_start"], (
            training
        )


def test_full_report_on_bundled_data(bundled_report):
    out, result = bundled_report
    sequences = result["data"]["sequences"]
    assert set(sequences) == {"TUD-Campus", "PETS09-S2L1", "ADL-Rundle-6"}
    assert sequences["ADL-Rundle-6"] == {
        "layout": "folders",
        "identities": 13,
        "skipped_identities": 0,
        "hidden_crops": 0,
        "train": 7,
        "test": 6,
    }
    assert sequences["TUD-Campus"]["hidden_crops"] > 0  # MOT: boxes less than 30% visible left out
    test_identities = sum(s["test"] for s in sequences.values())
    rows = result["results"]
    assert set(rows) == {"single", "mean", *(f"{name}{crop}" for name in ("whitened", "attention", "gru") for crop in ("", " (1 crop)"))}
    for row in rows.values():
        assert row["identities"] == test_identities
        assert row["positive_pairs"] + row["negative_pairs"] == row["tracks"] * (row["tracks"] - 1) // 2
        assert not row["tpr_at_fpr"]["1e-06"]["resolvable"] and row["tpr_at_fpr"]["0.001"]["resolvable"]
        assert 0.5 < row["auc"] <= 1
    # tracks beat single pictures on this data (mean vs first crop): the point of the challenge
    assert rows["mean"]["auc"] > rows["single"]["auc"]
    saved = json.loads((out / "out" / "results.json").read_text())
    assert saved["results"]["mean"]["negative_pairs"] == rows["mean"]["negative_pairs"]
    report = (out / "out" / "report.md").read_text()
    assert "| attention |" in report and "cannot be resolved" in report and "False positives of the mean at FPR 0.001" in report
    assert rows["mean"]["false_positives_at"]["fpr"] == 1e-3
    assert result["same_person"] == ["PETS09-S2L1/1=PETS09-S2L1/19"]  # the bundled list; its MOT17-09 pairs are not in this data
    assert (out / "out" / "roc.png").stat().st_size > 10_000
    checkpoint = torch.load(out / "out" / "attention.pt", weights_only=False)
    model = track_verify.build_aggregator("attention", checkpoint["dim"])
    model.load_state_dict(checkpoint["model"])


def test_folder_layout_reads_exported_crops(tmp_path):
    result = run(tmp_path, "--data", str(TUD_CAMPUS), "--min-visibility", "0", "--export-crops", str(tmp_path / "crops"))
    (sequence,) = track_verify.read_sequences([tmp_path / "crops" / "TUD-Campus"], 10)
    (from_mot,) = track_verify.read_sequences([TUD_CAMPUS], 10)
    assert result["exported_crops"] == sum(len(i.sources[0]) for i in from_mot.identities) == 350  # 359 boxes, 1 id < 10
    assert sequence.layout == "folders" and len(sequence.identities) == len(from_mot.identities)
    assert [len(i.sources[0]) for i in sequence.identities] == [len(i.sources[0]) for i in from_mot.identities]


########################################################################################################################
# Bad input


def test_root_without_gt_is_one_line(tmp_path):
    shutil.copytree(TUD_CAMPUS, tmp_path / "seq", ignore=shutil.ignore_patterns("gt"))
    with pytest.raises(UserError, match=r"no gt/gt\.txt"):
        run(tmp_path, "--data", str(tmp_path / "seq"))


def test_short_identities_skipped_with_a_count_and_none_left_is_an_error(tmp_path, cache_dir, capsys):
    result = run(
        tmp_path,
        "--data",
        str(TUD_CAMPUS),
        "--track-length",
        "30",
        "--tracks-per-identity",
        "2",
        "--aggregator",
        "none",
        "--test-fraction",
        "0.5",
        "--min-visibility",
        "0",
        cache=cache_dir,
    )
    skipped = result["data"]["sequences"]["TUD-Campus"]["skipped_identities"]
    assert skipped > 0 and f"skipped {skipped} identities with fewer than 30 crops" in capsys.readouterr().err
    with pytest.raises(UserError, match="no identity has a track of 500 crops"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--track-length", "500")


def test_sequence_with_fewer_than_two_identities_is_one_line(tmp_path):
    shutil.copytree(TUD_CAMPUS, tmp_path / "seq")
    rows = (TUD_CAMPUS / "gt" / "gt.txt").read_text().splitlines()
    (tmp_path / "seq" / "gt" / "gt.txt").write_text("\n".join(row for row in rows if row.split(",")[1] == "1") + "\n")
    with pytest.raises(
        UserError,
        match=rf"^{re.escape(str(tmp_path / 'seq'))}: 1 identity with a track of 10 crops \(0 shorter\); a sequence needs at least 2",
    ):
        run(tmp_path, "--data", str(tmp_path / "seq"))


def test_cache_from_another_backbone_is_rebuilt(tmp_path, capsys):
    flags = ["--data", str(TUD_CAMPUS), "--aggregator", "none", "--bootstrap", "0", "--min-visibility", "0"]
    other = run(tmp_path, *flags, "--backbone", "mobilenet_v3_small", "--weights", "none")
    assert other["descriptor_dim"] == 576 and other["descriptor_cache"]["computed"] == 350
    again = run(tmp_path, *flags, "--backbone", "mobilenet_v3_small", "--weights", "none")
    assert again["descriptor_cache"] == {"cached": 350, "computed": 0, "rebuilt": []}
    capsys.readouterr()
    lite = run(tmp_path, *flags, "--backbone", "efficientnet_lite0")
    assert lite["descriptor_dim"] == 1280 and lite["descriptor_cache"]["rebuilt"] == ["TUD-Campus"]
    assert "made with other settings" in capsys.readouterr().err
    (tmp_path / "cache" / "TUD-Campus.npz").write_bytes(b"not a cache")
    assert run(tmp_path, *flags, "--backbone", "efficientnet_lite0")["descriptor_cache"]["rebuilt"] == ["TUD-Campus"]
    # --min-visibility changes which crops there are: the crop list's hash tells the caches apart
    fewer = run(tmp_path, *flags[:-2], "--backbone", "efficientnet_lite0")
    assert fewer["descriptor_cache"]["rebuilt"] == ["TUD-Campus"] and 0 < fewer["descriptor_cache"]["computed"] < 350


########################################################################################################################
# Person re-id backends (reid-0287, reid-0288: Open Model Zoo ONNX, batch made symbolic in memory)


def bundled_crops(sequence: str, identities: int, position: int) -> np.ndarray:
    """The crop at `position` (or the last) along each of the first `identities` identities of a bundled crop sequence, RGB at CROP_SIZE."""
    folders = sorted(path for path in (BUNDLED_CROPS / sequence).iterdir() if path.is_dir())[:identities]
    tracks = [sorted((folder / "gt").glob("*.jpg")) for folder in folders]
    files = [track[min(position, len(track) - 1)] for track in tracks]  # a short track: its last crop
    return np.stack([track_verify.crop_pixels(read_rgb_image(file), track_verify.Crop(file, None, 0)) for file in files])


def test_reid_batched_descriptors_equal_one_by_one_and_the_unchanged_model():
    crops = bundled_crops("PETS09-S2L1", 8, 0)
    describe = track_verify.build_describer("reid-0287", "DEFAULT", torch.device("cpu"), threads=2)
    batched = describe(crops)
    singles = np.concatenate([describe(crops[index : index + 1]) for index in range(len(crops))])
    assert batched.shape == (8, 256) and np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    assert np.allclose(batched, singles, atol=1e-5)  # a batch-1 Reshape or a reduction over the batch would mix crops
    # the file as shipped (batch 1, BGR 0-255) gives the same descriptor: the in-memory changes changed nothing else
    session = create_session(REID_0287_PATH, threads=2)
    original = session.run(None, {"inputs:0": crops[:1, ..., ::-1].astype(np.float32)})[0][0]
    assert np.allclose(original / np.linalg.norm(original), batched[0], atol=1e-5)
    assert len({round(float(value), 4) for value in batched[:, 0]}) > 1  # eight people, not one descriptor repeated


def test_reid_0287_scores_the_same_person_higher_than_others():
    """First crop of 6 PETS09-S2L1 people against their 41st (or last): measured 0.67 same vs 0.32 different, 5 of 6 best
    matches right (efficientnet_lite0: 0.70 vs 0.60, 4 of 6)."""
    describe = track_verify.build_describer("reid-0287", "DEFAULT", torch.device("cpu"), threads=2)
    cosine = describe(bundled_crops("PETS09-S2L1", 6, 0)) @ describe(bundled_crops("PETS09-S2L1", 6, 40)).T
    same, different = np.diag(cosine).mean(), cosine[~np.eye(6, dtype=bool)].mean()
    assert same > different + 0.2, (same, different)
    assert (cosine.argmax(axis=1) == np.arange(6)).sum() >= 4


def test_no_cache_dir_writes_no_cache(tmp_path, monkeypatch):
    """--cache-dir '' means no cache (Path('') would be the working directory: caches landed in the repo root once)."""
    monkeypatch.chdir(tmp_path)
    args = track_verify.get_args_parser().parse_args(
        ["--data", str(TUD_CAMPUS), "--aggregator", "none", "--bootstrap", "0", "--cache-dir", "", "--out", str(tmp_path / "out")]
    )
    assert track_verify.main(args)["descriptor_cache"]["computed"] > 0
    assert not list(tmp_path.rglob("*.npz"))


def test_cache_is_never_reused_across_imagenet_and_reid_models(tmp_path, capsys):
    flags = ["--data", str(TUD_CAMPUS), "--aggregator", "none", "--bootstrap", "0", "--min-visibility", "0"]
    lite = run(tmp_path, *flags, "--backbone", "efficientnet_lite0")
    assert lite["descriptor_dim"] == 1280 and lite["descriptor_cache"]["computed"] == 350
    capsys.readouterr()
    reid = run(tmp_path, *flags, "--backbone", "reid-0287")
    assert reid["descriptor_dim"] == 256 and reid["descriptor_cache"] == {"cached": 0, "computed": 350, "rebuilt": ["TUD-Campus"]}
    assert "made with other settings" in capsys.readouterr().err
    with np.load(tmp_path / "cache" / "TUD-Campus.npz") as cached:
        meta = json.loads(str(cached["meta"]))
    assert meta["backbone"] == "reid-0287" and meta["weights"] == "sha256:" + hashlib.sha256(REID_0287_PATH.read_bytes()).hexdigest()
    assert run(tmp_path, *flags, "--backbone", "reid-0287")["descriptor_cache"] == {"cached": 350, "computed": 0, "rebuilt": []}
    # the same name with another file behind it (a re-id model given by path): its hash tells them apart
    other = tmp_path / "reid-0287.onnx"
    shutil.copyfile(REID_0288_PATH, other)
    assert run(tmp_path, *flags, "--backbone", str(other))["descriptor_cache"]["rebuilt"] == ["TUD-Campus"]
    assert run(tmp_path, *flags, "--backbone", "reid-0288")["descriptor_cache"]["rebuilt"] == ["TUD-Campus"]
    back = run(tmp_path, *flags, "--backbone", "efficientnet_lite0")
    assert back["descriptor_dim"] == 1280 and back["descriptor_cache"]["rebuilt"] == ["TUD-Campus"]


def test_reid_model_of_the_wrong_shape_is_one_line(tmp_path):
    detector = REPO / "assets" / "models" / "ped_ssdlite_person.onnx"
    command = [sys.executable, "track_verify.py", "--data", str(TUD_CAMPUS), "--backbone", str(detector)]
    finished = subprocess.run(
        [*command, "--cache-dir", "", "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == 1 and len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"error: {detector} is not a person re-id model: input [") and "output [" in lines[0]
    with pytest.raises(UserError, match="no such re-id model"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--backbone", str(tmp_path / "missing.onnx"))


def test_torchvision_backbone_offline_is_one_line(tmp_path, offline):
    with pytest.raises(UserError, match=r"cannot download resnet18 weights DEFAULT .*offline, use --backbone efficientnet_lite0"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--backbone", "resnet18")
    with pytest.raises(UserError, match="--weights COCO: not a weights name of resnet18"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--backbone", "resnet18", "--weights", "COCO")
    with pytest.raises(UserError, match="unknown backbone 'resnet19'"):
        run(tmp_path, "--data", str(TUD_CAMPUS), "--backbone", "resnet19")


def test_cli_errors_are_one_line(tmp_path):
    command = [sys.executable, "track_verify.py", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1 and finished.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: no such folder"]
    finished = subprocess.run([*command[:2], "--fprs", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1 and "must be from 0 to 1" in finished.stderr


@pytest.mark.cuda
def test_cuda_run(tmp_path):
    result = run(tmp_path, "--data", str(TUD_CAMPUS), "--device", "cuda", "--aggregator", "all", "--bootstrap", "50")
    assert (
        result["device"] == "cuda"
        and result["training"]["gru"]["fixed_batch_loss_end"] < result["training"]["gru"]["fixed_batch_loss_start"]
    )
