import json

import numpy as np
import pytest
import torch
from conftest import REPO

from utils.cli import UserError
from utils.efficientnet_lite import load_efficientnet_lite
from utils.instances import read_instances
from utils.maskrcnn import (
    BACKBONES,
    build_maskrcnn,
    count_parameters,
    load_checkpoint,
    predict,
    pretrained_weights_missing,
    save_checkpoint,
    state_size_bytes,
)

BALLOON = REPO / "assets" / "data" / "balloon"
SHIPPED = REPO / "assets" / "models" / "balloon_maskrcnn_efficientnet_lite0.pt"
META = {
    "backbone": "efficientnet_lite0",
    "class_names": ["balloon"],
    "min_size": [256],
    "max_size": 320,
    "score_threshold": 0.0,
    "mask_threshold": 0.5,
}


def test_lite_backbones_carry_the_packaged_imagenet_weights():
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        model = build_maskrcnn(name, num_classes=2)
        reference = load_efficientnet_lite(name).state_dict()
        body = model.backbone.body.state_dict()
        for key in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_blocks.9._bn2.running_var"):
            torch.testing.assert_close(body[key], reference[key])
        assert state_size_bytes(model) < 15e6  # the ceiling for the shipped model (FP16)
    random_init = build_maskrcnn("efficientnet_lite0", num_classes=2, weights="none")
    assert not torch.equal(random_init.backbone.body.state_dict()["_conv_stem.weight"], reference_stem())


def reference_stem() -> torch.Tensor:
    return load_efficientnet_lite("efficientnet_lite0").state_dict()["_conv_stem.weight"]


def test_trainable_layers_freeze_the_lower_stages():
    frozen = build_maskrcnn("efficientnet_lite0", 2, weights="none", trainable_layers=0)
    assert not any(p.requires_grad for p in frozen.backbone.body.parameters())
    assert all(p.requires_grad for p in frozen.backbone.fpn.parameters())
    top = build_maskrcnn("efficientnet_lite0", 2, weights="none", trainable_layers=2)
    trainable = {name.split(".")[1] for name, p in top.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"11", "12", "13", "14", "15"}  # lite0's stage 6 (blocks 11-14) and stage 7 (block 15)
    assert count_parameters(top) == count_parameters(frozen)  # freezing changes what trains, not the model
    with pytest.raises(UserError, match="from 0 to 8"):
        build_maskrcnn("efficientnet_lite0", 2, weights="none", trainable_layers=9)


def test_unknown_backbone_and_offline_torchvision_weights(offline):
    with pytest.raises(UserError, match="unknown backbone 'vgg16'"):
        build_maskrcnn("vgg16", 2)
    for name in ("resnet50", "mobilenet_v3_large"):
        assert "torchvision" in pretrained_weights_missing(name)
        with pytest.raises(UserError, match=f"--backbone {name} needs torchvision"):
            build_maskrcnn(name, 2)
    assert pretrained_weights_missing("efficientnet_lite2") is None
    assert set(BACKBONES) == {"resnet50", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_lite2"}


def test_checkpoint_round_trip_rebuilds_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = build_maskrcnn("efficientnet_lite0", 2, weights="none", min_size=(256,), max_size=320).eval()
    image = read_instances(BALLOON, "val", max_side=320).images[0].image
    save_checkpoint(tmp_path / "m.pt", model, {**META, "figures": {"segm_AP50": 0.5}})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["class_names"] == ["balloon"] and meta["figures"] == {"segm_AP50": 0.5}
    assert all(not p.is_floating_point() or p.dtype == torch.float32 for p in loaded.state_dict().values())
    original = model.state_dict()
    for key, value in loaded.state_dict().items():  # FP16 storage: equal up to half-precision rounding
        torch.testing.assert_close(value, original[key], rtol=1e-3, atol=1e-4)
    instances = predict(loaded, image, score_threshold=0.0)
    for instance in instances:
        assert instance.mask.shape == image.shape[:2] and instance.mask.dtype == bool and instance.name == "balloon"
        assert 0 <= instance.box[0] <= instance.box[2] <= image.shape[1]
    with pytest.raises(ValueError, match="class_names"):
        save_checkpoint(tmp_path / "bad.pt", model, {"backbone": "efficientnet_lite0"})


def test_unreadable_or_foreign_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a Mask R-CNN checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.slow
def test_shipped_model_reproduces_its_val_ap():
    from maskrcnn_train import evaluate

    assert SHIPPED.stat().st_size < 15e6
    model, meta = load_checkpoint(SHIPPED)
    figures = json.loads((SHIPPED.with_suffix(".json")).read_text())
    val = read_instances(BALLOON, "val", max_side=meta["data_max_side"])
    measured = evaluate(model, val, torch.device("cpu"), meta["mask_threshold"])
    assert measured["segm_AP50"] >= figures["segm_AP50"] - 0.02
    assert measured["bbox_AP50"] >= figures["bbox_AP50"] - 0.02
    image = val.images[0].image
    instances = predict(model, image)
    assert instances and all(instance.score >= meta["score_threshold"] for instance in instances)
    assert np.mean([instance.mask.mean() for instance in instances]) > 0
