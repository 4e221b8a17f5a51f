"""visionmtl: one ResNet backbone, many vision heads (classification, detection, segmentation, ...).

The top-level API, imported on first use (``import visionmtl`` stays light: a config is checked
before torch is loaded)::

    from visionmtl import load_config, Trainer, Predictor

    cfg = load_config("configs/shapes/r18_fpn_3heads.yaml", ["train.epochs=1"])
    trainer = Trainer(cfg)                      # runs/shapes_r18_3heads, or the next free numbered folder
    trainer.train()
    predictor = Predictor.from_checkpoint(trainer.work_dir / "best.pt")
    result = predictor("image.jpg")             # a Result: {task: {...}} in original pixels
    result.save("prediction.jpg")               # drawn; result.plot() -> RGB array
"""

__version__ = "0.1.0"

# name -> (module, attribute); resolved by __getattr__ with importlib, so that importing the
# package never imports torch (and the import-graph test sees no package-level edge to the engine)
_API = {
    "load_config": ("visionmtl.config", "load_config"),
    "Config": ("visionmtl.config", "Config"),
    "Trainer": ("visionmtl.engine.trainer", "Trainer"),
    "Predictor": ("visionmtl.inference.predictor", "Predictor"),
    "Result": ("visionmtl.inference.results", "Result"),
    "export_onnx": ("visionmtl.inference.export", "export_onnx"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'visionmtl' has no attribute '{name}'")
