"""Streaming evaluators (``reset`` / ``update`` / ``sync`` / ``compute``) and MTL summaries."""

from visionmtl.metrics.classification import ClassificationEvaluator, average_precision
from visionmtl.metrics.detection import CocoDetectionEvaluator
from visionmtl.metrics.mtl import delta_m, delta_m_per_task
from visionmtl.metrics.segmentation import SegmentationEvaluator

__all__ = [
    "ClassificationEvaluator",
    "CocoDetectionEvaluator",
    "SegmentationEvaluator",
    "average_precision",
    "delta_m",
    "delta_m_per_task",
]
