"""Multi-object tracking: a ByteTrack-style tracker.

:class:`ByteTracker` associates detections with tracks in two stages (Zhang et al., "ByteTrack",
ECCV 2022): high-score detections first, by IoU against Kalman-predicted tracks and Hungarian
matching, then low-score detections against the tracks still unmatched, so that occluded,
low-confidence objects keep their identity. Each track runs a constant-velocity Kalman filter on
``(cx, cy, a, h)`` (centre, aspect ratio ``w / h``, height), as in SORT / DeepSORT / ByteTrack.

Synthetic sequences and the CLEAR-MOT metrics that evaluate it are in :mod:`.mot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

__all__ = ["KalmanFilter", "Track", "TrackState", "ByteTracker", "iou_matrix", "linear_assignment"]


# --------------------------------------------------------------------------------------------
# Kalman filter
# --------------------------------------------------------------------------------------------
def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """``[N,4]`` xyxy -> ``[N,4]`` (cx, cy, w/h, h)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], 1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """``[N,4+]`` (cx, cy, a, h, ...) -> ``[N,4]`` xyxy."""
    xyah = np.asarray(xyah, np.float64).reshape(len(xyah), -1)
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    return np.stack([xyah[:, 0] - w / 2, xyah[:, 1] - h / 2, xyah[:, 0] + w / 2, xyah[:, 1] + h / 2], 1)


class KalmanFilter:
    """Constant-velocity Kalman filter on ``(cx, cy, a, h, vcx, vcy, va, vh)``.

    Process and measurement noise scale with the box height (the ByteTrack / DeepSORT
    parameterisation), so the filter behaves the same for near and far objects.
    """

    std_weight_position = 1.0 / 20
    std_weight_velocity = 1.0 / 160

    def __init__(self) -> None:
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)  # dt = 1 frame
        self.observe = np.eye(4, 8)

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[8]`` and covariance ``[8,8]`` of a new track from one ``(cx, cy, a, h)``."""
        h = measurement[3]
        wp, wv = self.std_weight_position, self.std_weight_velocity
        std = np.array([2 * wp * h, 2 * wp * h, 1e-2, 2 * wp * h, 10 * wv * h, 10 * wv * h, 1e-5, 10 * wv * h])
        return np.r_[measurement, np.zeros(4)], np.diag(std**2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for ``N`` tracks at once: ``mean [N,8]``, ``cov [N,8,8]``."""
        h = mean[:, 3]
        wp, wv = self.std_weight_position, self.std_weight_velocity
        ones = np.ones_like(h)
        std = np.stack([wp * h, wp * h, 1e-2 * ones, wp * h, wv * h, wv * h, 1e-5 * ones, wv * h], 1)
        q = np.zeros((len(mean), 8, 8))
        idx = np.arange(8)
        q[:, idx, idx] = std**2
        mean = mean @ self.motion.T
        cov = self.motion @ cov @ self.motion.T + q
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct one track's ``mean [8]`` / ``cov [8,8]`` with a measurement ``(cx, cy, a, h)``."""
        h = mean[3]
        wp = self.std_weight_position
        r = np.diag(np.array([wp * h, wp * h, 1e-1, wp * h]) ** 2)
        proj_mean = self.observe @ mean
        proj_cov = self.observe @ cov @ self.observe.T + r
        chol = cho_factor(proj_cov, lower=True, check_finite=False)
        gain = cho_solve(chol, (cov @ self.observe.T).T, check_finite=False).T  # [8,4]
        mean = mean + gain @ (measurement - proj_mean)
        cov = cov - gain @ proj_cov @ gain.T
        return mean, cov


