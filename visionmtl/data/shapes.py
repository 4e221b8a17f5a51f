"""Synthetic "shapes" dataset: the project's embedded default data.

Every image shows 0-8 solid shapes (circle, square, triangle, star) on a textured, noisy
background. Later shapes are drawn over earlier ones, so objects can be partly occluded; an
object is only placed if every object already in the image keeps at least 30% of its area
(and 20 px) visible, so nothing is ever drawn that is not annotated.

The dataset is written in COCO instances format::

    DIR/train/images/000000.jpg ...   DIR/train/annotations.json
    DIR/val/images/...                DIR/val/annotations.json
    DIR/meta.json                     (generation parameters, used by ensure_shapes)

Each annotation describes the *visible* part of its object: ``bbox`` (xywh) and ``area`` are
those of the visible pixels, and ``segmentation`` decodes with pycocotools to exactly the
visible mask. Polygons are used where they are exact (they follow pixel edges); masks with
holes or pinch points fall back to compressed RLE. Each ``images[]`` record also carries
``n_shapes``, the number of annotations (shapes) of that image, a numeric per-image value for
regression tasks (``CocoAdapter(value_fields=["n_shapes"], count_fields=["n_shapes"])``).

Generation is deterministic: image ``i`` of a split is drawn from its own random stream seeded
by ``(seed, split, i)``, so the same arguments give byte-identical files (with the same
numpy/OpenCV builds) whatever the number of worker processes, and the val split does not change
when ``train`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..rle import mask_to_segmentation

SHAPE_CLASSES: list[str] = ["circle", "square", "triangle", "star"]

GENERATOR_VERSION = 2
"""Bumped whenever rendering or the annotation files change, so :func:`ensure_shapes` regenerates
stale copies (2: ``n_shapes`` in the image records)."""

MAX_OBJECTS = 8
MIN_SIZE = 32
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 20
JPEG_QUALITY = 95

_SPLIT_CODES = {"train": 0, "val": 1}
_IMAGE_NAME = re.compile(r"^\d{6,}\.jpg$")
# Probability of an image with no objects; otherwise the count is uniform in 1..MAX_OBJECTS.
_P_EMPTY = 0.08
_PLACEMENT_TRIES = 12
_MIN_CONTRAST = 70.0  # RGB distance between an object's colour and what it is drawn over


@dataclass
class Instance:
    """One object in a rendered image."""

    label: int
    """Index into :data:`SHAPE_CLASSES` (the COCO ``category_id`` is ``label + 1``)."""
    mask: np.ndarray
    """HxW bool: the pixels of this object that are visible in the final image."""
    full_area: int
    """Pixel area of the whole shape before occlusion."""

    @property
    def name(self) -> str:
        return SHAPE_CLASSES[self.label]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


# ----------------------------------------------------------------------------- rendering


def size_range(size: int) -> tuple[float, float]:
    """(smallest, largest) object size in pixels for ``size`` x ``size`` images."""
    return max(8.0, size / 16.0), size / 2.0


def _sample_object_size(rng: np.random.Generator, size: int) -> float:
    # Log-uniform-ish between the bounds, biased towards mid sizes (tiny objects are a minority).
    lo, hi = size_range(size)
    t = rng.beta(2.5, 2.0)
    return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo))))


def _outer_radius(label: int, s: float) -> float:
    """Radius of the circle around a shape of nominal size ``s`` (areas are roughly balanced)."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return s / 2
    if name == "square":
        return 0.82 * s / math.sqrt(2)
    if name == "triangle":
        return 0.6 * s
    return 0.58 * s  # star


