import contextlib
import io
import json
import sys

import numpy as np
import pytest
from conftest import REPO, TUD_CAMPUS, make_sequence

from utils.cli import run_cli
from utils.detectors import DETECTORS, PERSON, Detections

sys.path.insert(0, str(REPO / "benchmarks"))
import eval_detection

# Three frames: two people in frame 1, one in frame 2, nobody in frame 3; one ignore region in frames 1 and 2
PEOPLE = {
    1: np.array([[10, 10, 50, 110, 1, 1], [100, 10, 140, 110, 2, 1]], np.float32),
    2: np.array([[200, 20, 230, 90, 3, 1]], np.float32),
}
IGNORE = {1: np.array([[300, 10, 340, 110, 4, 1]], np.float32), 2: np.array([[400, 50, 420, 100, 5, 0.5]], np.float32)}
FRAMES = [1, 2, 3]


def detections(boxes, scores) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.full(len(scores), PERSON))


def gt_as_detections(score: float = 0.9, shift: float = 0.0) -> dict[int, Detections]:
    """Each gt person as a detection, moved right by `shift` times its width."""
    found = {}
    for frame, rows in PEOPLE.items():
        boxes = rows[:, :4] + np.outer(shift * (rows[:, 2] - rows[:, 0]), [1, 0, 1, 0])
        found[frame] = detections(boxes, [score - 0.01 * index for index in range(len(rows))])
    return found


def score(found, ignore=IGNORE, thresh=0.5):
    return eval_detection.score_detections(PEOPLE, ignore, found, FRAMES, thresh)


def test_gt_boxes_as_detections_score_perfectly():
    result = score(gt_as_detections())
    assert (result["ap50"], result["recall"], result["precision"]) == (1.0, 1.0, 1.0)
    assert (result["true_positives"], result["false_positives"], result["gt_people"], result["ignore_regions"]) == (3, 0, 3, 2)


def test_detections_on_ignore_regions_neither_reward_nor_punish():
    found = gt_as_detections()
    for frame, regions in IGNORE.items():  # the best-scoring detections of their frames, exactly on the ignore regions
        found[frame] = detections(np.concatenate([regions[:, :4], found[frame].boxes]), np.concatenate([[0.99], found[frame].scores]))
    assert score(found) == score(gt_as_detections())  # AP 1, precision 1: as if they were not there
    counted = score(found, ignore={})  # the same detections without ignore regions are false positives
    assert counted["ap50"] < 1.0 and counted["false_positives"] == 2 and counted["precision"] == 0.6


def test_a_detection_inside_an_ignore_region_is_ignored():
    # COCO crowd matching: overlap over the DETECTION's area, so a small box inside a large ignore region is ignored
    found = gt_as_detections()
    found[1] = detections(np.concatenate([[[305, 20, 325, 60]], found[1].boxes]), np.concatenate([[0.99], found[1].scores]))
    assert score(found)["ap50"] == 1.0 and score(found)["false_positives"] == 0


def test_boxes_shifted_below_iou_half_score_zero():
    result = score(gt_as_detections(shift=0.5))  # IoU of a box with itself shifted by half its width: 1/3
    assert (result["ap50"], result["recall"], result["precision"]) == (0.0, 0.0, 0.0)
    assert result["false_positives"] == 3


def test_ap50_is_cocos_101_point_interpolated_ap():
    # Score order: a false positive in frame 3 (nobody there), then two of the three people; the third never found.
    # Precision after each hit: 1/2 at recall 1/3, 2/3 at recall 2/3; interpolated, 2/3 holds for recall points
    # 0.00-0.66 (67 of COCO's 101) and 0 beyond: AP = 67 * 2/3 / 101. (VOC 11-point would give 0.424, all-point
    # interpolated 0.444, uninterpolated 0.389, and dropping frame 3 for having no gt 0.670.)
    found = {
        3: detections([[10, 10, 50, 110]], [0.95]),
        1: detections([[10, 12, 50, 112]], [0.9]),
        2: detections([[200, 20, 230, 90]], [0.8]),
    }
    result = score(found, thresh=0.85)
    assert result["ap50"] == pytest.approx(67 * 2 / 3 / 101, abs=1e-9)
    assert (result["recall"], result["precision"]) == (pytest.approx(1 / 3), 0.5)  # at 0.85: the false positive and one hit


