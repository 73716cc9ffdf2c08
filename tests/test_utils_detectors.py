import cv2
import numpy as np
import pytest
import torch
from conftest import TUD_CAMPUS
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from utils.assets import TORCHVISION_DETECTORS
from utils.cli import UserError
from utils.detectors import (
    PERSON,
    ClassSubsetPredictor,
    Detections,
    OnnxSSDLitePersonDetector,
    TorchvisionDetector,
    build_detector,
    build_torchvision_model,
    fold_batchnorm,
)
from utils.metrics import box_iou
from utils.mot import read_mot_boxes


def tud_frame(number: int = 1) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(TUD_CAMPUS / "img1" / f"{number:06d}.jpg")), cv2.COLOR_BGR2RGB)


def test_ssdlite_finds_real_people_in_frame_pixels():
    detector = build_detector("ssdlite_person", threads=2)
    found = detector.detect([tud_frame(1)])[0]
    gt = read_mot_boxes(TUD_CAMPUS / "gt" / "gt.txt")[1][:, :4]
    matched = (box_iou(found.boxes, gt).max(axis=1) >= 0.5).sum()
    assert matched >= 3
    assert (found.labels == PERSON).all() and (found.scores >= detector.score_thresh).all()


def test_ssdlite_boxes_follow_the_frame_size():
    detector = OnnxSSDLitePersonDetector(threads=2)
    full = detector.detect([tud_frame(1)])[0]
    half = detector.detect([cv2.resize(tud_frame(1), (320, 240), interpolation=cv2.INTER_AREA)])[0]
    best = box_iou(full.boxes / 2, half.boxes).max(axis=1)
    assert len(full) >= 3 and (best > 0.8).mean() >= 0.75


def test_ssdlite_batch_equals_single_frames_and_mixed_sizes_work():
    detector = OnnxSSDLitePersonDetector(threads=2)
    frames = [tud_frame(1), tud_frame(30)]
    batched = detector.detect(frames)
    for frame, together in zip(frames, batched, strict=True):
        alone = detector.detect([frame])[0]
        np.testing.assert_allclose(together.boxes, alone.boxes, atol=0.5)
    mixed = detector.detect([tud_frame(1), cv2.resize(tud_frame(1), (320, 240))])
    assert len(mixed) == 2 and len(mixed[1]) > 0


@pytest.mark.parametrize("name", TORCHVISION_DETECTORS)
def test_torchvision_detectors_run_on_tiny_frames(name):
    torch.manual_seed(0)
    detector = TorchvisionDetector(name, weights="none", min_size=64, max_size=96, proposals=20, score_thresh=0.0)
    results = detector.detect([np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 128, np.uint8)])
    assert len(results) == 2
    for found in results:
        assert isinstance(found, Detections)
        assert found.boxes.shape[1] == 4 and found.boxes.dtype == np.float32
        assert len(found.boxes) == len(found.scores) == len(found.labels) > 0  # threshold 0: something comes out
        assert (found.labels == PERSON).all()
        assert (found.boxes[:, 2] <= 64).all() and (found.boxes[:, 3] <= 48).all()  # the frame's own pixels


def test_class_subset_predictor_keeps_the_full_models_scores():
    torch.manual_seed(0)
    full = FastRCNNPredictor(64, 91)
    subset = ClassSubsetPredictor(full, [PERSON, 3])
    features = torch.randn(10, 64)
    full_scores, full_boxes = full(features)
    subset_logits, subset_boxes = subset(features)
    probabilities = full_scores.softmax(-1)
    torch.testing.assert_close(subset_logits.softmax(-1)[:, 1:], probabilities[:, [PERSON, 3]])
    torch.testing.assert_close(subset_boxes, full_boxes[:, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]])


def test_fold_batchnorm_changes_nothing_but_speed():
    torch.manual_seed(0)
    model = build_torchvision_model("fasterrcnn_resnet50_fpn", "none").eval()
    for module in model.modules():  # non-trivial statistics, as a trained model has
        if hasattr(module, "running_var") and module.running_var is not None:
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    image = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        before = model.backbone(image)
        assert fold_batchnorm(model) == 53  # ResNet-50: stem + 16 blocks x 3 + 4 downsamples
        after = model.backbone(image)
    for level in before:
        torch.testing.assert_close(after[level], before[level], rtol=1e-3, atol=1e-3)


