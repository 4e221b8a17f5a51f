"""ByteTrack-style tracker, Kalman filter and CLEAR-MOT on synthetic sequences (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from visionmtl.inference.mot import (
    SyntheticSequence,
    clear_mot,
    evaluate_tracker,
    noisy_detections,
    render_frames,
    synthetic_sequence,
)
from visionmtl.inference.track import ByteTracker, KalmanFilter, iou_matrix, xyah_to_xyxy, xyxy_to_xyah


def box(cx: float, cy: float, w: float = 20.0, h: float = 30.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_box_conversions_round_trip():
    b = np.array([[10.0, 20.0, 40.0, 80.0], [0.0, 0.0, 5.0, 5.0]])
    np.testing.assert_allclose(xyah_to_xyxy(xyxy_to_xyah(b)), b, atol=1e-9)


def test_kalman_filter_learns_constant_velocity():
    kf = KalmanFilter()
    mean, cov = kf.initiate(xyxy_to_xyah(np.array([box(10, 50)]))[0])
    for t in range(1, 25):
        m, c = kf.predict(mean[None], cov[None])
        mean, cov = kf.update(m[0], c[0], xyxy_to_xyah(np.array([box(10 + 3 * t, 50 - t)]))[0])
    np.testing.assert_allclose(mean[4:6], [3.0, -1.0], atol=0.2)
    pred, _ = kf.predict(mean[None], cov[None])
    np.testing.assert_allclose(pred[0, :2], [10 + 3 * 25, 50 - 25], atol=0.5)


def test_clear_mot_counts_fp_fn_and_identity_switches():
    a, b = np.array([box(20, 20)]), np.array([box(80, 20)])
    gt = [(np.array([1, 2]), np.concatenate([a, b]))] * 4
    hyp = [
        (np.array([7, 8]), np.concatenate([a, b])),  # perfect
        (np.array([8, 7]), np.concatenate([a, b])),  # ids swapped: 2 switches
        (np.array([8]), a),  # object 2 missed: 1 FN
        (np.array([8, 7, 9]), np.concatenate([a, b, np.array([box(50, 80)])])),  # 1 FP, same ids as frame 2
    ]
    m = clear_mot(gt, hyp)
    assert (m["IDSW"], m["FN"], m["FP"], m["GT"]) == (2, 1, 1, 8)
    assert m["MOTA"] == pytest.approx(1 - 4 / 8)
    assert m["MOTP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="frames"):
        clear_mot(gt, hyp[:2])


def test_exact_detections_give_perfect_tracking():
    seq = synthetic_sequence(60, 4, seed=1)
    dets = [(b, np.full(len(b), 0.9, np.float32), np.zeros(len(b), np.int64)) for b in seq.boxes]
    m = evaluate_tracker(ByteTracker(), seq, detections=dets)
    assert m["MOTA"] == pytest.approx(1.0) and m["IDSW"] == 0


@pytest.mark.parametrize("seed,n_objects", [(0, 3), (1, 4), (2, 5), (3, 4)])
def test_noisy_dropped_crossing_detections_keep_identities(seed, n_objects):
    seq = synthetic_sequence(100, n_objects, seed=seed, crossing=True)
    # the crossing really happens: objects 1 and 2 overlap heavily mid-sequence
    overlap = max(iou_matrix(b[0:1], b[1:2])[0, 0] for b in seq.boxes)
    assert overlap > 0.45
    dets = noisy_detections(seq, seed=seed, jitter=0.04, drop=0.1, low_score=0.1, false_positives=0.1)
    n_gt = sum(len(g) for g in seq.boxes)
    no_fp = noisy_detections(seq, seed=seed, jitter=0.04, drop=0.1, low_score=0.1, false_positives=0.0)
    assert sum(len(b) for b, _, _ in no_fp) < 0.95 * n_gt  # detections really are dropped
    assert sum(len(b) for b, _, _ in dets) > sum(len(b) for b, _, _ in no_fp)  # and false positives added
    m = evaluate_tracker(ByteTracker(), seq, detections=dets)
    assert m["IDSW"] <= 2, m
    assert m["MOTA"] >= 0.75, m


def test_tracker_ids_are_stable_and_contiguous():
    seq = synthetic_sequence(50, 3, seed=4, crossing=False)
    tracker = ByteTracker()
    seen = set()
    for b in seq.boxes:
        ids = tracker.update(b, np.full(len(b), 0.9), None)
        assert (ids > 0).all()
        seen.update(ids.tolist())
    assert seen == {1, 2, 3}


def _present(tracker: ByteTracker, b: list[float], score: float = 0.9) -> int:
    return int(tracker.update(np.array([b]), np.array([score]), np.array([0]))[0])


@pytest.mark.parametrize("gap,same_id", [(5, True), (12, False)])
def test_lost_track_ends_after_buffer_and_returning_object_gets_new_id(gap, same_id):
    tracker = ByteTracker(track_buffer=8)
    ids = [_present(tracker, box(50, 50)) for _ in range(10)]
    assert ids == [1] * 10
    for _ in range(gap):  # the object disappears
        assert len(tracker.update(np.zeros((0, 4)), np.zeros(0))) == 0
    assert (len(tracker.lost_tracks) == 1) == same_id
    back = [_present(tracker, box(50, 50)) for _ in range(3)]
    if same_id:
        assert back == [1, 1, 1]
    else:
        assert tracker.n_ended == 1
        assert back[0] == -1  # a new track is confirmed on its second frame
        assert back[1:] == [2, 2]


def test_low_score_boxes_continue_tracks_but_never_start_one():
    tracker = ByteTracker(track_thresh=0.5, low_thresh=0.1)
    ids = [_present(tracker, box(40 + 2 * t, 50), 0.9) for t in range(5)]
    ids += [_present(tracker, box(50 + 2 * t, 50), 0.3) for t in range(5)]  # occluded: low confidence
    assert ids == [1] * 10
    fresh = ByteTracker(track_thresh=0.5, low_thresh=0.1)
    assert [_present(fresh, box(40, 50), 0.3) for _ in range(5)] == [-1] * 5
    assert fresh.tracks == []


def test_class_aware_association():
    tracker = ByteTracker()
    b = np.array([box(50, 50)])
    assert tracker.update(b, np.array([0.9]), np.array([0]))[0] == 1
    # same place, another class: not the same object
    assert tracker.update(b, np.array([0.9]), np.array([1]))[0] != 1


def test_render_frames_and_detector_based_evaluation():
    seq = synthetic_sequence(12, 3, size=(96, 64), seed=0)
    frames = render_frames(seq)
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8
    gt_lookup = {id(f): b for f, b in zip(frames, seq.boxes)}
    m = evaluate_tracker(ByteTracker(), seq, detector=lambda f: (gt_lookup[id(f)], np.full(len(gt_lookup[id(f)]), 0.9),
                                                                 np.zeros(len(gt_lookup[id(f)]), np.int64)),
                         frames=frames)
    assert m["MOTA"] == pytest.approx(1.0)


def test_tracker_rejects_bad_input():
    with pytest.raises(ValueError, match="low_thresh"):
        ByteTracker(track_thresh=0.2, low_thresh=0.5)
    with pytest.raises(ValueError, match="differ in length"):
        ByteTracker().update(np.zeros((2, 4)), np.zeros(3))
    assert isinstance(synthetic_sequence(3, 2), SyntheticSequence)


def test_eval_tracking_tool_reports_mota(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "tools/eval_tracking.py", "--seeds", "2", "--frames", "40", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "overall: MOTA" in r.stdout
    overall = json.loads((tmp_path / "tracking.json").read_text())["overall"]
    assert overall["MOTA"] > 0.6 and overall["IDSW"] <= 2
