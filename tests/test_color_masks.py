"""Colour masks (``type: masks`` with ``colors``): a CamVid round trip through colours, the colour
table's options, and bad input naming the file, the colour and the key."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.data_helpers import write_image, write_mask
from visionmtl.data.colors import ColorTable, pack_rgb
from visionmtl.data.errors import DataError
from visionmtl.data.masks import MaskFolderAdapter
from visionmtl.errors import ConfigError

from .conftest import real_data

# CamVid's 11 classes and their colours in the SegNet tutorial's colour labels; 11 (void) is black
CAMVID_COLORS = {
    "Sky": [128, 128, 128], "Building": [128, 0, 0], "Pole": [192, 192, 128], "Road": [128, 64, 128],
    "Pavement": [60, 40, 222], "Tree": [128, 128, 0], "SignSymbol": [192, 128, 128], "Fence": [64, 64, 128],
    "Car": [64, 0, 128], "Pedestrian": [64, 64, 0], "Bicyclist": [0, 128, 192],
}  # fmt: skip
CAMVID = list(CAMVID_COLORS)
VOID = [0, 0, 0]


def write_color_mask(path: Path, rgb: np.ndarray, alpha: bool = False) -> Path:
    """An RGB (or RGBA) colour PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if alpha:
        bgr = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert cv2.imwrite(str(path), bgr)
    return path


def render(index: np.ndarray, colors: list) -> np.ndarray:
    """Class indices -> HxWx3 colours (``colors[k]`` for value k)."""
    return np.asarray(colors, np.uint8)[index]


def test_camvid_round_trip_through_colours(tmp_path):
    """CamVid val's index masks rendered as colours read back as the same masks, labels and counts."""
    camvid = real_data("camvid")
    index = MaskFolderAdapter(camvid / "val", camvid / "valannot", CAMVID, ignore_ids=[11], provides=("mask", "labels"))
    palette = [CAMVID_COLORS[c] for c in CAMVID] + [VOID]  # value 11 (void) is black
    for i in range(len(index)):
        raw = cv2.imread(index.mask_path(i), cv2.IMREAD_UNCHANGED)
        write_color_mask(tmp_path / "colour" / Path(index.mask_path(i)).name, render(raw, palette))
    colour = MaskFolderAdapter(camvid / "val", tmp_path / "colour", CAMVID, colors=CAMVID_COLORS,
                               ignore_colors=[VOID], provides=("mask", "labels"))
    assert len(colour) == len(index) == 101
    t_index = t_colour = 0.0
    n_void = 0
    for i in range(len(index)):
        t0 = time.perf_counter()
        a = index.load(i)[1]
        t1 = time.perf_counter()
        b = colour.load(i)[1]
        t_index, t_colour = t_index + t1 - t0, t_colour + time.perf_counter() - t1
        assert np.array_equal(a["mask"], b["mask"]) and a["labels"].tolist() == b["labels"].tolist()
        n_void += int((b["mask"] == 255).sum())
    assert n_void > 0  # black (void) came back as ignore
    assert np.array_equal(index.pixel_counts(), colour.pixel_counts())
    print(f"\nCamVid val through colours: 101 masks identical; load with index masks {1e3 * t_index / 101:.1f} "
          f"ms, with colour masks {1e3 * t_colour / 101:.1f} ms per image (image decode included)")


def _folder(tmp_path: Path, rgb: np.ndarray, alpha: bool = False) -> tuple[Path, Path]:
    write_image(tmp_path / "img" / "a.jpg", h=rgb.shape[0], w=rgb.shape[1])
    write_color_mask(tmp_path / "ann" / "a.png", rgb, alpha)
    return tmp_path / "img", tmp_path / "ann"


def test_colour_table_options(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = (10, 20, 30)  # a
    rgb[:, 4:6] = (40, 50, 60)  # b
    rgb[:, 6] = (70, 80, 90)  # b, second colour
    rgb[:, 7] = (1, 2, 3)  # ignore
    img_dir, ann_dir = _folder(tmp_path, rgb, alpha=True)  # RGBA: the alpha channel is dropped
    kw = {"colors": {"a": "#0a141e", "b": [[40, 50, 60], [70, 80, 90]]}, "ignore_colors": [[1, 2, 3]]}
    m = MaskFolderAdapter(img_dir, ann_dir, ["a", "b"], **kw).load(0)[1]["mask"]
    expected = np.zeros((6, 8), np.uint8)
    expected[:, 4:7], expected[:, 7] = 1, 255
    assert np.array_equal(m, expected)
    # a list in class order, a single ignore colour; a palette PNG is read as its colours
    from PIL import Image

    pal = Image.fromarray(np.asarray([[0, 1], [1, 2]], np.uint8))
    pal.putpalette([10, 20, 30, 40, 50, 60, 1, 2, 3] + [0] * (256 * 3 - 9))
    write_image(tmp_path / "p" / "img" / "a.jpg", h=2, w=2)
    (tmp_path / "p" / "ann").mkdir()
    pal.save(tmp_path / "p" / "ann" / "a.png")
    m = MaskFolderAdapter(tmp_path / "p" / "img", tmp_path / "p" / "ann", ["a", "b"],
                          colors=[[10, 20, 30], [40, 50, 60]], ignore_colors=[1, 2, 3]).load(0)[1]["mask"]
    assert m.tolist() == [[0, 1], [1, 255]]
    table = ColorTable(["a", "b"], [[10, 20, 30], [40, 50, 60]])
    assert table.colors() == {0: [(10, 20, 30)], 1: [(40, 50, 60)]}
    assert pack_rgb(np.array([1, 2, 3], np.uint8)) == (1 << 16) + (2 << 8) + 3


def test_colour_not_in_the_table(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:] = (10, 20, 30)
    rgb[1, :5] = (200, 0, 0)  # 5 pixels of an unknown colour
    rgb[2, 0] = (0, 0, 201)  # and one more
    img_dir, ann_dir = _folder(tmp_path, rgb)
    adapter = MaskFolderAdapter(img_dir, ann_dir, ["a"], colors={"a": [10, 20, 30]})
    for call in (lambda: adapter.load(0), adapter.pixel_counts):
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value) == (f"{ann_dir / 'a.png'}: colour [200, 0, 0] (5 pixels) is not in the colour table; "
                                "1 more unknown colour, 6 pixels in all; add it to colors or ignore_colors, "
                                "or set unknown_color: ignore")
    lenient = MaskFolderAdapter(img_dir, ann_dir, ["a"], colors={"a": [10, 20, 30]}, unknown_color="ignore")
    m = lenient.load(0)[1]["mask"]
    assert (m == 255).sum() == 6 and (m == 0).sum() == 42