def _vertices(label: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    name = SHAPE_CLASSES[label]
    if name == "square":
        a = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif name == "triangle":
        a = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif name == "star":
        a = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
    else:
        raise ValueError(f"no polygon for {name!r}")
    return np.stack([cx + radii * np.cos(a), cy + radii * np.sin(a)], axis=1)


def _shape_mask(
    label: int, cx: float, cy: float, r: float, angle: float, size: int
) -> tuple[tuple[slice, slice], np.ndarray]:
    """One shape drawn with 1/16 px precision, as ``(window, mask)``.

    ``window`` is the (rows, cols) slice pair of the image the shape lies in and ``mask`` the
    bool mask of that window, so ``full[window] = mask`` gives the size x size mask.
    """
    x0, y0 = max(int(math.floor(cx - r)) - 1, 0), max(int(math.floor(cy - r)) - 1, 0)
    x1, y1 = min(int(math.ceil(cx + r)) + 2, size), min(int(math.ceil(cy + r)) + 2, size)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    lx, ly = cx - x0, cy - y0
    shift, scale = 4, 16.0
    if SHAPE_CLASSES[label] == "circle":
        centre = (int(round(lx * scale)), int(round(ly * scale)))
        cv2.circle(canvas, centre, int(round(r * scale)), 1, -1, cv2.LINE_8, shift)
    else:
        pts = np.round(_vertices(label, lx, ly, r, angle) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8, shift)
    return (slice(y0, y1), slice(x0, x1)), canvas.astype(bool)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """size x size x 3 float32 low-frequency noise: a cells x cells grid upsampled bicubically."""
    grid = rng.normal(0.0, amp, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _ramp(rng: np.random.Generator, size: int, window: tuple[slice, slice] | None = None) -> np.ndarray:
    """Linear ramp in [0, 1] along a random direction over the image (or a window of it)."""
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(size)
    if window is not None:
        yy, xx = yy[window], xx[window]
    t = xx * math.cos(theta) + yy * math.sin(theta)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1 = rng.uniform(20, 235, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.normal(0, 45, 3), 0, 255).astype(np.float32)
    ramp = _ramp(rng, size)[..., None]
    img = c1 + (c2 - c1) * ramp
    img += _smooth_field(rng, size, int(rng.integers(3, 8)), rng.uniform(8, 30))  # blobs
    img += _smooth_field(rng, size, int(rng.integers(12, 33)), rng.uniform(3, 10))  # texture
    if rng.random() < 0.4:  # a few lines, under the objects
        for _ in range(int(rng.integers(1, 4))):
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            p2 = tuple(int(v) for v in rng.integers(0, size, 2))
            colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.12:  # greys, from near-black to near-white
        return np.full(3, rng.uniform(0, 255), np.float32)
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(80, 255), rng.uniform(60, 255)]]], np.float32
    )
    hsv[..., 0] = np.minimum(hsv[..., 0], 179.999)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return rgb.reshape(3).astype(np.float32)


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from ``under`` (N x 3 pixels the shape covers)."""
    ref = under.mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(16):
        colour = _random_colour(rng)
        d = float(np.linalg.norm(colour - ref))
        if d >= _MIN_CONTRAST:
            return colour
        if d > best_d:
            best, best_d = colour, d
    # Nothing random was far enough: push the best candidate away from the reference.
    direction = np.where(ref > 127.5, -1.0, 1.0).astype(np.float32)
    return np.clip(best + direction * (_MIN_CONTRAST - best_d), 0, 255)


def _count_objects(rng: np.random.Generator, max_objects: int) -> int:
    if max_objects <= 0 or rng.random() < _P_EMPTY:
        return 0
    return int(rng.integers(1, max_objects + 1))


def render_image(
    rng: np.random.Generator, size: int, max_objects: int = MAX_OBJECTS
) -> tuple[np.ndarray, list[Instance]]:
    """Draw one ``size`` x ``size`` image.

    Returns ``(image, instances)``: ``image`` is HxWx3 uint8 RGB and ``instances`` lists the
    objects in drawing order, each with its class id and the mask of its *visible* pixels.
    Visible masks are disjoint, and each keeps at least 30% of its shape's area and 20 px.
    """
    size = int(size)
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int16)  # index of the object on top, -1 = background
    labels: list[int] = []
    full_areas: list[int] = []
    visible: list[int] = []

    for _ in range(_count_objects(rng, max_objects)):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        for _try in range(_PLACEMENT_TRIES):
            s = _sample_object_size(rng, size)
            r = _outer_radius(label, s)
            margin = min(r + 1.0, size / 2.0)
            cx, cy = rng.uniform(margin, size - margin, 2)
            angle = rng.uniform(0, 2 * np.pi)
            win, m = _shape_mask(label, cx, cy, r, angle, size)
            area = int(np.count_nonzero(m))
            if area < MIN_VISIBLE_PIXELS:
                continue
            # Would any object already drawn lose too much of its visible area?
            owner_win, img_win = owner[win], img[win]  # views
            covered = np.bincount(owner_win[m] + 1, minlength=len(labels) + 1)[1:]
            left = np.asarray(visible, dtype=np.int64) - covered
            need = np.maximum(MIN_VISIBLE_FRACTION * np.asarray(full_areas), MIN_VISIBLE_PIXELS)
            if len(labels) and np.any(left < need):
                continue
            colour = _pick_colour(rng, img_win[m])
            shade = 1.0 + rng.uniform(-0.15, 0.15) * (2.0 * _ramp(rng, size, win)[m] - 1.0)
            img_win[m] = np.clip(colour[None, :] * shade[:, None], 0, 255)
            owner_win[m] = len(labels)
            visible = [int(v) for v in left] + [area]
            labels.append(label)
            full_areas.append(area)
            break

    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.8))
    img += rng.uniform(2.0, 10.0) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    instances = [
        Instance(label=lab, mask=owner == k, full_area=full)
        for k, (lab, full) in enumerate(zip(labels, full_areas))
    ]
    return image, instances


# ----------------------------------------------------------------------------- annotations


def instance_annotation(inst: Instance) -> dict:
    """COCO annotation fields (no ids) for one rendered instance's visible part."""
    ys, xs = np.nonzero(inst.mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "category_id": inst.label + 1,
        "bbox": [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)],
        "area": float(len(xs)),
        "segmentation": mask_to_segmentation(inst.mask),
        "iscrowd": 0,
    }


