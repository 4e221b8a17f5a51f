"""COCO instances JSON: boxes, box labels, semantic masks and image-level labels."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .base import MISSING_VALUES, BaseAdapter, inside, name_list, read_image, value_stats
from .errors import DataError
from .paint import paint_largest_first, polygons_to_rle

_KNOWN_KEYS = ("boxes", "box_labels", "mask", "labels", "values", "instances")
_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_IMAGE = ("id", "file_name", "width", "height")
_REQUIRED_ANN = ("image_id", "category_id", "bbox")
_REQUIRED_CAT = ("id", "name")


class CocoAdapter(BaseAdapter):
    """A COCO-style instances annotation file plus its image folder.

    Args:
        ann_file: path to the instances JSON (``images``, ``annotations``, ``categories``).
        img_dir: folder the images' ``file_name`` entries are relative to.
        provides: target keys to produce, any of ``boxes``, ``box_labels``, ``mask``, ``labels``
            (and ``values``, which is added anyway when ``value_fields`` is given), ``instances``
            (one RLE per object, below; dropped when no annotation has a usable segmentation).
            Masks are only rasterised when ``mask`` is requested.
        min_box_size: boxes whose width or height (after clipping to the image) is below this
            many pixels are dropped and counted in ``stats()["degenerate_boxes"]``.
        background: name of the background class of the *mask* id space, or ``None``.
        value_fields: numeric fields of the ``images[]`` records (e.g. ``"age": 31``) given as
            the image's ``values`` (``dict[str, float]``); ``value_names`` lists them. Every
            image is checked at construction: a field that is not a finite number (a string, a
            bool, NaN) raises ``DataError`` naming the file, the image and the field.
        missing_values: what an image without one of the fields (or with ``null``) means:
            ``"error"`` raises ``DataError`` at construction naming the file, image and field;
            ``"unlabelled"`` leaves that name out of the image's ``values``.
        count_fields: names among ``value_fields`` that count the image's objects. Each must
            equal the number of non-crowd boxes the adapter keeps for its image (checked at
            construction; degenerate boxes are not kept), and ``values_follow`` maps it to
            ``"boxes"``, so that a training crop re-counts the objects whose box centre stays in view. Needs
            ``boxes`` in ``provides``.
        allow_outside_root: read a ``file_name`` that leaves ``img_dir`` (``../x.jpg``, an
            absolute path); by default that is a ``DataError`` naming the file and the image.

    Class id spaces:

    * ``classes`` are the category names sorted by COCO category id; native id ``k`` is the
      k-th category. ``box_labels`` and ``labels`` use this space.
    * ``mask_classes`` is the id space of ``mask``. With ``background="background"`` (default)
      it is ``["background"] + classes``: value 0 is background and category ``k`` is written
      as ``k + 1``. With ``background=None`` it equals ``classes``: category ``k`` is written as
      ``k`` and unlabelled pixels are 255 (ignore).

    In the mask, overlapping instances are painted largest first, so the smaller instance ends
    up on top. Crowd regions (``iscrowd=1``) are then set to 255, as are the boxes of
    non-crowd annotations that carry no usable segmentation. Crowd annotations give no boxes;
    with ``boxes``, an image that has crowd regions also gets ``crowd_boxes`` [K,4] xyxy and
    ``crowd_labels`` [K], which evaluation hands to COCOeval as ``iscrowd`` ground truth (a
    detection on a crowd region is then neither a hit nor a false positive) and training ignores.

    For evaluation, ``boxes`` come with ``box_areas`` float64 [N] (and ``crowd_boxes`` with
    ``crowd_areas`` [K]): each annotation's ``area`` field in original pixels (for COCO the
    segmentation's pixel area), which COCOeval's small / medium / large split uses rather than
    the box area. An annotation without ``area`` (or with ``null``) gets its kept box's area.

    ``labels`` is the sorted set of categories of the image's non-crowd annotations (boxes
    dropped as degenerate still count). Images without annotations are valid negatives:
    ``boxes`` of shape ``[0, 4]``, empty ``labels`` and an all-background mask.

    ``values`` (with ``value_fields``) is ``{name: float}`` from the image's record, without
    the names it lacks (``missing_values="unlabelled"``).

    ``instances`` gives, per non-crowd annotation with a usable segmentation and a kept box,
    ``instance_rles`` (pycocotools RLE dicts, original pixels), ``instance_boxes`` float32
    ``[N,4]`` (the annotation's clipped box), ``instance_labels`` int64 ``[N]`` and
    ``instance_areas`` float64 ``[N]``; crowd regions come as ``instance_crowd_rles`` and
    ``instance_crowd_labels``. A polygon of fewer than 3 points is skipped and counted
    (``stats()["short_polygons"]``); an RLE whose size is not the image's is a ``DataError``.
    """

    labels_follow = "box_labels"

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        provides: Sequence[str] = ("boxes", "box_labels", "mask", "labels", "instances"),
        min_box_size: float = 1.0,
        background: str | None = "background",
        value_fields: Sequence[str] = (),
        missing_values: str = "error",
        count_fields: Sequence[str] = (),
        allow_outside_root: bool = False,
    ):
        self.ann_file = str(ann_file)
        self.img_dir = str(img_dir)
        self.allow_outside_root = bool(allow_outside_root)
        unknown = [k for k in provides if k not in _KNOWN_KEYS]
        if unknown:
            raise ValueError(f"CocoAdapter cannot provide {unknown}; choose from {list(_KNOWN_KEYS)}")
        self.value_names: list[str] = name_list(value_fields, "value_fields", allow_empty=True)
        counts = name_list(count_fields, "count_fields", allow_empty=True)
        if missing_values not in MISSING_VALUES:
            raise ValueError(f"missing_values must be one of {list(MISSING_VALUES)}, got {missing_values!r}")
        if "values" in provides and not self.value_names:
            raise ValueError("CocoAdapter provides 'values' only with value_fields naming them")
        stray = [n for n in counts if n not in self.value_names]
        if stray:
            raise ValueError(f"count_fields {stray} are not among value_fields {self.value_names}")
        if counts and "boxes" not in provides:
            raise ValueError("count_fields need 'boxes' in provides (a training crop re-counts the boxes)")
        self.provides = tuple(provides) + (("values",) if self.value_names and "values" not in provides else ())
        self.missing_values = missing_values
        self.values_follow: dict[str, str] = {name: "boxes" for name in counts}
        self.min_box_size = float(min_box_size)
        self.background = background

        data = self._read_json()
        self._validate(data)
        self._values = self._read_values(data["images"])
        self._assign_missing_ann_ids(data["annotations"])

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.cat_to_native: dict[int, int] = {cid: k for k, cid in enumerate(self.cat_ids)}
        self.classes: list[str] = [str(c["name"]) for c in cats]
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({n for n in self.classes if self.classes.count(n) > 1})
            raise DataError(self.ann_file, f"duplicate category names {dup}")
        if background is not None:
            if background in self.classes:
                raise DataError(
                    self.ann_file,
                    f"category name {background!r} clashes with the mask background class; "
                    "pass background=None or another name",
                )
            self.mask_classes: list[str] = [background] + self.classes
        else:
            self.mask_classes = list(self.classes)
        if "mask" in self.provides and len(self.mask_classes) > 255:
            raise DataError(self.ann_file, f"{len(self.mask_classes)} mask classes do not fit uint8 ids")

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        self._index(data)
        self._check_counts()

    # ------------------------------------------------------------------ parsing and validation
    def _read_json(self) -> dict:
        if not os.path.isfile(self.ann_file):
            raise DataError(self.ann_file, "annotation file not found")
        try:
            with open(self.ann_file, "rb") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(self.ann_file, f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
        except UnicodeDecodeError as e:
            raise DataError(self.ann_file, f"not valid JSON (not UTF-8 text: {e.reason})") from None

    def _validate(self, d) -> None:
        f = self.ann_file
        if not isinstance(d, dict):
            raise DataError(f, f"expected a JSON object with keys {list(_REQUIRED_TOP)}, got {type(d).__name__}")
        for key in _REQUIRED_TOP:
            if key not in d:
                raise DataError(f, f"missing required key '{key}' (a COCO file needs {list(_REQUIRED_TOP)})")
            if not isinstance(d[key], list):
                raise DataError(f, f"'{key}' must be a list, got {type(d[key]).__name__}")
        for j, c in enumerate(d["categories"]):
            for key in _REQUIRED_CAT:
                if not isinstance(c, dict) or key not in c:
                    raise DataError(f, f"category #{j} lacks required key '{key}'")
        cat_ids = [c["id"] for c in d["categories"]]
        if len(set(cat_ids)) != len(cat_ids):
            raise DataError(f, "duplicate category ids in 'categories'")
        img_ids = set()
        for j, im in enumerate(d["images"]):
            for key in _REQUIRED_IMAGE:
                if not isinstance(im, dict) or key not in im:
                    raise DataError(f, f"image #{j} lacks required key '{key}'")
            if im["id"] in img_ids:
                raise DataError(f, f"duplicate image id {im['id']}")
            if int(im["width"]) <= 0 or int(im["height"]) <= 0:
                raise DataError(f, f"image {im['id']} has size {im['width']}x{im['height']}")
            img_ids.add(im["id"])
        cat_set = set(cat_ids)
        for j, a in enumerate(d["annotations"]):
            if not isinstance(a, dict):
                raise DataError(f, f"annotation #{j} is not an object")
            name = f"annotation {a['id']}" if "id" in a else f"annotation #{j}"
            for key in _REQUIRED_ANN:
                if key not in a:
                    raise DataError(f, f"{name} lacks required key '{key}'")
            if a["category_id"] not in cat_set:
                raise DataError(f, f"{name} has category_id {a['category_id']} not in categories")
            if a["image_id"] not in img_ids:
                raise DataError(f, f"{name} has image_id {a['image_id']} not in images")
            b = a["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
                raise DataError(f, f"{name} has bbox {b!r}; expected [x, y, width, height]")
            area = a.get("area")  # optional; COCOeval's size ranges use it
            if area is not None and not _is_area(area):
                raise DataError(f, f"{name} has area {area!r}; expected a finite number >= 0")

    def _read_values(self, images: list) -> list[dict[str, float]]:
        """The ``value_fields`` of each image record, as floats; checks every image."""
        out = []
        for im in images:
            values = {}
            for name in self.value_names:
                v = im.get(name)
                if v is None:
                    if self.missing_values == "error":
                        raise DataError(
                            self.ann_file,
                            f"{_image_name(im)}: no field {name!r} (pass missing_values='unlabelled' to "
                            "allow images without it)",
                        )
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(self.ann_file, f"{_image_name(im)}: field {name!r} is not a number: {v!r}")
                try:
                    f = float(v)
                except OverflowError:  # an int too large for a float
                    f = math.inf
                if not math.isfinite(f):
                    raise DataError(self.ann_file, f"{_image_name(im)}: field {name!r} is not a finite number: {v!r}")
                values[name] = f
            out.append(values)
        return out

    def _check_counts(self) -> None:
        """Each count field equals the number of non-crowd boxes kept for its image."""
        for name in self.values_follow:
            for im, values, boxes, inst in zip(self._images, self._values, self._boxes, self._instances):
                if name in values and values[name] != len(boxes):
                    dropped = len(inst) - len(boxes)
                    why = f" ({dropped} more dropped as smaller than min_box_size={self.min_box_size:g})"
                    raise DataError(
                        self.ann_file,
                        f"{_image_name(im)}: count field {name!r} is {values[name]:g} but the image has "
                        f"{len(boxes)} non-crowd boxes{why if dropped else ''}",
                    )

    @staticmethod
    def _assign_missing_ann_ids(anns: list) -> None:
        # pycocotools indexes annotations by "id"; give id-less ones fresh unique ids.
        missing = [a for a in anns if "id" not in a]
        if missing:
            start = max((int(a["id"]) for a in anns if "id" in a), default=0) + 1
            for j, a in enumerate(missing):
                a["id"] = start + j

    # ------------------------------------------------------------------ indexing
    def _index(self, d: dict) -> None:
        self._images: list[dict] = list(d["images"])
        self._paths = [inside(self.img_dir, str(im["file_name"]), self.allow_outside_root, self.ann_file,
                              _image_name(im)) for im in self._images]
        n_img = len(self._images)
        self._boxes: list[np.ndarray] = []
        self._box_labels: list[np.ndarray] = []
        self._box_areas: list[np.ndarray] = []  # each kept box's annotation area (original pixels)
        self._labels: list[np.ndarray] = []
        self._instances: list[list[int]] = []  # non-crowd ann ids of each image
        self._crowds: list[list[int]] = []  # crowd ann ids of each image
        self._inst: list[list[tuple[int, tuple, float]]] = []  # (ann id, kept box, area) with a segmentation
        degenerate = clipped = crowd = no_segm = empty = boxless = short = 0
        for im in self._images:
            h, w = float(im["height"]), float(im["width"])
            anns = self.coco.imgToAnns.get(im["id"], [])
            if not anns:
                empty += 1
            boxes, box_labels, areas, inst, crowds, segs = [], [], [], [], [], []
            for a in anns:
                short += _short_polygons(a)
                if a.get("iscrowd", 0):
                    crowd += 1
                    crowds.append(a["id"])
                    continue
                k = self.cat_to_native[a["category_id"]]
                inst.append(a["id"])
                if not _has_segmentation(a):
                    no_segm += 1
                x, y, bw, bh = (float(v) for v in a["bbox"])
                x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if max(abs(x1 - x), abs(y1 - y), abs(x2 - x - bw), abs(y2 - y - bh)) > 0.5:
                    clipped += 1  # reached past the image by more than half a pixel
                if x2 - x1 < self.min_box_size or y2 - y1 < self.min_box_size:
                    degenerate += 1
                else:
                    boxes.append((x1, y1, x2, y2))
                    box_labels.append(k)
                    areas.append(_area(a, x1, y1, x2, y2))
                    if _has_segmentation(a):
                        segs.append((a["id"], (x1, y1, x2, y2), areas[-1]))
            boxless += bool(inst) and not boxes  # objects annotated, none left as a box
            self._boxes.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            self._box_labels.append(np.asarray(box_labels, dtype=np.int64))
            self._box_areas.append(np.asarray(areas, dtype=np.float64))
            cats = {self.cat_to_native[self.coco.anns[i]["category_id"]] for i in inst}
            self._labels.append(np.asarray(sorted(cats), dtype=np.int64))
            self._instances.append(inst)
            self._crowds.append(crowds)
            self._inst.append(segs)
        self._stats = {
            "images": n_img,
            "annotations": len(d["annotations"]),
            "boxes": int(sum(len(b) for b in self._boxes)),
            "degenerate_boxes": degenerate,
            "clipped_boxes": clipped,
            "images_left_without_boxes": boxless,
            "crowd_regions": crowd,
            "empty_images": empty,
            "anns_without_segmentation": no_segm,
            "short_polygons": short,
        }
        if "instances" in self.provides and not any(self._inst):
            self.provides = tuple(k for k in self.provides if k != "instances")

    # ------------------------------------------------------------------ adapter interface
    def __len__(self) -> int:
        return len(self._images)

    def path(self, i: int) -> str:
        return self._paths[i]

    def image_id(self, i: int) -> int:
        """The COCO image id of sample ``i``."""
        return self._images[i]["id"]

    def stats(self) -> dict:
        """Counts of images, annotations, boxes, etc.; with ``value_fields``, also ``values[name]``
        = ``count`` (images labelled), ``mean``, ``min``, ``max``."""
        out = dict(self._stats)
        if self.value_names:
            out["values"] = value_stats(self._values, self.value_names)
        return out

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        im = self._images[i]
        img = read_image(self._paths[i])
        h, w = int(im["height"]), int(im["width"])
        if img.shape[:2] != (h, w):
            raise DataError(
                self._paths[i],
                f"image size {img.shape[0]}x{img.shape[1]} differs from the annotation's "
                f"{h}x{w} ({self.ann_file})",
            )
        target: dict = {}
        if "boxes" in self.provides:
            target["boxes"] = self._boxes[i].copy()
            target["box_areas"] = self._box_areas[i].copy()  # for evaluation: COCO's size ranges
            if self._crowds[i]:  # for evaluation: COCOeval ignores detections on crowd regions
                target["crowd_boxes"], target["crowd_labels"], target["crowd_areas"] = self._crowd_boxes(i, h, w)
        if "box_labels" in self.provides:
            target["box_labels"] = self._box_labels[i].copy()
        # each segmentation as one RLE, once, for the mask and the instances alike
        rles = {aid: self._to_rle(self.coco.anns[aid], h, w) for aid in self._instances[i] + self._crowds[i]} \
            if {"mask", "instances"} & set(self.provides) else {}
        if "mask" in self.provides:
            target["mask"] = self._rasterise(i, h, w, rles)
        if "labels" in self.provides:
            target["labels"] = self._labels[i].copy()
        if "values" in self.provides:
            target["values"] = dict(self._values[i])
        if "instances" in self.provides:
            target.update(self._instances_of(i, rles))
        return img, target

    def _instances_of(self, i: int, rles: dict) -> dict:
        """The image's objects as RLEs (``rles``: ann id -> RLE or None) with their boxes, labels
        and areas; crowd regions apart."""
        kept = [(aid, box, area) for aid, box, area in self._inst[i] if rles[aid] is not None]
        label = lambda aid: self.cat_to_native[self.coco.anns[aid]["category_id"]]  # noqa: E731
        out = {"instance_rles": [rles[aid] for aid, _, _ in kept],
               "instance_boxes": np.asarray([box for _, box, _ in kept], np.float32).reshape(-1, 4),
               "instance_labels": np.asarray([label(aid) for aid, _, _ in kept], np.int64),
               "instance_areas": np.asarray([area for _, _, area in kept], np.float64)}
        crowd = [aid for aid in self._crowds[i] if rles[aid] is not None]
        if crowd:
            out["instance_crowd_rles"] = [rles[aid] for aid in crowd]
            out["instance_crowd_labels"] = np.asarray([label(aid) for aid in crowd], np.int64)
        return out

    def _crowd_boxes(self, i: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, labels, areas = [], [], []
        for aid in self._crowds[i]:
            a = self.coco.anns[aid]
            x, y, bw, bh = (float(v) for v in a["bbox"])
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
            if x2 > x1 and y2 > y1:
                boxes.append((x1, y1, x2, y2))
                labels.append(self.cat_to_native[a["category_id"]])
                areas.append(_area(a, x1, y1, x2, y2))
        return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                np.asarray(areas, np.float64))

    # ------------------------------------------------------------------ masks
    def _rasterise(self, i: int, h: int, w: int, segs: dict) -> np.ndarray:
        """The semantic mask from the image's RLEs (``segs``: ann id -> RLE or None)."""
        offset = 1 if self.background is not None else 0
        mask = np.full((h, w), 0 if self.background is not None else 255, dtype=np.uint8)
        rles, values, ignore_boxes = [], [], []
        for aid in self._instances[i]:
            a = self.coco.anns[aid]
            rle = segs[aid]
            if rle is None:
                ignore_boxes.append(a["bbox"])
                continue
            rles.append(rle)
            values.append(self.cat_to_native[a["category_id"]] + offset)
        paint_largest_first(mask, rles, values)
        crowd_rles = []
        for aid in self._crowds[i]:
            a = self.coco.anns[aid]
            rle = segs[aid]
            if rle is None:
                ignore_boxes.append(a["bbox"])
            else:
                crowd_rles.append(rle)
        if crowd_rles:
            merged = mask_utils.merge(crowd_rles) if len(crowd_rles) > 1 else crowd_rles[0]
            crowd = mask_utils.decode(merged)
            mask[crowd.astype(bool)] = 255
        for x, y, bw, bh in ignore_boxes:
            x1, y1 = int(np.floor(max(x, 0))), int(np.floor(max(y, 0)))
            x2, y2 = int(np.ceil(min(x + bw, w))), int(np.ceil(min(y + bh, h)))
            mask[y1:y2, x1:x2] = 255
        return mask

    def _to_rle(self, a: dict, h: int, w: int):
        """The annotation's segmentation as one RLE, or None when it has none usable."""
        segm = a.get("segmentation")
        try:
            if isinstance(segm, list):
                polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
                if not polys:
                    return None
                return polygons_to_rle(polys, h, w)
            if isinstance(segm, dict) and "counts" in segm and "size" in segm:
                if [int(v) for v in segm["size"]] != [h, w]:
                    raise DataError(
                        self.ann_file,
                        f"annotation {a['id']}: RLE size {segm['size']} differs from image size [{h}, {w}]",
                    )
                if isinstance(segm["counts"], list):
                    return mask_utils.frPyObjects(segm, h, w)
                return segm
        except DataError:
            raise
        except Exception as e:  # malformed polygons / RLE strings
            raise DataError(self.ann_file, f"annotation {a['id']}: cannot rasterise segmentation ({e})") from None
        return None


def _image_name(im: dict) -> str:
    return f"image id {im['id']} ({im['file_name']})"


def _is_area(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and v >= 0
    except OverflowError:  # an int too large for a float
        return False


def _area(a: dict, x1: float, y1: float, x2: float, y2: float) -> float:
    """The annotation's ``area`` field (COCOeval's size ranges), else the area of its kept box."""
    area = a.get("area")
    return float(area) if area is not None else (x2 - x1) * (y2 - y1)


def _short_polygons(a: dict) -> int:
    """How many of the annotation's polygons have fewer than 3 points (or an odd coordinate count)."""
    segm = a.get("segmentation")
    if not isinstance(segm, list):
        return 0
    return sum(1 for p in segm if not (isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0))


def _has_segmentation(a: dict) -> bool:
    segm = a.get("segmentation")
    if isinstance(segm, list):
        return any(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)
    return isinstance(segm, dict) and "counts" in segm