def test_colour_mask_that_is_not_rgb(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", h=6, w=8)
    path = write_mask(tmp_path / "ann" / "a.png", np.zeros((6, 8), np.uint8))
    adapter = MaskFolderAdapter(tmp_path / "img", tmp_path / "ann", ["a"], colors=[[0, 0, 0]])
    with pytest.raises(DataError, match="colour mask must have RGB channels, got 1 channel") as e:
        adapter.load(0)
    assert str(e.value).startswith(f"{path}: ")


@pytest.mark.parametrize("kw,words", [
    ({"colors": {"a": [1, 2, 3], "b": [1, 2, 3]}}, ["colour [1, 2, 3] is given for both 'a' and 'b'"]),
    ({"colors": {"a": [1, 2, 3], "b": [4, 5, 6]}, "ignore_colors": [[1, 2, 3]]},
     ["colour [1, 2, 3] is given for both 'a' and 'ignore'"]),
    ({"colors": {"a": [1, 2, 3]}}, ["colors gives no colour for classes ['b']"]),
    ({"colors": {"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}}, ["colors names ['c']"]),
    ({"colors": [[1, 2, 3]]}, ["colors lists 1 colours for 2 classes"]),
    ({"colors": {"a": [300, 0, 0], "b": [4, 5, 6]}}, ["colors.a", "[300, 0, 0]"]),
    ({"colors": {"a": "#12345g", "b": [4, 5, 6]}}, ["colors.a", "'#12345g'"]),
    ({"colors": "red"}, ["colors must be a mapping"]),
    ({"colors": [[1, 2, 3], [4, 5, 6]], "unknown_color": "skip"}, ["unknown_color", "'skip'"]),
    ({"colors": [[1, 2, 3], [4, 5, 6]], "ignore_ids": [9]}, ["ignore_ids", "ignore_colors"]),
    ({"ignore_colors": [[0, 0, 0]]}, ["give colors too"]),
], ids=["twice", "class and ignore", "missing class", "stray class", "wrong length", "out of range", "bad hex",
        "not a table", "unknown_color", "ignore_ids", "no colors"])
def test_colour_table_config_errors(tmp_path, kw, words):
    img_dir, ann_dir = _folder(tmp_path, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ConfigError) as e:
        MaskFolderAdapter(img_dir, ann_dir, ["a", "b"], **kw)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_colour_errors_are_one_line_through_the_tools(capsys, tmp_path):
    """A YAML colour table reaches the adapter; an unknown colour stops with one line, or is skipped."""
    import importlib.util

    import yaml

    from visionmtl.cli import run

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[0, 0] = (9, 9, 9)
    img_dir, ann_dir = _folder(tmp_path, rgb)
    write_image(img_dir / "b.jpg", h=6, w=8)
    write_color_mask(ann_dir / "b.png", np.zeros((6, 8, 3), np.uint8))
    path = Path(__file__).resolve().parent.parent / "tools" / "browse_dataset.py"
    mod_spec = importlib.util.spec_from_file_location("tool_browse_dataset", path)
    tool = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(tool)
    for skip, bad_table in ((False, False), (True, False), (False, True)):
        ds = {"type": "masks", "img_dir": str(img_dir), "mask_dir": str(ann_dir), "classes": ["a", "b"],
              "colors": {"a": [0, 0, 0], "b": [0, 0, 0] if bad_table else [255, 255, 255]}}
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"tasks": {"seg": {"type": "segmentation", "classes": ["a", "b"]}},
                                       "data": {"img_size": 64, "workers": 0, "train": [ds],
                                                "on_bad_sample": "skip" if skip else "error"}}))
        out = tmp_path / f"b{skip}{bad_table}"
        code = run(tool.main, tool.get_args_parser().parse_args([str(cfg), "--num", "2", "--out", str(out)]))
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert "Traceback" not in err, err
        if bad_table:
            assert code == 2 and len(lines) == 1 and "colour [0, 0, 0] is given for both 'a' and 'b'" in lines[0]
        elif skip:
            assert code == 0 and not lines and len(list(out.iterdir())) == 1
        else:
            assert code == 2 and len(lines) == 1, err
            assert str(ann_dir / "a.png") in lines[0] and "colour [9, 9, 9] (1 pixel)" in lines[0]
