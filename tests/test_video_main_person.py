import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, TUD_CAMPUS, TUD_CLIP, usable_random_detector

import video_main_person
from utils.cli import UserError, run_cli
from utils.main_person import MainPersonSelector, TrackedMainPersonSelector, salience
from utils.metrics import box_iou
from utils.mot import read_mot_boxes

W, H = 427, 240
LEFT = np.array([60, 60, 120, 220], np.float32)  # a person left of centre
RIGHT = np.array([307, 60, 367, 220], np.float32)  # mirror image of LEFT about the centre: equally salient


def run(tmp_path, *argv):
    args = video_main_person.get_args_parser().parse_args(["--out", str(tmp_path / "out"), *argv])
    return video_main_person.main(args)


######################################################################################################################
# Main-person selection on hand-made detections


def test_salience_prefers_large_central_confident():
    boxes = np.array([[180, 40, 250, 230], [10, 150, 30, 200], [180, 40, 250, 230], [0, 40, 70, 230]], np.float32)
    scores = np.array([0.9, 0.9, 0.45, 0.9])
    values = salience(boxes, scores, W, H)
    assert values.argmax() == 0
    assert values[0] > values[1]  # size
    assert values[0] == pytest.approx(2 * values[2])  # confidence
    assert values[0] > values[3] > values[0] / 2  # the edge costs, but at most half


def test_no_person_gives_none():
    selector = MainPersonSelector(W, H)
    assert selector.update(np.zeros((0, 4)), np.zeros(0)) is None


def test_two_equal_people_first_wins_and_stays_when_order_flips():
    selector = MainPersonSelector(W, H)
    first = selector.update(np.stack([LEFT, RIGHT]), np.array([0.9, 0.9]))
    np.testing.assert_array_equal(first.box, LEFT)
    for _ in range(10):  # the detector lists them the other way round from now on
        chosen = selector.update(np.stack([RIGHT, LEFT]), np.array([0.9, 0.9]))
        np.testing.assert_array_equal(chosen.box, LEFT)


def test_hysteresis_small_advantage_does_not_switch_large_one_does_after_n_frames():
    selector = MainPersonSelector(W, H, switch_margin=1.3, switch_frames=3)
    selector.update(np.stack([LEFT, RIGHT]), np.array([0.9, 0.8]))
    for _ in range(10):  # RIGHT a little more salient: no flicker
        assert selector.update(np.stack([LEFT, RIGHT]), np.array([0.8, 0.9])).box[0] == LEFT[0]
    picks = [selector.update(np.stack([LEFT, RIGHT]), np.array([0.5, 0.95])).box[0] for _ in range(4)]
    assert picks == [LEFT[0], LEFT[0], RIGHT[0], RIGHT[0]]  # 1.9x better: takes over on the 3rd frame


def test_association_follows_a_moving_person():
    selector = MainPersonSelector(W, H)
    selector.update(np.stack([LEFT, RIGHT]), np.array([0.95, 0.9]))
    for step in range(1, 30):  # LEFT walks right, RIGHT stays put
        moved = LEFT + np.array([4 * step, 0, 4 * step, 0], np.float32)
        chosen = selector.update(np.stack([RIGHT, moved]), np.array([0.9, 0.9]))
        np.testing.assert_array_equal(chosen.box, moved)


def test_held_box_walks_on_with_the_person_and_is_found_again():
    selector = MainPersonSelector(W, H, hold_frames=3)
    step = np.array([6, 0, 6, 0], np.float32)  # 6 px per frame to the right: a box 60 px wide
    for frame in range(5):
        selector.update((LEFT + frame * step)[None], np.array([0.9]))
    held = [selector.update(np.zeros((0, 4)), np.zeros(0)) for _ in range(3)]  # the detector misses 3 frames
    assert all(person.held for person in held)
    np.testing.assert_allclose(held[-1].box, LEFT + 7 * step, atol=2)  # walked on at about the person's pace (a stale box: 18 px off)
    back = selector.update((LEFT + 8 * step)[None], np.array([0.9]))
    assert not back.held and back.box[0] == LEFT[0] + 8 * step[0]