def test_weights_default_offline_is_one_clear_line(offline):
    with pytest.raises(UserError, match=r"cannot download .* offline, use --weights PATH") as error:
        build_torchvision_model("fasterrcnn_resnet50_fpn", "DEFAULT")
    assert "\n" not in str(error.value) and "ssdlite_person" in str(error.value)


def test_weights_from_a_state_dict_path(tmp_path):
    torch.manual_seed(0)
    model = build_torchvision_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none")
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pth")
    loaded = build_torchvision_model("fasterrcnn_mobilenet_v3_large_320_fpn", str(tmp_path / "checkpoint.pth"))
    torch.testing.assert_close(
        loaded.state_dict()["roi_heads.box_predictor.cls_score.weight"], model.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    )


def test_weights_that_do_not_match_or_do_not_exist(tmp_path):
    torch.save(build_torchvision_model("fasterrcnn_mobilenet_v3_large_320_fpn", "none").state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(UserError, match="does not match fasterrcnn_resnet50_fpn"):
        build_torchvision_model("fasterrcnn_resnet50_fpn", str(tmp_path / "mobilenet.pth"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        build_torchvision_model("fasterrcnn_resnet50_fpn", str(tmp_path / "notes.pth"))
    with pytest.raises(UserError, match="no such file"):
        build_torchvision_model("fasterrcnn_resnet50_fpn", str(tmp_path / "missing.pth"))


def test_unknown_detector_and_missing_onnx(tmp_path):
    with pytest.raises(UserError, match="unknown detector 'yolo'"):
        build_detector("yolo")
    with pytest.raises(UserError, match="missing"):
        OnnxSSDLitePersonDetector(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        OnnxSSDLitePersonDetector(tmp_path / "bad.onnx")


def test_resolve_weights_auto_offline_is_none_with_a_warning(offline, capsys):
    from utils.assets import resolve_weights

    assert resolve_weights("fasterrcnn_resnet50_fpn", "auto") == "none"
    assert "--weights auto: fasterrcnn_resnet50_fpn starts from RANDOM weights" in capsys.readouterr().err
    assert resolve_weights("fasterrcnn_resnet50_fpn", "some/path.pth") == "some/path.pth"  # anything else: unchanged
    with pytest.raises(UserError, match="unknown torchvision detector"):
        resolve_weights("yolo", "auto")


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory):
    """fasterrcnn_mobilenet_v3_large_320_fpn, seeded random weights, exported at 240x427 with every box kept."""
    from utils.onnx_export import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "detector.onnx"
    return export_onnx("fasterrcnn_mobilenet_v3_large_320_fpn", path, weights="none", box_score_thresh=0.0)


def test_onnx_detector_maps_boxes_back_to_each_frame_size(exported_detector):
    from utils.detectors import OnnxTorchvisionDetector

    detector = build_detector("fasterrcnn_resnet50_fpn", onnx=exported_detector, score_thresh=0.0, threads=2)
    assert isinstance(detector, OnnxTorchvisionDetector) and detector.describe()["input_size"] == [240, 427]
    frame = cv2.cvtColor(cv2.imread(str(TUD_CAMPUS / "img1" / "000001.jpg")), cv2.COLOR_BGR2RGB)  # 640x480
    small = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)  # what the detector makes of it
    full, reduced = detector.detect([frame, small])
    assert len(full) == len(reduced) > 0 and set(full.labels) <= set(range(1, 91))
    np.testing.assert_allclose(full.boxes, reduced.boxes * 2, atol=1e-3)  # the same boxes, in each frame's pixels
    assert full.boxes[:, 2].max() <= 640 and full.boxes[:, 3].max() <= 480
    empty = detector.detect([np.zeros((240, 427, 3), np.uint8)])[0]
    assert empty.boxes.shape[1] == 4 and len(empty.scores) == len(empty.boxes) == len(empty.labels)


def test_onnx_detector_refuses_files_it_cannot_use(tmp_path, exported_detector):
    import shutil

    lonely = tmp_path / "lonely.onnx"
    shutil.copy(exported_detector, lonely)  # no JSON beside it
    with pytest.raises(UserError, match=r"no readable lonely\.json beside it"):
        build_detector("fasterrcnn_resnet50_fpn", onnx=lonely)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    shutil.copy(exported_detector.with_suffix(".json"), text.with_suffix(".json"))
    with pytest.raises(UserError, match="is not a valid ONNX model"):
        build_detector("fasterrcnn_resnet50_fpn", onnx=text)
