import pytest
from conftest import TUD_CAMPUS

from utils.cli import UserError
from utils.mot import read_mot_boxes


def test_tud_campus_gt():
    boxes = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    assert len(boxes) == 71 and sum(len(frame) for frame in boxes.values()) == 359
    first = boxes[1]
    assert first.shape[1] == 5
    assert first[0].tolist() == [399, 182, 399 + 121, 182 + 229, 1]  # x, y, w, h -> x1, y1, x2, y2, id


def test_mot16_flags_and_classes(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,5,5,1,1,1.0\n1,2,10,10,5,5,0,1,1.0\n1,3,10,10,5,5,1,3,1.0\n1,4,10,10,5,5,1,7,0.5\n")
    ids = read_mot_boxes(gt)[1][:, 4].tolist()
    assert ids == [1, 4]  # flag 0 (ignore) and class 3 (car) dropped, static person kept


def test_malformed_line_names_file_and_line(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,5,5,1,-1,-1,-1\n2,1,ten,10,5,5,1,-1,-1,-1\n")
    with pytest.raises(UserError, match=r"gt.txt:2:"):
        read_mot_boxes(gt)
