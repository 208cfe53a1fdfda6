"""One training step: the objective, the optimizer and three ways to run a step.

* :class:`EagerStep`: plain PyTorch (CPU and CUDA).
* :class:`CompiledStep`: forward + losses through ``torch.compile(mode="reduce-overhead")``,
  backward and the optimizer step eager (``fit`` uses it on CUDA only; it runs on CPU in
  mode ``default``). Each new model compiles anew (tens of seconds), so it suits long runs.
* :class:`CudaGraphStep`: forward, backward and the optimizer step of the whole step captured in
  one CUDA graph after a few eager warmup steps; learning rate and regularizer weight live in
  device tensors updated in place (CUDA only). Capture costs a few steps, not a compile: the
  variant for search trials (``train: {speedup: cudagraphs}`` in the study) once
  ``benchmarks/gpu_check.py`` has confirmed it on a GPU; until then the default stays eager.

Every step returns the task loss and the (weighted) regularization term as detached 0-dim device
tensors, valid until the next call; nothing forces a host-device sync.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import LowRankLayer, low_rank_modules
from ..regularizers import (
    REGULARIZERS,
    dprp_compression_loss,
    dprp_structure_loss,
    dso,
    penalty_of_matrices,
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
    "cuda_graph_capture",
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
    :meth:`bind` keeps the model's low-rank layers so that a step does not walk
    ``named_modules()``; :func:`make_step` binds (again after DPRP replaced layers).
    """

    label_smoothing: float
    regularizer: str | None
    dprp: DPRPConfig | None
    autocast: bool
    device_type: str
    _bound: tuple[nn.Module, list[LowRankLayer]] | None = field(default=None, init=False, repr=False)

    def bind(self, model: nn.Module) -> None:
        """Keep ``model``'s low-rank layers for the steps that follow."""
        self._bound = (model, [layer for _, layer in low_rank_modules(model)])

    def layers(self, model: nn.Module) -> list[LowRankLayer]:
        """The low-rank layers of ``model`` (the kept list when bound to it)."""
        if self._bound is not None and self._bound[0] is model:
            return self._bound[1]
        return [layer for _, layer in low_rank_modules(model)]

    def autocast_context(self, *, capturing: bool = False) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when enabled (without its weight-cast cache inside CUDA-graph capture)."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=not capturing)

    def regularization(self, model: nn.Module, weight: Tensor | float, *, capturing: bool = False) -> Tensor:
        """The regularization term added to the task loss (float32).

        A float weight of 0 skips the penalty (e.g. the tail of the ``step`` schedule). A tensor
        weight (compiled and CUDA-graph steps) cannot be tested on the host without a sync, so
        where it is 0 the term is masked to exactly 0 and no gradient reaches the factors (no
        ``0 * inf = NaN`` from a blown-up penalty). ``capturing``: evaluate the penalty one
        factor matrix at a time (no host-to-device copy, so it can be captured in a CUDA graph,
        where the extra kernels cost nothing); otherwise batched by shape.
        """
        total = torch.zeros((), device=_device_of(model))
        skip = isinstance(weight, float | int) and weight == 0.0
        if self.regularizer is not None and not skip:
            matrices = [matrix for layer in self.layers(model) for matrix in layer.factor_matrices()]
            if isinstance(weight, Tensor):
                active = weight != 0
                matrices = [torch.where(active, matrix, matrix.detach()) for matrix in matrices]
            penalty = (_per_matrix_sum if capturing else _batched_sum)(matrices, self.regularizer)
            term = weight * penalty
            if isinstance(weight, Tensor):
                term = torch.where(active, term, torch.zeros_like(term))
            total = total + term
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


def _batched_sum(matrices: list[Tensor], kind: str) -> Tensor:
    return penalty_of_matrices(matrices, kind, remove_floor=True)


