"""The formula table: MACs and parameters of one dense or low-rank conv/linear layer.

Pure arithmetic that imports nothing of ours, so that the layer classes
(:mod:`rank_search.layers`) and the cost sums (:mod:`rank_search.cost`, which re-exports these
names and is where callers find them) both take them from one place without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping


def conv_macs(
    fmt: str,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    in_hw: int,
    out_hw: int,
    ranks: Mapping[str, int],
    groups: int = 1,
) -> int:
    """MACs of one conv layer for one sample (``in_hw``/``out_hw``: input/output pixels, H*W).

    dense: ``out_hw*C_out*(C_in/groups)*kh*kw``; tucker2 (1x1, kh x kw core, 1x1):
    ``in_hw*C_in*r_in + out_hw*r_in*r_out*kh*kw + out_hw*r_out*C_out``; svd (kh x kw with r
    filters, 1x1): ``out_hw*r*(C_in*kh*kw + C_out)``.
    """
    kk = kernel_size[0] * kernel_size[1]
    if fmt == "dense":
        return out_hw * out_channels * (in_channels // groups) * kk
    if fmt == "tucker2":
        r_in, r_out = ranks["rank_in"], ranks["rank_out"]
        return in_hw * in_channels * r_in + out_hw * (r_in * r_out * kk + r_out * out_channels)
    if fmt == "svd":
        return out_hw * ranks["rank"] * (in_channels * kk + out_channels)
    raise ValueError(f"unknown format '{fmt}'")


def linear_macs(fmt: str, in_features: int, out_features: int, lead: int, ranks: Mapping[str, int]) -> int:
    """MACs of one linear layer for one sample (``lead``: product of the leading input dims).

    dense: ``lead*in*out``; svd: ``lead*r*(in + out)``.
    """
    if fmt == "dense":
        return lead * in_features * out_features
    if fmt == "svd":
        return lead * ranks["rank"] * (in_features + out_features)
    raise ValueError(f"format '{fmt}' does not apply to a linear layer")


def conv_params(
    fmt: str,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    bias: bool,
    ranks: Mapping[str, int],
    groups: int = 1,
) -> int:
    """Parameters of one conv layer: dense ``C_out*(C_in/groups)*kh*kw``; tucker2
    ``C_in*r_in + r_in*r_out*kh*kw + r_out*C_out``; svd ``r*(C_in*kh*kw + 1 + C_out)``
    (the singular values are parameters); plus ``C_out`` for a bias."""
    kk = kernel_size[0] * kernel_size[1]
    extra = out_channels if bias else 0
    if fmt == "dense":
        return out_channels * (in_channels // groups) * kk + extra
    if fmt == "tucker2":
        r_in, r_out = ranks["rank_in"], ranks["rank_out"]
        return in_channels * r_in + r_in * r_out * kk + r_out * out_channels + extra
    if fmt == "svd":
        return ranks["rank"] * (in_channels * kk + 1 + out_channels) + extra
    raise ValueError(f"unknown format '{fmt}'")


def linear_params(fmt: str, in_features: int, out_features: int, bias: bool, ranks: Mapping[str, int]) -> int:
    """Parameters of one linear layer: dense ``in*out``; svd ``r*(in + 1 + out)``; plus ``out`` for a bias."""
    extra = out_features if bias else 0
    if fmt == "dense":
        return in_features * out_features + extra
    if fmt == "svd":
        return ranks["rank"] * (in_features + 1 + out_features) + extra
    raise ValueError(f"format '{fmt}' does not apply to a linear layer")
