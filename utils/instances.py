"""Instance-segmentation data: readers of VIA JSON (the balloon set) and COCO instance JSON (fruits-nuts), and what
every consumer of instance masks shares: the union share of masked pixels and drawing masks on an image.

    dataset = read_instances("assets/data/balloon", split="val")   # format auto-detected
    dataset.images[0].masks        # (N, H, W) bool, one per polygon; boxes (N, 4) xyxy from the masks

Polygons become masks by filling them (PIL, pixel centres inside); a box is the tight box of its mask, so box and mask
always agree. Images without annotations are kept (no instances: empty arrays). A missing or unreadable image file,
a polygon reaching more than POLYGON_TOLERANCE pixels outside its image and a JSON of neither format are UserErrors
(one line): a silently skipped image would change every figure measured on the split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils.cli import UserError
from utils.draw import draw_box
from utils.video import read_rgb_image

POLYGON_TOLERANCE = 2.0  # pixels: annotation tools let a vertex land just past the border; more is a wrong file
VIA_NAME = "via_region_data.json"


@dataclass
class InstanceImage:
    """One image and its instances: image (H, W, 3) RGB uint8, masks (N, H, W) bool, boxes (N, 4) float32 xyxy,
    labels (N,) int64 in 1..K (0 is the background)."""

    path: Path
    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class InstanceDataset:
    """The images of one split and the class names (class_names[k - 1] is label k)."""

    images: list[InstanceImage]
    class_names: list[str]
    source: str  # 'via' or 'coco'

    def __len__(self) -> int:
        return len(self.images)

    @property
    def instance_count(self) -> int:
        return sum(len(image) for image in self.images)


######################################################################################################################
# Shared pieces: image loading, polygons to masks, boxes from masks


def load_image(path: Path, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """RGB uint8 of an image file, downscaled so its longer side is at most max_side; returns (image, scale).

    Decoded by the one reader (utils.video.read_rgb_image: EXIF orientation, pixel limit, truncation check, colour
    modes), the same that mask_api serves through, so the model trains on the pixels it is later shown.
    """
    if not path.is_file():
        raise UserError(f"image file missing: {path} (listed in the annotations)")
    try:
        pixels = read_rgb_image(path)
    except UserError as error:
        raise UserError(f"{error}; remove it from the annotations or replace it") from None
    scale = 1.0
    if max_side and max(pixels.shape[:2]) > max_side:
        image = Image.fromarray(pixels)  # Pillow's bilinear resize, as the shipped model was trained with
        scale = max_side / max(image.size)
        pixels = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR))
    return pixels, scale


def polygon_mask(xs: Sequence[float], ys: Sequence[float], height: int, width: int, where: str) -> np.ndarray:
    """A filled polygon as an (H, W) bool mask; vertices beyond POLYGON_TOLERANCE outside the image are a UserError."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) != len(ys) or len(xs) < 3:
        raise UserError(f"{where}: a polygon needs at least 3 points with as many x as y (got {len(xs)} x, {len(ys)} y)")
    low, high_x, high_y = -POLYGON_TOLERANCE, width + POLYGON_TOLERANCE, height + POLYGON_TOLERANCE
    if xs.min() < low or ys.min() < low or xs.max() > high_x or ys.max() > high_y:
        raise UserError(
            f"{where}: polygon out of the image ({width}x{height}): x {xs.min():.0f}..{xs.max():.0f}, y {ys.min():.0f}..{ys.max():.0f}; "
            "wrong image or wrong annotation file?"
        )
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy tight boxes (x2, y2 exclusive: a 1-pixel mask is 1 wide); empty -> zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes[index] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def make_instance_image(path: Path, image: np.ndarray, masks: list[np.ndarray], labels: list[int]) -> InstanceImage:
    """Stack masks, drop empty ones (a polygon thinner than a pixel), derive boxes."""
    height, width = image.shape[:2]
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    keep = stacked.any(axis=(1, 2))
    stacked = stacked[keep]
    return InstanceImage(path, image, stacked, boxes_from_masks(stacked), np.asarray(labels, dtype=np.int64)[keep])


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable JSON file ({type(error).__name__})") from None