# ----------------------------------------------------------------------------- dataset files


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` (independent of every other image)."""
    entropy = [int(seed), _SPLIT_CODES[split], int(index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _make_one(job: tuple[str, str, int, int, int]) -> tuple[str, list[dict]]:
    images_dir, split, index, size, seed = job
    image, instances = render_image(image_rng(seed, split, index), size)
    name = f"{index:06d}.jpg"
    path = os.path.join(images_dir, name)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok = cv2.imwrite(path, bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"{path}: cannot write image")
    return name, [instance_annotation(inst) for inst in instances]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _validate(out: str | os.PathLike, train: int, val: int, size: int, seed: int) -> Path:
    for name, value in (("train", train), ("val", val), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    return out


def _params(train: int, val: int, size: int, seed: int) -> dict:
    return {
        "generator": "visionmtl.data.shapes",
        "version": GENERATOR_VERSION,
        "classes": list(SHAPE_CLASSES),
        "train": int(train),
        "val": int(val),
        "size": int(size),
        "seed": int(seed),
    }


def default_workers(n_images: int) -> int:
    """A sensible process count for ``n_images`` images (0 = render in this process)."""
    if n_images < 400:
        return 0
    return min(os.cpu_count() or 1, 8)


def _generate_split(out: Path, split: str, n: int, size: int, seed: int, workers: int) -> dict:
    split_dir = out / split
    images_dir = split_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.iterdir():  # images left from an earlier, larger run
        if _IMAGE_NAME.match(old.name) and old.is_file():
            old.unlink()

    jobs = [(str(images_dir), split, i, size, seed) for i in range(n)]
    if workers > 1 and n > 1:
        import multiprocessing as mp

        # spawn: safe even when the caller already runs threads (torch, OpenMP).
        with mp.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            results = pool.map(_make_one, jobs, chunksize=max(1, n // (workers * 8)))
    else:
        results = [_make_one(job) for job in jobs]

    images, annotations = [], []
    per_class = {name: 0 for name in SHAPE_CLASSES}
    hist = [0] * (MAX_OBJECTS + 1)
    n_rle = 0
    for index, (name, anns) in enumerate(results):
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": size, "height": size, "n_shapes": len(anns)})
        hist[len(anns)] += 1
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            per_class[SHAPE_CLASSES[ann["category_id"] - 1]] += 1
            n_rle += isinstance(ann["segmentation"], dict)
    coco = {
        "info": {"description": f"visionmtl synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    _write_atomic(split_dir / "annotations.json", json.dumps(coco, separators=(",", ":")))
    return {
        "images": n,
        "objects": len(annotations),
        "per_class": per_class,
        "objects_per_image": hist,
        "rle_segmentations": n_rle,
    }


def make_shapes(
    out: str | os.PathLike,
    train: int,
    val: int,
    size: int,
    seed: int,
    workers: int = 0,
) -> dict:
    """Write the shapes dataset (COCO format) to ``out`` and return a summary.

    ``workers`` > 1 renders in a pool of that many (spawned) processes; the output does not
    depend on it. Spawned processes re-import the caller's ``__main__``, so a script passing
    ``workers`` needs an ``if __name__ == "__main__":`` guard; the default renders in-process.

    The summary holds ``out``, ``size``, ``seed``, ``classes``, ``seconds`` and per split
    (``splits[name]``): ``images``, ``objects``, ``per_class``, ``objects_per_image``
    (histogram over 0..8) and ``rle_segmentations``.
    """
    out = _validate(out, train, val, size, seed)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "meta.json"
    if meta.exists():
        meta.unlink()  # incomplete until the new meta.json is written at the end
    splits = {}
    for split, n in (("train", train), ("val", val)):
        splits[split] = _generate_split(out, split, int(n), int(size), int(seed), int(workers))
    _write_atomic(meta, json.dumps(_params(train, val, size, seed), indent=2) + "\n")
    return {
        "out": str(out),
        "size": int(size),
        "seed": int(seed),
        "classes": list(SHAPE_CLASSES),
        "splits": splits,
        "seconds": time.perf_counter() - start,
    }


@contextmanager
def _lock(out: Path):
    """Exclusive lock on ``out/.lock`` so parallel processes generate the data once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(out / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_current(out: str | os.PathLike, train: int, val: int, size: int, seed: int) -> bool:
    """Whether ``out`` holds a complete dataset generated with these parameters."""
    out = Path(out).expanduser()
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta != _params(train, val, size, seed):
        return False
    return all((out / split / "annotations.json").is_file() for split in ("train", "val"))


def ensure_shapes(
    out: str | os.PathLike,
    train: int,
    val: int,
    size: int,
    seed: int,
    workers: int = 0,
) -> Path:
    """Return ``out``, generating the dataset first if it is missing or was made differently.

    The parameters of the last generation are kept in ``out/meta.json``; the data is
    regenerated when they (or the generator version) differ or an annotations file is missing.
    """
    out = _validate(out, train, val, size, seed)
    if is_current(out, train, val, size, seed):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        if not is_current(out, train, val, size, seed):
            make_shapes(out, train, val, size, seed, workers=workers)
    return out
