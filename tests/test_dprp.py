"""DPRP: the energy criterion, real layer shrinking, momentum slicing, training and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import nn

from rank_search.cli import main
from rank_search.config import load_rank_config, save_rank_config
from rank_search.data import DataOptions, load_data
from rank_search.data.dataset import Dataset
from rank_search.errors import ConfigError
from rank_search.layers import SVDConv2d, SVDLinear
from rank_search.train import DPRPConfig, TrainConfig, export_ranks, fit, svd_everywhere
from rank_search.train.dprp import (
    keep_indices,
    momentum_by_name,
    prune_due,
    prune_svd_layers,
    shrink_svd_layer,
    transfer_momentum,
)
from rank_search.train.step import build_optimizer
from rank_search.uniform import uniform_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    cache = tmp_path_factory.mktemp("cache")
    return load_data("builtin", DataOptions(cache_dir=cache, val_fraction=0.2, max_train_samples=240))


def test_energy_criterion_keeps_smallest_rank_over_threshold() -> None:
    s = torch.tensor([1.0, 3.0, 0.1, 2.0])  # energies 1, 9, 0.01, 4 of 14.01
    assert keep_indices(s, 0.6).tolist() == [1]  # 9 / 14.01 = 0.64
    assert keep_indices(s, 0.9).tolist() == [1, 3]  # 13 / 14.01 = 0.93
    assert keep_indices(s, 0.99).tolist() == [1, 3, 0]
    assert keep_indices(s, 1.0).tolist() == [1, 3, 0, 2]
    assert keep_indices(-s, 0.6).tolist() == [1]  # by magnitude
    assert keep_indices(s, 0.6, min_rank=3).tolist() == [1, 3, 0]
    assert keep_indices(torch.zeros(5), 0.9, min_rank=2).tolist() == [0, 1]


def test_prune_schedule() -> None:
    dprp = DPRPConfig(start_epoch=2, prune_every=3)
    assert [e for e in range(1, 10) if prune_due(dprp, e)] == [2, 5, 8]


@pytest.mark.parametrize("layer", [SVDConv2d(4, 6, 3, stride=2, padding=1, rank=5), SVDLinear(7, 5, rank=4)])
def test_shrinking_drops_only_the_removed_components(layer: SVDConv2d | SVDLinear) -> None:
    with torch.no_grad():
        layer.s[1] = 0.0
        layer.u.bias.uniform_()  # type: ignore[union-attr]
    keep = keep_indices(layer.s, 1.0)
    assert len(keep) == layer.rank - 1
    small = shrink_svd_layer(layer, keep)
    x = torch.randn(2, 4, 9, 9) if isinstance(layer, SVDConv2d) else torch.randn(3, 7)
    assert small.rank == layer.rank - 1 and small.num_params() < layer.num_params()
    torch.testing.assert_close(small(x), layer(x))


def test_momentum_buffers_are_sliced_with_the_layer() -> None:
    model = nn.Sequential(SVDConv2d(3, 8, 3, rank=6), nn.BatchNorm2d(8))
    optimizer = build_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        cast(SVDConv2d, model[0]).s.copy_(torch.tensor([5.0, 0.0, 4.0, 0.0, 3.0, 0.0]))
    momentum = momentum_by_name(model, optimizer)
    kept = prune_svd_layers(model, DPRPConfig(energy=1.0))
    assert kept["0"].tolist() == [0, 2, 4] and cast(SVDConv2d, model[0]).rank == 3
    new_optimizer = build_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    transfer_momentum(momentum, model, new_optimizer, kept)
    new = momentum_by_name(model, new_optimizer)
    torch.testing.assert_close(new["0.s"], momentum["0.s"][[0, 2, 4]])
    torch.testing.assert_close(new["0.v.weight"], momentum["0.v.weight"][[0, 2, 4]])
    torch.testing.assert_close(new["0.u.weight"], momentum["0.u.weight"][:, [0, 2, 4]])
    torch.testing.assert_close(new["1.weight"], momentum["1.weight"])


def test_svd_everywhere_follows_group_conventions() -> None:
    config = svd_everywhere("resnet20", 10, (3, 16, 16))
    assert len(config.layers) == 18 and "conv1" not in config.layers and "fc" not in config.layers
    assert config.layers["layer1.0.conv1"].rank == 16 and config.layers["layer3.2.conv2"].rank == 64
    assert config.regularizer.name == "none"
    assert svd_everywhere("resnet20", ratio=0.5).layers["layer2.0.conv1"].rank == 16


def test_dprp_training_shrinks_ranks_and_macs(tiny: Dataset, tmp_path: Path) -> None:
    start = svd_everywhere("resnet20", 10, (3, 16, 16))
    dprp = DPRPConfig(energy=0.9, structure_weight=1e-3, compression_weight=1e-2)
    train = TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.5, device="cpu", dprp=dprp)
    result = fit(start, tiny, train)
    assert result.status == "completed"
    start_macs = start.compute_cost().macs
    macs = [stats.macs for stats in result.history]
    assert macs[0] < start_macs and macs[1] < macs[0]
    assert all(stats.ranks_changed for stats in result.history)
    assert result.macs == macs[-1] and result.history[0].reg_loss > 0
    exported = export_ranks(result)
    assert exported.provenance["source"] == "dprp"
    for name, layer in result.model.named_modules():
        if isinstance(layer, SVDConv2d):
            assert exported.layers[name].ranks()["rank"] == layer.rank <= start.layers[name].ranks()["rank"]
    path = save_rank_config(exported, tmp_path / "dprp.json")
    loaded = load_rank_config(path)
    assert loaded.layers == exported.layers and loaded.cost is not None and loaded.cost.macs == result.macs


def test_dprp_needs_svd_layers(tiny: Dataset) -> None:
    config = uniform_config("resnet20", 10, (3, 16, 16), 0.5, ["layer1.0.conv1"])
    with pytest.raises(ConfigError, match="svd"):
        fit(config, tiny, TrainConfig(epochs=1, batch_size=64, device="cpu", dprp=DPRPConfig()))


def test_cli_dprp_from_model_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "resnet20",
        "--dprp",
        "--dprp-energy",
        "0.8",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--max-train-samples",
        "200",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--quiet",
        "-o",
        str(run),
    ]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    full = svd_everywhere("resnet20", 10, (3, 16, 16))
    assert metrics["macs"] < full.compute_cost().macs
    config = load_rank_config(run / "config.json")
    assert any(
        spec.ranks()["rank"] < full.layers[name].ranks()["rank"]
        for name, spec in config.layers.items()
        if spec.format == "svd"
    )
    assert json.loads((run / "train_config.json").read_text())["dprp"]["energy"] == 0.8


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_shrinking_keeps_the_trainers_memory_layout(layout: torch.memory_format) -> None:
    # A 1x1 weight's strides can't tell the layouts apart: the trainer's layout must be passed in.
    layer = SVDConv2d(4, 6, 3, padding=1, rank=5)
    small = shrink_svd_layer(layer, torch.tensor([0, 1, 3]), layout)
    for weight in (small.v.weight, small.u.weight):
        assert weight.is_contiguous(memory_format=layout)
    out = small(torch.randn(2, 4, 5, 5))
    assert out.is_contiguous() == (layout == torch.contiguous_format)
