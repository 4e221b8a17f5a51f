"""Instance segmentation: masks from data, through the training transform, scored as pycocotools does."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from visionmtl.config import ConfigError, config_from_dict
from visionmtl.data.coco import CocoAdapter
from visionmtl.data.transforms import Transform
from visionmtl.metrics.instance import CocoSegmEvaluator, encode_masks

from .conftest import real_data
from .test_engine import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["circle", "square", "triangle", "star"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _paste(masks: torch.Tensor, boxes: torch.Tensor, size) -> np.ndarray:
    from visionmtl.models.heads.instance import paste_masks

    return (paste_masks(masks.float(), boxes.float(), size) >= 0.5).numpy()


# ----------------------------------------------------------------------------- data
def test_coco128_instance_masks_equal_annToMask():
    """Every non-crowd COCO128 annotation: the adapter's mask (loaded, no augmentation) against
    pycocotools' own ``annToMask``."""
    from visionmtl.data.dataset import TaskDataset

    root = real_data() / "coco128"
    adapter = CocoAdapter(root / "annotations" / "instances.json", root / "images")
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": adapter.classes},
                                      "inst": {"type": "instance"}}, "data": {"img_size": 640}})
    ds = TaskDataset(adapter, cfg.tasks, ["inst"])
    ious, n_crowd = [], 0
    for i in range(len(ds)):
        _, t = ds.load(i)
        anns = [adapter.coco.anns[aid] for aid, _, _ in adapter._inst[i]]
        assert len(t["eval_instance_rles"]) == len(anns)
        for rle, a, box in zip(t["eval_instance_rles"], anns, t["eval_instance_boxes"]):
            ref = adapter.coco.annToMask(a)
            ious.append(_iou(mask_utils.decode(rle), ref))
            x, y, w, h = a["bbox"]
            assert np.allclose(box.numpy(), [x, y, x + w, y + h], atol=0.5)
        n_crowd += len(t.get("instance_crowd_rles", []))
    n_ann = sum(1 for a in adapter.coco.dataset["annotations"] if not a.get("iscrowd", 0))
    print(f"COCO128: {len(ious)} of {n_ann} non-crowd annotations compared, min IoU {min(ious):.4f}, "
          f"{n_crowd} crowd regions")
    assert len(ious) == n_ann and min(ious) >= 0.99


def _two_squares(size=64):
    img = np.zeros((size, size, 3), np.uint8)
    masks = np.zeros((2, size, size), np.uint8)
    masks[0, 8:24, 4:20] = 1   # left square
    masks[1, 30:60, 36:60] = 1  # right rectangle
    rles = encode_masks(masks)
    boxes = np.array([[4, 8, 20, 24], [36, 30, 60, 60]], np.float32)
    return img, masks, {"instance_rles": rles, "instance_boxes": boxes, "instance_labels": np.array([0, 2]),
                        "instance_crop": 28}


def test_transform_moves_instances_with_the_image():
    import albumentations as A

    from visionmtl.data.transforms import BBOX_PARAMS, POINT_PARAMS

    img, masks, target = _two_squares()
    flip = Transform(A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=A.BboxParams(**BBOX_PARAMS),
                               keypoint_params=A.KeypointParams(**POINT_PARAMS)), train=True)
    _, out = flip(img, dict(target), seed=0)
    assert out["instance_masks"].shape == (2, 28, 28) and out["instance_labels"].tolist() == [0, 2]
    assert np.allclose(out["instance_boxes"].numpy(), [[44, 8, 60, 24], [4, 30, 28, 60]])
    pasted = _paste(out["instance_masks"], out["instance_boxes"], (64, 64))
    for k in range(2):
        assert _iou(pasted[k], masks[k][:, ::-1]) > 0.95
    assert not {"instance_rles", "instance_crop"} & set(out)
    # a crop that cuts the left square out of view drops it with its box and label
    crop = Transform(A.Compose([A.Crop(32, 0, 64, 64)], bbox_params=A.BboxParams(**BBOX_PARAMS),
                               keypoint_params=A.KeypointParams(**POINT_PARAMS)), train=True)
    _, out = crop(img, dict(target), seed=0)
    assert out["instance_labels"].tolist() == [2] and len(out["instance_masks"]) == 1
    assert np.allclose(out["instance_boxes"].numpy(), [[4, 30, 28, 60]])


