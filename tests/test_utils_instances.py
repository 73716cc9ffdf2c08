import io
import json
import shutil

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from utils.cli import UserError
from utils.instances import boxes_from_masks, draw_masks, masked_share, read_coco, read_instances, read_via

BALLOON = REPO / "assets" / "data" / "balloon"
VAL_IMAGE = "24631331976_defa3bb61f_k.jpg"  # 413 wide, 640 high after the bundling downscale


def write_via(folder, regions_by_file):
    """A VIA 1.x JSON in `folder` for images already there: {filename: [(xs, ys), ...]}."""
    data = {}
    for filename, polygons in regions_by_file.items():
        regions = {
            str(k): {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}, "region_attributes": {}}
            for k, (xs, ys) in enumerate(polygons)
        }
        data[filename + "1"] = {"filename": filename, "size": 1, "regions": regions, "file_attributes": {}}
    (folder / "via_region_data.json").write_text(json.dumps(data))
    return folder / "via_region_data.json"


@pytest.fixture
def hand_root(tmp_path):
    """A VIA split with one real balloon image carrying a hand-made triangle and square, and one without regions."""
    split = tmp_path / "hand" / "val"
    split.mkdir(parents=True)
    shutil.copy(BALLOON / "val" / VAL_IMAGE, split / "a.jpg")
    shutil.copy(BALLOON / "val" / VAL_IMAGE, split / "b.jpg")
    write_via(split, {"a.jpg": [([10, 50, 10], [10, 10, 50]), ([100, 119.4, 119.4, 100], [200, 200, 219.4, 219.4])], "b.jpg": []})
    return tmp_path / "hand"


def test_via_reader_against_hand_checked_polygons(hand_root):
    data = read_instances(hand_root, "val")
    assert data.source == "via" and data.class_names == ["hand"]  # no region attribute: named after the root
    first, second = data.images
    assert first.image.shape == (640, 413, 3) and first.image.dtype == np.uint8
    assert first.labels.tolist() == [1, 1]
    # right triangle with legs of 40 px: 800 px by geometry, plus the outline PIL fills on the edges
    assert 800 <= first.masks[0].sum() <= 870
    assert first.boxes[0].tolist() == [10, 10, 51, 51]  # exclusive right/bottom edge
    assert first.masks[1].sum() == 20 * 20 and first.boxes[1].tolist() == [100, 200, 120, 220]
    assert not first.masks[0][45, 45] and first.masks[0][12, 12]  # outside / inside the hypotenuse
    assert len(second) == 0 and second.masks.shape == (0, 640, 413)  # kept although unannotated


def test_via_reader_on_the_bundled_balloon_split():
    data = read_instances(BALLOON, "val")
    assert len(data) == 13 and data.instance_count == 50 and data.class_names == ["balloon"]
    item = data.images[[image.path.name for image in data.images].index(VAL_IMAGE)]
    raw = json.loads((BALLOON / "val" / "via_region_data.json").read_text())
    region = next(entry for entry in raw.values() if entry["filename"] == VAL_IMAGE)["regions"]["0"]["shape_attributes"]
    xs, ys = np.array(region["all_points_x"]), np.array(region["all_points_y"])
    shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
    assert abs(item.masks[0].sum() - shoelace) / shoelace < 0.05
    assert np.allclose(item.boxes[0], [xs.min(), ys.min(), xs.max(), ys.max()], atol=1.5)
    half = read_via(BALLOON / "val" / "via_region_data.json", max_side=320)
    assert max(half.images[0].image.shape[:2]) == 320 and half.instance_count == 50


def test_coco_reader_matches_the_via_reader_on_the_same_polygons(tmp_path):
    via = read_via(BALLOON / "val" / "via_region_data.json")
    raw = json.loads((BALLOON / "val" / "via_region_data.json").read_text())
    chosen = sorted(entry["filename"] for entry in raw.values())[:2]
    images, annotations = [], []
    for image_id, filename in enumerate(chosen, start=10):
        shutil.copy(BALLOON / "val" / filename, tmp_path / filename)
        width, height = Image.open(tmp_path / filename).size
        images.append({"id": image_id, "file_name": filename, "width": width, "height": height})
        entry = next(entry for entry in raw.values() if entry["filename"] == filename)
        for region in entry["regions"].values():
            shape = region["shape_attributes"]
            polygon = [value for pair in zip(shape["all_points_x"], shape["all_points_y"], strict=True) for value in pair]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 7, "segmentation": [polygon], "iscrowd": 0}
            )
    shutil.copy(BALLOON / "val" / chosen[0], tmp_path / "empty.jpg")
    images.append({"id": 99, "file_name": "empty.jpg", "width": 413, "height": 640})
    categories = [{"id": 7, "name": "balloon"}, {"id": 3, "name": "kite"}]
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    coco = read_coco(tmp_path / "instances.json")
    assert coco.source == "coco" and coco.class_names == ["kite", "balloon"]  # categories in id order
    by_name = {item.path.name: item for item in via.images}
    for item in coco.images[:2]:
        assert item.labels.tolist() == [2] * len(item)
        np.testing.assert_array_equal(item.masks, by_name[item.path.name].masks)
        np.testing.assert_array_equal(item.boxes, by_name[item.path.name].boxes)
    assert len(coco.images[2]) == 0  # the image without annotations is kept


