"""The bundled YOLOX-nano backend (utils.detectors.OnnxYoloxDetector) on real TUD-Campus frames (640x480)."""

import cv2
import numpy as np
import onnx
import pytest
import torchvision
from conftest import TUD_CAMPUS

from utils.assets import SSDLITE_PERSON_PATH, YOLOX_NANO_PATH
from utils.cli import UserError
from utils.detectors import (
    COCO_80_TO_CATEGORY_ID,
    PERSON,
    YOLOX_DEFAULT_SIZE,
    YOLOX_PAD_VALUE,
    OnnxYoloxDetector,
    build_detector,
)
from utils.metrics import box_iou
from utils.mot import read_mot_boxes

# Measured: 34 of the 40 gt people of frames 1, 11, ..., 71 (recall 0.85) at the default size 416, score >= 0.4
TUD_RECALL_FLOOR = 0.8
BACKPACK = 27  # COCO category id (YOLOX's class 24)


def tud_frame(number: int) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(TUD_CAMPUS / "img1" / f"{number:06d}.jpg")), cv2.COLOR_BGR2RGB)


def grey_canvas(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame at the top-left of a larger canvas of the grey YOLOX pads with."""
    canvas = np.full((height, width, 3), YOLOX_PAD_VALUE, np.uint8)
    canvas[: frame.shape[0], : frame.shape[1]] = frame
    return canvas


def person_recall(found_boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[int, int]:
    """(gt people matched at IoU >= 0.5, gt people)."""
    if len(found_boxes) == 0:
        return 0, len(gt_boxes)
    return int((box_iou(gt_boxes, found_boxes).max(axis=1) >= 0.5).sum()), len(gt_boxes)


def assert_same_boxes(expected: np.ndarray, actual: np.ndarray, pixels: float) -> None:
    """Each expected box has a counterpart in `actual` within `pixels` on every side, and nothing is left over."""
    assert len(expected) == len(actual) > 0
    worst_side = np.abs(expected[:, None] - actual[None]).max(axis=2)  # (expected, actual)
    assert (worst_side.min(axis=1) <= pixels).all(), worst_side.min(axis=1)


@pytest.fixture(scope="module")
def detector() -> OnnxYoloxDetector:
    return OnnxYoloxDetector(threads=2)


def test_yolox_finds_the_people_of_tud_campus_in_frame_pixels(detector):
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")
    matched = total = 0
    for number in range(1, 72, 10):
        found = detector.detect([tud_frame(number)])[0]
        assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32 and found.labels.dtype == np.int64
        assert (found.scores >= detector.score_thresh).all()
        assert (found.boxes[:, :2] >= 0).all() and (found.boxes[:, 2] <= 640).all() and (found.boxes[:, 3] <= 480).all()
        assert (found.boxes[:, 2:] > found.boxes[:, :2]).all()
        frame_matched, frame_total = person_recall(found.persons().boxes, gt[number][:, :4])
        matched, total = matched + frame_matched, total + frame_total
    assert matched / total >= TUD_RECALL_FLOOR, f"recall {matched}/{total}"


def test_yolox_batch_equals_single_frames_and_mixed_sizes_work(detector):
    frames = [tud_frame(1), tud_frame(30), tud_frame(60)]
    batched = detector.detect(frames)
    assert len(batched) == 3
    for frame, together in zip(frames, batched, strict=True):
        alone = detector.detect([frame])[0]
        np.testing.assert_allclose(together.boxes, alone.boxes, atol=0.5)
        np.testing.assert_array_equal(together.labels, alone.labels)
    small = cv2.resize(tud_frame(1), (320, 240), interpolation=cv2.INTER_AREA)
    mixed = detector.detect([tud_frame(1), small])
    assert len(mixed) == 2 and len(mixed[1].persons()) > 0 and (mixed[1].boxes[:, 2] <= 320).all()


def test_yolox_letterbox_maps_boxes_back_to_the_frame(detector):
    frame = tud_frame(1)
    # Long side 416: grey below (640x640) keeps the letterbox ratio, the canvas grows from 416x320 to 416x416
    alone = detector.detect([frame])[0].persons(0.5)
    assert_same_boxes(alone.boxes, detector.detect([grey_canvas(frame, 640, 640)])[0].persons(0.5).boxes, pixels=3)
    # A fixed 640x320 canvas: grey at the right (960x480) keeps the ratio (height-bound) at 2/3
    fixed = OnnxYoloxDetector(threads=2, size=(640, 320))
    alone = fixed.detect([frame])[0].persons(0.5)
    assert_same_boxes(alone.boxes, fixed.detect([grey_canvas(frame, 960, 480)])[0].persons(0.5).boxes, pixels=3)


def test_yolox_size_long_side_or_canvas_and_the_input_it_makes(detector):
    red = np.zeros((720, 1280, 3), np.uint8)
    red[..., 0] = 255  # RGB red: must reach the model as BGR (channel 2)
    batch, letterbox = detector.preprocess([red])
    assert batch.shape == (1, 3, 256, 416) and batch.dtype == np.float32  # 16:9 -> 416x234 on a 416x256 canvas
    assert (letterbox.width, letterbox.height) == (416, 234)
    assert (batch[0, 2, :234] == 255).all() and (batch[0, :2, :234] == 0).all()
    assert (batch[0, :, 234:] == 114).all()  # the grey YOLOX was trained with
    assert detector.preprocess([tud_frame(1)])[0].shape == (1, 3, 320, 416)
    square = OnnxYoloxDetector(threads=1, size=(416, 416))
    assert square.preprocess([tud_frame(1)])[0].shape == (1, 3, 416, 416)
    assert square.describe()["size"] == [416, 416] and detector.describe()["size"] == YOLOX_DEFAULT_SIZE
    # A 16:9 frame (TUD-Campus with grey at the right) runs on its rectangular grid and still finds the people
    gt_boxes = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")[1][:, :4]
    matched, total = person_recall(detector.detect([grey_canvas(tud_frame(1), 854, 480)])[0].persons().boxes, gt_boxes)
    assert matched >= total - 1, f"{matched}/{total}"  # measured 5 of 6
    for bad_size in (400, (416, 300), 0, (416,) * 3):
        with pytest.raises(UserError, match="multiple of 32") as error:
            OnnxYoloxDetector(size=bad_size)
        assert "\n" not in str(error.value)


def test_coco_table_maps_yolox_classes_to_torchvision_category_ids():
    categories = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    torchvision_ids = tuple(index for index, name in enumerate(categories) if name not in ("__background__", "N/A"))
    assert torchvision_ids == COCO_80_TO_CATEGORY_ID


def test_yolox_classes_filter_and_coco_labels():
    frame = tud_frame(60)
    everything = OnnxYoloxDetector(threads=2, score_thresh=0.1).detect([frame])[0]
    categories = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    assert all(1 <= label <= 90 and categories[label] != "N/A" for label in everything.labels)
    assert BACKPACK in everything.labels  # measured: a carried backpack at score 0.33, benches and handbags lower
    people_only = build_detector("yolox_nano", threads=2, score_thresh=0.1, classes={PERSON})
    found = people_only.detect([frame])[0]
    assert len(found) > 0 and (found.labels == PERSON).all()
    # A person scores the same whatever else is allowed, so every person of the full run is still there
    assert (box_iou(everything.persons().boxes, found.boxes).max(axis=1) > 0.99).all()
    assert people_only.describe()["classes"] == [PERSON]
    bags = OnnxYoloxDetector(threads=2, score_thresh=0.1, classes={BACKPACK}).detect([frame])[0]
    assert len(bags) > 0 and (bags.labels == BACKPACK).all()
    with pytest.raises(UserError, match="COCO category ids"):
        OnnxYoloxDetector(classes={12})  # a gap in COCO's numbering


def test_yolox_bad_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        OnnxYoloxDetector(text)
    with pytest.raises(UserError, match="not a loadable ONNX model"):  # quantized routes yolox_nano to the ONNX loader
        build_detector("yolox_nano", quantized=str(text))
    with pytest.raises(UserError, match="no such YOLOX model"):
        build_detector("yolox_nano", weights=str(tmp_path / "missing.onnx"))
    with pytest.raises(UserError, match=r"not a YOLOX COCO model: input \[.*3\] output") as error:
        OnnxYoloxDetector(SSDLITE_PERSON_PATH)  # NHWC uint8 in, four outputs
    assert "\n" not in str(error.value)
    head = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["output"])],
        "detector_with_6_outputs",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 100, 6])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 100, 6])],
    )
    onnx.save(onnx.helper.make_model(head), tmp_path / "six.onnx")
    with pytest.raises(UserError, match=r"input \[1, 3, 100, 6\] output \[1, 3, 100, 6\]"):
        OnnxYoloxDetector(tmp_path / "six.onnx")
    assert build_detector("yolox_nano", weights=str(YOLOX_NANO_PATH)).describe()["weights"] == "assets/models/yolox_nano_416x416.onnx"