# ----------------------------------------------------------------------------- metrics
def test_segm_evaluator_scores_masks_and_ignores_crowd():
    _, masks, target = _two_squares()
    ev = CocoSegmEvaluator(SHAPES)
    boxes = torch.as_tensor(target["instance_boxes"])
    gt = {"boxes": boxes, "box_labels": torch.tensor([0, 2]), "rles": target["instance_rles"]}
    # the right box with the left mask: a box hit, a mask miss; plus a detection on a crowd region
    crowd = np.zeros((1, 64, 64), np.uint8)
    crowd[0, 40:64, 0:16] = 1
    gt_c = {"boxes": torch.cat([boxes, torch.tensor([[0.0, 40, 16, 64]])]), "box_labels": torch.tensor([0, 2, 1]),
            "iscrowd": torch.tensor([0, 0, 1]), "rles": target["instance_rles"] + encode_masks(crowd)}
    pred = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 2]),
            "rles": encode_masks(masks)}
    on_crowd = {"boxes": torch.cat([boxes, torch.tensor([[0.0, 40, 16, 64]])]), "scores": torch.tensor([0.9, 0.8, 0.95]),
                "labels": torch.tensor([0, 2, 1]), "rles": encode_masks(np.concatenate([masks, crowd]))}
    ev.update([pred], [gt])
    ev.update([on_crowd], [gt_c])
    assert ev.compute()["mAP"] == pytest.approx(1.0)
    wrong = dict(pred, rles=encode_masks(masks[[0, 0]]))
    ev.reset()
    ev.update([wrong], [gt])
    res = ev.compute()
    assert res["per_class"]["AP"]["circle"] == pytest.approx(1.0) and res["per_class"]["AP"]["triangle"] == 0.0


# ----------------------------------------------------------------------------- training and independent scoring
def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_instance_head_learns_and_eval_equals_pycocotools_on_saved_json(tmp_path_factory, tmp_path, capsys):
    """det + inst learn 8 images (capacity); then tools/eval.py's segm mAP equals pycocotools run
    directly on tools/infer.py's ``--save-json`` COCO results against the annotation file."""
    import shutil

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionmtl.cli import run
    from visionmtl.data.shapes import make_shapes
    from visionmtl.engine.trainer import Trainer

    data = tmp_path_factory.mktemp("shapes8_inst")
    make_shapes(data, train=8, val=4, size=64, seed=1)
    cfg = tiny_cfg(data, tmp_path, tasks=("det",), epochs=60, eval_interval=60, lr=0.004, warmup_iters=10)
    tree = cfg.to_dict()
    tree["tasks"]["inst"] = {"type": "instance", "head": {"channels": 32}}
    tree["data"]["val"] = tree["data"]["train"]
    tree["data"]["augment"]["hflip"] = 0.0
    cfg = config_from_dict(tree)
    metrics = Trainer(cfg).train()
    # 60 steps on 6-25 px objects at 64 px: untrained it scores 0.000; measured 0.32 here
    assert metrics["inst"]["mAP50"] > 0.2, metrics["inst"]
    # tools/eval.py on the training images, fp32
    cfg_file = tmp_path / "config.yaml"
    assert cfg_file.exists()
    ev = _tool("eval")
    assert run(ev.main, ev.get_args_parser().parse_args([str(cfg_file), str(tmp_path / "last.pt"), "--split", "val",
                                                         "--out", str(tmp_path / "eval"), "--device", "cpu"])) == 0
    ours = json.loads((tmp_path / "eval" / "metrics.json").read_text())["inst"]
    assert (tmp_path / "eval" / "inst_pr_curve.png").is_file() and (tmp_path / "eval" / "det_pr_curve.png").is_file()
    # tools/infer.py over the same images, COCO results saved; pycocotools against the annotations
    ann = data / "train" / "annotations.json"
    infer = _tool("infer")
    out = tmp_path / "infer"
    score = cfg.tasks["det"].head.get("score_thresh", 0.05)
    args = [str(tmp_path / "last.pt"), "--source", str(data / "train" / "images"), "--out", str(out), "--save-json",
            "--no-draw", "--conf", str(score), "--device", "cpu"]
    assert run(infer.main, infer.get_args_parser().parse_args(args)) == 0
    gt = COCO(str(ann))
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    ours_ids = {im["id"]: by_name[Path(im["file_name"]).name] for im in json.loads((out / "coco_images_inst.json").read_text())["images"]}
    results = json.loads((out / "coco_results_inst.json").read_text())
    assert results and all("segmentation" in r for r in results)
    for r in results:
        r["image_id"] = ours_ids[r["image_id"]]
        r["category_id"] = gt.getCatIds(catNms=[SHAPES[r["category_id"] - 1]])[0]
    dt = gt.loadRes(results)
    e = COCOeval(gt, dt, iouType="segm")
    e.evaluate()
    e.accumulate()
    e.summarize()
    capsys.readouterr()
    print(f"segm mAP tools/eval.py {ours['mAP']:.6f}, pycocotools on --save-json {e.stats[0]:.6f} "
          f"({len(results)} masks, {len(by_name)} images)")
    assert ours["mAP"] == pytest.approx(e.stats[0], abs=1e-6)
    assert ours["mAP50"] == pytest.approx(e.stats[1], abs=1e-6)
    shutil.rmtree(out)


