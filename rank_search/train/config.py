"""Training settings: :class:`TrainConfig` (the one source of them) and :class:`DPRPConfig`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["DPRPConfig", "SPEEDUPS", "TrainConfig", "train_config_from_dict"]

SPEEDUPS = ("none", "compile", "cudagraphs")
REGULARIZER_DECAYS = ("constant", "cosine", "step")
COMPRESSION_KINDS = ("hoyer", "l1")


@dataclass(frozen=True)
class DPRPConfig:
    """Dynamic rank pruning of SVD layers during training (see :mod:`rank_search.train.dprp`).

    Attributes:
        structure_weight: weight of the structure loss (U, V orthonormal; s >= 0, sorted descending).
        compression_weight: weight of the compression loss pushing minor singular values to 0.
        compression: sparsity measure of the compression loss, ``"hoyer"`` (||s||_1/||s||_2) or ``"l1"``.
        energy: each pruning keeps the smallest rank holding this fraction of sum(s^2).
        prune_every: prune after every this many epochs ...
        start_epoch: ... starting after this (1-based) epoch.
        min_rank: no layer is pruned below this rank.
    """

    structure_weight: float = 1e-3
    compression_weight: float = 1e-3
    compression: str = "hoyer"
    energy: float = 0.99
    prune_every: int = 1
    start_epoch: int = 1
    min_rank: int = 1

    def __post_init__(self) -> None:
        _check_number("dprp.structure_weight", self.structure_weight, 0.0)
        _check_number("dprp.compression_weight", self.compression_weight, 0.0)
        _check_choice("dprp.compression", self.compression, COMPRESSION_KINDS)
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.energy!r}", key="dprp.energy")
        _check_int("dprp.prune_every", self.prune_every, 1)
        _check_int("dprp.start_epoch", self.start_epoch, 1)
        _check_int("dprp.min_rank", self.min_rank, 1)


@dataclass(frozen=True)
class TrainConfig:
    """How a rank config is trained from scratch (SGD, warmup + cosine, label smoothing).

    Attributes:
        epochs: passes over the train split.
        batch_size: training batch size (the last partial batch is dropped when at least one
            full batch exists); evaluation uses the same size.
        lr: peak learning rate (SGD).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 weight decay, applied to conv/linear weights, low-rank factors, cores and
            SVD singular values; never to normalization-layer parameters or biases.
        label_smoothing: label smoothing of the cross-entropy.
        warmup_epochs: linear warmup length (may be fractional); then cosine decay to 0. The
            learning rate changes every step.
        seed: seeds the model's initialization, the data order and augmentation, and torch's
            global RNG.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: bf16 autocast (CUDA only; ignored on CPU).
        channels_last: channels-last memory format for model and data (CUDA only).
        speedup: ``"none"`` (eager), ``"compile"`` (``torch.compile`` of the forward + loss,
            mode ``reduce-overhead``) or ``"cudagraphs"`` (the whole step captured in a CUDA
            graph). CUDA only: on CPU it falls back to eager with a warning.
        rank_multiple: round every rank up to a multiple of this (capped at the layer's full rank)
            before building; the trained ranks are in ``TrainResult.rank_config``.
        regularizer_decay: overrides the rank config's ``regularizer.schedule``
            (``constant`` | ``cosine`` | ``step``); ``None`` keeps it.
        eval_test: evaluate the test split after the last epoch (final training only).
        checkpoint_every: epochs between checkpoints (0: only at the end); see
            :attr:`rank_search.train.TrainState.checkpoint_due`.
        dprp: dynamic rank pruning of SVD layers; ``None`` disables it.
        init_from: trained weights to start from (a run folder, a state-dict or checkpoint file;
            :func:`rank_search.trained.load_weights`): the dense model is loaded, the config's
            layers decomposed at their ranks (SVD, HOSVD + HOOI) and BatchNorm recalibrated;
            ``None`` trains from scratch.
        init_rename: key-prefix renames applied to ``init_from``'s state dict (``{"linear": "fc"}``).
        bn_recalibration_images: training images whose forward passes re-estimate BatchNorm
            statistics after decomposing ``init_from`` (0: keep the trained statistics).
        epoch_steps: at most this many optimizer steps per epoch (a fresh seeded shuffle each
            epoch); ``None``: whole passes. Short fine-tuning trials of a compression search use it;
            0 (with ``init_from`` only) makes zero-shot epochs: decompose, recalibrate, validate.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    speedup: str = "none"
    rank_multiple: int = 1
    regularizer_decay: str | None = None
    eval_test: bool = False
    checkpoint_every: int = 0
    dprp: DPRPConfig | None = None
    init_from: str | None = None
    init_rename: dict[str, str] = dataclasses.field(default_factory=dict)
    bn_recalibration_images: int = 2048
    epoch_steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_number("lr", self.lr, 0.0)
        _check_number("momentum", self.momentum, 0.0)
        _check_number("weight_decay", self.weight_decay, 0.0)
        _check_number("warmup_epochs", self.warmup_epochs, 0.0)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.label_smoothing!r}", key="label_smoothing")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov needs momentum > 0", key="nesterov")
        _check_int("seed", self.seed, 0)
        _check_int("rank_multiple", self.rank_multiple, 1)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        _check_choice("speedup", self.speedup, SPEEDUPS)
        _check_int("bn_recalibration_images", self.bn_recalibration_images, 0)
        if self.epoch_steps is not None:
            _check_int("epoch_steps", self.epoch_steps, 0)
            if self.epoch_steps == 0 and self.init_from is None:
                raise ConfigError("0 (zero-shot epochs: validate only) needs init_from", key="epoch_steps")
        if self.init_from is not None and not isinstance(self.init_from, str):
            object.__setattr__(self, "init_from", str(self.init_from))
        if not isinstance(self.init_rename, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.init_rename.items()
        ):
            raise ConfigError(
                f"expected a mapping of key prefixes, got {self.init_rename!r}", key="init_rename"
            )
        if self.regularizer_decay is not None:
            _check_choice("regularizer_decay", self.regularizer_decay, REGULARIZER_DECAYS)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}", key="device"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``dprp`` nested or ``None``)."""
        return dataclasses.asdict(self)


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Inverse of :meth:`TrainConfig.to_dict`; unknown keys are a :class:`ConfigError`."""
    allowed = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    values = dict(data)
    dprp = values.get("dprp")
    if isinstance(dprp, Mapping):
        dprp_allowed = {f.name for f in dataclasses.fields(DPRPConfig)}
        bad = sorted(set(dprp) - dprp_allowed)
        if bad:
            raise ConfigError(f"unknown key(s) {bad}; allowed: {sorted(dprp_allowed)}", key="dprp")
        values["dprp"] = DPRPConfig(**dprp)
    return TrainConfig(**values)


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", key=key)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}, got {value}", key=key)


def _check_number(key: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value!r}", key=key)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}, got {value}", key=key)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"expected one of {list(choices)}, got {value!r}", key=key)


MIN_TRAINING_STEPS = 200
"""Fewer optimizer steps than this over a whole run rarely leave chance level on a new model."""


class FewStepsWarning(UserWarning):
    """The run takes so few optimizer steps that the model will likely stay near chance."""


def few_steps_hint(train_samples: int, train: TrainConfig) -> str | None:
    """A hint when ``train`` takes fewer than :data:`MIN_TRAINING_STEPS` steps on ``train_samples``.

    Small data sets (the built-in digits: 1,437 images) at the default batch of 256 give a few
    dozen steps; the hint names the batch size that would give enough.
    """
    if train.init_from is not None:  # fine-tuning a trained model: a few steps are the point
        return None
    steps = max(1, train_samples // train.batch_size) * train.epochs
    if steps >= MIN_TRAINING_STEPS:
        return None
    per_epoch = math.ceil(MIN_TRAINING_STEPS / train.epochs)
    batch = max(1, train_samples // per_epoch)
    return (
        f"only {steps} optimizer steps ({train_samples} training images, batch {train.batch_size}, "
        f"{train.epochs} epochs): the model will likely stay near chance; try --batch-size {batch} "
        f"or more epochs"
    )
