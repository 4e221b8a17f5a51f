"""Task heads. Each head maps backbone features to raw outputs and implements ``loss``/``predict``."""

from visionmtl.models.heads.classification import ClassificationHead
from visionmtl.models.heads.detection import DetectionHead
from visionmtl.models.heads.segmentation import SegmentationHead

__all__ = ["ClassificationHead", "DetectionHead", "SegmentationHead"]
