import sys

import numpy as np
import pytest
from conftest import REPO, TUD_CAMPUS

sys.path.insert(0, str(REPO / "benchmarks"))
import eval_main_person

MOT_EXTRA = REPO.parent / "shared" / "data" / "mot-extra"
SAME = {"scale": 1.0, "left": 0, "top": 0}  # a letterbox that leaves source pixels as they are


def record(frame, main):
    return {"frame": frame, "main_person": main, "letterbox": SAME}


def test_score_sequence_counts_matches_misses_and_switches():
    a, b = [0, 0, 10, 20, 1, 1], [50, 0, 60, 20, 2, 1]  # gt rows: x1, y1, x2, y2, id, visibility
    gt = {1: np.array([a, b], np.float32), 2: np.array([a, b], np.float32), 3: np.array([a, b], np.float32), 4: np.array([b], np.float32)}
    records = [
        record(0, [0, 0, 10, 20]),  # matches A
        record(1, [50, 0, 60, 19]),  # B while A is still there: a switch while visible
        record(2, None),  # people, no main person
        record(3, [50, 0, 60, 20]),  # B again: no switch
        record(4, [0, 0, 5, 5]),  # nobody in the gt: a false main person
    ]
    score = eval_main_person.score_sequence(records, gt)
    assert score["frames_with_people"] == 4 and score["main_match"] == 0.75 and score["no_main"] == 0.25
    assert score["false_main"] == 1.0 and score["id_switches"] == 1 and score["id_switches_while_visible"] == 1


def test_score_sequence_maps_gt_through_each_frame_letterbox():
    gt = {1: np.array([[100, 100, 200, 300, 7, 1]], np.float32)}
    shifted = {"frame": 0, "main_person": [60, 50, 110, 150], "letterbox": {"scale": 0.5, "left": 10, "top": 0}}
    assert eval_main_person.score_sequence([shifted], gt)["main_match"] == 1.0
    unshifted = {**shifted, "letterbox": SAME}
    assert eval_main_person.score_sequence([unshifted], gt)["main_match"] == 0.0


@pytest.mark.slow
def test_main_person_matches_ground_truth_as_the_readme_states():
    """README ("Main person against ground truth"), defaults: 1.000 on TUD-Campus and ADL-Rundle-6, >= 0.87 on
    PETS09-S2L1; with --detector-size 720, >= 0.9 on PETS09-S2L1."""
    sequences = [str(TUD_CAMPUS)] + ([str(MOT_EXTRA)] if MOT_EXTRA.is_dir() else [])
    scores = eval_main_person.main(eval_main_person.get_args_parser().parse_args(["--sequences", *sequences]))["sequences"]
    assert scores["TUD-Campus"]["main_match"] == 1.0 and scores["TUD-Campus"]["frames_with_people"] == 71
    assert all(score["no_main"] == 0 for score in scores.values()), scores
    if not MOT_EXTRA.is_dir():
        pytest.skip(f"TUD-Campus checked; PETS09-S2L1 and ADL-Rundle-6 need {MOT_EXTRA} (beside the repo in CI)")
    assert scores["ADL-Rundle-6"]["main_match"] == 1.0 and scores["PETS09-S2L1"]["main_match"] >= 0.87, scores
    larger = ["--sequences", str(MOT_EXTRA / "PETS09-S2L1"), "--detector-size", "720"]
    assert eval_main_person.main(eval_main_person.get_args_parser().parse_args(larger))["sequences"]["PETS09-S2L1"]["main_match"] >= 0.9
