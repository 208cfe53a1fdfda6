"""Rank-config JSON: round trip, cost, and a clear error for every malformed case."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from rank_search.config import (
    CostMismatchWarning,
    LayerSpec,
    ModelSpec,
    RankConfig,
    load_rank_config,
    save_rank_config,
)
from rank_search.cost import count_cost
from rank_search.errors import ConfigError

VALID: dict[str, Any] = {
    "format": "rank-search/rank-config",
    "version": 1,
    "model": {"name": "resnet20", "num_classes": 10},
    "input_size": [3, 32, 32],
    "layers": {
        "layer1.0.conv1": {"format": "tucker2", "rank_in": 8, "rank_out": 8},
        "layer1.0.conv2": {"format": "svd", "rank": 12},
        "layer2.0.conv1": {"format": "dense"},
    },
    "regularizer": {"name": "dso", "weight": 0.001},
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_round_trip_rebuilds_same_model(tmp_path: Path) -> None:
    config = load_rank_config(write(tmp_path, VALID))
    assert config.layers["layer1.0.conv1"] == LayerSpec.tucker2(8, 8)
    saved = save_rank_config(config, tmp_path / "out" / "saved.json")
    again = load_rank_config(saved)
    a, b = config.build(seed=0), again.build(seed=0)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    assert count_cost(a, (3, 32, 32)).macs == count_cost(b, (3, 32, 32)).macs == again.cost.macs  # type: ignore[union-attr]
    data = json.loads(saved.read_text())
    dense = RankConfig(ModelSpec("resnet20"), (3, 32, 32)).build()
    assert data["cost"]["dense_macs"] == count_cost(dense, (3, 32, 32)).macs
    assert data["cost"]["macs"] < data["cost"]["dense_macs"]


def test_cost_mismatch_is_reported(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["cost"] = {"macs": 1, "params": 2, "dense_macs": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_rank_config(write(tmp_path, data))
    assert any(issubclass(w.category, CostMismatchWarning) and "cost" in str(w.message) for w in caught)
    assert config.cost is not None and config.cost.macs > 1


def mutate(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    node = data
    keys = path.split("/")
    for key in keys[:-1]:
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


DELETE = object()

BAD_CASES = [
    ("format", "something/else", "format", "rank-search/rank-config"),
    ("version", 2, "version", "unsupported version"),
    ("model/name", "resnet21", "model.name", "resnet20"),
    ("model", DELETE, "model", "missing"),
    ("input_size", [3, 32], "input_size", "C, H, W"),
    ("layers/layer9.0.conv1", {"format": "svd", "rank": 2}, "layers.layer9.0.conv1", "close valid names"),
    ("layers/layer1.0.conv1/format", "cp", "layers.layer1.0.conv1.format", "unknown format"),
    ("layers/layer1.0.conv1/rank_in", 0, "layers.layer1.0.conv1.rank_in", ">= 1"),
    ("layers/layer1.0.conv1/rank_in", 17, "layers.layer1.0.conv1.rank_in", "full rank 16"),
    ("layers/layer1.0.conv2/rank", 145, "layers.layer1.0.conv2.rank", "full rank 16"),
    ("layers/layer1.0.conv1/rank_out", DELETE, "layers.layer1.0.conv1.rank_out", "missing"),
    ("layers/layer1.0.conv1/rank_in", 8.5, "layers.layer1.0.conv1.rank_in", "integer"),
    ("layers/layer1.0.conv1/rank", 3, "layers.layer1.0.conv1.rank", "unknown key"),
    ("regularizer/name", "l2", "regularizer.name", "unknown regularizer"),
    ("regularizer/weight", -1, "regularizer.weight", ">= 0"),
    ("extra", 1, "extra", "unknown key"),
]


@pytest.mark.parametrize(("path", "value", "key", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_config_errors(
    tmp_path: Path, path: str, value: Any, key: str | None, message: str
) -> None:
    file = write(tmp_path, mutate(path, value))
    with pytest.raises(ConfigError) as info:
        load_rank_config(file)
    assert info.value.key == key
    assert message in str(info.value)
    assert str(file) in str(info.value)


def test_malformed_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="malformed JSON at line 1"):
        load_rank_config(write(tmp_path, "{not json"))
    with pytest.raises(ConfigError, match="file not found"):
        load_rank_config(tmp_path / "nope.json")


def test_save_is_atomic_and_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    target.write_text("old")
    bad = RankConfig(ModelSpec("resnet20"), (3, 32, 32), {"nope": LayerSpec.svd(2)})
    with pytest.raises(Exception, match="nope"):
        save_rank_config(bad, target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_input_size_the_model_cannot_run_is_a_config_error(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["input_size"] = [1, 32, 32]
    with pytest.raises(ConfigError) as info:
        load_rank_config(write(tmp_path, data))
    assert info.value.key == "input_size" and "cannot run" in str(info.value)


def test_build_with_seed_is_reproducible_for_low_rank_layers(tmp_path: Path) -> None:
    import torch

    config = load_rank_config(write(tmp_path, VALID))
    a, b = config.build(seed=5), config.build(seed=5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.layer1[0].conv1.core.weight, config.build(seed=6).layer1[0].conv1.core.weight)


def test_analytic_cost_equals_built_and_counted_cost(tmp_path: Path) -> None:
    from rank_search.config import Cost
    from rank_search.cost import count_params

    config = load_rank_config(write(tmp_path, VALID))
    built, dense = config.build(), RankConfig(config.model, config.input_size).build()
    counted = Cost(
        count_cost(built, (3, 32, 32)).macs, count_params(built), count_cost(dense, (3, 32, 32)).macs
    )
    assert config.cost == counted


def test_missing_num_classes_is_named_as_missing(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    del data["model"]["num_classes"]
    config = load_rank_config(write(tmp_path, data))
    assert config.model.num_classes == 10 and not config.model.num_classes_given
    assert "no model.num_classes" in config.model.classes_text()
    assert load_rank_config(write(tmp_path, VALID)).model.classes_text() == "10 classes"


def test_cost_of_an_unvalidated_config_names_bad_layers() -> None:
    from rank_search.config import rank_config_from_dict

    data = copy.deepcopy(VALID)
    data["layers"]["layer9.conv"] = {"format": "svd", "rank": 2}
    config = rank_config_from_dict(data, validate=False)
    with pytest.raises(ConfigError) as info:
        config.compute_cost()
    assert info.value.key == "layers.layer9.conv"