######################################################################################################################
# VIA (VGG Image Annotator) 1.x/2.x JSON


def read_via(
    json_path: str | Path, image_dir: str | Path | None = None, max_side: int | None = None, default_class: str = "object"
) -> InstanceDataset:
    """A VIA project/region JSON: {key: {filename, regions: {..} or [..]}} (2.x projects under _via_img_metadata).

    Polygons and rectangles are read. The class is the region's first string attribute when it has one, else
    default_class. Images are looked up in image_dir (default: the JSON's folder) and downscaled to max_side.
    """
    json_path = Path(json_path)
    data = read_json(json_path)
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not all(isinstance(entry, dict) and "filename" in entry for entry in data.values()) or not data:
        raise UserError(f"{json_path}: not a VIA region JSON (expected {{key: {{filename, regions}}}})")
    image_dir = Path(image_dir) if image_dir else json_path.parent
    class_names: list[str] = []
    images = []
    for entry in sorted(data.values(), key=lambda entry: entry["filename"]):
        path = image_dir / entry["filename"]
        image, scale = load_image(path, max_side)
        height, width = image.shape[:2]
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        masks, labels = [], []
        for number, region in enumerate(regions):
            shape = region.get("shape_attributes", {})
            where = f"{json_path.name}: {entry['filename']} region {number}"
            if shape.get("name") in ("polygon", "polyline"):
                xs, ys = shape["all_points_x"], shape["all_points_y"]
            elif shape.get("name") == "rect":
                x, y, w, h = shape["x"], shape["y"], shape["width"], shape["height"]
                xs, ys = [x, x + w, x + w, x], [y, y, y + h, y + h]
            else:
                raise UserError(f"{where}: shape {shape.get('name')!r} not supported (polygon, polyline, rect)")
            masks.append(polygon_mask([x * scale for x in xs], [y * scale for y in ys], height, width, where))
            attributes = [value for value in (region.get("region_attributes") or {}).values() if isinstance(value, str) and value]
            name = attributes[0] if attributes else default_class
            if name not in class_names:
                class_names.append(name)
            labels.append(class_names.index(name) + 1)
        images.append(make_instance_image(path, image, masks, labels))
    return InstanceDataset(images, class_names or [default_class], "via")


######################################################################################################################
# COCO instance JSON


def read_coco(json_path: str | Path, image_dir: str | Path | None = None, max_side: int | None = None) -> InstanceDataset:
    """A COCO instances JSON (images, annotations with polygon or RLE segmentation, categories); labels are the
    categories in id order mapped to 1..K. Images are looked up in image_dir (default: the JSON's folder)."""
    from pycocotools import mask as coco_mask

    json_path = Path(json_path)
    data = read_json(json_path)
    if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
        raise UserError(f"{json_path}: not a COCO instances JSON (expected images, annotations and categories)")
    categories = sorted(data["categories"], key=lambda category: category["id"])
    label_of = {category["id"]: index + 1 for index, category in enumerate(categories)}
    image_dir = Path(image_dir) if image_dir else json_path.parent
    by_image: dict[int, list[dict]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images = []
    for info in sorted(data["images"], key=lambda info: info["id"]):
        path = image_dir / info["file_name"]
        image, scale = load_image(path, max_side)
        height, width = image.shape[:2]
        masks, labels = [], []
        for annotation in by_image.get(info["id"], []):
            where = f"{json_path.name}: {info['file_name']} annotation {annotation.get('id')}"
            if annotation["category_id"] not in label_of:
                raise UserError(f"{where}: category_id {annotation['category_id']} is not among the categories")
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):  # polygons: one instance may have several parts
                mask = np.zeros((height, width), dtype=bool)
                for polygon in segmentation:
                    xs, ys = polygon[0::2], polygon[1::2]
                    mask |= polygon_mask([x * scale for x in xs], [y * scale for y in ys], height, width, where)
            else:  # RLE at the original size
                if isinstance(segmentation["counts"], list):
                    segmentation = coco_mask.frPyObjects(segmentation, *segmentation["size"])
                mask = coco_mask.decode(segmentation).astype(bool)
                if scale != 1.0:
                    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
            masks.append(mask)
            labels.append(label_of[annotation["category_id"]])
        images.append(make_instance_image(path, image, masks, labels))
    return InstanceDataset(images, [category["name"] for category in categories], "coco")