# --------------------------------------------------------------------------------------------
# Association helpers
# --------------------------------------------------------------------------------------------
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of two xyxy box sets (``torchvision.ops.box_iou``)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def linear_assignment(cost: np.ndarray, thresh: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian matching keeping pairs with ``cost <= thresh``.

    Returns ``(matches [(row, col)], unmatched rows, unmatched cols)``.
    """
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return [], list(range(rows)), list(range(cols))
    big = thresh + 1e4  # pairs above the threshold may only be chosen if nothing else is possible
    r, c = linear_sum_assignment(np.where(cost > thresh, big, cost))
    matches = [(int(i), int(j)) for i, j in zip(r, c) if cost[i, j] <= thresh]
    mr = {i for i, _ in matches}
    mc = {j for _, j in matches}
    return matches, [i for i in range(rows) if i not in mr], [j for j in range(cols) if j not in mc]


# --------------------------------------------------------------------------------------------
# Tracks and the tracker
# --------------------------------------------------------------------------------------------
class TrackState:
    """Life cycle of a track: tentative -> tracked <-> lost -> removed."""

    TENTATIVE = 0
    TRACKED = 1
    LOST = 2
    REMOVED = 3


@dataclass
class Track:
    """One tracked object. ``track_id`` is 0 until the track is confirmed."""

    mean: np.ndarray
    cov: np.ndarray
    score: float
    label: int
    start_frame: int
    frame_id: int  # last frame with a matched detection
    state: int = TrackState.TENTATIVE
    track_id: int = 0
    hits: int = 1

    @property
    def box(self) -> np.ndarray:
        """Current (predicted or corrected) box, xyxy ``[4]``."""
        return xyah_to_xyxy(self.mean[None, :4])[0]

    @property
    def confirmed(self) -> bool:
        return self.track_id > 0


class ByteTracker:
    """ByteTrack-style multi-object tracker on per-frame detections.

    Args:
        track_thresh: detections with ``score >= track_thresh`` are "high" (first association
            stage, may start tracks); ``low_thresh < score < track_thresh`` are "low" (second
            stage, only continue tracks).
        low_thresh: detections at or below this score are ignored.
        new_track_thresh: minimum score to start a track (default ``track_thresh + 0.1``,
            capped at 0.95 so a high ``track_thresh`` can still start tracks).
        match_thresh: max ``1 - IoU`` cost in the first stage (0.8 means IoU >= 0.2).
        second_match_thresh: max cost in the second stage (low-score boxes).
        tentative_match_thresh: max cost when confirming tentative tracks.
        track_buffer: frames a track may stay lost before it ends; an object that returns
            later starts a new track with a new id.
        class_aware: only associate detections and tracks of the same class label.

    ``update(boxes, scores, labels)`` returns one id per detection (``-1``: not part of a
    confirmed track). Ids start at 1 and are only given to confirmed tracks (matched in two
    consecutive frames, or present in the very first frame), so they are contiguous.
    """

    def __init__(self, track_thresh: float = 0.5, low_thresh: float = 0.1, new_track_thresh: Optional[float] = None,
                 match_thresh: float = 0.8, second_match_thresh: float = 0.5, tentative_match_thresh: float = 0.7,
                 track_buffer: int = 30, class_aware: bool = True) -> None:
        if not 0.0 <= low_thresh <= track_thresh <= 1.0:
            raise ValueError(f"need 0 <= low_thresh ({low_thresh}) <= track_thresh ({track_thresh}) <= 1")
        if track_buffer < 0:
            raise ValueError(f"track_buffer must be >= 0, got {track_buffer}")
        self.track_thresh = float(track_thresh)
        self.low_thresh = float(low_thresh)
        self.new_track_thresh = float(min(track_thresh + 0.1, 0.95) if new_track_thresh is None else new_track_thresh)
        self.match_thresh = float(match_thresh)
        self.second_match_thresh = float(second_match_thresh)
        self.tentative_match_thresh = float(tentative_match_thresh)
        self.track_buffer = int(track_buffer)
        self.class_aware = bool(class_aware)
        self.kf = KalmanFilter()
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart ids at 1."""
        self.frame_id = 0
        self.next_id = 1
        self.tracks: list[Track] = []  # tentative, tracked and lost (removed tracks are dropped)
        self.n_ended = 0

    @property
    def active_tracks(self) -> list[Track]:
        """Confirmed tracks matched in the current frame."""
        return [t for t in self.tracks if t.state == TrackState.TRACKED and t.confirmed]

    @property
    def lost_tracks(self) -> list[Track]:
        return [t for t in self.tracks if t.state == TrackState.LOST]

    # ----------------------------------------------------------------------------------------
    def _cost(self, tracks: Sequence[Track], boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not tracks or len(boxes) == 0:
            return np.ones((len(tracks), len(boxes)), np.float32)
        cost = 1.0 - iou_matrix(np.stack([t.box for t in tracks]), boxes)
        if self.class_aware:
            cost[np.array([t.label for t in tracks])[:, None] != labels[None, :]] = 1.0
        return cost

    def _confirm(self, track: Track) -> None:
        track.state = TrackState.TRACKED
        if not track.confirmed:
            track.track_id = self.next_id
            self.next_id += 1

    def _update_track(self, track: Track, box: np.ndarray, score: float, label: int) -> None:
        track.mean, track.cov = self.kf.update(track.mean, track.cov, xyxy_to_xyah(box[None])[0])
        track.score, track.label = float(score), int(label)
        track.frame_id = self.frame_id
        track.hits += 1
        self._confirm(track)

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
        """Advance one frame with this frame's detections.

        Args:
            boxes: ``[N,4]`` xyxy in pixels.
            scores: ``[N]`` confidences.
            labels: ``[N]`` class ids (all 0 when omitted).

        Returns:
            int64 ``[N]``: the track id of each detection, ``-1`` where the detection is not
            (yet) part of a confirmed track.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"boxes ({len(boxes)}), scores ({len(scores)}) and labels ({len(labels)}) differ in length")
        self.frame_id += 1
        ids = np.full(len(boxes), -1, np.int64)
        assigned: dict[int, Track] = {}  # detection index -> track

        high = np.flatnonzero(scores >= self.track_thresh)
        low = np.flatnonzero((scores > self.low_thresh) & (scores < self.track_thresh))

        tentative = [t for t in self.tracks if t.state == TrackState.TENTATIVE]
        pool = [t for t in self.tracks if t.state in (TrackState.TRACKED, TrackState.LOST)]
        if pool:  # Kalman prediction; lost tracks keep moving but stop growing/shrinking
            mean = np.stack([t.mean for t in pool])
            cov = np.stack([t.cov for t in pool])
            for k, t in enumerate(pool):
                if t.state != TrackState.TRACKED:
                    mean[k, 7] = 0.0
            mean, cov = self.kf.predict(mean, cov)
            for k, t in enumerate(pool):
                t.mean, t.cov = mean[k], cov[k]

        # stage 1: high-score detections against tracked + lost tracks
        matches, un_tracks, un_high = linear_assignment(self._cost(pool, boxes[high], labels[high]), self.match_thresh)
        for ti, di in matches:
            d = int(high[di])
            self._update_track(pool[ti], boxes[d], scores[d], labels[d])
            assigned[d] = pool[ti]

        # stage 2: low-score detections against tracks that were tracked until now
        remaining = [pool[i] for i in un_tracks if pool[i].state == TrackState.TRACKED]
        matches, un_rem, _ = linear_assignment(self._cost(remaining, boxes[low], labels[low]), self.second_match_thresh)
        for ti, di in matches:
            d = int(low[di])
            self._update_track(remaining[ti], boxes[d], scores[d], labels[d])
            assigned[d] = remaining[ti]
        for i in un_rem:
            remaining[i].state = TrackState.LOST

        # stage 3: tentative tracks (seen once) against the high-score detections left over
        left = high[un_high]
        matches, un_tent, un_left = linear_assignment(self._cost(tentative, boxes[left], labels[left]),
                                                      self.tentative_match_thresh)
        for ti, di in matches:
            d = int(left[di])
            self._update_track(tentative[ti], boxes[d], scores[d], labels[d])
            assigned[d] = tentative[ti]
        for i in un_tent:
            tentative[i].state = TrackState.REMOVED

        # new tracks from unmatched high-score detections
        for di in un_left:
            d = int(left[di])
            if scores[d] < self.new_track_thresh:
                continue
            mean, cov = self.kf.initiate(xyxy_to_xyah(boxes[d][None])[0])
            t = Track(mean, cov, float(scores[d]), int(labels[d]), self.frame_id, self.frame_id)
            if self.frame_id == 1:  # nothing to confirm against on the first frame
                self._confirm(t)
            self.tracks.append(t)
            assigned[d] = t

        # end tracks lost for too long
        for t in self.tracks:
            if t.state == TrackState.LOST and self.frame_id - t.frame_id > self.track_buffer:
                t.state = TrackState.REMOVED
                self.n_ended += 1
        self._remove_duplicates()
        self.tracks = [t for t in self.tracks if t.state != TrackState.REMOVED]

        for d, t in assigned.items():
            if t.state == TrackState.TRACKED and t.confirmed:
                ids[d] = t.track_id
        return ids

    def _remove_duplicates(self, iou: float = 0.85) -> None:
        """A lost track overlapping a tracked one is a duplicate: keep the longer-lived track."""
        tracked = [t for t in self.tracks if t.state == TrackState.TRACKED]
        lost = [t for t in self.tracks if t.state == TrackState.LOST]
        if not tracked or not lost:
            return
        ov = iou_matrix(np.stack([t.box for t in tracked]), np.stack([t.box for t in lost]))
        for i, j in zip(*np.nonzero(ov > iou)):
            a, b = tracked[i], lost[j]
            if a.frame_id - a.start_frame >= b.frame_id - b.start_frame:
                b.state = TrackState.REMOVED
            else:
                a.state = TrackState.REMOVED
