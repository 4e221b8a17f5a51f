#!/usr/bin/env python
"""Write a COCO instances JSON and its images as an Ultralytics YOLO dataset.

``python tools/coco_to_yolo.py ANN_FILE IMG_DIR OUT_DIR [--split train] [--segments] [--copy]``

Writes ``OUT_DIR/images/<split>/``, ``OUT_DIR/labels/<split>/*.txt`` and ``OUT_DIR/data.yaml``
(run it once per split into the same folder). Boxes by default (``class cx cy w h``), polygons
with ``--segments`` (``class x1 y1 x2 y2 ...``); crowd regions have no YOLO form and are skipped
(counted). Images are symbolic links unless ``--copy``. Read it back with
``{type: yolo, data: OUT_DIR/data.yaml, split: <split>}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ann_file", help="COCO instances JSON")
    p.add_argument("img_dir", help="folder of the JSON's images")
    p.add_argument("out_dir", help="YOLO dataset folder to write (data.yaml, images/, labels/)")
    p.add_argument("--split", default="train", help="split name in data.yaml and the folders (default train)")
    p.add_argument("--segments", action="store_true", help="write polygons instead of boxes")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    return p


def main(args) -> None:
    from visionmtl.data.yolo_convert import coco_to_yolo

    counts = coco_to_yolo(args.ann_file, args.img_dir, args.out_dir, split=args.split, segments=args.segments,
                          link=not args.copy)
    print(f"wrote {Path(args.out_dir) / 'data.yaml'}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cli(argv=None, prog=None) -> int:
    """``visionmtl coco2yolo`` / ``python tools/coco_to_yolo.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
