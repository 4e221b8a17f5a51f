"""Inference outputs without a model: mask RLE, the video writer and the mask overlay."""

from __future__ import annotations

import numpy as np

from visionmtl.inference.outputs import mask_to_rle, open_video_writer, rle_to_mask

from .test_inference import read_video


def test_mask_rle_round_trip():
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 3:10] = 2
    m[25:, 30:] = 4
    segs = mask_to_rle(m, ["bg", "a", "b", "c", "d"])
    assert [s["label"] for s in segs] == ["bg", "b", "d"] and all(isinstance(s["rle"]["counts"], str) for s in segs)
    np.testing.assert_array_equal(rle_to_mask(segs, m.shape), m)


def test_video_writer_codec(tmp_path):
    w = open_video_writer(tmp_path / "x", 10, (64, 48))
    assert w.fourcc == "mp4v" and w.path.suffix == ".mp4"
    for _ in range(3):
        w.write(np.zeros((48, 64, 3), np.uint8))
    w.close()
    assert read_video(w.path)[0] == 3


def test_draw_mask_blends_visible_classes_only():
    """Visible classes are blended with their colour; background, ignore and the rest stay untouched."""
    from visionmtl.inference.draw import draw_mask, palette

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (57, 83, 3), dtype=np.uint8)
    mask = np.zeros((57, 83), np.uint8)
    mask[5:9, 3:6], mask[30:40, 60:80], mask[50, 80], mask[45:50, 10:20] = 1, 2, 3, 255
    out = draw_mask(img, mask, ["bg", "a", "b", "c"], alpha=0.5, legend=False)
    colors = palette(4, seed=11)
    vis = (mask > 0) & (mask < 255)
    assert np.array_equal(out[~vis], img[~vis]) and not np.array_equal(out[vis], img[vis])
    for c in (1, 2, 3):
        sel = mask == c
        expected = (img[sel].astype(np.float64) * 0.5 + colors[c].astype(np.float64) * 0.5)
        assert np.abs(out[sel] - expected).max() <= 1
    assert np.array_equal(draw_mask(img, np.zeros_like(mask), ["bg", "a"], legend=False), img)
    # the legend names the classes present
    assert not np.array_equal(draw_mask(img, mask, ["bg", "a", "b", "c"], alpha=0.5)[~vis], img[~vis])