# ----------------------------------------------------------------------------- bad input
def test_instance_config_faults(tmp_path):
    det = {"type": "detection", "classes": SHAPES}
    with pytest.raises(ConfigError, match=r"tasks\.inst\.detection.*'dett'"):
        config_from_dict({"tasks": {"det": det, "inst": {"type": "instance", "detection": "dett"}}})
    with pytest.raises(ConfigError, match=r"tasks\.inst\.detection.*there is none"):
        config_from_dict({"tasks": {"inst": {"type": "instance"}}})
    with pytest.raises(ConfigError, match="same order"):
        config_from_dict({"tasks": {"det": det, "inst": {"type": "instance", "classes": SHAPES[::-1]}}})
    cfg = config_from_dict({"tasks": {"det": det, "inst": {"type": "instance"}}})
    assert cfg.tasks["inst"].classes == SHAPES and cfg.tasks["inst"].detection == "det"


def test_short_polygons_are_counted_and_bad_rle_names_the_file(tmp_path, shapes_dir, caplog):
    from visionmtl.data.dataset import report_problems
    from visionmtl.data.errors import DataError

    d = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    polys = [a for a in d["annotations"] if isinstance(a["segmentation"], list)]
    polys[0]["segmentation"] = [[1, 1, 5, 5]] + polys[0]["segmentation"]  # a 2-point polygon beside a good one
    polys[1]["segmentation"] = [[1, 1, 5, 5, 9]]  # nothing usable left
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(d))
    adapter = CocoAdapter(ann, shapes_dir / "train" / "images")
    assert adapter.stats()["short_polygons"] == 2
    with caplog.at_level(logging.WARNING):
        report_problems(adapter, "data.train.0")
    assert "2 polygons with fewer than 3 points" in caplog.text
    i = next(k for k, im in enumerate(adapter._images) if im["id"] == polys[1]["image_id"])
    _, t = adapter.load(i)
    assert polys[1]["id"] not in [aid for aid, _, _ in adapter._inst[i]]  # no segmentation: no instance
    # an RLE whose size is not the image's
    im = d["images"][0]
    a = next(a for a in d["annotations"] if a["image_id"] == im["id"])
    a["segmentation"] = {"size": [im["height"] + 1, im["width"]], "counts": "0"}
    ann.write_text(json.dumps(d))
    adapter = CocoAdapter(ann, shapes_dir / "train" / "images")
    with pytest.raises(DataError, match=r"a\.json.*RLE size"):
        adapter.load(0)


