"""The multi-task trainer: joint or alternating training, loss balancing and gradient methods,
staged freezing, AMP, DDP, atomic checkpoints, exact resume.

The strategy pieces live in :mod:`visionmtl.mtl` and plug in through small hooks: the method
(``train.method``) decides how the active tasks' losses or gradients become one update
(:func:`visionmtl.engine.step.train_step`), the data stream yields ``(tasks, batch)`` pairs (every labelled
task per batch, or one drawn task per step in :mod:`visionmtl.mtl.alternating`), and stages
(``train.stages``) choose the trained tasks and the frozen parts per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..config import Config, save_config
from ..data.loader import build_dataset, build_loader
from ..data.sampler import MultiDataset
from ..models.build import build_model
from . import dist
from ..errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from .checkpoint import load_checkpoint, load_model_state, load_trained, rng_state, save_checkpoint, set_rng_state
from .runtime import check_compile, cpu_bf16_fast, pick_amp, pick_device, seed_everything
from .step import StepParts, train_step
from .ema import ModelEMA
from .transfer import load_from
from ..files import free_folder, write_text
from .evaluate import evaluate, summary_score
from .logger import RunLogger, plot_curves
from ..mtl.alternating import TaskStreams, task_parts
from ..mtl.methods import build_method
from .optim import OptimizerSet, build_optimizer

log = logging.getLogger("visionmtl")

# re-exported: older code imports these from here
__all__ = ["NonFiniteLossError", "Trainer", "cpu_bf16_fast", "load_trained", "pick_amp", "pick_device", "seed_everything"]


class Trainer:
    """Train ``cfg`` in ``work_dir``. ``Trainer(cfg, work_dir, resume=True).train()`` continues a run.

    Writes ``config.yaml`` (the resolved config), ``metrics.jsonl``, TensorBoard scalars,
    ``last.pt`` every epoch, ``best.pt`` by ``train.best_metric`` and, at the end, loss and
    metric curves as PNG. Only rank 0 writes.
    """

    def __init__(self, cfg: Config, work_dir: Optional[str] = None, resume: bool | str = False,
                 exist_ok: bool = False):
        self.cfg = cfg
        tc = cfg.train
        try:
            self.device = pick_device(tc.device)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"train.device: {e}") from None
        if tc.compile:  # before any data is read
            check_compile(self.device)
        self.rank, self.world, local_rank = dist.init_distributed(self.device.type)
        asked = Path(work_dir or cfg.work_dir)
        # a new run never overwrites another: it goes to the next free numbered folder (runs/x2, ...)
        self.work_dir = asked if resume or exist_ok else Path(dist.broadcast(str(free_work_dir(asked))))
        if self.work_dir != asked and dist.is_main():
            log.info("%s holds a run; this one goes to %s (--resume continues a run, --exist-ok reuses the folder)",
                     asked, self.work_dir)
        cfg.work_dir = str(self.work_dir)
        if exist_ok and not resume and (self.work_dir / "config.yaml").is_file():
            _refuse_other_config(self.work_dir, cfg)
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.work_dir}: cannot create the work dir ({e.strerror or e})") from None
        for stale in self.work_dir.glob("*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        seed_everything(tc.seed + self.rank)
        self.main = self.rank == 0
        self.amp_dtype = pick_amp(tc.amp, self.device)
        resolved = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[self.amp_dtype]
        if self.main:  # what ran, in the log and in the run's config.yaml (saved below)
            what = "fp32" if resolved == "off" else f"{resolved} autocast"
            why = ""
            if tc.amp == "auto" and self.device.type == "cpu":
                why = " (this CPU has AMX / AVX512-BF16)" if resolved == "bf16" else " (no fast bf16 on this CPU)"
            log.info("precision: %s on %s (train.amp %s%s%s); validation in fp32", what, self.device, tc.amp,
                     f" -> {resolved}" if tc.amp != resolved else "", why)
        tc.amp = resolved
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format

        self.train_set = build_dataset(cfg, "train")
        self.alternating = tc.mode == "alternating"
        self.streams: Optional[TaskStreams] = None
        if self.alternating:
            self.streams = self._task_streams()
            self.train_loader = None
            self.iters_per_epoch = max(len(self.streams), 1)
        else:
            self.train_loader = build_loader(cfg, "train", self.train_set)
            self.iters_per_epoch = max(len(self.train_loader), 1)
        self.val_loader = build_loader(cfg, "val") if cfg.data.val else None

        self.net = build_model(cfg).to(self.device, memory_format=self.memory_format)
        if cfg.model.load_from and not resume:  # fine-tuning: weights by name and shape, then train
            summary = load_from(self.net, cfg.tasks, cfg.model.load_from)
            if self.main:
                write_text(self.work_dir / "load_from.json", json.dumps(summary, indent=1))
        self.local_rank = local_rank
        self.model = self._wrap()
        self.ema = ModelEMA(self.net, tc.ema_decay, tc.ema_tau) if tc.ema_decay > 0 else None
        self.weights = {n: t.weight for n, t in cfg.tasks.items()}
        mc = tc.method
        self.method = build_method(mc.name, list(cfg.tasks), self.weights, mc.args, mc.task_grad_clip)
        for p in self.method.parameters():
            p.data = p.data.to(self.device)
        self.total_iters = tc.epochs * self.iters_per_epoch
        if tc.max_iters:
            self.total_iters = min(self.total_iters, tc.max_iters)
        self.optim = self._optimizers()
        self.optimizer = next(iter(self.optim.optimizers.values()))  # the (first) optimiser
        self.stage_index = -1
        self.stage_tasks = list(cfg.tasks)
        self.task_steps = {t: 0 for t in cfg.tasks}
        self.task_images = {t: 0 for t in cfg.tasks}
        self.step_seconds = 0.0  # time inside train_step (compute, not data loading) in this process
        self._epoch_loss: dict[str, float] = {}  # per-task loss sums of the current epoch (DWA)
        self._epoch_count: dict[str, int] = {}
        self.epoch = 0
        self.iter = 0
        self.best = -math.inf
        self.history: list[dict] = []  # per-iteration losses of this process (tests, plots)
        if resume:
            self.resume(self.work_dir / "last.pt" if resume is True else Path(resume))
        # a resumed run logs the iterations after its checkpoint again: trim them from metrics.jsonl
        self.logger = RunLogger(self.work_dir, enabled=self.main, append=bool(resume),
                                trim_after=self.iter if resume else None)
        if self.main:
            save_config(cfg, self.work_dir / "config.yaml")

    def _wrap(self):
        """The module the step calls: DDP around the model when distributed, compiled with ``train.compile``."""
        model = self.net
        if self.world > 1:
            unused = self.alternating or bool(self.cfg.train.stages)  # heads that sit out a step
            model = DDP(self.net, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                        find_unused_parameters=unused)
        return torch.compile(model) if self.cfg.train.compile else model  # shares model's parameters

    def _task_streams(self) -> TaskStreams:
        """Alternating training: one loader per task over the training datasets that label it."""
        loaders, sizes = {}, {}
        ratios = [d.ratio for d in self.cfg.data.train]
        for t in self.cfg.tasks:
            idx = task_parts(self.train_set.parts, t)
            if not idx:
                raise ConfigError(f"train.mode: alternating: no training dataset labels task '{t}'")
            ds = MultiDataset([self.train_set.parts[i] for i in idx], seed=self.cfg.train.seed)
            loaders[t] = build_loader(self.cfg, "train", ds, ratios=[ratios[i] for i in idx])
            sizes[t] = len(ds)
        return TaskStreams(loaders, sizes)

    def _optimizers(self) -> OptimizerSet:
        tc = self.cfg.train
        extra = list(self.method.parameters())
        if self.alternating and tc.alternating.optimizers == "per_task":
            if extra:
                raise ConfigError(f"train.method '{tc.method.name}' has learnable weights; use "
                                  "train.alternating.optimizers: shared with it")
            shared = {id(p) for p in self.net.shared_parameters()}
            opts = {t: build_optimizer(self.net, tc, only=shared | {id(p) for p in self.net.task_parameters(t)})
                    for t in self.cfg.tasks}
        else:
            opts = {"all": build_optimizer(self.net, tc, extra_params=extra)}
        return OptimizerSet(opts, self.total_iters, self.iters_per_epoch, tc)

    def apply_stage(self, epoch: int) -> None:
        """Freeze and select tasks for the stage that ``epoch`` (0-based) falls in."""
        stages = self.cfg.train.stages
        if not stages:
            return
        end, index = 0, len(stages) - 1
        for i, st in enumerate(stages):
            end += st.epochs
            if epoch < end:
                index = i
                break
        if index == self.stage_index:
            return
        st = stages[index]
        self.stage_index = index
        self.stage_tasks = list(st.tasks) or list(self.cfg.tasks)
        self.net.set_frozen(st.freeze)
        self.model = self._wrap()
        if self.main:
            log.info("stage %d%s from epoch %d: training %s, frozen: %s", index + 1,
                     f" ({st.name})" if st.name else "", epoch + 1, ", ".join(self.stage_tasks),
                     ", ".join(st.freeze) or "nothing")

    def epoch_batches(self, epoch: int):
        """``(tasks, batch)`` for every step of ``epoch``."""
        if self.alternating:
            self.streams.set_epoch(epoch)
            alt = self.cfg.train.alternating
            for tasks, batch in self.streams.epoch_stream(alt.order, self.cfg.train.seed, alt.temperature):
                if tasks[0] in self.stage_tasks:
                    yield tasks, batch
            return
        self.train_loader.sampler.set_epoch(epoch)
        for batch in self.train_loader:
            yield self.stage_tasks, batch

    # ----------------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step_parts(self) -> StepParts:
        """The explicit parts of one optimisation step (engine/step.py), as this trainer holds them."""
        tc = self.cfg.train
        return StepParts(model=self.model, net=self.net, method=self.method, optim=self.optim, scaler=self.scaler,
                         autocast=self.autocast, weights=self.weights, grad_on=tc.method.grad_on,
                         clip_grad=tc.clip_grad, ema=self.ema, iteration=self.iter, device=self.device,
                         memory_format=self.memory_format)

    def train_step(self, batch, tasks: Optional[list[str]] = None) -> dict[str, float]:
        """One optimisation step on a batch for ``tasks`` (default: the stage's); returns values to log."""
        tasks = list(tasks or self.stage_tasks)
        vals, per_task = train_step(self.step_parts(), batch, tasks)
        for t, v in per_task.items():
            self._epoch_loss[t] = self._epoch_loss.get(t, 0.0) + v
            self._epoch_count[t] = self._epoch_count.get(t, 0) + 1
            self.task_steps[t] += 1
            self.task_images[t] += len(batch)
        return vals

    def _end_epoch_losses(self) -> None:
        """Epoch-mean unweighted loss per task (reduced over ranks) -> the method's ``epoch_end``."""
        means = {t: self._epoch_loss[t] / self._epoch_count[t] for t in self._epoch_loss if self._epoch_count.get(t)}
        means = dist.reduce_mean(means, self.device) if means else means
        self.method.epoch_end(means)
        self._epoch_loss, self._epoch_count = {}, {}

    # ----------------------------------------------------------------------------------------
    def train(self, max_epochs: Optional[int] = None) -> dict:
        """Run until ``train.epochs`` (or ``max_epochs`` more epochs); returns the last metrics."""
        tc = self.cfg.train
        stop_epoch = tc.epochs if max_epochs is None else min(tc.epochs, self.epoch + max_epochs)
        metrics: dict = {}
        t0 = time.time()
        while self.epoch < stop_epoch and self.iter < self.total_iters:
            epoch = self.epoch
            self.apply_stage(epoch)
            self.net.train()
            self._epoch_loss, self._epoch_count = {}, {}
            n_bad = 0
            iter_before = self.iter
            tty = sys.stderr.isatty()
            bar = tqdm(self.epoch_batches(epoch), total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       disable=not self.main or not tty, dynamic_ncols=True, leave=False, mininterval=0.5)
            progress = _Progress(self, epoch) if self.main and not tty else None  # logs and CI: text lines
            running: dict[str, float] = {}
            for tasks, batch in bar:
                n_bad += batch.n_bad
                if len(batch) == 0:
                    continue
                t_step = time.perf_counter()
                vals = self.train_step(batch, tasks)
                self.step_seconds += time.perf_counter() - t_step
                self.iter += 1
                self.history.append(vals)
                for k, v in vals.items():
                    running[k] = 0.9 * running.get(k, v) + 0.1 * v
                if self.main and tty:
                    post = {k.replace("loss_", ""): f"{v:.3f}" for k, v in running.items() if k.startswith("loss_")}
                    post["lr"] = f"{self.optim.lr:.2e}"
                    bar.set_postfix(post, refresh=False)
                if progress is not None:
                    progress.step(len(batch), running)
                if self.iter % tc.log_interval == 0 or self.iter == self.total_iters:
                    vals = dist.reduce_mean(vals, self.device)
                    self.logger.log("train", self.iter, vals, epoch=epoch, lr=self.optim.lr)
                if self.iter >= self.total_iters:
                    break
            bar.close()
            if self.iter == iter_before and n_bad:
                raise DataError("data.train", f"epoch {epoch + 1}: all {n_bad} samples were bad "
                                "(data.on_bad_sample: skip), so nothing was trained; see the warnings above")
            self._end_epoch_losses()
            if self.alternating or self.cfg.train.stages:
                self.logger.log("tasks", self.iter, {"steps": dict(self.task_steps), "images": dict(self.task_images)},
                                epoch=epoch + 1)
            if n_bad:
                log.warning("epoch %d: skipped %d bad samples (data.on_bad_sample: skip)", epoch + 1, n_bad)
            self.epoch = epoch + 1
            last = self.epoch >= tc.epochs or self.iter >= self.total_iters
            if self.val_loader is not None and (self.epoch % tc.eval_interval == 0 or last):
                metrics = self.evaluate()
                score = summary_score(metrics, self.cfg.tasks, tc.best_metric)
                self.logger.log("val", self.iter, metrics, epoch=self.epoch, score=score)
                if self.main:
                    log.info("epoch %d: %s", self.epoch, _fmt(metrics, self.cfg.tasks))
                if score > self.best:
                    self.best = score
                    self.save("best.pt", full=False)  # weights to deploy; last.pt resumes
            self.save("last.pt")
        if self.main:
            log.info("trained %d iterations in %.1f s", self.iter, time.time() - t0)
            try:
                plot_curves(self.work_dir / "metrics.jsonl", self.work_dir)
            except Exception as e:  # plotting must never lose a run
                log.warning("could not plot curves: %s", e)
        return metrics

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, ``best.pt`` and inference use: the EMA of the weights when enabled."""
        if self.ema is not None:
            return self.ema.module
        return getattr(self.model, "_orig_mod", self.model)  # a compiled model evaluates eagerly (sizes vary)

    def evaluate(self, loader=None) -> dict:
        # fp32 whatever the training precision: which checkpoint is best must not depend on the CPU
        return evaluate(self.eval_model, loader or self.val_loader, self.cfg.tasks, self.device, None,
                        self.cfg.train.channels_last, flip=self.cfg.data.eval_flip)

    # ----------------------------------------------------------------------------------------
    def state(self, full: bool = True) -> dict:
        """The checkpoint: everything ``--resume`` needs, or (``full=False``, ``best.pt``) the
        weights, EMA, config, class names and where they came from."""
        if not full:
            return {"model": self.net.state_dict(),
                    **({"ema": self.ema.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}),
                    "epoch": self.epoch, "iteration": self.iter, "best": self.best, "config": self.cfg.to_dict(),
                    "classes": {n: list(t.classes) for n, t in self.cfg.tasks.items()}, "version": __version__}
        return {
            "model": self.net.state_dict(),
            **({"ema": self.ema.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}),
            "optimizer": self.optim.state_dict()[0],
            "scheduler": self.optim.state_dict()[1],
            "method": self.method.state_dict(),
            "task_steps": dict(self.task_steps),
            "task_images": dict(self.task_images),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iter,
            "best": self.best,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "classes": {n: list(t.classes) for n, t in self.cfg.tasks.items()},
            "version": __version__,
        }

    def save(self, name: str, full: bool = True) -> None:
        if self.main:
            save_checkpoint(self.state(full), self.work_dir / name)
        dist.barrier()

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{path}: holds weights only (best.pt), not a run's state; resume from last.pt, "
                                  f"or start a new run from these weights with model.load_from={path}")
        key = _other_config(ckpt.get("config", {}), self.cfg)
        if key:
            raise CheckpointError(f"{path}: a run of another config ({key} differs); resume it with its own "
                                      f"config ({path.parent / 'config.yaml'}), or start a new run elsewhere")
        load_model_state(self.net, ckpt["model"], str(path))
        if self.ema is not None and "ema" in ckpt:
            self.ema.load_state_dict(ckpt["ema"], ckpt.get("ema_updates", ckpt["iteration"]), f"{path} (ema)")
        elif self.ema is not None:  # EMA switched on at resume: start it from the resumed weights
            self.ema = ModelEMA(self.net, self.cfg.train.ema_decay, self.cfg.train.ema_tau)
        self.optim.load_state_dict(ckpt["optimizer"], ckpt["scheduler"])
        if "method" in ckpt:
            self.method.load_state_dict(ckpt["method"])
        self.task_steps.update(ckpt.get("task_steps", {}))
        self.task_images.update(ckpt.get("task_images", {}))
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iter, self.best = ckpt["epoch"], ckpt["iteration"], ckpt.get("best", -math.inf)
        set_rng_state(ckpt["rng"])
        log.info("resumed from %s at epoch %d, iteration %d", path, self.epoch, self.iter)


def _other_config(theirs: dict, cfg: Config) -> Optional[str]:
    """The first key of ``tasks`` or ``model`` where a run's config ``theirs`` differs from ``cfg``
    (None when they match, or when there is no config to compare); the schedule (``train``) may differ."""
    if not theirs:
        return None
    mine = cfg.to_dict()
    for section in ("tasks", "model"):
        key = _first_difference(theirs.get(section), mine.get(section), section)
        if key:
            return key
    return None


def _first_difference(a, b, where: str) -> Optional[str]:
    """The first key path at which two config trees differ (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    return None if a == b else where


def _refuse_other_config(folder: Path, cfg: Config) -> None:
    """ConfigError when ``folder`` holds the run of a config whose tasks or model differ from ``cfg``'s
    (``--exist-ok`` would overwrite another experiment's checkpoints)."""
    import yaml

    try:
        theirs = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return
    key = _other_config(theirs, cfg)
    if key:
        raise ConfigError(f"{folder}: holds the run of another config ({key} differs); --exist-ok would "
                              f"overwrite it: choose another --out, or leave out --exist-ok for a new "
                              f"numbered folder")


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")


def holds_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in RUN_FILES)


def free_work_dir(folder: Path) -> Path:
    """``folder`` when it holds no run, else the first of ``folder2``, ``folder3``, ... that holds none."""
    return free_folder(folder, holds_run)


class _Progress:
    """Training progress as log lines when stderr is not a terminal (a file, nohup, CI), in place
    of the progress bar: every ``PERIOD`` seconds and at the end of each epoch, the smoothed
    losses, the learning rate, images per second and the time left."""

    PERIOD = 30.0

    def __init__(self, trainer: "Trainer", epoch: int) -> None:
        self.t, self.epoch = trainer, epoch
        self.start = self.last = time.perf_counter()
        self.images, self.first_iter = 0, trainer.iter
        self.end_iter = min(trainer.total_iters, (epoch + 1) * trainer.iters_per_epoch)

    def step(self, n_images: int, running: dict) -> None:
        self.images += n_images
        now = time.perf_counter()
        done = self.t.iter - self.first_iter
        if now - self.last < self.PERIOD and self.t.iter < self.end_iter:
            return
        self.last = now
        per_iter = (now - self.start) / max(done, 1)
        left = per_iter * (self.t.total_iters - self.t.iter)
        losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in running.items() if k.startswith("loss_"))
        log.info("epoch %d/%d iter %d/%d: loss %.3f (%s) lr %.2e, %.1f img/s, ETA %s", self.epoch + 1,
                 self.t.cfg.train.epochs, self.t.iter, self.t.total_iters, running.get("loss", float("nan")),
                 losses, self.t.optim.lr, self.images / max(now - self.start, 1e-9), _hms(left))


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _fmt(metrics: dict, tasks: dict) -> str:
    from ..tasks import spec

    parts = []
    for n, t in tasks.items():
        if n in metrics:
            m = metrics[n]
            keys = spec(t).log_metrics(t)
            parts.append(f"{n}: " + " ".join(f"{k}={m.get(k, float('nan')):.4f}" for k in keys if m.get(k) is not None))
    return " | ".join(parts)
