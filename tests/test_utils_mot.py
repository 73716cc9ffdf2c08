import shutil

import numpy as np
import pytest
from conftest import TUD_CAMPUS

from utils.cli import UserError
from utils.mot import find_mot_sequences, read_mot_boxes, read_mot_gt, read_mot_sequence


def annotation_file(tmp_path, text: str, name: str = "gt.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tud_campus_gt():
    boxes = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    assert len(boxes) == 71 and sum(len(frame) for frame in boxes.values()) == 359
    first = boxes[1]
    assert first.shape[1] == 6
    # file row 1,1,399,182,121,229: x, y are 1-based -> x1, y1 = 398, 181; x2 = x1 + w; id 1; MOT15: visibility 1
    assert first[0].tolist() == [398, 181, 398 + 121, 181 + 229, 1, 1.0]


def test_mot15_gt_with_world_coordinates_loads_every_box(tmp_path):
    # PETS09-S2L1 rows: world x, y filled in, z = 0; conf 0 marks ignore rows
    gt = annotation_file(
        tmp_path,
        "1,9,374,179,26.385,78.5,1,-7.2265,-5.702,0\n"
        "1,11,541,134,21.615,66.613,1,-0.61518,-6.7188,0\n"
        "2,9,375,180,26.4,78.4,1,-7.1,-5.6,0\n"
        "2,12,648,115,19.885,58.973,0,3.7684,-8.0957,0\n"
        "3,9,1,1,20,60,1,2.5,7.1,0\n",
    )
    boxes = read_mot_boxes(gt)
    assert {frame: len(rows) for frame, rows in boxes.items()} == {1: 2, 2: 1, 3: 1}  # only the conf-0 row dropped
    np.testing.assert_allclose(boxes[1][0], [373, 178, 373 + 26.385, 178 + 78.5, 9, 1.0], rtol=1e-6)
    assert boxes[3][0, :4].tolist() == [0, 0, 20, 60]  # MOT's top-left pixel (1, 1) is 0-based (0, 0)


def test_mot15_gt_with_minus_ones(tmp_path):
    gt = annotation_file(tmp_path, "1,1,10,20,5,8,1,-1,-1,-1\n1,2,30,20,5,8,1,-1,-1,-1\n2,1,11,20,5,8,1,-1,-1,-1\n")
    boxes = read_mot_boxes(gt)
    assert boxes[1][:, :5].tolist() == [[9, 19, 14, 27, 1], [29, 19, 34, 27, 2]] and len(boxes[2]) == 1
    assert boxes[1][:, 5].tolist() == [1.0, 1.0]  # no visibility column in MOT15: taken as fully visible


def test_mot15_gt_with_conf_minus_one_counts_every_row(tmp_path):
    # Some public copies of MOT15 put -1 in gt's conf column: TrackEval counts every row not marked 0
    gt = annotation_file(
        tmp_path, "1,1,10,20,5,8,-1,-1,-1,-1\n1,2,30,20,5,8,-1,-1,-1,-1\n2,1,11,20,5,8,-1,-1,-1,-1\n3,2,31,20,5,8,1,-1,-1,-1\n"
    )
    boxes = read_mot_boxes(gt)
    assert {frame: len(rows) for frame, rows in boxes.items()} == {1: 2, 2: 1, 3: 1}
    assert boxes[1][:, :5].tolist() == [[9, 19, 14, 27, 1], [29, 19, 34, 27, 2]] and boxes[1][:, 5].tolist() == [1.0, 1.0]
    people, ignore = read_mot_gt(gt)
    assert sum(len(rows) for rows in people.values()) == 4 and ignore == {}


def test_conf_zero_rows_are_ignore_regions_kept_apart(tmp_path):
    gt = annotation_file(
        tmp_path, "1,1,10,20,5,8,-1,-1,-1,-1\n1,2,30,20,5,8,0,-1,-1,-1\n2,2,31,20,5,8,0,-1,-1,-1\n2,1,11,20,5,8,1,-1,-1,-1\n"
    )
    people, ignore = read_mot_gt(gt)
    assert {frame: rows[:, 4].tolist() for frame, rows in people.items()} == {1: [1], 2: [1]}  # conf 0 still not a person
    assert {frame: rows[:, :5].tolist() for frame, rows in ignore.items()} == {1: [[29, 19, 34, 27, 2]], 2: [[30, 19, 35, 27, 2]]}
    assert {frame: rows[:, 4].tolist() for frame, rows in read_mot_boxes(gt).items()} == {1: [1], 2: [1]}


def test_mot16_pedestrians_only_turns_other_person_classes_into_ignore_regions(tmp_path):
    gt = annotation_file(
        tmp_path,
        "1,1,10,10,5,5,1,1,1.0\n"  # pedestrian
        "1,2,10,10,5,5,0,1,0.5\n"  # pedestrian flagged 0: ignore region
        "1,3,10,10,5,5,1,3,1.0\n"  # car: neither
        "1,4,10,10,5,5,1,7,0.5\n"  # static person flagged 1: a person for training, an ignore region for (1,)
        "1,5,10,10,5,5,0,8,0.75\n"  # distractor: ignore region
        "1,6,10,10,5,5,0,12,0.1\n"  # reflection: ignore region
        "1,7,10,10,5,5,0,9,1.0\n",  # occluder: neither
    )
    people, ignore = read_mot_gt(gt, person_classes=(1,))
    assert people[1][:, 4].tolist() == [1] and ignore[1][:, 4].tolist() == [2, 4, 5, 6]
    assert ignore[1][:, 5].tolist() == pytest.approx([0.5, 0.5, 0.75, 0.1])  # visibility kept
    people, ignore = read_mot_gt(gt)  # PERSON_CLASSES: static people count, as read_mot_boxes gives them
    assert people[1][:, 4].tolist() == [1, 4] and ignore[1][:, 4].tolist() == [2, 5, 6]


def test_mot16_flags_classes_and_visibility(tmp_path):
    gt = annotation_file(
        tmp_path,
        "1,1,10,10,5,5,1,1,1.0\n"  # pedestrian
        "1,2,10,10,5,5,0,1,1.0\n"  # ignore flag
        "1,3,10,10,5,5,1,3,1.0\n"  # car
        "1,4,10,10,5,5,1,7,0.5\n"  # static person, half visible
        "1,5,10,10,5,5,1,2,0.25\n"  # person on vehicle
        "1,6,10,10,5,5,0,8,0.75\n"  # distractor
        "2,7,1,1,5,5,0,12,0.1\n",  # a frame with only an ignored reflection
    )
    boxes = read_mot_boxes(gt)
    assert list(boxes) == [1]
    assert boxes[1][:, 4].tolist() == [1, 4, 5]
    assert boxes[1][:, 5].tolist() == [1.0, 0.5, 0.25]
    assert boxes[1][0, :4].tolist() == [9, 9, 14, 14]


def test_det_files_of_both_layouts_keep_their_scores(tmp_path):
    mot15 = annotation_file(
        tmp_path, "1,-1,461,208,33.73,76.541,122.51,-8.22321,-8.5048,0\n2,-1,366,181,30,70,-0.48,-6.8,-5.3,0\n", "det15.txt"
    )
    mot17 = annotation_file(tmp_path, "1,-1,1359.1,413.27,120.26,362.77,0.99,-1,-1,-1\n1,-1,571,402,104,314,0.31,-1,-1,-1\n", "det17.txt")
    boxes15, boxes17 = read_mot_boxes(mot15, gt=False), read_mot_boxes(mot17, gt=False)
    np.testing.assert_allclose(boxes15[1][0], [460, 207, 460 + 33.73, 207 + 76.541, -1, 122.51], rtol=1e-6)
    assert boxes15[2][0, 5] == pytest.approx(-0.48)  # ACF scores can be negative: kept, never filtered
    assert len(boxes17[1]) == 2 and boxes17[1][:, 5].tolist() == pytest.approx([0.99, 0.31])
    assert read_mot_boxes(annotation_file(tmp_path, "", "empty.txt"), gt=False) == {}


@pytest.mark.parametrize(
    "text, gt, message",
    [
        ("1,1,10,10,5,5,1,-1,-1,-1\n2,1,ten,10,5,5,1,-1,-1,-1\n", True, r"gt.txt:2: not a comma-separated row"),
        ("1,1,10,10,5,5,1,-1,-1,-1\n1,2,10,10,5,5,1,1,1.0\n", True, r"gt.txt:2: 9 fields in a MOT15 .* mixed formats"),
        ("\n1,1,10,10,5,5,1,1,1.0\n1,2,10,10,5,5,1,-1,-1,-1\n", True, r"gt.txt:3: 10 fields in a MOT16\+ gt .* mixed formats"),
        ("1,1,10,10,5,5,1,1\n", True, r"gt.txt:1: 8 fields fit no MOT gt layout"),
        ("1,1,10,10,5,5,1,1,1.0\n", False, r"gt.txt:1: 9 fields fit no MOT det layout"),
        ("1,-1,10,10,5,5,42.8,-1,-1,-1\n", True, r"gt.txt:1: not a gt row: id -1 marks a detection \(a det file read as gt\?\)"),
        ("1,1,10,10,5,5,1,-1,-1,-1\n2,-1,10,10,5,5,-1,-1,-1,-1\n", True, r"gt.txt:2: not a gt row: id -1 .*det file read as gt"),
        ("1,-2,10,10,5,5,1,-1,-1,-1\n", True, r"gt.txt:1: a gt id must be a whole number >= 0, got -2"),
        ("1,1.5,10,10,5,5,1,1,1.0\n", True, r"gt.txt:1: a gt id must be a whole number >= 0, got 1.5"),
        ("1,1,10,10,5,5,1,1,1.5\n", True, r"gt.txt:1: class .* visibility in \[0, 1\], got 1, 1.5"),
        ("1,1,10,10,0,5,1,-1,-1,-1\n", True, r"gt.txt:1: box width and height must be positive"),
        ("0,1,10,10,5,5,1,-1,-1,-1\n", True, r"gt.txt:1: frame must be a whole number >= 1"),
    ],
)
def test_rows_that_fit_no_layout_name_file_and_line(tmp_path, text, gt, message):
    with pytest.raises(UserError, match=message) as error:
        read_mot_boxes(annotation_file(tmp_path, text), gt=gt)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "1,11,541,134,21,66,0,-0.6,-6.7,0\n2,11,542,134,21,66,0,-0.6,-6.7,0\n",
            r"no gt box left of 2 rows \(2 ignore rows with conf 0, 0 non-person",
        ),
        ("1,1,10,10,5,5,1,3,1.0\n1,2,10,10,5,5,0,1,1.0\n", r"no gt box left of 2 rows \(1 ignore rows with conf 0, 1 non-person"),
        ("\n\n", r"empty"),
    ],
)
def test_gt_with_no_box_left_is_an_error(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_mot_boxes(annotation_file(tmp_path, text))


def test_read_sequence_with_seqinfo():
    sequence = read_mot_sequence(TUD_CAMPUS)
    assert (sequence.name, len(sequence), sequence.width, sequence.height, sequence.frame_rate) == ("TUD-Campus", 71, 640, 480, 25.0)
    assert sequence.image_paths[0].name == "000001.jpg" and sequence.image_paths[-1].name == "000071.jpg"
    assert len(sequence.boxes(1)) == 6 and sequence.boxes(999).shape == (0, 6)
    assert sequence.ignore == {} and sequence.ignore_regions(1).shape == (0, 6)  # TUD-Campus has no conf-0 row


def copy_sequence(tmp_path, frames: int = 12):
    root = tmp_path / "SEQ"
    (root / "img1").mkdir(parents=True)
    (root / "gt").mkdir()
    for number in range(1, frames + 1):
        shutil.copy(TUD_CAMPUS / "img1" / f"{number:06d}.jpg", root / "img1")
    lines = [line for line in (TUD_CAMPUS / "gt" / "gt.txt").read_text().splitlines() if int(line.split(",")[0]) <= frames]
    (root / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_sequence_without_seqinfo_infers_it(tmp_path):
    sequence = read_mot_sequence(copy_sequence(tmp_path))
    assert (sequence.name, len(sequence), sequence.width, sequence.height) == ("SEQ", 12, 640, 480)


def test_read_sequence_keeps_ignore_regions_per_frame(tmp_path):
    root = copy_sequence(tmp_path, frames=3)
    (root / "gt" / "gt.txt").write_text("1,1,10,10,5,5,1,1,1.0\n2,2,20,10,5,5,1,7,0.5\n3,3,30,10,5,5,0,1,1.0\n3,4,40,10,5,5,1,1,1.0\n")
    sequence = read_mot_sequence(root, person_classes=(1,))
    assert [sequence.boxes(frame)[:, 4].tolist() for frame in (1, 2, 3)] == [[1], [], [4]]
    assert [sequence.ignore_regions(frame)[:, 4].tolist() for frame in (1, 2, 3)] == [[], [2], [3]]
    assert read_mot_sequence(root).boxes(2)[:, 4].tolist() == [2]  # by default a static person is a person (training)


def test_sequence_whose_gt_is_all_ignore_rows_is_an_error(tmp_path):
    root = copy_sequence(tmp_path)
    rows = (root / "gt" / "gt.txt").read_text().splitlines()
    (root / "gt" / "gt.txt").write_text("".join(f"{','.join(row.split(',')[:6])},0,-1,-1,-1\n" for row in rows))
    with pytest.raises(UserError, match=rf"gt.txt: no gt box left of {len(rows)} rows"):
        read_mot_sequence(root)


def test_missing_frame_is_named(tmp_path):
    root = copy_sequence(tmp_path)
    (root / "seqinfo.ini").write_text("[Sequence]\nname=SEQ\nimDir=img1\nseqLength=12\nimExt=.jpg\n")
    (root / "img1" / "000005.jpg").unlink()
    with pytest.raises(UserError, match=r"000005.jpg is missing"):
        read_mot_sequence(root)


def test_no_gt_is_an_error_and_sequences_are_found(tmp_path):
    root = copy_sequence(tmp_path)
    assert find_mot_sequences(tmp_path) == [root] and find_mot_sequences(root) == [root]
    (root / "gt" / "gt.txt").unlink()
    with pytest.raises(UserError, match=r"no gt/gt\.txt"):
        read_mot_sequence(root)
    with pytest.raises(UserError, match="no MOTChallenge sequence"):
        find_mot_sequences(tmp_path / "SEQ" / "gt")
