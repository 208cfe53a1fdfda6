"""The training loop: :func:`fit` trains a rank config from scratch on a dataset.

One epoch = one pass over the ``train`` split (shuffled and augmented on the device), then
DPRP pruning when due, then validation on the ``val`` split, then the callback. No Ray import:
the search calls :func:`fit` from a thin adapter.

Reproducibility: the model is initialized from ``seed``; the data order and augmentation of
epoch ``e`` come from a generator seeded with ``(seed, e)``; torch's global RNG is seeded with
``seed`` at the start and saved in checkpoints. On CPU the same seed gives the same history, and
a run resumed from a checkpoint continues bit for bit. On CUDA, cuDNN autotuning is enabled
(unless the process holds only a share of the GPU, see :mod:`.device`) and results are close
but not bitwise reproducible. The non-finite check never blocks the host during an epoch
(:class:`.device.FiniteWatch`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LayerSpec, RankConfig, rank_config_from_dict
from ..cost import AnalyticCost
from ..errors import ConfigError, DataError
from ..layers import SVDConv2d, SVDLinear, low_rank_modules
from . import dprp as dprp_mod
from .checkpoint import TrainState, read_checkpoint, restore_rng
from .config import TrainConfig, train_config_from_dict
from .device import FiniteWatch, cudnn_autotune, training_device
from .progress import ProgressBar
from .schedule import WarmupCosine, lr_at, regularizer_factor
from .step import Objective, Step, build_optimizer, make_step

if TYPE_CHECKING:
    from ..data import Dataset

__all__ = [
    "EpochStats",
    "InputSizeWarning",
    "StopTraining",
    "TrainResult",
    "Evaluation",
    "evaluate",
    "evaluate_split",
    "fit",
    "match_dataset",
    "round_ranks",
]

Callback = Callable[["EpochStats", TrainState], None]

RESUME_FREE_KEYS = ("checkpoint_every", "eval_test", "speedup", "device", "amp", "channels_last")
"""TrainConfig fields that may differ between a checkpoint and the run resuming it."""


class InputSizeWarning(UserWarning):
    """The rank config's input size differs from the dataset's; the dataset's is used."""


class StopTraining(Exception):
    """Raise from the epoch callback to end training early (status ``"stopped"``)."""


@dataclass(frozen=True)
class EpochStats:
    """What one finished epoch reports (never NaN: a non-finite loss ends the run instead).

    ``train_loss``: mean label-smoothed cross-entropy over the epoch's steps; ``reg_loss``: mean
    regularization term added to it (weighted, orthogonality floor removed, DPRP losses included);
    ``val_accuracy`` (fraction) / ``val_loss`` (plain cross-entropy): ``None`` without a val split;
    ``epoch_time_s``: seconds of the training pass (validation excluded); ``macs`` (per sample) and
    ``params`` of the model after this epoch; ``lr``: learning rate of the epoch's last step;
    ``ranks_changed``: DPRP shrank ranks after this epoch; ``val_correct``: the validation's
    per-image outcomes (:class:`Evaluation`), kept out of :meth:`to_dict` (the history).
    """

    epoch: int
    train_loss: float
    reg_loss: float
    val_accuracy: float | None
    val_loss: float | None
    epoch_time_s: float
    macs: int
    params: int
    lr: float
    ranks_changed: bool = False
    val_correct: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.pop("val_correct")
        return data


@dataclass
class TrainResult:
    """Outcome of :func:`fit`.

    ``status``: ``"completed"``, ``"diverged"`` (non-finite loss; ``message`` says where) or
    ``"stopped"`` (the callback raised :class:`StopTraining`). ``val_accuracy``: of the last epoch
    (``None`` when diverged or without a val split); ``test_accuracy``: only with ``eval_test``.
    ``macs``/``params``/``dense_macs`` at the dataset's input size. ``rank_config``: the ranks
    actually trained at the end: rounded up to ``rank_multiple`` and shrunk by DPRP, with the
    dataset's input size and the cost recomputed.
    """

    status: str
    epochs: int
    val_accuracy: float | None
    test_accuracy: float | None
    macs: int
    params: int
    dense_macs: int
    wall_time_s: float
    history: list[EpochStats]
    model: nn.Module
    rank_config: RankConfig
    message: str = ""
    init: dict[str, Any] = dataclasses.field(default_factory=dict)  # warm start: source, errors, BN images

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (``history`` as dicts, ``rank_config`` as its dict)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        data["history"] = [stats.to_dict() for stats in self.history]
        data["rank_config"] = self.rank_config.to_dict()
        return data


