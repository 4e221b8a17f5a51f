"""YOLO layout (``type: yolo``): round trip from real COCO128.

COCO128 is converted to YOLO twice with :func:`coco_to_yolo`: once as detection lines
(``k cx cy w h``, for the boxes) and once as polygon lines (for the masks). Crowd annotations
(the RLE ones in COCO128) have no YOLO form: the converter skips them, their pixels (255 in the
COCO mask) are left out of the mask comparison, and the COCO adapter gives them no boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from visionmtl.data.coco import CocoAdapter
from visionmtl.data.yolo import YoloAdapter
from visionmtl.data.yolo_convert import coco_to_yolo

from .conftest import real_data


# ====================================================================== COCO128 round trip (real data)
@pytest.fixture(scope="module")
def coco128_yolo(tmp_path_factory):
    root = real_data("coco128")
    ann, images = root / "annotations" / "instances.json", root / "images"
    out = tmp_path_factory.mktemp("coco128_yolo")
    det = coco_to_yolo(ann, images, out / "det")
    seg = coco_to_yolo(ann, images, out / "seg", segments=True)
    return CocoAdapter(ann, images), out, det, seg


def _by_name(adapter) -> dict[str, int]:
    return {Path(adapter.path(i)).name: i for i in range(len(adapter))}


def test_coco128_yolo_boxes_classes_and_labels_match_coco(coco128_yolo):
    coco, out, det, _ = coco128_yolo
    assert det == {"images": 128, "lines": 929, "crowd": 10, "no_polygon": 0, "degenerate": 0}
    yolo = YoloAdapter(data=out / "det" / "data.yaml")
    assert yolo.classes == coco.classes and len(yolo.classes) == 80
    assert yolo.provides == ("boxes", "box_labels", "labels")  # detection lines: no mask
    ci, yi = _by_name(coco), _by_name(yolo)
    assert sorted(ci) == sorted(yi) and len(yi) == 128  # the same images
    worst, n_boxes = 0.0, 0
    for name, i in ci.items():
        img_c, tc = coco.load(i)
        img_y, ty = yolo.load(yi[name])
        assert np.array_equal(img_c, img_y)
        assert ty["boxes"].dtype == np.float32 and ty["box_labels"].dtype == np.int64
        assert ty["box_labels"].tolist() == tc["box_labels"].tolist(), name  # same classes, same order
        assert ty["boxes"].shape == tc["boxes"].shape, name
        if len(tc["boxes"]):
            worst = max(worst, float(np.abs(ty["boxes"] - tc["boxes"]).max()))
        assert ty["labels"].tolist() == tc["labels"].tolist(), name
        n_boxes += len(ty["boxes"])
    print(f"\nCOCO128 as YOLO boxes: {n_boxes} boxes, largest difference {worst:.2e} px")
    assert n_boxes == coco.stats()["boxes"] == 929
    assert worst < 0.01
    st = yolo.stats()
    assert st["images"] == 128 and st["objects"] == 929 and st["polygons"] == 0
    assert st["empty_label_files"] == st["empty_images"] == 2 and st["missing_label_files"] == 0


def test_coco128_yolo_polygon_masks_match_coco(coco128_yolo):
    coco, out, _, seg = coco128_yolo
    assert seg == {"images": 128, "lines": 929, "crowd": 10, "no_polygon": 0, "degenerate": 0}
    yolo = YoloAdapter(data=out / "seg" / "data.yaml")
    assert yolo.provides == ("boxes", "box_labels", "labels", "mask", "instances")  # polygons: masks, instances
    assert yolo.mask_classes == coco.mask_classes == ["background"] + coco.classes
    ci, yi = _by_name(coco), _by_name(yolo)
    differ = compared = box_far = 0
    per_image = []
    for name, i in ci.items():
        _, tc = coco.load(i)
        _, ty = yolo.load(yi[name])
        assert ty["mask"].dtype == np.uint8 and ty["mask"].shape == tc["mask"].shape
        keep = tc["mask"] != 255  # crowd regions: not in the YOLO copy
        assert np.all(ty["mask"] != 255)
        d = int(np.count_nonzero(ty["mask"][keep] != tc["mask"][keep]))
        differ += d
        compared += int(keep.sum())
        per_image.append(d / max(int(keep.sum()), 1))
        assert ty["box_labels"].tolist() == tc["box_labels"].tolist(), name
        # a polygon's box is its bounds, COCO's bbox was computed from the same polygons
        box_far += int(np.sum(np.abs(ty["boxes"] - tc["boxes"]).max(axis=1) > 1.0)) if len(tc["boxes"]) else 0
        assert ty["labels"].tolist() == tc["labels"].tolist(), name
    share = differ / compared
    print(f"\nCOCO128 as YOLO polygons: {differ} of {compared} pixels differ ({share:.4%}); "
          f"worst image {max(per_image):.3%}; boxes more than 1 px from COCO's bbox: {box_far} of 929")
    assert differ > 0  # the comparison sees the rasterised polygons (they are not copied masks) ...
    assert share < 0.01  # ... and they differ only along edges
    assert max(per_image) < 0.05
    assert box_far <= 929 * 0.01


def test_coco128_yolo_polygon_instances_match_coco(coco128_yolo):
    """One instance per polygon line, in line order: the COCO adapter's instances (the same
    annotations, in the same order), rasterised alike. The YOLO copy's polygons are normalised to
    8 decimals, clipped and multi-part ones bridged into one, so a vertex on a pycocotools
    rounding edge may move a pixel row: most masks are equal, none differs by more than an edge."""
    coco, out, _, _ = coco128_yolo
    yolo = YoloAdapter(data=out / "seg" / "data.yaml")
    ci, yi = _by_name(coco), _by_name(yolo)
    n = equal = differ = pixels = 0
    worst_iou = 1.0
    for name, i in ci.items():
        _, tc = coco.load(i)
        _, ty = yolo.load(yi[name])
        rles, boxes, labels = ty["instance_rles"], ty["instance_boxes"], ty["instance_labels"]
        assert boxes.dtype == np.float32 and boxes.shape == (len(rles), 4) and labels.dtype == np.int64
        assert labels.tolist() == tc["instance_labels"].tolist() == ty["box_labels"].tolist(), name
        assert np.array_equal(boxes, ty["boxes"])  # an instance's box is the polygon's box in ``boxes``
        if len(boxes):
            assert np.abs(boxes - tc["instance_boxes"]).max() < 1.0, name
        for ry, rc in zip(rles, tc["instance_rles"]):
            assert ry["size"] == rc["size"] == list(ty["mask"].shape) and isinstance(ry["counts"], bytes)
            my, mc = mask_utils.decode(ry), mask_utils.decode(rc)
            d = int(np.count_nonzero(my != mc))
            equal += d == 0
            differ += d
            pixels += int(mc.sum())
            worst_iou = min(worst_iou, float(mask_utils.iou([ry], [rc], [0])[0, 0]))
            n += 1
    print(f"\nCOCO128 as YOLO instances: {n}, {equal} equal to COCO's; {differ} pixels differ of {pixels} "
          f"({differ / pixels:.3%}); worst IoU {worst_iou:.3f}")
    assert n == 929
    assert equal > 0.6 * n and differ < 0.01 * pixels and worst_iou > 0.9
