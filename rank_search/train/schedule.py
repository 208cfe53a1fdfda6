"""Per-step schedules: the learning rate (linear warmup, then cosine to 0) and the regularizer weight.

Regularizer weight schedules (a factor on ``RegularizerSpec.weight``, by the fraction ``p`` of
training steps done):

* ``constant``: 1 (what the ELRT group's code used, lambda = 1e-3).
* ``cosine``: ``0.5 * (1 + cos(pi * p))``, from 1 down to 0.
* ``step``: the step decay of Bansal et al. (NeurIPS 2018): their CIFAR script kept lambda for
  epochs 0-20 of 200, then multiplied it by 1e-3, 1e-4 and 1e-6 from epochs 20, 50 and 70,
  and set it to 0 from epoch 120. Here the breakpoints are the same fractions of training
  (10%, 25%, 35%, 60%). The factors are from the methods reference; the breakpoints were
  recalled from their code, not confirmed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["STEP_DECAY", "WarmupCosine", "lr_at", "regularizer_factor"]

STEP_DECAY: tuple[tuple[float, float], ...] = ((0.10, 1e-3), (0.25, 1e-4), (0.35, 1e-6), (0.60, 0.0))
"""``(fraction of training, factor from then on)`` of the ``step`` regularizer schedule."""


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of 0-based ``step``: ``base * (step + 1) / warmup`` during warmup, then cosine to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def regularizer_factor(schedule: str, progress: float) -> float:
    """Factor on the regularizer weight at ``progress`` (fraction of steps done, in [0, 1])."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    if schedule == "step":
        factor = 1.0
        for start, value in STEP_DECAY:
            if progress >= start:
                factor = value
        return factor
    raise ValueError(f"unknown regularizer schedule {schedule!r}")


class WarmupCosine:
    """Sets the optimizer's learning rate before every step (see :func:`lr_at`).

    Construction sets the rate of step 0; :meth:`step` advances to the next step. Works with
    float or tensor (CUDA-graph) learning rates. ``state_dict`` holds only the step counter.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int, total_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_steps = max(0, warmup_steps)
        self.total_steps = max(1, total_steps)
        self.step_count = 0
        self.apply()

    @property
    def lr(self) -> float:
        """The learning rate of the current step."""
        return lr_at(self.step_count, self.base_lr, self.warmup_steps, self.total_steps)

    @property
    def progress(self) -> float:
        """Fraction of all training steps done."""
        return self.step_count / self.total_steps

    def apply(self) -> None:
        """Write the current rate into every parameter group."""
        lr = self.lr
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def step(self) -> None:
        """Advance one training step."""
        self.step_count += 1
        self.apply()

    def rebind(self, optimizer: torch.optim.Optimizer) -> None:
        """Drive ``optimizer`` from now on (after the optimizer was rebuilt)."""
        self.optimizer = optimizer
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.apply()
