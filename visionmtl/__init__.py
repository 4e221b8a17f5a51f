"""visionmtl: one ResNet backbone, many vision heads (classification, detection, segmentation)."""

__version__ = "0.1.0"
