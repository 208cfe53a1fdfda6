"""One training step: the objective, the optimizer and three ways to run a step.

* :class:`EagerStep`: plain PyTorch (CPU and CUDA).
* :class:`CompiledStep`: forward + losses through ``torch.compile(mode="reduce-overhead")``,
  backward and the optimizer step eager (CUDA only).
* :class:`CudaGraphStep`: forward, backward and the optimizer step of the whole step captured in
  one CUDA graph after a few eager warmup steps; learning rate and regularizer weight live in
  device tensors updated in place (CUDA only).

Every step returns the task loss and the (weighted) regularization term as detached 0-dim device
tensors, valid until the next call; nothing forces a host-device sync.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import low_rank_modules
from ..regularizers import (
    REGULARIZERS,
    dprp_compression_loss,
    dprp_structure_loss,
    dso,
    orthogonality_penalty,
)
from .config import DPRPConfig, TrainConfig

__all__ = [
    "CompiledStep",
    "CudaGraphStep",
    "EagerStep",
    "NORM_LAYERS",
    "Objective",
    "Step",
    "build_optimizer",
    "make_step",
    "param_groups",
]

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
"""Modules whose parameters never get weight decay."""

Step = Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]
"""``step(images, labels, regularizer_weight) -> (task_loss, regularization)``."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: ``decay`` (every other parameter) and ``no_decay`` (norm layers and biases).

    SVD singular values ``s``, low-rank factors and cores are in ``decay``.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = isinstance(module, NORM_LAYERS) or name == "bias"
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    model: nn.Module, train: TrainConfig, device: torch.device, *, tensor_lr: bool = False
) -> torch.optim.SGD:
    """SGD (momentum, Nesterov) over :func:`param_groups`; fused on CUDA.

    ``tensor_lr`` holds the learning rate in a device tensor (needed inside a CUDA graph).
    """
    lr: float | Tensor = torch.tensor(train.lr, device=device) if tensor_lr else train.lr
    extra: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(
        param_groups(model, train.weight_decay),
        lr=lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
        **extra,
    )


@dataclass
class Objective:
    """Label-smoothed cross-entropy plus regularization.

    ``regularizer``: orthogonality penalty kind (``None`` to skip), evaluated in float32 with the
    DSO floor removed (the floor is a constant: same gradients) and scaled by the per-step
    weight; ``dprp``: adds its structure and compression losses with their fixed weights.
    """

    label_smoothing: float
    regularizer: str | None
    dprp: DPRPConfig | None
    autocast: bool
    device_type: str

    def autocast_context(self, *, capturing: bool = False) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when enabled (without its weight-cast cache inside CUDA-graph capture)."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=not capturing)

    def regularization(self, model: nn.Module, weight: Tensor | float, *, capturing: bool = False) -> Tensor:
        """The regularization term added to the task loss (float32).

        ``capturing``: evaluate the orthogonality penalty one factor matrix at a time (no
        host-to-device copy, so it can be captured in a CUDA graph, where the extra kernels
        cost nothing); otherwise the batched :func:`orthogonality_penalty`.
        """
        total = torch.zeros((), device=_device_of(model))
        skip = isinstance(weight, float | int) and weight == 0.0  # e.g. the tail of the step schedule
        if self.regularizer is not None and not skip:
            penalty = _per_matrix_penalty if capturing else _batched_penalty
            total = total + weight * penalty(model, self.regularizer)
        if self.dprp is not None:
            total = total + self.dprp.structure_weight * dprp_structure_loss(model)
            total = total + self.dprp.compression_weight * dprp_compression_loss(model, self.dprp.compression)
        return total

    def losses(
        self, model: nn.Module, x: Tensor, y: Tensor, weight: Tensor | float, *, capturing: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, task, regularization)`` for one batch."""
        with self.autocast_context(capturing=capturing):
            logits = model(x)
        task = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        reg = self.regularization(model, weight, capturing=capturing)
        return task + reg, task, reg


def _batched_penalty(model: nn.Module, kind: str) -> Tensor:
    return orthogonality_penalty(model, kind, remove_floor=True)


def _per_matrix_penalty(model: nn.Module, kind: str) -> Tensor:
    """Same value as :func:`_batched_penalty`, summed matrix by matrix."""
    total = torch.zeros((), device=_device_of(model))
    for _, layer in low_rank_modules(model):
        for matrix in layer.factor_matrices():
            total = total + (dso(matrix, remove_floor=True) if kind == "dso" else REGULARIZERS[kind](matrix))
    return total


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class EagerStep:
    """A plain eager step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective

    def __call__(self, x: Tensor, y: Tensor, reg_weight: float) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        total, task, reg = self.objective.losses(self.model, x, y, reg_weight)
        total.backward()
        self.optimizer.step()
        return task.detach(), reg.detach()


