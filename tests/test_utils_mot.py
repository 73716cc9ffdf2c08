import shutil

import pytest
from conftest import TUD_CAMPUS

from utils.cli import UserError
from utils.mot import find_mot_sequences, read_mot_boxes, read_mot_sequence


def test_tud_campus_gt():
    boxes = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    assert len(boxes) == 71 and sum(len(frame) for frame in boxes.values()) == 359
    first = boxes[1]
    assert first.shape[1] == 6
    assert first[0].tolist() == [399, 182, 399 + 121, 182 + 229, 1, 1.0]  # x, y, w, h -> x1, y1, x2, y2, id, vis


def test_mot16_flags_classes_and_visibility(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,5,5,1,1,1.0\n1,2,10,10,5,5,0,1,1.0\n1,3,10,10,5,5,1,3,1.0\n1,4,10,10,5,5,1,7,0.5\n")
    rows = read_mot_boxes(gt)[1]
    assert rows[:, 4].tolist() == [1, 4]  # flag 0 (ignore) and class 3 (car) dropped, static person kept
    assert rows[:, 5].tolist() == [1.0, 0.5]


def test_malformed_line_names_file_and_line(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,5,5,1,-1,-1,-1\n2,1,ten,10,5,5,1,-1,-1,-1\n")
    with pytest.raises(UserError, match=r"gt.txt:2:"):
        read_mot_boxes(gt)


def test_read_sequence_with_seqinfo():
    sequence = read_mot_sequence(TUD_CAMPUS)
    assert (sequence.name, len(sequence), sequence.width, sequence.height, sequence.frame_rate) == ("TUD-Campus", 71, 640, 480, 25.0)
    assert sequence.image_paths[0].name == "000001.jpg" and sequence.image_paths[-1].name == "000071.jpg"
    assert len(sequence.boxes(1)) == 6 and sequence.boxes(999).shape == (0, 6)


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
