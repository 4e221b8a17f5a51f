"""Tracking without a model: synthetic sequences and CLEAR-MOT metrics.

:func:`synthetic_sequence` makes moving boxes with known ids (optionally crossing),
:func:`noisy_detections` turns them into imperfect detections (jitter, dropped boxes, low scores,
false positives), :func:`render_frames` draws them as a video, :func:`clear_mot` computes MOTA /
MOTP / ID switches (CLEAR-MOT, Bernardin & Stiefelhagen 2008) and :func:`evaluate_tracker` runs a
:class:`~.track.ByteTracker` over a sequence and scores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from .track import ByteTracker, iou_matrix, linear_assignment

__all__ = ["SyntheticSequence", "synthetic_sequence", "noisy_detections", "render_frames", "clear_mot",
           "evaluate_tracker"]


# --------------------------------------------------------------------------------------------
# Synthetic sequences
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticSequence:
    """Ground truth of a synthetic video: per frame, object ids ``[K]`` and xyxy boxes ``[K,4]``."""

    ids: list[np.ndarray]
    boxes: list[np.ndarray]
    size: tuple[int, int]  # (width, height)
    labels: dict[int, int] = field(default_factory=dict)  # object id -> class id

    def __len__(self) -> int:
        return len(self.ids)


def synthetic_sequence(n_frames: int = 100, n_objects: int = 4, size: tuple[int, int] = (320, 240), seed: int = 0,
                       crossing: bool = True, n_classes: int = 1) -> SyntheticSequence:
    """Boxes moving at constant velocity and bouncing off the borders.

    With ``crossing``, objects 1 and 2 move towards each other along nearly the same row and
    pass through each other (heavily overlapping boxes) in the middle of the sequence, the
    hard case for identity preservation.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    objs = []
    for k in range(n_objects):
        bw, bh = rng.uniform(0.09, 0.16) * w, rng.uniform(0.12, 0.22) * h
        pos = np.array([rng.uniform(0, w - bw), rng.uniform(0, h - bh)])
        vel = rng.uniform(-1, 1, 2) * rng.uniform(1.5, 4.0)
        objs.append([pos, vel, bw, bh])
    if crossing and n_objects >= 2:
        # meet at the centre half-way through, coming from opposite sides, slightly different rows/sizes
        t_meet = n_frames / 2
        for k, sign in ((0, 1.0), (1, -1.0)):
            bw, bh = objs[k][2], objs[k][3]
            speed = min(3.0, 0.4 * (w - bw) / max(t_meet, 1))
            centre = np.array([w / 2 - bw / 2, h / 2 - bh / 2 + (0.02 * h if k else -0.02 * h)])
            vel = np.array([sign * speed, 0.0])
            objs[k][0], objs[k][1] = centre - vel * t_meet, vel
    ids_f, boxes_f = [], []
    for _ in range(n_frames):
        ids, boxes = [], []
        for k, o in enumerate(objs):
            pos, vel, bw, bh = o
            ids.append(k + 1)
            boxes.append([pos[0], pos[1], pos[0] + bw, pos[1] + bh])
            nxt = pos + vel
            for ax, lim in ((0, w - bw), (1, h - bh)):
                if nxt[ax] < 0 or nxt[ax] > lim:
                    vel[ax] = -vel[ax]
                    nxt[ax] = np.clip(nxt[ax], 0, lim)
            o[0] = nxt
        ids_f.append(np.array(ids, np.int64))
        boxes_f.append(np.array(boxes, np.float32).reshape(-1, 4))
    labels = {k + 1: int(rng.integers(n_classes)) for k in range(n_objects)}
    return SyntheticSequence(ids_f, boxes_f, (w, h), labels)


