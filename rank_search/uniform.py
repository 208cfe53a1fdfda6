"""Uniform rank configs (the same ratio of full rank in every layer) and the one bisection
that finds the largest ratio, or scale, within a cost.

:func:`largest_fitting` is the bisection every caller uses: :func:`uniform_ratio_bounds` here
(layer-level uniform configs for benchmarks and the allocation report), and the search's
:func:`rank_search.search.budget.uniform_sample` (the uniform starting point over a search
space) and :func:`rank_search.search.budget.project` (the scale factor of a projection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .config import LayerSpec, ModelSpec, RankConfig

if TYPE_CHECKING:
    from .convert import LayerInfo

__all__ = ["largest_fitting", "uniform_config", "uniform_layers", "uniform_ratio_bounds"]


def largest_fitting(fits: Callable[[float], bool], lo: float, hi: float, steps: int) -> tuple[float, float]:
    """Bisection for the largest ``x`` in ``[lo, hi]`` with ``fits(x)``, given ``fits(lo)``.

    Returns ``(lo, hi)`` after ``steps`` halvings, ``fits(lo)`` true and ``fits(hi)`` false,
    or ``(hi, hi)`` when ``hi`` fits already. For a monotone ``fits`` ``lo`` is the largest
    fitting value up to ``(hi - lo) / 2**steps``; otherwise it is still a fitting one (only
    fitting points are kept).
    """
    if fits(hi):
        return hi, hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def uniform_layers(
    infos: Mapping[str, LayerInfo], ratio: float, formats: Mapping[str, str], round_to: int = 1
) -> dict[str, LayerSpec]:
    """Every layer of ``formats`` (name -> format) at ``ratio`` of its full ranks in that format;
    ``dense`` entries stay dense.

    Ranks are rounded to the nearest multiple of ``round_to`` (1: the nearest integer; the
    runtime's channel block, see ``rank_search.latency.default_round_to``), at least one
    multiple and at most the full rank, as search spaces round.
    """
    layers = {}
    for name, fmt in formats.items():
        if fmt == "dense":
            layers[name] = LayerSpec("dense")
            continue
        full = infos[name].full_ranks[fmt]
        layers[name] = LayerSpec(fmt, **{k: _rank(v, ratio, round_to) for k, v in full.items()})
    return layers


def _rank(full: int, ratio: float, round_to: int) -> int:
    return min(full, max(round_to, round(full * ratio / round_to) * round_to))


def uniform_config(
    model_name: str,
    num_classes: int,
    input_size: tuple[int, int, int],
    ratio: float,
    names: Sequence[str],
    fmt: str = "tucker2",
    round_to: int = 1,
) -> RankConfig:
    """The same rank ratio in every named layer, all in ``fmt`` (ranks as :func:`uniform_layers`)."""
    from .convert import layer_infos

    infos = layer_infos(model_name, num_classes, input_size)
    layers = uniform_layers(infos, ratio, dict.fromkeys(names, fmt), round_to)
    return RankConfig(ModelSpec(model_name, num_classes), input_size, layers)


def uniform_ratio_bounds(
    infos: Mapping[str, LayerInfo],
    formats: Mapping[str, str],
    target_macs: float,
    steps: int = 30,
    round_to: int = 1,
) -> tuple[float, float]:
    """:func:`largest_fitting` on :func:`uniform_layers`' common ratio against analytic MACs:
    ``(lo, hi)`` with MACs at ``lo`` within ``target_macs`` and MACs at ``hi`` above it (when
    reachable; ``(1.0, 1.0)`` when full rank fits).

    ``lo`` is the largest ratio that fits; ``hi`` the smallest that doesn't, for callers that
    want the ratio whose MACs come closest to the target from either side.
    """
    from .cost import analytic_macs

    def fits(ratio: float) -> bool:
        return analytic_macs(infos, uniform_layers(infos, ratio, formats, round_to)) <= target_macs

    return largest_fitting(fits, 0.0, 1.0, steps)