def test_no_detection_above_threshold_has_no_precision():
    result = score(gt_as_detections(score=0.3), thresh=0.5)
    assert result["ap50"] == 1.0 and result["recall"] == 0.0 and result["precision"] is None


@pytest.fixture(scope="module")
def tud_run(tmp_path_factory):
    """One quick run of the script on TUD-Campus: 12 frames spread over the sequence, ssdlite_person, --out."""
    out = tmp_path_factory.mktemp("eval_detection")
    argv = ["--sequences", str(TUD_CAMPUS), "--max-frames", "12", "--stride", "6", "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = eval_detection.main(eval_detection.get_args_parser().parse_args(argv))
    return results, stdout.getvalue().splitlines(), out


def test_tud_campus_ssdlite_figures_in_the_measured_range(tud_run):
    results, _, _ = tud_run
    row = results["sequences"]["TUD-Campus"]["ssdlite_person"]
    # measured: AP50 0.874, recall 0.721, precision 0.978 at 0.4 (frames 1, 7, ..., 67; 61 people)
    assert row["frames"] == 12 and row["gt_people"] == 61 and row["score_thresh"] == 0.4
    assert 0.82 <= row["ap50"] <= 0.93 and 0.66 <= row["recall"] <= 0.78 and row["precision"] >= 0.9
    assert row["ms_per_frame"] > 0 and results["means"]["ssdlite_person"]["ap50"] == row["ap50"]


def test_last_stdout_line_is_the_results_json(tud_run):
    results, lines, out = tud_run
    last = json.loads(lines[-1])
    assert set(last) >= {"sequences", "means", "detectors", "settings"} and last == json.loads(json.dumps(results))
    assert set(last["sequences"]["TUD-Campus"]["ssdlite_person"]) >= {"ap50", "recall", "precision", "ms_per_frame", "frames"}
    assert json.loads((out / "results.json").read_text()) == last
    report = (out / "report.md").read_text()
    assert "| TUD-Campus | ssdlite_person | 12 |" in report and f"{last['means']['ssdlite_person']['ap50']:.3f}" in report


def test_mot16_gt_counts_pedestrians_only(tmp_path):
    # TUD-Campus frames with 9-column gt: person id 1 marked a static person (class 7, flag 1): an ignore region here
    sequence = make_sequence(tmp_path, "MOT16-like", range(1, 4))
    rows = [line.split(",") for line in (sequence / "gt" / "gt.txt").read_text().splitlines()]
    (sequence / "gt" / "gt.txt").write_text("".join(f"{','.join(row[:6])},1,{7 if row[1] == '1' else 1},1\n" for row in rows))
    args = eval_detection.get_args_parser().parse_args(["--sequences", str(sequence)])
    result = eval_detection.main(args)["sequences"]["MOT16-like"]["ssdlite_person"]
    static = sum(row[1] == "1" for row in rows)
    assert static == 3 and (result["gt_people"], result["ignore_regions"]) == (len(rows) - static, static)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--detectors", "no_such_detector"], "unknown detector 'no_such_detector'"),
        (["--detectors", "ssdlite_person@320"], "ssdlite_person takes no size option"),
        (["--detectors", "ssdlite_person@big"], "the size after @ must be a whole number"),
        pytest.param(
            ["--detectors", "yolox_nano@100"],
            "multiple of 32",
            marks=pytest.mark.skipif("yolox_nano" not in DETECTORS, reason="no yolox_nano backend"),
        ),
        (["--detectors", "ssdlite_person", "ssdlite_person"], "a detector is named twice"),
        (["--sequences", "{tmp}"], "no MOTChallenge sequence"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, argv, message):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_detection.main, eval_detection.get_args_parser().parse_args(["--sequences", str(TUD_CAMPUS), *argv]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and message in err and "\n" not in err