def test_reset_forgets_the_main_person():
    selector = MainPersonSelector(W, H, hold_frames=5)
    selector.update(LEFT[None], np.array([0.9]))
    selector.reset()
    assert selector.update(np.zeros((0, 4)), np.zeros(0)) is None  # nothing held over


def test_hold_over_misses_then_release():
    selector = MainPersonSelector(W, H, hold_frames=2)
    selector.update(LEFT[None], np.array([0.9]))
    held = [selector.update(np.zeros((0, 4)), np.zeros(0)) for _ in range(3)]
    assert held[0].held and held[1].held
    np.testing.assert_array_equal(held[1].box, LEFT)
    assert held[2] is None
    back = selector.update(LEFT[None], np.array([0.9]))
    assert back is not None and not back.held


######################################################################################################################
# Association by ByteTrack track id (--association bytetrack): same salience, hysteresis and hold


def walk(start: np.ndarray, step: float, frames: int) -> list[np.ndarray]:
    """A person's boxes over `frames` frames, walking `step` px per frame to the right (negative: to the left)."""
    return [start + np.array([step * frame, 0, step * frame, 0], np.float32) for frame in range(frames)]


def test_bytetrack_incumbent_keeps_its_track_against_a_short_lived_larger_newcomer():
    selector = TrackedMainPersonSelector(W, H, switch_margin=1.3, switch_frames=3)
    faint = np.array([400, 5, 410, 25], np.float32)  # listed first, too weak for a track: the tracker drops it from its output
    newcomer = np.array([230, 10, 320, 235], np.float32)  # 1.5x as large and nearer the centre: 1.6x the salience
    main_path = walk(np.array([90, 70, 150, 210], np.float32), 2, 10)
    for frame in range(4):
        selector.update(np.stack([faint, main_path[frame]]), np.array([0.2, 0.9]))
    main_id = selector.track_id
    assert main_id is not None  # confirmed on the tracker's first frame
    for frame in range(4, 6):  # the newcomer stays switch_frames - 1 frames: too short to take over
        boxes, scores = np.stack([faint, newcomer, main_path[frame]]), np.array([0.2, 0.9, 0.9], np.float32)
        given = boxes.copy(), scores.copy()
        chosen = selector.update(boxes, scores)
        np.testing.assert_array_equal(chosen.box, main_path[frame])  # the detection itself, not the tracker's box
        assert selector.track_id == main_id and not chosen.held
        np.testing.assert_array_equal(boxes, given[0])  # the caller's persons, drawn afterwards, are untouched
        np.testing.assert_array_equal(scores, given[1])
    chosen = selector.update(np.stack([faint, main_path[6]]), np.array([0.2, 0.9]))
    np.testing.assert_array_equal(chosen.box, main_path[6])
    picks = [selector.update(np.stack([faint, newcomer, main_path[frame]]), np.array([0.2, 0.9, 0.9])) for frame in range(7, 10)]
    assert [pick.box[0] for pick in picks] == [main_path[7][0], main_path[8][0], newcomer[0]]  # 3 frames in a row: it takes over
    assert selector.track_id not in (None, main_id)  # and the main person is now followed by the newcomer's track


def test_bytetrack_main_person_missed_two_frames_is_held_and_found_under_the_same_track():
    selector = TrackedMainPersonSelector(W, H, hold_frames=5)
    path = walk(LEFT, 6, 8)  # 6 px per frame to the right
    bystander = RIGHT - np.array([0, 0, 0, 60], np.float32)  # someone smaller stays in view all along
    for frame in range(5):
        selector.update(np.stack([path[frame], bystander]), np.array([0.9, 0.9]))
    main_id = selector.track_id
    held = [selector.update(bystander[None], np.array([0.9])) for _ in range(2)]  # the detector misses the main person
    assert all(person.held for person in held)
    np.testing.assert_allclose(held[-1].box, path[6], atol=2)  # walked on at the person's pace, not stuck at path[4]
    back = selector.update(np.stack([bystander, path[7]]), np.array([0.9, 0.9]))
    assert not back.held and selector.track_id == main_id
    np.testing.assert_array_equal(back.box, path[7])