def test_benchmark_combinations_keep_the_instance_task_with_its_detector():
    from visionmtl.benchmark.combos import closure, parse_combos

    det = {"type": "detection", "classes": SHAPES}
    cfg = config_from_dict({"tasks": {"cls": {"type": "classification", "classes": SHAPES}, "det": det,
                                      "inst": {"type": "instance"}}})
    tasks = list(cfg.tasks)
    combos = ["+".join(c) for c in parse_combos("all", tasks, cfg)]
    assert combos == ["cls", "det", "cls+det", "det+inst", "cls+det+inst"]
    assert closure(cfg.tasks, ("inst",)) == ("det", "inst")
    with pytest.raises(ConfigError, match="cls\\+inst needs det"):
        parse_combos("cls+inst", tasks, cfg)


STRATEGIES = [{"train.method.name": "dwa"}, {"train.method.name": "gradnorm"},
              {"train.method.name": "mgda", "train.method.grad_on": "rep"}, {"train.method.name": "pcgrad"},
              {"train.method.name": "cagrad"}, {"model.sharing": "soft"}, {"model.sharing": "mtan"},
              {"train.stages": [{"epochs": 1, "tasks": ["inst"], "freeze": ["backbone", "det"]}, {"epochs": 1}]},
              {"train.mode": "alternating"}]


@pytest.mark.parametrize("how", STRATEGIES, ids=["dwa", "gradnorm", "mgda-rep", "pcgrad", "cagrad", "soft", "mtan",
                                                  "stages", "alternating"])
def test_instance_task_trains_under_every_strategy(shapes_dir, tmp_path, how):
    """det + inst (+ seg) two steps each: finite losses, the instance head moves, the checkpoint predicts masks."""
    from visionmtl.engine.trainer import Trainer, load_trained

    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("det", "seg"), epochs=2, max_iters=4, log_interval=1)
    tree = cfg.to_dict()
    tree["tasks"]["inst"] = {"type": "instance", "head": {"channels": 16}}
    tree["data"]["batch_size"] = 4
    tree["data"]["val"] = []
    for key, value in how.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    cfg = config_from_dict(tree)
    trainer = Trainer(cfg)
    before = {k: p.detach().clone() for k, p in trainer.net.named_parameters() if ".inst." in f".{k}"}
    trainer.train()
    assert trainer.history and all(np.isfinite(h["loss"]) for h in trainer.history)
    assert any("loss_inst_mask" in h for h in trainer.history)
    after = dict(trainer.net.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    from visionmtl.data.loader import build_loader

    model, _, _ = load_trained(str(tmp_path / "last.pt"))
    batch = next(iter(build_loader(cfg, "train")))
    with torch.no_grad():
        preds = model.predict(model(batch.images), [m["input_size"] for m in batch.meta])
    assert preds[0]["inst"]["masks"].shape[1:] == tuple(batch.meta[0]["input_size"])


def test_tracking_gives_instance_masks_their_objects_ids(shapes_dir, tmp_path):
    """With --track, the instance results keep the tracked boxes and carry the same ids."""
    from visionmtl.engine.trainer import Trainer
    from visionmtl.inference.predictor import Predictor
    from visionmtl.inference.mot import render_frames, synthetic_sequence
    from visionmtl.inference.video import predict_stream, write_video

    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("det",), epochs=1, max_iters=2)
    tree = cfg.to_dict()
    tree["tasks"]["det"]["head"]["score_thresh"] = 0.0  # an untrained detector still yields boxes
    tree["tasks"]["inst"] = {"type": "instance", "head": {"channels": 16}}
    Trainer(config_from_dict(tree)).train()
    predictor = Predictor.from_checkpoint(tmp_path / "last.pt", device="cpu", conf=0.0)
    video = write_video(render_frames(synthetic_sequence(n_frames=6, size=(96, 64))), tmp_path / "v.mp4", fps=10)
    n = 0
    for _, result in predict_stream(predictor, str(video), batch=2, track=True):
        det, inst = result["det"], result["inst"]
        assert "track_ids" in det and np.array_equal(det["track_ids"], inst["track_ids"])
        assert np.allclose(det["boxes"], inst["boxes"]) and inst["masks"].shape == (len(det["boxes"]), 64, 96)
        n += 1
    assert n == 6