def noisy_detections(seq: SyntheticSequence, seed: int = 0, jitter: float = 0.04, drop: float = 0.1,
                     low_score: float = 0.1, false_positives: float = 0.1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Imperfect detections from ground truth: per frame ``(boxes [N,4], scores [N], labels [N])``.

    Each box edge moves by Gaussian noise of ``jitter`` x box size; a box is dropped with
    probability ``drop``; with probability ``low_score`` a kept box gets a low score (0.15-0.45,
    exercised by ByteTrack's second stage); ``false_positives`` is the expected number of random
    low-to-mid score boxes per frame.
    """
    rng = np.random.default_rng(seed)
    w, h = seq.size
    out = []
    for ids, gt in zip(seq.ids, seq.boxes):
        keep = rng.random(len(gt)) >= drop
        boxes = gt[keep].astype(np.float64)
        lab = np.array([seq.labels.get(int(i), 0) for i in ids[keep]], np.int64)
        wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, 1)  # (w, h, w, h) per box
        boxes = boxes + rng.normal(0, jitter, boxes.shape) * wh
        scores = rng.uniform(0.6, 0.95, len(boxes))
        weak = rng.random(len(boxes)) < low_score
        scores[weak] = rng.uniform(0.15, 0.45, int(weak.sum()))
        n_fp = rng.poisson(false_positives)
        if n_fp:
            fw, fh = rng.uniform(0.05, 0.15, n_fp) * w, rng.uniform(0.05, 0.2, n_fp) * h
            fx, fy = rng.uniform(0, w - fw), rng.uniform(0, h - fh)
            boxes = np.concatenate([boxes, np.stack([fx, fy, fx + fw, fy + fh], 1)])
            scores = np.concatenate([scores, rng.uniform(0.15, 0.6, n_fp)])
            lab = np.concatenate([lab, rng.integers(0, max(seq.labels.values(), default=0) + 1, n_fp)])
        out.append((boxes.astype(np.float32), scores.astype(np.float32), lab))
    return out


def render_frames(seq: SyntheticSequence, seed: int = 0, noise: float = 25.0) -> list[np.ndarray]:
    """Draw the sequence as HxWx3 uint8 RGB frames: coloured shapes over a noisy background."""
    rng = np.random.default_rng(seed)
    w, h = seq.size
    base = np.full((h, w, 3), 110, np.float32)
    colours = {i: tuple(int(c) for c in rng.integers(40, 255, 3)) for i in seq.labels}
    frames = []
    for ids, boxes in zip(seq.ids, seq.boxes):
        img = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
        for i, b in zip(ids, boxes):
            x1, y1, x2, y2 = (int(round(v)) for v in b)
            if int(i) % 2:
                cv2.rectangle(img, (x1, y1), (x2, y2), colours[int(i)], -1)
            else:
                cv2.ellipse(img, ((x1 + x2) // 2, (y1 + y2) // 2), (max((x2 - x1) // 2, 1), max((y2 - y1) // 2, 1)),
                            0, 0, 360, colours[int(i)], -1)
        frames.append(img)
    return frames


# --------------------------------------------------------------------------------------------
# CLEAR-MOT
# --------------------------------------------------------------------------------------------
def clear_mot(gt: Sequence[tuple[np.ndarray, np.ndarray]], hyp: Sequence[tuple[np.ndarray, np.ndarray]],
              iou_thresh: float = 0.5) -> dict:
    """CLEAR-MOT metrics of hypotheses against ground truth.

    Args:
        gt: per frame ``(ids [K], boxes [K,4])``.
        hyp: per frame ``(ids [M], boxes [M,4])`` (same number of frames).
        iou_thresh: minimum IoU for a match.

    Per frame, correspondences from the previous frame are kept while their IoU stays above
    the threshold, the rest are matched by the Hungarian algorithm on ``1 - IoU``. A ground-truth
    object matched to a different hypothesis id than the last time it was matched counts as an
    identity switch.

    Returns:
        ``MOTA = 1 - (FN + FP + IDSW) / GT``, ``MOTP`` (mean IoU of matches), ``IDSW``, ``FP``,
        ``FN``, ``GT``, ``matches``, ``frames``.
    """
    if len(gt) != len(hyp):
        raise ValueError(f"ground truth has {len(gt)} frames, hypotheses {len(hyp)}")
    fp = fn = idsw = n_gt = n_match = 0
    iou_sum = 0.0
    last: dict[int, int] = {}  # gt id -> hypothesis id of its last match
    prev: dict[int, int] = {}  # matches of the previous frame
    for (gids, gboxes), (hids, hboxes) in zip(gt, hyp):
        gids = [int(i) for i in np.asarray(gids).reshape(-1)]
        hids = [int(i) for i in np.asarray(hids).reshape(-1)]
        iou = iou_matrix(gboxes, hboxes)
        pairs: list[tuple[int, int]] = []
        used_g, used_h = set(), set()
        hpos = {h: j for j, h in enumerate(hids)}
        for gi, g in enumerate(gids):
            j = hpos.get(prev.get(g, -10**9))
            if j is not None and j not in used_h and iou[gi, j] >= iou_thresh:
                pairs.append((gi, j))
                used_g.add(gi)
                used_h.add(j)
        rest_g = [i for i in range(len(gids)) if i not in used_g]
        rest_h = [j for j in range(len(hids)) if j not in used_h]
        if rest_g and rest_h:
            m, _, _ = linear_assignment(1.0 - iou[np.ix_(rest_g, rest_h)], 1.0 - iou_thresh)
            pairs += [(rest_g[a], rest_h[b]) for a, b in m]
        cur: dict[int, int] = {}
        for gi, j in pairs:
            g, h = gids[gi], hids[j]
            if g in last and last[g] != h:
                idsw += 1
            last[g] = h
            cur[g] = h
            iou_sum += float(iou[gi, j])
        prev = cur
        n_gt += len(gids)
        n_match += len(pairs)
        fn += len(gids) - len(pairs)
        fp += len(hids) - len(pairs)
    return {
        "MOTA": 1.0 - (fn + fp + idsw) / max(n_gt, 1),
        "MOTP": iou_sum / max(n_match, 1),
        "IDSW": idsw, "FP": fp, "FN": fn, "GT": n_gt, "matches": n_match, "frames": len(gt),
    }


def evaluate_tracker(tracker: ByteTracker, seq: SyntheticSequence,
                     detections: Optional[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]] = None,
                     detector: Optional[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]] = None,
                     frames: Optional[Sequence[np.ndarray]] = None, iou_thresh: float = 0.5) -> dict:
    """Run ``tracker`` over a synthetic sequence and score it with :func:`clear_mot`.

    Detections come from ``detections`` (per frame ``(boxes, scores, labels)``), or from
    ``detector(frame)`` over ``frames`` (default: :func:`render_frames`), or by default from
    :func:`noisy_detections`. Only detections given a track id count as hypotheses.
    """
    tracker.reset()
    if detections is None:
        if detector is not None:
            frames = render_frames(seq) if frames is None else frames
            detections = [detector(f) for f in frames]
        else:
            detections = noisy_detections(seq)
    hyp = []
    for boxes, scores, labels in detections:
        ids = tracker.update(boxes, scores, labels)
        keep = ids >= 0
        hyp.append((ids[keep], np.asarray(boxes).reshape(-1, 4)[keep]))
    return clear_mot(list(zip(seq.ids, seq.boxes)), hyp, iou_thresh)