def test_bytetrack_after_the_hold_runs_out_the_new_main_person_is_followed_by_their_track():
    selector = TrackedMainPersonSelector(W, H, hold_frames=2)
    bystander = RIGHT - np.array([0, 0, 0, 60], np.float32)
    for _ in range(3):
        selector.update(np.stack([LEFT, bystander]), np.array([0.9, 0.9]))
    held = [selector.update(bystander[None], np.array([0.9])) for _ in range(2)]
    assert all(person.held for person in held)
    picks = [selector.update(bystander[None], np.array([0.9])) for _ in range(4)]  # hold over: the bystander, at once
    assert all(not pick.held and pick.box[0] == bystander[0] for pick in picks)  # and kept: the tracker kept its ids


def test_bytetrack_someone_entering_an_empty_scene_is_main_at_once_and_then_followed_by_their_track():
    selector = TrackedMainPersonSelector(W, H)
    for _ in range(3):
        assert selector.update(np.zeros((0, 4)), np.zeros(0)) is None
    path = walk(LEFT, 4, 4)
    first = selector.update(path[0][None], np.array([0.9]))  # ByteTrack confirms this track only in the next frame
    np.testing.assert_array_equal(first.box, path[0])
    assert selector.track_id is None
    for frame in range(1, 4):  # found again by IoU, then by the track id it took
        chosen = selector.update(path[frame][None], np.array([0.9]))
        assert not chosen.held and chosen.box[0] == path[frame][0]
    assert selector.track_id is not None


def test_bytetrack_two_people_crossing_keep_the_main_person_walking_the_same_way():
    selector = TrackedMainPersonSelector(W, H)
    rightward = walk(np.array([40, 60, 100, 220], np.float32), 8, 37)  # the main person
    leftward = walk(np.array([327, 50, 390, 225], np.float32), -8, 37)  # a little nearer the camera: in front at the crossing
    hidden = {17, 18, 19}  # boxes overlap most at frame 18; the front person hides the main one there
    picks = []
    for frame in range(37):
        if frame in hidden:
            picks.append(selector.update(leftward[frame][None], np.array([0.8])))
        else:
            picks.append(selector.update(np.stack([leftward[frame], rightward[frame]]), np.array([0.8, 0.9])))
        if frame == 16:
            main_id = selector.track_id
    assert box_iou(rightward[16][None], leftward[16][None])[0, 0] > 0.25  # they already overlap before the main one is hidden
    assert all(picks[frame].held for frame in hidden)  # held, not handed to the person in front
    for frame in range(20, 37):  # after the crossing: still the one walking right, under the same track id
        np.testing.assert_array_equal(picks[frame].box, rightward[frame])
    assert selector.track_id == main_id


def test_bytetrack_reset_forgets_the_track():
    selector = TrackedMainPersonSelector(W, H, hold_frames=5)
    for box in walk(LEFT, 4, 5):
        selector.update(box[None], np.array([0.9]))
    assert selector.track_id is not None
    selector.reset()
    assert selector.track_id is None
    assert selector.update(np.zeros((0, 4)), np.zeros(0)) is None  # nothing held over
    selector.reset()  # again: that empty frame was the fresh tracker's first
    chosen = selector.update(RIGHT[None], np.array([0.9]))  # someone else, elsewhere: the first frame of a fresh tracker
    np.testing.assert_array_equal(chosen.box, RIGHT)
    assert selector.track_id is not None  # a tracker that kept its old frames would only confirm this track next frame


######################################################################################################################
# End to end, on real frames with the bundled detector