######################################################################################################################
# A data root: format detection and splits


def detect_format(json_path: Path) -> str:
    """'via' or 'coco' from the JSON's shape; anything else is a UserError."""
    data = read_json(json_path)
    if isinstance(data, dict) and all(key in data for key in ("images", "annotations", "categories")):
        return "coco"
    if isinstance(data, dict) and (
        "_via_img_metadata" in data or (data and all(isinstance(v, dict) and "filename" in v for v in data.values()))
    ):
        return "via"
    raise UserError(f"{json_path}: neither a VIA region JSON nor a COCO instances JSON")


def find_split_json(root: Path, split: str) -> Path:
    """The annotation JSON of `split`: root/split/via_region_data.json, root/split/*.json or root/annotations/*split*.json."""
    folder = root / split
    candidates = [folder / VIA_NAME] if (folder / VIA_NAME).is_file() else sorted(folder.glob("*.json")) if folder.is_dir() else []
    candidates += sorted((root / "annotations").glob(f"*{split}*.json")) if not candidates else []
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(path.name for path in candidates)
        raise UserError(f"--data {root}: expected one annotation JSON for split {split!r} in {folder} (found {found})")
    return candidates[0]


def read_instances(
    root: str | Path, split: str, data_format: str = "auto", max_side: int | None = None, default_class: str | None = None
) -> InstanceDataset:
    """One split of a data root laid out as root/<split>/(via_region_data.json | *.json) + images. A VIA class
    without attributes is named after the root folder ('balloon'). data_format: auto, via or coco."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder")
    json_path = find_split_json(root, split)
    kind = detect_format(json_path) if data_format == "auto" else data_format
    if kind == "via":
        return read_via(json_path, max_side=max_side, default_class=default_class or root.name)
    if kind == "coco":
        return read_coco(json_path, max_side=max_side)
    raise UserError(f"unknown format {data_format!r}; choose auto, via or coco")


######################################################################################################################
# What consumers of masks share


def masked_share(masks: np.ndarray | Sequence[np.ndarray]) -> float:
    """Share (0..1) of the image's pixels covered by the UNION of the masks: a pixel under two masks counts once.
    No masks -> 0.0 (an empty (0, H, W) array or list)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] == 0 or masks[0].size == 0:
        return 0.0
    return float(masks.any(axis=0).mean())


PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)],
    dtype=np.float32,
)  # RGB, distinct on photos


def draw_masks(
    image: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float] | None,
    names: Sequence[str],
    alpha: float = 0.5,
) -> np.ndarray:
    """A copy of an RGB uint8 image with each mask blended in its own colour, its outline, box and 'name score' label.
    names[k - 1] is the name of label k."""
    import cv2

    canvas = image.astype(np.float32)
    masks = np.asarray(masks, dtype=bool)
    for index, mask in enumerate(masks):
        color = PALETTE[index % len(PALETTE)]
        canvas[mask] = canvas[mask] * (1 - alpha) + color * alpha
    canvas = canvas.round().clip(0, 255).astype(np.uint8)
    for index, mask in enumerate(masks):
        color = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, color, 2, cv2.LINE_AA)
        box = boxes_from_masks(mask[None])[0]
        label = int(labels[index])
        name = names[label - 1] if 1 <= label <= len(names) else str(label)
        text = name if scores is None else f"{name} {float(scores[index]):.2f}"
        draw_box(canvas, box, color, text, thickness=2)
    return canvas