# --- setup helpers -----------------------------------------------------------------------------


def match_dataset(config: RankConfig, data: Dataset) -> RankConfig:
    """``config`` checked against the dataset: classes must match; the dataset's image size wins."""
    if config.model.num_classes != data.num_classes:
        raise ConfigError(
            f"the config has {config.model.classes_text()} but dataset '{data.name}' has {data.num_classes}",
            key="model.num_classes",
        )
    size = tuple(data.input_size)
    if size[0] != config.input_size[0]:
        raise ConfigError(
            f"the config has {config.input_size[0]} input channels but dataset '{data.name}' has {size[0]}",
            key="input_size",
        )
    if size == tuple(config.input_size):
        return config
    warnings.warn(
        f"the config's input_size {list(config.input_size)} differs from dataset '{data.name}' "
        f"({list(size)}); training at {list(size)} and counting MACs there",
        InputSizeWarning,
        stacklevel=3,
    )
    return dataclasses.replace(config, input_size=(size[0], size[1], size[2]), cost=None)


def round_ranks(config: RankConfig, multiple: int) -> RankConfig:
    """Every rank rounded up to a multiple of ``multiple``, capped at the layer's full rank."""
    if multiple == 1 or not config.layers:
        return config
    from ..convert import layer_infos

    infos = layer_infos(config.model.name, config.model.num_classes, config.input_size)
    layers = {}
    for name, spec in config.layers.items():
        if spec.format == "dense":
            layers[name] = spec
            continue
        full = infos[name].full_ranks[spec.format]
        ranks = {k: min(full[k], -(-v // multiple) * multiple) for k, v in spec.ranks().items()}
        layers[name] = LayerSpec(spec.format, **ranks)
    provenance = {**config.provenance, "rank_multiple": multiple}
    return dataclasses.replace(config, layers=layers, cost=None, provenance=provenance)


def check_resume(saved: dict[str, Any], config: RankConfig, train: TrainConfig) -> RankConfig:
    """The checkpoint's current rank config, after checking it continues the same run."""
    old_train = train_config_from_dict(saved["train_config"]).to_dict()
    new_train = train.to_dict()
    differ = sorted(k for k in new_train if k not in RESUME_FREE_KEYS and new_train[k] != old_train[k])
    if differ:
        raise ConfigError(
            f"the checkpoint was trained with other settings: {differ} "
            f"(saved {[old_train[k] for k in differ]}, now {[new_train[k] for k in differ]})"
        )
    current = rank_config_from_dict(saved["rank_config"])
    if current.model != config.model:
        raise ConfigError(f"the checkpoint is of {current.model}, not {config.model}", key="model")
    if train.dprp is None and (current.layers, current.regularizer) != (config.layers, config.regularizer):
        raise ConfigError(
            "the checkpoint was trained with other layers or regularizer than this config", key="layers"
        )
    if saved["epoch"] > train.epochs:
        raise ConfigError(f"the checkpoint has {saved['epoch']} epochs, more than epochs={train.epochs}")
    return current


# --- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One pass over a split: ``accuracy`` (fraction), mean cross-entropy ``loss`` and ``correct``,
    one flag per image in the split's fixed order (what a paired comparison of two models on the
    same images needs, :mod:`rank_search.outcomes`)."""

    accuracy: float
    loss: float
    correct: np.ndarray


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: Dataset,
    split: str,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    amp: bool = True,
    channels_last: bool = True,
) -> Evaluation | None:
    """Evaluate ``model`` on ``split`` (None if it is empty); ``amp`` and ``channels_last`` apply on
    CUDA only. One host sync at the end."""
    if data.split_size(split) == 0:
        return None
    device = device or next(model.parameters()).device
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    flags: list[Tensor] = []
    dtype = torch.bfloat16 if amp and cuda else torch.float32
    batches = data.batches(
        split,
        batch_size=batch_size,
        device=device,
        train=False,
        channels_last=channels_last and cuda,
        dtype=dtype,
    )
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and cuda):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        flags.append(logits.argmax(1) == y)
    model.train(was_training)
    correct = torch.cat(flags).cpu().numpy() if flags else np.zeros(0, dtype=bool)
    count = data.split_size(split)
    return Evaluation(float(correct.sum()) / count, float(loss_sum.item()) / count, correct)


def evaluate(
    model: nn.Module,
    data: Dataset,
    split: str,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    amp: bool = True,
    channels_last: bool = True,
) -> tuple[float | None, float | None]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``split``; ``(None, None)`` if it is empty
    (:func:`evaluate_split` without the per-image outcomes)."""
    result = evaluate_split(
        model, data, split, batch_size=batch_size, device=device, amp=amp, channels_last=channels_last
    )
    return (None, None) if result is None else (result.accuracy, result.loss)


# --- the loop ----------------------------------------------------------------------------------


class _Divergence(Exception):
    """A non-finite loss (internal)."""


class _Trainer:
    """State and steps of one :func:`fit` call."""

    def __init__(self, config: RankConfig, data: Dataset, train: TrainConfig, progress: bool) -> None:
        self.data, self.train = data, train
        self.device = training_device(train.device)
        self.cuda = self.device.type == "cuda"
        self.amp = train.amp and self.cuda
        self.channels_last = train.channels_last and self.cuda
        self.speedup = train.speedup if self.cuda else "none"
        if train.speedup != "none" and not self.cuda:
            warnings.warn(
                f"speedup '{train.speedup}' needs CUDA; training eagerly on {self.device}",
                RuntimeWarning,
                stacklevel=3,
            )
        self.drop_last = data.num_batches("train", train.batch_size, drop_last=True) > 0
        self.steps_per_epoch = data.num_batches("train", train.batch_size, drop_last=self.drop_last)
        if self.steps_per_epoch == 0:
            raise DataError(f"dataset '{data.name}' has an empty train split")
        if train.epoch_steps is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, train.epoch_steps)
        self.init_report: dict[str, Any] = {}
        self.check_window = 8 if self.cuda else 1
        self.costs = AnalyticCost.of(config)  # the layers, listed once: costs below are analytic
        self.dense_macs = self.costs.dense_macs
        self.bar = ProgressBar(train.epochs, self.steps_per_epoch, enabled=progress)
        self.state = self._build(config)

    def _build(self, config: RankConfig) -> TrainState:
        train = self.train
        if self.cuda:
            torch.backends.cudnn.benchmark = cudnn_autotune()
        torch.manual_seed(train.seed)
        model = self._initial_model(config)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if train.dprp is not None and not any(
            isinstance(m, SVDConv2d | SVDLinear) for _, m in low_rank_modules(model)
        ):
            raise ConfigError("DPRP needs layers in the 'svd' format; the config has none", key="layers")
        optimizer = build_optimizer(model, train, self.device, tensor_lr=self.speedup == "cudagraphs")
        warmup = round(train.warmup_epochs * self.steps_per_epoch)
        scheduler = WarmupCosine(optimizer, train.lr, warmup, train.epochs * self.steps_per_epoch)
        config = dataclasses.replace(config, cost=self.costs.of_model(model))
        state = TrainState(model, optimizer, scheduler, 0, config, train)
        self.objective = Objective(
            train.label_smoothing, self._regularizer(config, model), train.dprp, self.amp, self.device.type
        )
        self.step: Step = make_step(self.speedup, model, optimizer, self.objective)
        return state

    def _initial_model(self, config: RankConfig) -> nn.Module:
        """A fresh model (from scratch), or the trained ``init_from`` decomposed at ``config``'s
        ranks with its BatchNorm statistics re-estimated on training images."""
        train = self.train
        if train.init_from is None:
            return config.build(seed=train.seed).to(self.device)
        from ..trained import calibration_batches, recalibrate_bn, warm_model

        warm = warm_model(config, train.init_from, rename=train.init_rename)
        model = warm.model.to(self.device)
        images = calibration_batches(
            self.data, train.bn_recalibration_images, train.batch_size, train.seed, self.device
        )
        seen = recalibrate_bn(model, images) if train.bn_recalibration_images else 0
        self.init_report = {"init_from": train.init_from, "errors": warm.errors, "bn_images": seen}
        return model

    @staticmethod
    def _regularizer(config: RankConfig, model: nn.Module) -> str | None:
        spec = config.regularizer
        if spec.name == "none" or spec.weight == 0 or not low_rank_modules(model):
            return None
        return spec.name

    def resume(self, saved: dict[str, Any]) -> None:
        """Load a checkpoint's model, optimizer, scheduler, RNG, epoch and history."""
        state = self.state
        state.model.load_state_dict(saved["model"])
        state.load_optimizer(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        restore_rng(saved["rng"])
        state.epoch = int(saved["epoch"])
        state.history = [dict(row) for row in saved["history"]]
        state.wall_time_s = float(saved.get("wall_time_s", 0.0))
        state.meta = dict(saved.get("meta", {}))

    def _reg_weight(self) -> float:
        spec = self.state.rank_config.regularizer
        schedule = self.train.regularizer_decay or spec.schedule
        return spec.weight * regularizer_factor(schedule, self.state.scheduler.progress)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.train.seed * 1_000_003 + epoch)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Mean task loss and regularization of one pass; raises ``_Divergence`` on a non-finite loss."""
        model, scheduler = self.state.model, self.state.scheduler
        if self.steps_per_epoch == 0:  # zero-shot (epoch_steps=0): nothing to train
            return 0.0, 0.0
        model.train()
        self.bar.start_epoch(epoch)
        sums = torch.zeros(2, device=self.device)
        watch = FiniteWatch(self.device, self.check_window)
        steps = 0
        for x, y in self.data.batches(
            "train",
            batch_size=self.train.batch_size,
            device=self.device,
            train=True,
            generator=self._generator(epoch),
            drop_last=self.drop_last,
            channels_last=self.channels_last,
            dtype=torch.bfloat16 if self.amp else torch.float32,
        ):
            task, reg = self.step(x, y, self._reg_weight())
            sums += torch.stack((task.float(), reg.float()))
            scheduler.step()
            steps += 1
            if not watch.update(sums):
                raise _Divergence(f"epoch {epoch}, by step {steps}")
            self.bar.update(steps)
            if steps >= self.steps_per_epoch:
                break
        if not watch.final(sums):
            raise _Divergence(f"epoch {epoch}, by step {steps}")
        task_mean, reg_mean = (sums / steps).tolist()
        return task_mean, reg_mean

    def prune(self, epoch: int) -> bool:
        """DPRP pruning after ``epoch`` when due; rebuilds optimizer and step if ranks shrank."""
        dprp, state = self.train.dprp, self.state
        if dprp is None or not dprp_mod.prune_due(dprp, epoch):
            return False
        momentum = dprp_mod.momentum_by_name(state.model, state.optimizer)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        kept = dprp_mod.prune_svd_layers(state.model, dprp, layout)
        if not kept:
            return False
        state.optimizer = build_optimizer(
            state.model, self.train, self.device, tensor_lr=self.speedup == "cudagraphs"
        )
        dprp_mod.transfer_momentum(momentum, state.model, state.optimizer, kept)
        state.scheduler.rebind(state.optimizer)
        state.rank_config = dprp_mod.current_rank_config(state.model, state.rank_config, self.costs)
        self.step = make_step(self.speedup, state.model, state.optimizer, self.objective)
        return True

    def run_epoch(self, epoch: int) -> EpochStats:
        """Train, prune, validate; returns the epoch's stats (raises ``_Divergence``)."""
        start = time.perf_counter()
        task, reg = self.train_epoch(epoch)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        changed = self.prune(epoch)
        val = self.evaluate("val")
        if val is not None and not math.isfinite(val.loss):
            raise _Divergence(f"validation after epoch {epoch}")
        val_acc, val_loss = (None, None) if val is None else (val.accuracy, val.loss)
        cost = self.state.rank_config.cost
        assert cost is not None
        lr = _last_lr(self.state.scheduler)
        correct = None if val is None else val.correct
        return EpochStats(
            epoch, task, reg, val_acc, val_loss, seconds, cost.macs, cost.params, lr, changed, correct
        )

    def evaluate(self, split: str) -> Evaluation | None:
        return evaluate_split(
            self.state.model,
            self.data,
            split,
            batch_size=self.train.batch_size,
            device=self.device,
            amp=self.amp,
            channels_last=self.channels_last,
        )


def _last_lr(scheduler: WarmupCosine) -> float:
    """The learning rate of the step just taken."""
    step = max(0, scheduler.step_count - 1)
    return lr_at(step, scheduler.base_lr, scheduler.warmup_steps, scheduler.total_steps)


def _describe(stats: EpochStats, epochs: int) -> str:
    val = "-" if stats.val_accuracy is None else f"{stats.val_accuracy:.4f}"
    return (
        f"epoch {stats.epoch}/{epochs}  loss {stats.train_loss:.4f}  reg {stats.reg_loss:.4g}  "
        f"val_acc {val}  MACs {stats.macs:,}  {stats.epoch_time_s:.1f} s"
    )


def fit(
    config: RankConfig,
    data: Dataset,
    train: TrainConfig,
    *,
    callback: Callback | None = None,
    resume_from: Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``config``'s model from scratch on ``data`` with the settings ``train``.

    The rank config is first matched to the dataset (:func:`match_dataset`) and its ranks rounded
    (:func:`round_ranks`). After every epoch ``callback(stats, state)`` runs; it may save
    ``state`` (:meth:`TrainState.save`) and may raise :class:`StopTraining`. ``resume_from`` (a
    checkpoint of the same run) continues it where it stopped. A non-finite loss ends training
    with status ``"diverged"``; errors of the user's making raise :class:`RankSearchError`.
    """
    start = time.perf_counter()
    config = round_ranks(match_dataset(config, data), train.rank_multiple)
    saved = read_checkpoint(resume_from) if resume_from is not None else None
    if saved is not None and resume_from is not None:
        try:
            config = check_resume(saved, config, train)
        except ConfigError as exc:
            raise exc.with_source(resume_from) from None
    trainer = _Trainer(config, data, train, progress)
    if saved is not None:
        trainer.resume(saved)
    state = trainer.state
    prior = state.wall_time_s
    history = [EpochStats(**row) for row in state.history]
    status, message = "completed", ""
    try:
        for epoch in range(state.epoch + 1, train.epochs + 1):
            stats = trainer.run_epoch(epoch)
            history.append(stats)
            state.history.append(stats.to_dict())
            state.epoch = epoch
            state.wall_time_s = prior + time.perf_counter() - start
            trainer.bar.message(_describe(stats, train.epochs))
            if callback is not None:
                callback(stats, state)
    except _Divergence as exc:
        status = "diverged"
        message = (
            f"training diverged ({exc}): the loss became non-finite with lr={train.lr}; "
            "lower the learning rate or the regularizer weight"
        )
        trainer.bar.message(message)
    except StopTraining as exc:
        status, message = "stopped", str(exc) or "stopped by the epoch callback"
    return _result(trainer, history, status, message, prior, start)


def _result(
    trainer: _Trainer, history: list[EpochStats], status: str, message: str, prior: float, start: float
) -> TrainResult:
    state = trainer.state
    test_accuracy = None
    if status != "diverged" and trainer.train.eval_test:
        test = trainer.evaluate("test")
        test_accuracy = None if test is None else test.accuracy
    val_accuracy = history[-1].val_accuracy if history and status != "diverged" else None
    cost = state.rank_config.cost
    assert cost is not None
    state.wall_time_s = prior + time.perf_counter() - start
    return TrainResult(
        status,
        state.epoch,
        val_accuracy,
        test_accuracy,
        cost.macs,
        cost.params,
        trainer.dense_macs,
        state.wall_time_s,
        history,
        state.model,
        state.rank_config,
        message,
        dict(trainer.init_report),
    )
