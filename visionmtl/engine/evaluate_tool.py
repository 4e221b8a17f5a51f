"""Evaluate a checkpoint on a config's data (what ``tools/eval.py`` runs)."""

from __future__ import annotations

import torch

from ..config import load_config
from ..errors import ConfigError
from ..data.loader import build_loader, usable_workers
from ..models.build import build_model
from .checkpoint import CheckpointError, inference_state, load_checkpoint, load_model_state
from .evaluate import evaluate
from .runtime import pick_amp, pick_device


def evaluate_checkpoint(config: str, checkpoint: str, overrides=(), split: str = "val", device: str = "auto",
                        amp: str = "off", plots=None) -> dict:
    """Metrics of ``checkpoint`` on ``config``'s ``split``, in fp32 unless ``amp`` asks for autocast;
    with ``plots`` (a folder) also each task's confusion matrix or PR curves."""
    cfg = load_config(config, list(overrides))
    ckpt = load_checkpoint(checkpoint)
    classes = ckpt.get("classes")
    if classes is not None:
        mine = {n: list(t.classes) for n, t in cfg.tasks.items()}
        if classes != mine:
            raise CheckpointError(f"{checkpoint}: checkpoint was trained for tasks/classes {_brief(classes)}, "
                                  f"but {config} configures {_brief(mine)}")
    cfg.model.backbone.weights = "none"
    name = device if device != "auto" else cfg.train.device
    try:
        dev = pick_device(name)
    except RuntimeError as e:
        raise ConfigError(f"{'--device' if device != 'auto' else 'train.device'} {name}: {e}") from None
    model = build_model(cfg)
    load_model_state(model, inference_state(ckpt), checkpoint)
    mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=mf).eval()
    # the training split is evaluated with the eval transforms (no augmentation)
    loader = _eval_loader_for_train(cfg) if split == "train" else build_loader(cfg, split, shuffle=False)
    amp_dtype = pick_amp(amp, dev, "--amp")  # default off: fp32, whatever the CPU or GPU
    return evaluate(model, loader, cfg.tasks, dev, amp_dtype, cfg.train.channels_last,
                    flip=cfg.data.eval_flip, plots=plots)


def _eval_loader_for_train(cfg):
    from ..data.collate import Collate
    from ..data.dataset import build_datasets
    from ..data.sampler import MultiDataset
    from ..data.transforms import build_transforms

    tf = build_transforms(cfg.data.eval_size, cfg.data.augment, train=False)
    ds = MultiDataset(build_datasets(cfg, "train", tf))
    return torch.utils.data.DataLoader(ds, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                                       num_workers=usable_workers(cfg.data.workers), collate_fn=Collate(cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std))


def _brief(classes: dict) -> str:
    return "{" + ", ".join(f"{k}: {len(v)} classes" for k, v in classes.items()) + "}"