@pytest.mark.slow
def test_tud_campus_end_to_end_matches_ground_truth(tmp_path):
    results = run(tmp_path, "--source", str(TUD_CLIP), "--detector", "ssdlite_person", "--batch-size", "4")
    out = tmp_path / "out"
    capture = cv2.VideoCapture(str(out / "main_person.mp4"))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (427, 240)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 71
    records = [json.loads(line) for line in (out / "main_person.jsonl").read_text().splitlines()]
    assert [record["frame"] for record in records] == list(range(71))
    assert set(records[0]) >= {"frame", "time_s", "main_person", "score", "held", "persons", "latency_ms"}
    assert results["letterbox"] == [{"first_frame": 0, "frames": 71, "source_size": [640, 480], "scale": 0.5, "left": 53, "top": 0}]
    assert all(record["letterbox"] == {"scale": 0.5, "left": 53, "top": 0} for record in records)
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    with_people = matched = 0
    for record in records:
        people = gt.get(record["frame"] + 1)
        if people is None:
            continue
        with_people += 1
        if record["main_person"] is not None:
            truth = people[:, :4] * 0.5 + np.array([53, 0, 53, 0])
            matched += box_iou(np.array(record["main_person"]), truth).max() >= 0.5
    assert with_people == 71 and matched == 71  # README: 71 of 71 (benchmarks/eval_main_person.py: main_match 1.0)
    saved = json.loads((out / "results.json").read_text())
    assert saved["frames"] == 71 and saved["fps_end_to_end"] > 0 and saved["bad_frames"] == []
    assert set(saved["stages"]) == {"decode", "preprocess", "inference", "postprocess", "encode"}
    assert list(out.glob(".*partial*")) == []


def test_torchvision_detector_through_the_pipeline(tmp_path):
    results = run(
        tmp_path,
        "--source",
        str(TUD_CLIP),
        "--detector",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "--weights",
        "none",
        "--max-frames",
        "3",
        "--no-video",
    )
    records = (tmp_path / "out" / "main_person.jsonl").read_text().splitlines()
    assert results["frames"] == 3 and len(records) == 3
    assert results["detector"]["proposals"] == 100 and results["detector"]["classes"] == [1]
    assert not (tmp_path / "out" / "main_person.mp4").exists()


def test_association_bytetrack_end_to_end_leaves_the_persons_as_detected(tmp_path):
    records = {}
    for association in ("bytetrack", "iou"):
        argv = ["--source", str(TUD_CLIP), "--detector", "ssdlite_person", "--max-frames", "12", "--no-video"]
        results = run(tmp_path / association, *argv, "--association", association)
        assert results["association"] == association
        assert json.loads((tmp_path / association / "out" / "results.json").read_text())["association"] == association
        lines = (tmp_path / association / "out" / "main_person.jsonl").read_text().splitlines()
        records[association] = [json.loads(line) for line in lines]
    tracked = records["bytetrack"]
    assert len(tracked) == 12 and sum(record["main_person"] is not None for record in tracked) >= 10
    for record in tracked:  # a main person not held is one of the frame's own detections
        if record["main_person"] is not None and not record["held"]:
            assert record["main_person"] in [person["box"] for person in record["persons"]]
    assert [record["persons"] for record in tracked] == [record["persons"] for record in records["iou"]]  # none dropped or moved


def test_corrupt_video_frame_is_skipped_counted_and_the_run_goes_on(tmp_path, corrupt_video):
    results = run(tmp_path, "--source", str(corrupt_video), "--detector", "ssdlite_person")
    assert results["frames"] == 9 and results["bad_frames"] == [5]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "main_person.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 9


def test_folder_of_mixed_sizes_gets_a_letterbox_per_frame_and_no_box_across_sizes(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = cv2.imread(str(TUD_CAMPUS / "img1" / "000001.jpg"))  # 640x480, three people
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "b.png"), cv2.resize(image, (1280, 960)))  # the same picture, twice the size
    cv2.imwrite(str(folder / "c.png"), cv2.copyMakeBorder(image, 0, 0, 107, 107, cv2.BORDER_CONSTANT))  # 854x480: 16:9
    cv2.imwrite(str(folder / "d.png"), np.zeros((300, 500, 3), np.uint8))  # nobody, and another size again
    results = run(tmp_path, "--source", str(folder), "--detector", "ssdlite_person", "--hold-frames", "5")
    records = [json.loads(line) for line in (tmp_path / "out" / "main_person.jsonl").read_text().splitlines()]
    assert [record["letterbox"] for record in records] == [
        {"scale": 0.5, "left": 53, "top": 0},
        {"scale": 0.25, "left": 53, "top": 0},
        {"scale": 0.5, "left": 0, "top": 0},
        {"scale": 0.8, "left": 13, "top": 0},
    ]
    assert [run["source_size"] for run in results["letterbox"]] == [[640, 480], [1280, 960], [854, 480], [500, 300]]
    # the same people land in the same canvas places whatever the frame's size (a first-frame letterbox would not)
    for first, second in ((records[0], records[1]), (records[0], records[2])):
        assert box_iou(np.array(first["main_person"]), np.array(second["main_person"]))[0, 0] > 0.8
    assert records[3]["main_person"] is None and not records[3]["held"]  # nobody there: no box held over from c.png


