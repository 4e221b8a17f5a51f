"""ByteTrack over a predictor's results: trackers per trackable task, ids onto the boxes and onto
the results decoded on those boxes (instance masks), used by the video pipeline (video.py)."""

from __future__ import annotations

from typing import Optional

from ..tasks import spec
from .predictor import Predictor
from .track import ByteTracker

__all__ = ["apply_tracking", "followers_of", "make_trackers"]


def make_trackers(predictor: Predictor, track_buffer: int) -> dict[str, ByteTracker]:
    low = min(0.1, predictor.conf)
    return {n: ByteTracker(track_thresh=max(predictor.conf, low), low_thresh=low, track_buffer=track_buffer)
            for n, t in predictor.tasks.items() if spec(t).trackable}


def followers_of(predictor: Predictor) -> dict[str, list[str]]:
    """Tracked task -> the tasks decoded on its boxes (instance masks), which share its track ids."""
    heads = predictor.model.heads
    out: dict[str, list[str]] = {}
    for n in predictor.task_names:
        after = getattr(heads[n], "after", None)
        if after:
            out.setdefault(after, []).append(n)
    return out


def apply_tracking(result: dict, trackers: dict[str, ByteTracker], conf: float,
                    followers: Optional[dict[str, list[str]]] = None) -> None:
    """Give detections track ids; keep boxes above ``conf`` or continuing a track (low-score boxes).

    A task decoded on a tracked task's boxes (``followers``: instance masks, one per box in the
    same order) keeps the same boxes and gets the same ids, so a mask keeps its object's colour.
    """
    for name, tracker in trackers.items():
        r = result.get(name)
        if r is None:
            continue
        ids = tracker.update(r["boxes"], r["scores"], r["labels"])
        keep = (r["scores"] >= conf) | (ids >= 0)
        result[name] = {"boxes": r["boxes"][keep], "scores": r["scores"][keep], "labels": r["labels"][keep],
                        "track_ids": ids[keep]}
        for other in (followers or {}).get(name, []):
            f = result.get(other)
            if f is not None and len(f["boxes"]) == len(keep):
                result[other] = {**{k: v[keep] for k, v in f.items()}, "track_ids": ids[keep]}