class CompiledStep:
    """Forward and losses compiled with ``torch.compile(mode="reduce-overhead")``; the rest eager.

    The regularizer weight is passed as a device tensor so that a changing weight does not
    recompile. Outputs are cloned (CUDA-graph-tree outputs are overwritten by the next call).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective
        self._weight = torch.zeros((), device=_device_of(model))
        torch._dynamo.reset()  # a rebuilt model (DPRP) must not hit the recompile limit

        def losses(x: Tensor, y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return objective.losses(model, x, y, weight)

        self._losses = torch.compile(losses, mode="reduce-overhead", dynamic=False)

    def __call__(self, x: Tensor, y: Tensor, reg_weight: float) -> tuple[Tensor, Tensor]:
        torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        self._weight.fill_(reg_weight)
        total, task, reg = self._losses(x, y, self._weight)
        total.backward()
        self.optimizer.step()
        return task.detach().clone(), reg.detach().clone()


class CudaGraphStep:
    """The whole step (forward, backward, SGD update) replayed from one CUDA graph.

    The first ``warmup`` calls run eagerly on a side stream (they are real training steps);
    the next call captures the graph and replays it. A batch of another shape than the
    captured one runs eagerly (same optimizer, gradients zeroed in place). If capture fails the
    step warns and stays eager. Needs an optimizer built with ``tensor_lr=True``.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, warmup: int = 3
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective
        self.warmup = warmup
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._failed = False
        self._weight = torch.zeros((), device=_device_of(model))
        self._static: dict[str, Tensor] = {}

    def _eager(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._graph is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.zero_grad(set_to_none=False)
        total, task, reg = self.objective.losses(self.model, x, y, self._weight)
        total.backward()
        self.optimizer.step()
        return task.detach(), reg.detach()

    def _capture(self, x: Tensor, y: Tensor) -> None:
        self._static = {"x": x.clone(), "y": y.clone()}
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            total, task, reg = self.objective.losses(
                self.model, self._static["x"], self._static["y"], self._weight, capturing=True
            )
            total.backward()
            self.optimizer.step()
        self._static.update(task=task.detach(), reg=reg.detach())
        self._graph = graph

    def __call__(self, x: Tensor, y: Tensor, reg_weight: float) -> tuple[Tensor, Tensor]:
        self._weight.fill_(reg_weight)
        self._calls += 1
        if self._failed or self._calls <= self.warmup:
            with _side_stream():
                return self._eager(x, y)
        if self._graph is None:
            try:
                self._capture(x, y)
            except RuntimeError as exc:  # e.g. an op that syncs with the host
                warnings.warn(
                    f"CUDA graph capture failed ({exc}); training eagerly", RuntimeWarning, stacklevel=2
                )
                self._failed = True
                return self._eager(x, y)
        static = self._static
        if x.shape != static["x"].shape or y.shape != static["y"].shape:
            return self._eager(x, y)
        static["x"].copy_(x, non_blocking=True)
        static["y"].copy_(y, non_blocking=True)
        assert self._graph is not None
        self._graph.replay()
        return static["task"], static["reg"]


@contextlib.contextmanager
def _side_stream() -> Iterator[None]:
    """Run on a side stream (warmup before graph capture), then rejoin the current stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


def make_step(speedup: str, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective) -> Step:
    """The step for ``speedup`` (``none`` | ``compile`` | ``cudagraphs``); eager unless on CUDA."""
    if speedup == "compile" and objective.device_type == "cuda":
        return CompiledStep(model, optimizer, objective)
    if speedup == "cudagraphs" and objective.device_type == "cuda":
        return CudaGraphStep(model, optimizer, objective)
    return EagerStep(model, optimizer, objective)