def test_detector_size_maps_boxes_back_to_the_canvas(tmp_path):
    boxes = {}
    for size in ("240", "0"):
        results = run(
            tmp_path / size,
            "--source",
            str(TUD_CLIP),
            "--detector",
            "ssdlite_person",
            "--max-frames",
            "8",
            "--no-video",
            "--detector-size",
            size,
        )
        assert results["detector_size"] == int(size)
        records = [json.loads(line) for line in (tmp_path / size / "out" / "main_person.jsonl").read_text().splitlines()]
        boxes[size] = [np.array(record["main_person"]) for record in records]
    assert all(box_iou(a, b)[0, 0] > 0.8 for a, b in zip(boxes["240"], boxes["0"], strict=True))


@pytest.mark.cuda
@pytest.mark.parametrize("detector_size", ["240", "480"])
def test_cuda_pipeline_in_batches(tmp_path, detector_size):
    argv = ["--detector", "fasterrcnn_mobilenet_v3_large_fpn", "--weights", "none", "--device", "cuda", "--batch-size", "4"]
    results = run(tmp_path, "--source", str(TUD_CLIP), *argv, "--max-frames", "10", "--no-video", "--detector-size", detector_size)
    assert results["frames"] == 10 and results["device"] == "cuda" and results["detector"]["device"] == "cuda"
    assert results["batch_size"] == 4 and results["detector"]["min_size"] == int(detector_size)
    records = (tmp_path / "out" / "main_person.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in records] == list(range(10))


def test_corrupt_image_in_a_folder_is_skipped_and_counted(tmp_path, frame_folder):
    results = run(tmp_path, "--source", str(frame_folder), "--detector", "ssdlite_person")
    assert results["frames"] == 5 and results["bad_frames"] == [3]
    records = [json.loads(line) for line in (tmp_path / "out" / "main_person.jsonl").read_text().splitlines()]
    assert [record["frame"] for record in records] == [0, 1, 2, 4, 5]


######################################################################################################################
# Bad input: one line, exit code 1, nothing half-written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "missing.mp4"], "no such file"),
        (["--source", str(REPO / "requirements.txt")], "a text file, not a video"),
        (["--source", str(REPO / "README.md")], "no readable video"),
        (["--source", "9"], "camera 9 could not be opened"),
    ],
)
def test_bad_input_raises_user_error(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path, "--detector", "ssdlite_person", *argv)


def test_out_of_range_flag_is_one_line_exit_1_and_leaves_no_out(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "video_main_person.py", "--source", str(TUD_CLIP), "--min-score", "2", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr.strip().splitlines()) == (1, ["error: argument --min-score: must be from 0 to 1, got 2"])
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
        ("--hold-frames", "-1", "argument --hold-frames: must be at least 0, got -1"),
        ("--switch-margin", "0.5", "argument --switch-margin: must be at least 1, got 0.5"),
        ("--detector-size", "-240", "argument --detector-size: must be at least 0, got -240"),
        ("--max-pixels", "0", "argument --max-pixels: must be at least 1, got 0"),
    ],
)
def test_every_numeric_flag_is_range_checked(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        video_main_person.get_args_parser().parse_args([flag, value])
    assert exit_info.value.code == 1 and capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_a_number_that_is_no_number_stays_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        video_main_person.get_args_parser().parse_args(["--min-score", "high"])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "blocker").write_text("")
    args = video_main_person.get_args_parser().parse_args(["--source", str(TUD_CLIP), "--out", str(tmp_path / "blocker" / "out")])
    with pytest.raises(UserError, match="cannot write to output folder"):
        video_main_person.main(args)