def _per_matrix_sum(matrices: list[Tensor], kind: str) -> Tensor:
    total = torch.zeros((), device=matrices[0].device if matrices else None)
    for matrix in matrices:
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
    """Forward and losses through ``torch.compile``; backward and the optimizer step eager.

    ``mode``: ``"reduce-overhead"`` (CUDA graphs, the default on CUDA) or ``"default"`` (the
    only one on CPU). The regularizer weight is passed as a device tensor so that a changing
    weight does not recompile. Outputs are cloned (CUDA-graph-tree outputs are overwritten by
    the next call). Dynamo's caches are reset first: a new model (a new trial, or DPRP's
    rebuilt one) has new shapes and compiles anyway, and old entries would only count
    towards the recompile limit. That compile (tens of seconds on CUDA, inside the first
    epoch) is why search trials, a few epochs each, should use ``cudagraphs`` instead.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        mode: str | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective
        device = _device_of(model)
        self._cuda = device.type == "cuda"
        self.mode = mode or ("reduce-overhead" if self._cuda else "default")
        self._weight = torch.zeros((), device=device)
        torch._dynamo.reset()

        def losses(x: Tensor, y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return objective.losses(model, x, y, weight)

        self._losses = torch.compile(losses, mode=self.mode, dynamic=False)

    def __call__(self, x: Tensor, y: Tensor, reg_weight: float) -> tuple[Tensor, Tensor]:
        if self._cuda:
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        self._weight.fill_(reg_weight)
        total, task, reg = self._losses(x, y, self._weight)
        total.backward()
        self.optimizer.step()
        return task.detach().clone(), reg.detach().clone()


Capture = Callable[[Callable[[], None]], Callable[[], None]]
"""``capture(work) -> replay``: records ``work`` once and returns what replays it."""


def cuda_graph_capture(work: Callable[[], None]) -> Callable[[], None]:
    """Capture ``work`` in a CUDA graph with thread-local capture mode.

    Thread-local mode: CUDA calls of other threads (a DataLoader's pin-memory thread) neither
    break the capture nor raise in those threads, where no fallback could catch the error.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        work()
    return graph.replay


class CudaGraphStep:
    """The whole step (forward, backward, SGD update) replayed from one CUDA graph.

    The first ``warmup`` calls run eagerly on one side stream (they are real training steps);
    the next call captures the graph and replays it. A batch of another shape than the
    captured one runs eagerly (same optimizer, gradients zeroed in place). If capture fails the
    step warns, drops everything the capture made (gradients from its memory pool, static
    tensors) and stays eager. Outputs are clones of the graph's static outputs. Needs an
    optimizer built with ``tensor_lr=True``. ``capture`` is replaceable for tests.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        warmup: int = 3,
        capture: Capture = cuda_graph_capture,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective
        self.warmup = warmup
        self._capture_fn = capture
        self._calls = 0
        self._replay: Callable[[], None] | None = None
        self._failed = False
        device = _device_of(model)
        self._weight = torch.zeros((), device=device)
        self._static: dict[str, Tensor] = {}
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def captured(self) -> bool:
        """Whether a graph is captured and replayed."""
        return self._replay is not None

    @property
    def failed(self) -> bool:
        """Whether capture failed (the step then stays eager)."""
        return self._failed

    def _eager(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # after capture the gradients live in the graph's pool: zero them in place, keep them
        self.optimizer.zero_grad(set_to_none=self._replay is None)
        total, task, reg = self.objective.losses(self.model, x, y, self._weight)
        total.backward()
        self.optimizer.step()
        return task.detach(), reg.detach()

    def _warm(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """An eager step on the side stream (before capture), rejoining the current stream."""
        if self._stream is None:
            return self._eager(x, y)
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            out = self._eager(x, y)
        torch.cuda.current_stream().wait_stream(self._stream)
        return out

    def _capture(self, x: Tensor, y: Tensor) -> None:
        static = {"x": x.clone(), "y": y.clone()}
        self.optimizer.zero_grad(set_to_none=True)

        def work() -> None:
            total, task, reg = self.objective.losses(
                self.model, static["x"], static["y"], self._weight, capturing=True
            )
            total.backward()
            self.optimizer.step()
            static.update(task=task.detach(), reg=reg.detach())

        replay = self._capture_fn(work)
        self._static, self._replay = static, replay

    def _abandon(self, exc: BaseException) -> None:
        """Forget a failed capture: no graph, no static tensors, no gradients from its pool."""
        self._failed = True
        self._replay = None
        self._static = {}
        self.optimizer.zero_grad(set_to_none=True)
        if self._stream is not None:
            torch.cuda.synchronize()
        warnings.warn(f"CUDA graph capture failed ({exc}); training eagerly", RuntimeWarning, stacklevel=3)

    def __call__(self, x: Tensor, y: Tensor, reg_weight: float) -> tuple[Tensor, Tensor]:
        self._weight.fill_(reg_weight)
        self._calls += 1
        if self._failed or self._calls <= self.warmup:
            return self._warm(x, y) if not self._failed else self._eager(x, y)
        if self._replay is None:
            try:
                self._capture(x, y)
            except RuntimeError as exc:  # e.g. an op that syncs with the host
                self._abandon(exc)
                return self._eager(x, y)
        static = self._static
        if x.shape != static["x"].shape or y.shape != static["y"].shape:
            return self._eager(x, y)
        static["x"].copy_(x, non_blocking=True)
        static["y"].copy_(y, non_blocking=True)
        assert self._replay is not None
        self._replay()
        return static["task"].clone(), static["reg"].clone()


def make_step(speedup: str, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective) -> Step:
    """The step for ``speedup`` (``none`` | ``compile`` | ``cudagraphs``); eager unless on CUDA.

    Binds ``objective`` to ``model`` (its low-rank layers are listed once here, not every step).
    """
    objective.bind(model)
    if speedup == "compile" and objective.device_type == "cuda":
        return CompiledStep(model, optimizer, objective)
    if speedup == "cudagraphs" and objective.device_type == "cuda":
        return CudaGraphStep(model, optimizer, objective)
    return EagerStep(model, optimizer, objective)
