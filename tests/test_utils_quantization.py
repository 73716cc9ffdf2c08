"""INT8 recipes: engines, the ReLU6 range, which layers get replaced, accuracy kept, artefacts that reload exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TUD_CAMPUS

from utils import quantization
from utils.cli import UserError
from utils.detectors import TorchvisionDetector, build_detector
from utils.efficientnet_lite import load_efficientnet_lite0, preprocess
from utils.imagenet import read_imagenet_samples, read_tiny_imagenet
from utils.quantization import (
    count_quantized,
    padded_depthwise_convs,
    quantize_classifier,
    quantize_detector,
    read_artefact,
    save_artefact,
    set_engine,
)


def test_unknown_and_unsupported_engines_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        set_engine("tensorrt")
    monkeypatch.setattr(quantization, "supported_engines", lambda: ["qnnpack"])
    with pytest.raises(UserError, match="backend fbgemm cannot run on this CPU"):
        set_engine("fbgemm")


@pytest.fixture(scope="module")
def imagenet():
    images, labels = read_imagenet_samples()
    return preprocess(images), labels


@pytest.mark.slow
def test_efficientnet_static_int8_keeps_top1_and_replaces_the_right_layers(imagenet):
    set_engine("fbgemm")
    inputs, labels = imagenet
    model = load_efficientnet_lite0()
    calibration = preprocess(read_tiny_imagenet(split="train", limit=32)[0])
    assert len(padded_depthwise_convs(model)) == 4  # the stride-2 depthwise convs with TF's asymmetric pad stay float
    int8 = quantize_classifier(model, "static", "fbgemm", lambda prepared: prepared(calibration))
    # 49 convs - the float stem and 4 float depthwise = 44 INT8 convs, and the classifier Linear
    assert count_quantized(int8) == {"static Conv2d": 44, "static Linear": 1}
    assert int8.get_submodule("_blocks.0._depthwise_conv").scale == pytest.approx(6 / 127)  # ReLU6 follows: range pinned to [0, 6], 7 bits
    with torch.inference_mode():
        fp32_top1 = (model(inputs).argmax(1) == labels).float().mean().item()
        int8_logits = int8(inputs)
    assert int8_logits.shape == (100, 1000)
    int8_top1 = (int8_logits.argmax(1) == labels).float().mean().item()
    assert fp32_top1 >= 0.85
    assert int8_top1 >= fp32_top1 - 0.02  # measured: 0.89 both; the unpinned ReLU6 range gave 0.69


def test_dynamic_classifier_replaces_only_linear_layers(imagenet):
    model = load_efficientnet_lite0()
    int8 = quantize_classifier(model, "dynamic", "fbgemm", lambda prepared: None)
    assert count_quantized(int8) == {"dynamic Linear": 1}
    assert count_quantized(model) == {}  # the float model is left as it was
    with torch.inference_mode():
        assert (int8(imagenet[0][:8]).argmax(1) == model(imagenet[0][:8]).argmax(1)).float().mean() >= 0.75


def frames(count: int = 2) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(cv2.imread(str(TUD_CAMPUS / "img1" / f"{n:06d}.jpg")), cv2.COLOR_BGR2RGB) for n in range(1, count + 1)]


@pytest.mark.slow
def test_static_detector_artefact_reloads_to_identical_outputs(tmp_path):
    set_engine("fbgemm")
    torch.manual_seed(0)
    settings = {"min_size": 240, "max_size": 427, "proposals": 50, "classes": [1]}
    detector = TorchvisionDetector("fasterrcnn_resnet50_fpn", "none", score_thresh=0.0, **settings)
    counts = quantize_detector(detector.model, "static", "fbgemm", lambda: detector.detect(frames()))
    # ResNet-50: 49 conv+relu pairs fused (BN folded, its Identity dropped) + 4 downsample convs; FPN 8 convs;
    # RPN head 1 conv+relu and 2 1x1 convs; box head + predictor: 4 dynamic Linears
    assert counts == {"dynamic Linear": 4, "static Conv2d": 30, "static ConvReLU2d": 34}
    expected = detector.detect(frames())
    assert len(expected) == 2 and expected[0].boxes.shape[1:] == (4,) and len(expected[0]) > 0
    path = save_artefact(
        tmp_path / "det.pt",
        detector.model,
        {"model": "fasterrcnn_resnet50_fpn", "scheme": "static", "backend": "fbgemm", "settings": settings},
    )
    reloaded = build_detector("fasterrcnn_resnet50_fpn", quantized=str(path), score_thresh=0.0)
    for before, after in zip(expected, reloaded.detect(frames()), strict=True):
        np.testing.assert_array_equal(before.boxes, after.boxes)
        np.testing.assert_array_equal(before.scores, after.scores)


def test_dynamic_detector_replaces_the_box_head_linears():
    detector = TorchvisionDetector("fasterrcnn_mobilenet_v3_large_320_fpn", "none")
    assert quantize_detector(detector.model, "dynamic", "fbgemm", lambda: None) == {"dynamic Linear": 4}
    assert len(detector.detect(frames(1))) == 1


def test_artefact_errors(tmp_path):
    with pytest.raises(UserError, match="no such quantised model"):
        read_artefact(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable quantised model"):
        read_artefact(tmp_path / "junk.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a quantise\\.py artefact"):
        read_artefact(tmp_path / "plain.pt")
    save_artefact(tmp_path / "eff.pt", torch.nn.Linear(2, 2), {"model": "efficientnet_lite0", "scheme": "dynamic", "backend": "fbgemm"})
    with pytest.raises(UserError, match="holds a quantised efficientnet_lite0, not fasterrcnn_resnet50_fpn"):
        build_detector("fasterrcnn_resnet50_fpn", quantized=str(tmp_path / "eff.pt"))
    bad = {"model": "fasterrcnn_mobilenet_v3_large_320_fpn", "scheme": "dynamic", "backend": "fbgemm", "settings": {"classes": [1]}}
    save_artefact(tmp_path / "bad.pt", torch.nn.Linear(2, 2), bad)
    with pytest.raises(UserError, match="does not match the model"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", quantized=str(tmp_path / "bad.pt"))


def _tiny_conv_graph(path) -> None:
    """A one-Conv ONNX graph (1x3x8x8 -> 1x4x8x8), opset 13: enough for ONNX Runtime's static quantisation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "weight")
    conv = helper.make_node("Conv", ["images", "weight"], ["features"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every onnxruntime since 1.14 loads
    onnx.save(model, str(path))


@pytest.mark.parametrize(("count", "chunk"), [(12, 6), (96, 8), (7, 7), (13, 1)])
def test_calibration_chunk_is_the_largest_divisor_up_to_the_limit(count, chunk):
    assert quantization.calibration_chunk(count) == chunk


def test_onnx_static_calibrates_in_chunks_and_writes_qdq(tmp_path, monkeypatch):
    import onnx

    _tiny_conv_graph(tmp_path / "float.onnx")
    ranges = []
    set_range = quantization._ChunkedFeeds.set_range

    def recording_set_range(self, start_index: int, end_index: int) -> None:
        ranges.append((start_index, end_index))
        set_range(self, start_index, end_index)

    monkeypatch.setattr(quantization._ChunkedFeeds, "set_range", recording_set_range)
    rng = np.random.default_rng(1)
    feeds = [{"images": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(12)]
    quantization.quantize_onnx_static(tmp_path / "float.onnx", tmp_path / "int8.onnx", feeds, "MinMax", activation_type="QInt8")
    assert ranges == [(0, 6), (6, 12)]  # ONNX Runtime never holds more than ORT_CALIB_CHUNK inputs' activations
    ops = [node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 2 and "Conv" in ops
