"""Allocation baselines, the compress workflow and warm starts from the CLI (rank_search.compress)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from rank_search.cli import main
from rank_search.compress import Option, energy_scores, knapsack, measure_sensitivity, unit_options
from rank_search.compress.allocate import choose, retained_energy
from rank_search.config import LayerSpec, ModelSpec, RankConfig, load_rank_config, save_rank_config
from rank_search.convert import list_factorizable
from rank_search.data import load_data
from rank_search.models import create_model
from rank_search.search.budget import uniform_sample
from rank_search.search.space import ResolvedSpace, load_space, resolve_space
from rank_search.search.study import find_named_file
from tests.fixtures.weights import randomize_bn_and_scales

SIZE = (3, 32, 32)


def _space(model: str = "resnet20", size: tuple[int, int, int] = SIZE) -> ResolvedSpace:
    path = find_named_file("cifar-resnet-per-layer", "spaces")
    assert path is not None
    infos = list_factorizable(create_model(model), size)
    return resolve_space(load_space(path), model, infos, input_size=size)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
    }


# --- the knapsack ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    options = {
        f"u{i}": [Option(f"u{i}", "tucker2", v, -rng.randint(0, 400)) for v in range(rng.randint(2, 4))]
        for i in range(4)
    }
    scores = {o: rng.random() for opts in options.values() for o in opts}
    headroom = -rng.randint(200, 900)
    chosen = knapsack(options, scores, headroom)
    assert sum(o.macs_delta for o in chosen.values()) <= headroom
    feasible = [
        combo
        for combo in itertools.product(*options.values())
        if sum(o.macs_delta for o in combo) <= headroom
    ]
    best = max(sum(scores[o] for o in combo) for combo in feasible)
    assert sum(scores[o] for o in chosen.values()) == pytest.approx(best)


def test_knapsack_refuses_an_unreachable_budget() -> None:
    options = {"u": [Option("u", "tucker2", 0.5, -10)]}
    with pytest.raises(ValueError, match="above the budget"):
        knapsack(options, {options["u"][0]: 1.0}, -20)


# --- energy and sensitivity -------------------------------------------------------------------------


def test_retained_energy_is_one_at_full_rank_and_falls_with_rank() -> None:
    weight = torch.randn(16, 16, 3, 3)
    full = retained_energy(weight, LayerSpec.tucker2(16, 16))
    assert full == pytest.approx(1.0, abs=1e-9)
    shares = [retained_energy(weight, LayerSpec.tucker2(r, r)) for r in (12, 8, 4)]
    assert 1.0 > shares[0] > shares[1] > shares[2] > 0.0
    assert retained_energy(weight, LayerSpec("svd", rank=144)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("fraction", [0.5, 0.28])
def test_energy_allocation_is_a_space_point_within_budget(fraction: float) -> None:
    space = _space()
    budget = int(fraction * space.dense_macs)
    model = randomize_bn_and_scales(create_model("resnet20", seed=0), 0)
    options = unit_options(space, max_levels=6)
    chosen = knapsack(options, energy_scores(space, options, _weights(model)), budget - space.dense_macs)
    sample = choose(space, chosen, uniform_sample(space, budget))
    assert space.macs(sample) <= budget
    assert space.macs(sample) >= 0.9 * budget  # the knapsack spends the budget
    assert all(c.value in space.unit(k).levels() for k, c in sample.units.items())


def test_energy_allocation_prefers_layers_with_concentrated_spectra() -> None:
    """A layer whose kernel is rank-2 keeps all its energy at rank 2: the knapsack gives it the
    smallest rank and spends the MACs elsewhere."""
    space = _space()
    model = create_model("resnet20", seed=0)
    conv = dict(model.named_modules())["layer2.1.conv1"]
    with torch.no_grad():
        a, b = torch.randn(32, 2), torch.randn(2, 32 * 9)
        conv.weight.copy_((a @ b).reshape(32, 32, 3, 3))  # type: ignore[operator]
    budget = int(0.5 * space.dense_macs)
    options = unit_options(space, max_levels=8)
    chosen = knapsack(options, energy_scores(space, options, _weights(model)), budget - space.dense_macs)
    low = chosen["layer2.1.conv1"].value
    others = [o.value for k, o in chosen.items() if k.startswith("layer2") and k != "layer2.1.conv1"]
    assert low < min(others)


def test_sensitivity_table_is_measured_then_read_from_its_cache(tmp_path: Path) -> None:
    data = load_data("builtin")
    size = tuple(int(v) for v in data.input_size)
    space = _space(size=size)  # type: ignore[arg-type]
    model = randomize_bn_and_scales(create_model("resnet20", seed=0), 0)
    options = {k: v for k, v in list(unit_options(space, max_levels=2).items())[:3]}
    cache = tmp_path / "sensitivity.json"
    first = measure_sensitivity(
        space, options, model, data, val_images=64, bn_images=64, cache=cache, key={"w": 1}
    )
    assert not first.cached and cache.is_file()
    assert set(first.accuracy) == {o for opts in options.values() for o in opts}
    assert all(0.0 <= a <= 1.0 for a in first.accuracy.values())
    again = measure_sensitivity(
        space, options, model, data, val_images=64, bn_images=64, cache=cache, key={"w": 1}
    )
    assert again.cached and again.accuracy == first.accuracy
    other = measure_sensitivity(
        space, options, model, data, val_images=32, bn_images=64, cache=cache, key={"w": 1}
    )
    assert not other.cached  # a different key measures again


# --- the CLI ---------------------------------------------------------------------------------------------


def _saved_weights(tmp_path: Path) -> Path:
    model = randomize_bn_and_scales(create_model("resnet20", seed=0), 0)
    state = {f"module.{k.replace('fc.', 'linear.')}": v for k, v in model.state_dict().items()}
    path = tmp_path / "trained.th"
    torch.save({"state_dict": state, "best_prec1": 50.0}, path)
    return path


def test_compress_cli_writes_every_baseline_within_budget_and_fine_tunes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    weights = _saved_weights(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "compress", str(weights), "--model", "resnet20", "--budget", "0.4", "--data", "builtin",
            "-o", str(out), "--rename", "linear=fc", "--max-levels", "3", "--sensitivity-images", "64",
            "--bn-images", "128", "--epochs", "1", "--batch-size", "64", "--val-fraction", "0.2", "--onnx",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "compress.json").read_text())
    assert [row["method"] for row in report["allocations"]] == ["uniform", "energy", "sensitivity"]
    budget = report["budget_macs"]
    for row in report["allocations"]:
        config = load_rank_config(row["config"])
        assert config.compute_cost().macs <= budget
        assert config.provenance["allocation"] == row["method"]
    assert (out / "sensitivity.json").is_file() and (out / "allocations.png").is_file()
    metrics = json.loads((out / "finetuned" / "metrics.json").read_text())
    assert metrics["init"]["init_from"] == str(weights.resolve())
    assert metrics["macs"] <= budget and "normalization" in metrics
    assert report["onnx"]["written"] and (out / "model.onnx").is_file()
    assert "| sensitivity |" in (out / "compress.md").read_text()


@pytest.mark.slow  # ResNet-18's 512-channel decompositions: half a minute on 2 idle cores
def test_compress_a_torchvision_model_with_user_weights(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = randomize_bn_and_scales(create_model("resnet18", num_classes=10, seed=0), 0)
    weights = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), weights)  # a torchvision weights file: a plain state dict
    out = tmp_path / "out"
    code = main(
        [
            "compress", str(weights), "--model", "resnet18", "--space", "torchvision-resnet",
            "--budget", "0.5", "--data", "builtin", "-o", str(out), "--methods", "uniform", "energy",
            "--max-levels", "3", "--bn-images", "64", "--val-fraction", "0.2",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "compress.json").read_text())
    assert [row["method"] for row in report["allocations"]] == ["uniform", "energy"]
    assert all(row["macs"] <= report["budget_macs"] for row in report["allocations"])
    assert report["chosen_by"].startswith("best baseline")


def test_compress_cli_bad_weights_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    weights = _saved_weights(tmp_path)
    code = main(
        ["compress", str(weights), "--model", "resnet20", "--budget", "0.4", "-o", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "unexpected 2: linear.weight, linear.bias" in err
    assert not (tmp_path / "o" / "compress.json").exists()


def test_train_init_from_records_the_warm_start(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    weights = _saved_weights(tmp_path)
    config = save_rank_config(
        RankConfig(ModelSpec("resnet20", 10), (3, 16, 16), {"layer1.0.conv1": LayerSpec.tucker2(8, 8)}),
        tmp_path / "c.json",
    )
    run = tmp_path / "run"
    code = main(
        [
            "train", str(config), "--init-from", str(weights), "--rename", "linear=fc", "--data", "builtin",
            "--epochs", "1", "--batch-size", "64", "--epoch-steps", "3", "--bn-images", "64", "-o", str(run),
            "--quiet", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init"]["bn_images"] == 64
    assert 0.0 < metrics["init"]["errors"]["layer1.0.conv1"] < 1.0
    assert metrics["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    train_config = json.loads((run / "train_config.json").read_text())
    assert train_config["epoch_steps"] == 3 and train_config["init_rename"] == {"linear": "fc"}


def test_zero_shot_epochs_validate_the_warm_model_without_training(tmp_path: Path) -> None:
    from rank_search.train import TrainConfig, fit

    weights = tmp_path / "w.pt"
    torch.save(randomize_bn_and_scales(create_model("resnet20", seed=0), 0).state_dict(), weights)
    data = load_data("builtin")
    config = RankConfig(ModelSpec("resnet20", 10), (3, 16, 16), {"layer1.0.conv1": LayerSpec.tucker2(4, 4)})
    train = TrainConfig(
        epochs=2, epoch_steps=0, init_from=str(weights), bn_recalibration_images=64, device="cpu"
    )
    result = fit(config, data, train)
    assert result.status == "completed" and len(result.history) == 2
    first, second = result.history
    assert first.val_accuracy == second.val_accuracy  # nothing trained between the two validations
    assert result.init["bn_images"] == 64