def test_boxes_from_masks():
    masks = np.zeros((2, 8, 10), dtype=bool)
    masks[0, 2:5, 3:7] = True
    assert boxes_from_masks(masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_masked_share_counts_overlaps_once():
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 0:5, 0:5] = True  # 25 px
    masks[1, 2:7, 2:7] = True  # 25 px, 9 of them shared with mask 0
    masks[2, 0:5, 0:5] = True  # a duplicate of mask 0: adds nothing
    assert masked_share(masks) == pytest.approx(41 / 100)
    assert masked_share(masks[:1]) == pytest.approx(0.25)
    assert masked_share(np.zeros((0, 10, 10), dtype=bool)) == 0.0
    assert masked_share([]) == 0.0


def test_draw_masks_changes_only_the_masked_area():
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    masks = np.zeros((1, 60, 80), dtype=bool)
    masks[0, 30:50, 40:70] = True
    drawn = draw_masks(image, masks, [1], [0.9], ["balloon"])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn[40, 55], image[40, 55])  # blended inside
    assert np.array_equal(drawn[55:, :30], image[55:, :30])  # far corner untouched
    assert np.array_equal(image, np.full((60, 80, 3), 100, dtype=np.uint8))  # the input is not drawn on


def test_exif_rotated_image_is_read_upright_as_mask_api_serves_it(tmp_path):
    """VIA draws polygons on the photo as a browser shows it (EXIF applied): the reader must turn it the same way,
    and give the pixels mask_api decodes from the same file (training and serving see the same image)."""
    import mask_api

    stored = np.zeros((48, 64, 3), np.uint8)  # 64 wide, 48 high as stored; a bright top-left corner
    stored[:16, :16] = 250
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display -> 48 wide, 64 high
    split = tmp_path / "turned" / "val"
    split.mkdir(parents=True)
    (split / "a.jpg").write_bytes(encode_jpeg(photo, exif))
    write_via(split, {"a.jpg": [([2, 40, 2], [30, 60, 60])]})  # y up to 60: only inside the upright image
    [item] = read_instances(tmp_path / "turned", "val").images
    assert item.image.shape == (64, 48, 3) and item.image[:16, -16:].min() > 200  # the corner turned to the top right
    assert np.array_equal(item.image, mask_api.decode_image((split / "a.jpg").read_bytes()))
    assert item.boxes[0].tolist() == [2, 30, 41, 61]


def encode_jpeg(image: Image.Image, exif: Image.Exif) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_bad_inputs_are_one_line_user_errors(hand_root, tmp_path):
    split = hand_root / "val"
    with pytest.raises(UserError, match="no such folder"):
        read_instances(tmp_path / "nowhere", "val")
    with pytest.raises(UserError, match="expected one annotation JSON"):
        read_instances(hand_root, "train")
    write_via(split, {"a.jpg": [([10, 700, 10], [10, 10, 50])]})
    with pytest.raises(UserError, match="polygon out of the image"):
        read_instances(hand_root, "val")
    write_via(split, {"gone.jpg": [([10, 50, 10], [10, 10, 50])]})
    with pytest.raises(UserError, match=r"image file missing: .*gone\.jpg"):
        read_instances(hand_root, "val")
    (split / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    write_via(split, {"broken.jpg": []})
    with pytest.raises(UserError, match=r"broken\.jpg: not a readable image .*; remove it from the annotations or replace it$"):
        read_instances(hand_root, "val")
    (split / "via_region_data.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="neither a VIA region JSON nor a COCO"):
        read_instances(hand_root, "val")
    (split / "via_region_data.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON"):
        read_instances(hand_root, "val")