def test_weights_default_offline_leaves_no_output(tmp_path, offline):
    with pytest.raises(UserError, match="cannot download"):
        run(tmp_path, "--source", str(TUD_CLIP), "--detector", "fasterrcnn_resnet50_fpn", "--weights", "DEFAULT")
    assert not (tmp_path / "out").exists()  # the folder this run created is gone again


def test_failure_midway_leaves_no_half_written_outputs(tmp_path, monkeypatch):
    from utils.detectors import OnnxSSDLitePersonDetector

    calls = {"n": 0}
    original = OnnxSSDLitePersonDetector.detect

    def fail_on_third_batch(self, frames):
        calls["n"] += 1
        if calls["n"] == 4:  # warm-up + 2 batches succeed
            raise RuntimeError("inference crashed")
        return original(self, frames)

    monkeypatch.setattr(OnnxSSDLitePersonDetector, "detect", fail_on_third_batch)
    with pytest.raises(RuntimeError, match="inference crashed"):
        run(tmp_path, "--source", str(TUD_CLIP), "--detector", "ssdlite_person")
    assert not (tmp_path / "out").exists()


def test_cli_one_line_error_and_exit_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "video_main_person.py", "--source", "missing.mp4", "--detector", "ssdlite_person", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: missing.mp4: no such file, folder, URL or camera index"]


@pytest.mark.slow
def test_cli_jsonl_to_stdout_piped_into_head(tmp_path):
    command = f"{sys.executable} video_main_person.py --source {TUD_CLIP} --detector ssdlite_person --no-video --jsonl - --out {tmp_path} | head -3"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and [json.loads(line)["frame"] for line in lines] == [0, 1, 2]
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_onnx_exported_detector_through_the_pipeline(tmp_path):
    import torch

    from utils.onnx_export import export_onnx

    torch.manual_seed(0)
    onnx = export_onnx("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path / "detector.onnx", weights="none")
    results = run(
        tmp_path,
        "--source",
        str(TUD_CLIP),
        "--backend",
        "onnxruntime",
        "--onnx",
        str(onnx),
        "--max-frames",
        "3",
        "--no-video",
        "--min-score",
        "0",
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "main_person.jsonl").read_text().splitlines()]
    assert [record["frame"] for record in records] == [0, 1, 2] and results["frames"] == 3
    assert results["detector"]["name"] == "fasterrcnn_mobilenet_v3_large_320_fpn (onnxruntime)"
    assert all(0 <= value <= 427 for record in records for person in record["persons"] for value in person["box"][::2])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "onnxruntime"], "--backend onnxruntime runs an exported model: give it --onnx PATH"),
        (["--backend", "tensorrt"], "--backend tensorrt runs an exported model: give it --engine PATH"),
        (["--backend", "tensorrt", "--onnx", "x.onnx", "--engine", "x.engine"], "--onnx is for --backend onnxruntime, not tensorrt"),
        (["--engine", "x.engine", "--quantized", "x.pt"], "--quantized is a torch backend model"),
    ],
)
def test_backend_and_model_file_must_agree(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path, "--source", str(TUD_CLIP), *argv)
    assert not (tmp_path / "out").exists()


def engine_metadata(**changes) -> dict:
    """What build_engine writes beside an engine of the exported mobilenet detector, on an H100 with TensorRT 11.4."""
    metadata = {
        "format": "tensorrt_engine/1",
        "model": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "settings": {"image_size": [240, 427]},
        "onnx": "detector.onnx",
        "precision": "fp16",
        "profile": {"images": {"min": [1, 3, 240, 427], "opt": [1, 3, 240, 427], "max": [1, 3, 240, 427]}},
        "inputs": [{"name": "images", "shape": [1, 3, 240, 427], "dtype": "float32"}],
        "outputs": [{"name": name, "shape": [-1, 4] if name == "boxes" else [-1], "dtype": "float32"} for name in ("boxes", "scores")],
        "tensorrt": "11.4.0.106",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
    }
    return {**metadata, **changes}


