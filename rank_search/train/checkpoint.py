"""Training state: what a checkpoint holds, saving it atomically and reading it back.

A checkpoint is a ``torch.save`` of a dict of plain values, tensors and state dicts, so
``torch.load(path, weights_only=True)`` reads it. It holds the model, optimizer and scheduler
state, the number of finished epochs, the RNG states, the history so far, the *current* rank
config (DPRP may have shrunk ranks) and the training config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._io import atomic_torch_save
from ..errors import ConfigError
from .config import TrainConfig

if TYPE_CHECKING:
    from ..config import RankConfig
    from .schedule import WarmupCosine

__all__ = ["CHECKPOINT_FORMAT", "TrainState", "read_checkpoint", "restore_rng"]

CHECKPOINT_FORMAT = "rank-search/train-state"
CHECKPOINT_VERSION = 1
_REQUIRED = ("epoch", "model", "optimizer", "scheduler", "rng", "rank_config", "train_config", "history")


@dataclass
class TrainState:
    """The live state of a training run, handed to the epoch callback.

    Attributes:
        model: the model being trained (eager module, never a compiled wrapper).
        optimizer: its SGD optimizer (rebuilt when DPRP prunes).
        scheduler: the per-step learning-rate schedule.
        epoch: number of finished epochs.
        rank_config: the current rank config (after rounding and any DPRP pruning).
        train: the training config.
        history: one dict per finished epoch (``EpochStats`` as a dict).
        wall_time_s: training seconds so far, over all resumed sessions.
        meta: free-form plain data saved with the checkpoint (the CLI stores its data spec).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    epoch: int
    rank_config: RankConfig
    train: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_due(self) -> bool:
        """Whether ``train.checkpoint_every`` asks for a checkpoint now (always after the last epoch)."""
        every = self.train.checkpoint_every
        return self.epoch >= self.train.epochs or (every > 0 and self.epoch % every == 0)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint as a dict of plain values and tensors."""
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:
            if isinstance(group.get("lr"), torch.Tensor):
                group["lr"] = float(group["lr"])
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "rank_config": self.rank_config.to_dict(),
            "train_config": self.train.to_dict(),
            "history": [dict(row) for row in self.history],
            "wall_time_s": self.wall_time_s,
            "meta": dict(self.meta),
        }

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (readers never see a partial file)."""
        return atomic_torch_save(path, self.state_dict())

    def load_optimizer(self, state: dict[str, Any]) -> None:
        """Load optimizer state, keeping this optimizer's learning-rate objects (float or tensor)."""
        kept = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, kept):
            group["lr"] = lr
        self.scheduler.apply()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the global torch (and CUDA, when saved and available) RNG states."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(cuda_state, index)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint written by :meth:`TrainState.save` (``weights_only=True``).

    Raises :class:`ConfigError` naming the file when it is missing, unreadable or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint not found", source=path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ConfigError(f"cannot read checkpoint: {exc}", source=path) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"not a rank-search training checkpoint (expected format {CHECKPOINT_FORMAT!r})", source=path
        )
    if data.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"unsupported checkpoint version {data.get('version')!r}", key="version", source=path
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"checkpoint lacks {missing}", source=path)
    return data
