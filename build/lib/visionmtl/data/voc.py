"""Pascal VOC (a VOCdevkit year folder): boxes with ``difficult`` flags, palette masks, instances."""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import BaseAdapter, inside, name_list, read_image
from .errors import DataError

__all__ = ["IMAGE_SETS", "VOC_CLASSES", "VocAdapter", "read_index_png", "voc_palette"]

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IMAGE_SETS = ("auto", "Main", "Segmentation")
IGNORE = 255
_KNOWN_KEYS = ("boxes", "box_labels", "mask", "labels", "instances")
_MASK_KEYS = ("mask", "instances")  # the keys read from the PNGs
_XML_KEYS = ("boxes", "box_labels", "labels")  # the keys read from Annotations/*.xml
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC devkit's colour map (``VOClabelcolormap.m``): ``[n, 3]`` uint8, index -> RGB
    (1 = aeroplane ``(128, 0, 0)``, ..., 255 = the void border ``(224, 224, 192)``)."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out[i] = rgb
    return out


def read_index_png(path: str) -> np.ndarray:
    """A palette (or greyscale) PNG's pixel **indices** as HxW uint8, or DataError naming the file.

    PIL keeps a palette PNG's indices (OpenCV would expand them to the palette's colours).
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise DataError(path, "mask file not found")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(path, f"expected a palette PNG of class indices, got PIL mode {im.mode!r}")
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL: not an image, truncated, broken chunks
        raise DataError(path, f"cannot decode mask ({e})") from None


class VocAdapter(BaseAdapter):
    """A VOCdevkit year folder (``root``, e.g. ``VOCdevkit/VOC2012``).

    Layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``,
    ``ImageSets/Segmentation/<split>.txt``, ``SegmentationClass/<id>.png`` and
    ``SegmentationObject/<id>.png``.

    Args:
        root: the year folder.
        split: the image list, ``ImageSets/<image_set>/<split>.txt`` (one id per line; a class
            list's trailing ``1``/``-1`` column is ignored).
        provides: target keys, any of ``boxes``, ``box_labels``, ``labels`` (from the XML files),
            ``mask`` (``SegmentationClass``) and ``instances`` (``SegmentationObject``; dropped
            when no listed image has an object PNG).
        image_set: ``"Main"``, ``"Segmentation"`` or ``"auto"`` (default): ``Segmentation`` when
            ``mask`` or ``instances`` is asked for, else ``Main``. With ``Segmentation`` every
            listed image must have its class PNG; with ``Main`` an image without one has no
            ``mask`` (unlabelled for segmentation; ``stats()["images_with_mask"]`` counts the rest).
        classes: the object names, in native id order; default the 20 VOC classes. An object
            whose name is not listed is an error naming the XML file.
        background: the name of mask value 0, or ``None``. With ``"background"`` (default)
            ``mask_classes`` is ``["background"] + classes`` and the PNG's indices are kept
            (0 = background, ``k + 1`` = ``classes[k]``), as in the COCO adapter. With ``None``
            ``mask_classes`` equals ``classes``: index ``k + 1`` becomes ``k`` and background 255.
        min_box_size: boxes narrower or lower than this many pixels after clipping to the image
            are dropped and counted in ``stats()["degenerate_boxes"]``.
        img_suffix: the image files' suffix in ``JPEGImages``.
        allow_outside_root: read an id that leaves ``JPEGImages`` (``../x``, an absolute path);
            by default that is a ``DataError`` naming the list file and line.

    Boxes: VOC's ``bndbox`` holds 1-based, inclusive pixel indices: ``xmin=1, xmax=W`` covers a
    whole image ``W`` pixels wide. The project's boxes are xyxy in continuous pixel coordinates
    (a pixel ``i`` spans ``[i, i + 1)``, 0-based), so ``x1 = xmin - 1``, ``y1 = ymin - 1``,
    ``x2 = xmax``, ``y2 = ymax`` (detectron2's ``pascal_voc.py`` reads them the same way); float
    coordinates, as some tools write, are converted by the same rule. Boxes are clipped to the
    image (``stats()["clipped_boxes"]`` counts those that reached more than half a pixel past it).

    ``difficult`` objects are not training boxes. An image with any gets ``crowd_boxes`` [K,4]
    and ``crowd_labels`` [K] (with ``boxes``), which evaluation hands to COCOeval as ``iscrowd``
    ground truth, as the COCO adapter does for crowd regions: a detection that matches a
    difficult box is neither a hit nor a false positive, and a missed one is not a miss.
    ``labels`` is the sorted set of classes of the non-difficult objects (as COCO's leaves out
    crowd regions), and it follows ``box_labels`` under training crops.

    Masks: ``SegmentationClass`` PNGs are palette images whose indices are the classes
    (0 = background, ``k + 1`` = ``classes[k]``, 255 = the void border, kept as ignore). An index
    above the class count that is not 255 is a ``DataError`` naming the PNG and the index.
    ``instances`` (opt-in; for ``type: instance`` tasks) gives one object per instance index
    1..254 present in the ``SegmentationObject`` PNG, in index order: ``instance_rles``
    (pycocotools RLE dicts of the index's pixels; the void border, 255, belongs to no instance),
    ``instance_boxes`` float32 ``[N,4]`` (the tight box of its pixels: ``x1`` = the first column,
    ``x2`` = the last column + 1, rows alike) and ``instance_labels`` int64 ``[N]`` (its native
    class, the class PNG's most frequent class under it). Images without an object PNG (or
    without its class PNG) have none of these keys.

    A per-image problem found while reading the XML files (not well-formed, no ``size``, an
    unknown class, a bad ``bndbox``) or a missing file does not stop the constructor: it is
    logged once and raised by ``load(i)`` for that image, so ``data.on_bad_sample: skip`` skips
    and counts it and ``error`` stops with the file named; ``stats()["bad_annotations"]`` counts them.
    """

    labels_follow = "box_labels"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        provides: Sequence[str] = ("boxes", "box_labels", "labels"),
        image_set: str = "auto",
        classes: Sequence[str] | None = None,
        background: str | None = "background",
        min_box_size: float = 1.0,
        img_suffix: str = ".jpg",
        allow_outside_root: bool = False,
    ):
        self.root = str(root)
        self.split = str(split)
        unknown = [k for k in provides if k not in _KNOWN_KEYS]
        if unknown:
            hint = " ('instance_masks' is now 'instances')" if "instance_masks" in unknown else ""
            raise ConfigError(f"VocAdapter cannot provide {unknown}; choose from {list(_KNOWN_KEYS)}{hint}")
        self.provides = tuple(provides)
        if image_set not in IMAGE_SETS:
            raise ConfigError(f"image_set must be one of {list(IMAGE_SETS)}, got {image_set!r}")
        wants_masks = bool(set(_MASK_KEYS) & set(self.provides))
        self.image_set = ("Segmentation" if wants_masks else "Main") if image_set == "auto" else image_set
        try:
            self.classes: list[str] = name_list(classes, "classes") if classes is not None else list(VOC_CLASSES)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if len(self.classes) > 254:
            raise ConfigError(f"{len(self.classes)} classes do not fit a palette PNG "
                              "(1..254; 0 = background, 255 = ignore)")
        if background is not None and background in self.classes:
            raise ConfigError(f"class name {background!r} clashes with the mask background; pass background=None "
                              "or another name")
        self.background = background
        self.mask_classes: list[str] = ([background] if background is not None else []) + self.classes
        self.min_box_size = float(min_box_size)
        self.img_suffix = str(img_suffix)
        self.allow_outside_root = bool(allow_outside_root)
        # PNG index -> mask value; indices above the class count (other than 255) are errors
        n = len(self.classes)
        self._lut = np.full(256, IGNORE, np.uint8)
        self._lut[: n + 1] = np.arange(n + 1) if background is not None else np.r_[IGNORE, np.arange(n)]
        self._invalid = np.ones(256, bool)
        self._invalid[: n + 1] = False
        self._invalid[IGNORE] = False

        if not os.path.isdir(self.root):
            raise DataError(self.root, "VOC folder not found (expected a year folder such as VOCdevkit/VOC2012)")
        self._ids, self._img_paths = self._read_list()
        self._index()

    # ------------------------------------------------------------------ the image list
    def _read_list(self) -> tuple[list[str], list[str]]:
        folder = os.path.join(self.root, "ImageSets", self.image_set)
        path = os.path.join(folder, self.split + ".txt")
        if not os.path.isfile(path):
            have = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt") and "_" not in f) \
                if os.path.isdir(folder) else []
            raise DataError(path, f"image list not found (ImageSets/{self.image_set} has: "
                                  f"{', '.join(have) or 'nothing'})")
        img_dir = os.path.join(self.root, "JPEGImages")
        ids, paths, seen = [], [], set()
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                parts = line.split()
                if not parts or parts[0] in seen:
                    continue
                seen.add(parts[0])
                ids.append(parts[0])
                paths.append(inside(img_dir, parts[0] + self.img_suffix, self.allow_outside_root, path, f"line {n}"))
        if not ids:
            raise DataError(path, "no images listed")
        return ids, paths

    # ------------------------------------------------------------------ the XML files
    def _index(self) -> None:
        need_xml = bool(set(_XML_KEYS) & set(self.provides))
        seg_dir = os.path.join(self.root, "SegmentationClass")
        pngs = set(os.listdir(seg_dir)) if os.path.isdir(seg_dir) else set()
        obj_dir = os.path.join(self.root, "SegmentationObject")
        obj_pngs = set(os.listdir(obj_dir)) if os.path.isdir(obj_dir) else set()
        self._errors: dict[int, DataError] = {}
        self._sizes: list[tuple[int, int] | None] = []
        self._boxes, self._box_labels, self._labels = [], [], []
        self._crowd_boxes, self._crowd_labels = [], []
        self._has_mask, self._has_objects = [], []
        st = dict.fromkeys(("objects", "difficult", "degenerate_boxes", "clipped_boxes", "images_left_without_boxes",
                            "empty_images"), 0)
        for i, vid in enumerate(self._ids):
            flat = os.path.basename(vid) == vid  # an id with folders is looked up on disk
            self._has_mask.append(vid + ".png" in pngs if flat else os.path.isfile(self.mask_path(i)))
            self._has_objects.append(vid + ".png" in obj_pngs if flat else os.path.isfile(self.object_path(i)))
            if self.image_set == "Segmentation" and "mask" in self.provides and not self._has_mask[i]:
                self._errors[i] = DataError(self.mask_path(i), "mask file not found (the image is in "
                                                               f"ImageSets/Segmentation/{self.split}.txt)")
            size, boxes, labels, crowd_boxes, crowd_labels, present = None, [], [], [], [], set()
            if need_xml:
                xml = self.xml_path(i)
                try:
                    w, h, objects = self._parse(xml)
                except DataError as e:
                    self._errors.setdefault(i, e)
                    objects, w, h = [], 0, 0
                else:
                    size = (h, w)
                st["objects"] += len(objects)
                st["empty_images"] += size is not None and not objects
                for x1, y1, x2, y2, k, difficult in objects:
                    c = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
                    if difficult:
                        st["difficult"] += 1
                        if c[2] > c[0] and c[3] > c[1]:
                            crowd_boxes.append(c)
                            crowd_labels.append(k)
                        continue
                    present.add(k)
                    if max(abs(a - b) for a, b in zip(c, (x1, y1, x2, y2))) > 0.5:
                        st["clipped_boxes"] += 1
                    if c[2] - c[0] < self.min_box_size or c[3] - c[1] < self.min_box_size:
                        st["degenerate_boxes"] += 1
                    else:
                        boxes.append(c)
                        labels.append(k)
                st["images_left_without_boxes"] += bool(present) and not boxes
            self._sizes.append(size)
            self._boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
            self._box_labels.append(np.asarray(labels, np.int64))
            self._crowd_boxes.append(np.asarray(crowd_boxes, np.float32).reshape(-1, 4))
            self._crowd_labels.append(np.asarray(crowd_labels, np.int64))
            self._labels.append(np.asarray(sorted(present), np.int64))
        self._stats = {"images": len(self._ids), **st, "boxes": int(sum(len(b) for b in self._boxes)),
                       "bad_annotations": len(self._errors)}
        if set(_MASK_KEYS) & set(self.provides):
            self._stats["images_with_mask"] = int(sum(self._has_mask))
        if "instances" in self.provides:
            self._stats["images_with_objects"] = int(sum(self._has_objects))
            if not any(self._has_objects):  # no per-object masks at all: an instance task here is a config error
                self.provides = tuple(k for k in self.provides if k != "instances")
        if self._errors:
            first = self._errors[min(self._errors)]
            log.warning("%s: %d of %d images cannot be used (first: %s); each fails when it is loaded "
                        "(data.on_bad_sample decides)", self.root, len(self._errors), len(self._ids), first)

    def _parse(self, path: str) -> tuple[int, int, list[tuple]]:
        """``(width, height, [(x1, y1, x2, y2, native id, difficult), ...])`` of one XML file."""
        if not os.path.isfile(path):
            raise DataError(path, "annotation file not found")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise DataError(path, f"not well-formed XML ({e})") from None
        except OSError as e:
            raise DataError(path, f"cannot read the annotation file ({e.strerror or e})") from None
        size = root.find("size")
        if size is None or size.find("width") is None or size.find("height") is None:
            raise DataError(path, "no <size> with <width> and <height> (VOC annotations give the image size)")
        w, h = (_number(path, size, key, "<size>") for key in ("width", "height"))
        if w != int(w) or h != int(h) or w <= 0 or h <= 0:
            raise DataError(path, f"<size> is {w:g}x{h:g}; width and height must be whole numbers > 0")
        index = {c: k for k, c in enumerate(self.classes)}
        objects = []
        for j, obj in enumerate(root.findall("object"), start=1):
            name = (obj.findtext("name") or "").strip()
            where = f"object #{j}" + (f" ({name})" if name else "")
            if not name:
                raise DataError(path, f"{where} has no <name>")
            if name not in index:
                raise DataError(path, f"{where}: class {name!r} is not among the {len(self.classes)} classes "
                                      f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}); "
                                      "list it in the dataset's classes")
            difficult = (obj.findtext("difficult") or "0").strip().lower()
            if difficult not in ("0", "1", "false", "true"):
                raise DataError(path, f"{where}: <difficult> is {difficult!r}; expected 0 or 1")
            box = obj.find("bndbox")
            if box is None:
                raise DataError(path, f"{where} has no <bndbox>")
            xmin, ymin, xmax, ymax = (_number(path, box, key, where) for key in _COORDS)
            x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax  # 1-based inclusive -> xyxy pixels
            if x2 < x1 or y2 < y1:
                raise DataError(path, f"{where}: <bndbox> ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) is inverted "
                                      "(xmax < xmin or ymax < ymin)")
            objects.append((x1, y1, x2, y2, index[name], difficult in ("1", "true")))
        return int(w), int(h), objects

    # ------------------------------------------------------------------ adapter interface
    def __len__(self) -> int:
        return len(self._ids)

    def path(self, i: int) -> str:
        return self._img_paths[i]

    def xml_path(self, i: int) -> str:
        return os.path.join(self.root, "Annotations", self._ids[i] + ".xml")

    def mask_path(self, i: int) -> str:
        return os.path.join(self.root, "SegmentationClass", self._ids[i] + ".png")

    def object_path(self, i: int) -> str:
        return os.path.join(self.root, "SegmentationObject", self._ids[i] + ".png")

    def stats(self) -> dict:
        """Counts: images, objects, boxes, difficult, degenerate / clipped boxes, images left
        without boxes, empty images, bad annotations (and, with masks, images with a class PNG;
        with instances, images with an object PNG)."""
        return dict(self._stats)

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        if i in self._errors:
            e = self._errors[i]
            raise DataError(e.path, e.problem)
        img = read_image(self._img_paths[i])
        size = self._sizes[i]
        if size is not None and img.shape[:2] != size:
            raise DataError(self._img_paths[i], f"image size {img.shape[0]}x{img.shape[1]} differs from the "
                                                f"annotation's {size[0]}x{size[1]} ({self.xml_path(i)})")
        target: dict = {}
        if "boxes" in self.provides:
            target["boxes"] = self._boxes[i].copy()
            if len(self._crowd_boxes[i]):  # for evaluation: COCOeval ignores detections on difficult objects
                target["crowd_boxes"] = self._crowd_boxes[i].copy()
                target["crowd_labels"] = self._crowd_labels[i].copy()
        if "box_labels" in self.provides:
            target["box_labels"] = self._box_labels[i].copy()
        if "labels" in self.provides:
            target["labels"] = self._labels[i].copy()
        if set(_MASK_KEYS) & set(self.provides) and self._has_mask[i]:
            raw = self._class_indices(i, img.shape[:2])
            if "mask" in self.provides:
                target["mask"] = self._lut[raw]
            if "instances" in self.provides and self._has_objects[i]:
                target.update(self._instances(i, raw))
        return img, target

    # ------------------------------------------------------------------ masks
    def _class_indices(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        """The class PNG's indices, checked against the image size and the class count."""
        path = self.mask_path(i)
        raw = read_index_png(path)
        if raw.shape != shape:
            raise DataError(path, f"mask size {raw.shape[0]}x{raw.shape[1]} differs from image size "
                                  f"{shape[0]}x{shape[1]} ({self._img_paths[i]})")
        counts = np.bincount(raw.ravel(), minlength=256)
        bad = np.flatnonzero(counts.astype(bool) & self._invalid)
        if bad.size:
            v = int(bad[0])
            raise DataError(path, f"palette index {v} ({int(counts[v])} pixels) is above the {len(self.classes)} "
                                  f"classes (0 = background, 1..{len(self.classes)} = classes, 255 = ignore)")
        return raw

    def _instances(self, i: int, classes: np.ndarray) -> dict:
        """``SegmentationObject`` as ``instance_rles`` (one RLE per index 1..254 present, in index
        order), ``instance_boxes`` float32 [N, 4] (tight xyxy) and ``instance_labels`` int64 [N]."""
        from pycocotools import mask as mask_utils

        path = self.object_path(i)
        obj = read_index_png(path)
        if obj.shape != classes.shape:
            raise DataError(path, f"mask size {obj.shape[0]}x{obj.shape[1]} differs from the class mask's "
                                  f"{classes.shape[0]}x{classes.shape[1]} ({self.mask_path(i)})")
        ids = np.flatnonzero(np.bincount(obj.ravel(), minlength=256)[1:IGNORE]) + 1  # 255 (void) is no instance
        rles, boxes, labels = [], np.zeros((len(ids), 4), np.float32), np.zeros(len(ids), np.int64)
        n = len(self.classes)
        for j, k in enumerate(ids):
            m = obj == k  # one H x W mask at a time; only its RLE is kept
            hist = np.bincount(classes[m], minlength=256)[1: n + 1]
            if not hist.any():
                raise DataError(path, f"instance {int(k)} covers no object class in {self.mask_path(i)}")
            labels[j] = int(np.argmax(hist))
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            boxes[j] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            rles.append(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))
        return {"instance_rles": rles, "instance_boxes": boxes, "instance_labels": labels}


def _number(path: str, parent: ET.Element, key: str, where: str) -> float:
    text = parent.findtext(key)
    if text is None:
        raise DataError(path, f"{where} has no <{key}>")
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise DataError(path, f"{where}: <{key}> is {text.strip()!r}, not a number")
    return v