def test_tensorrt_engine_for_another_gpu_or_version_is_refused_before_deserialising(tmp_path, monkeypatch):
    import torch

    import utils.detectors
    import utils.tensorrt_runtime

    engine = tmp_path / "detector-trt-fp16.engine"
    engine.write_bytes(b"serialised engine bytes TensorRT must never see")
    here = {"tensorrt": "11.4.0.106", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    monkeypatch.setattr(utils.tensorrt_runtime, "environment", lambda: here)
    monkeypatch.setattr(utils.detectors, "TensorRTRunner", None)  # reaching it would be a TypeError, not a UserError
    monkeypatch.setattr(video_main_person, "resolve_device", lambda name: torch.device(name))  # as if a GPU were here
    (tmp_path / "detector-trt-fp16.json").write_text(json.dumps(engine_metadata()))
    with pytest.raises(UserError, match=r"sm 9\.0.*sm 8\.0|H100.*A100"):
        run(tmp_path, "--source", str(TUD_CLIP), "--engine", str(engine), "--device", "cuda")
    (tmp_path / "detector-trt-fp16.json").write_text(json.dumps(engine_metadata(tensorrt="10.8.0.43", compute_capability="8.0")))
    with pytest.raises(UserError, match=r"10\.8\.0\.43.*11\.4\.0\.106|11\.4\.0\.106.*10\.8\.0\.43"):
        run(tmp_path, "--source", str(TUD_CLIP), "--engine", str(engine), "--device", "cuda")
    (tmp_path / "detector-trt-fp16.json").unlink()
    with pytest.raises(UserError, match=r"detector-trt-fp16\.json"):
        run(tmp_path, "--source", str(TUD_CLIP), "--engine", str(engine), "--device", "cuda")
    assert not (tmp_path / "out").exists()


@pytest.mark.tensorrt
def test_tensorrt_engine_through_the_pipeline(tmp_path):
    import tensorrt_convert

    weights = usable_random_detector(tmp_path / "random.pt")
    argv = ["--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", weights, "--quick", "--rows", "tensorrt-fp32"]
    tensorrt_convert.main(tensorrt_convert.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "trt"), "--device", "cuda"]))
    engine = tmp_path / "trt" / "fasterrcnn_mobilenet_v3_large_320_fpn-trt-fp32.engine"
    results = run(tmp_path, "--source", str(TUD_CLIP), "--engine", str(engine), "--device", "cuda", "--max-frames", "3", "--no-video")
    assert results["frames"] == 3 and results["backend"] == "tensorrt"
    assert results["detector"]["name"] == "fasterrcnn_mobilenet_v3_large_320_fpn (tensorrt fp32)"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (b"not an onnx model at all", "is not a loadable ONNX model"),
        (REPO / "assets" / "models" / "ped_ssdlite_person.onnx", "is not a YOLOX COCO model: input"),
    ],
    ids=["corrupt", "wrong-shape"],
)
def test_a_bad_yolox_model_is_one_line_exit_1_and_leaves_no_out(tmp_path, capsys, model, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.read_bytes())
    argv = ["--source", str(TUD_CLIP), "--detector", "yolox_nano", "--weights", str(path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stopped:
        run_cli(video_main_person.main, video_main_person.get_args_parser().parse_args(argv))
    assert stopped.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_yolox_nano_runs_at_the_detector_size_people_only(tmp_path):
    """yolox_nano through the pipeline: its input is the --detector-size frame unscaled (long side rounded up to 32),
    only people are decoded, and the main person is found in the TUD-Campus frames."""
    results = run(
        tmp_path, "--source", str(TUD_CLIP), "--detector", "yolox_nano", "--max-frames", "8", "--no-video", "--detector-size", "240"
    )
    assert results["detector"]["size"] == 320 and results["detector"]["classes"] == [1]  # 640x480 -> 320x240 -> canvas 320x256
    assert results["frames"] == 8 and results["frames_with_main_person"] == 8
