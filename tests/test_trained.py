"""Loading trained weights, decomposing them, recalibrating BatchNorm (rank_search.trained)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from rank_search.config import LayerSpec, ModelSpec, RankConfig, save_rank_config
from rank_search.layers import Tucker2Conv2d, tucker2_hooi
from rank_search.models import create_model
from rank_search.trained import (
    WeightsError,
    decompose_model,
    load_weights,
    parse_rename,
    read_state_dict,
    recalibrate_bn,
    warm_model,
)
from tests.fixtures.weights import randomize_bn_and_scales


def _trained(seed: int = 0) -> nn.Module:
    return randomize_bn_and_scales(create_model("resnet20", seed=seed), seed)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- loading -------------------------------------------------------------------------------------


def test_plain_state_dict_loads(tmp_path: Path) -> None:
    source = _trained()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = load_weights(create_model("resnet20", seed=5), tmp_path / "w.pt")
    assert _same_weights(source, target)


def test_checkpoint_dict_with_wrapper_prefix_and_renamed_head(tmp_path: Path) -> None:
    source = _trained()
    state = {f"module.{k.replace('fc.', 'linear.')}": v for k, v in source.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as old checkpoints
    torch.save({"best_prec1": 91.0, "state_dict": state}, tmp_path / "ckpt.th")
    with pytest.raises(WeightsError) as err:
        load_weights(create_model("resnet20"), tmp_path / "ckpt.th")
    message = str(err.value)
    assert (
        "missing 2: fc.weight, fc.bias" in message and "unexpected 2: linear.weight, linear.bias" in message
    )
    assert "linear=fc" in message and "\n" not in message
    target = load_weights(create_model("resnet20", seed=3), tmp_path / "ckpt.th", rename={"linear": "fc"})
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_mis_shaped_keys_are_named(tmp_path: Path) -> None:
    state = create_model("resnet20").state_dict()
    state["fc.weight"] = torch.zeros(7, 64)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"mis-shaped 1: fc.weight \(7, 64\) vs model \(10, 64\)"):
        load_weights(create_model("resnet20"), tmp_path / "w.pt")


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_loading_never_executes_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_state_dict(path)


def test_missing_file_and_dict_without_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="no state dict found"):
        read_state_dict(tmp_path / "meta.pt")


def test_run_folder_of_a_low_rank_model_loads_densified(tmp_path: Path) -> None:
    layers = {"layer1.0.conv1": LayerSpec.tucker2(8, 8), "layer2.1.conv2": LayerSpec("svd", rank=12)}
    config = RankConfig(ModelSpec("resnet20", 10), (3, 32, 32), layers)
    low_rank = config.build(seed=1)
    randomize_bn_and_scales(low_rank, 1)
    run = tmp_path / "run"
    save_rank_config(config, run / "config.json")
    torch.save(low_rank.state_dict(), run / "model.pt")
    dense = load_weights(create_model("resnet20"), run)
    x = torch.randn(2, 3, 32, 32)
    low_rank.eval(), dense.eval()
    assert torch.allclose(low_rank(x), dense(x), atol=1e-4)


def test_parse_rename_forms() -> None:
    assert parse_rename(["linear=fc", " head = classifier "]) == {"linear": "fc", "head": "classifier"}
    assert parse_rename({"linear": "fc"}) == {"linear": "fc"}
    with pytest.raises(WeightsError, match="OLD=NEW"):
        parse_rename(["linear"])


# --- decomposition -------------------------------------------------------------------------------


def test_tucker2_hooi_is_exact_at_full_rank_float64() -> None:
    weight = torch.randn(12, 8, 3, 3, dtype=torch.float64)
    core, u_out, u_in = tucker2_hooi(weight, 12, 8, sweeps=2)
    rebuilt = torch.einsum("rskl,or,is->oikl", core, u_out, u_in)
    assert torch.allclose(rebuilt, weight, atol=1e-12)


def test_hooi_sweeps_never_increase_the_error() -> None:
    torch.manual_seed(0)
    weight = torch.randn(32, 24, 3, 3, dtype=torch.float64)
    errors = []
    for sweeps in (0, 1, 3):
        core, u_out, u_in = tucker2_hooi(weight, 10, 7, sweeps=sweeps)
        rebuilt = torch.einsum("rskl,or,is->oikl", core, u_out, u_in)
        errors.append(float((rebuilt - weight).norm()))
    assert errors[1] <= errors[0] + 1e-12 and errors[2] <= errors[1] + 1e-12
    assert errors[2] < errors[0]  # HOOI improves on plain HOSVD for a random kernel


@pytest.mark.parametrize("fmt", ["tucker2", "svd"])
def test_decompose_model_reports_errors_and_is_exact_at_full_rank(fmt: str) -> None:
    model = _trained().double()
    reference = create_model("resnet20")
    reference.load_state_dict(model.state_dict())
    names = ["layer1.0.conv1", "layer3.2.conv2"]
    full = {"tucker2": lambda c: LayerSpec.tucker2(c.in_channels, c.out_channels),
            "svd": lambda c: LayerSpec("svd", rank=min(c.out_channels, c.in_channels * 9))}[fmt]  # fmt: skip
    modules = dict(model.named_modules())
    errors = decompose_model(model, {n: full(modules[n]) for n in names})
    assert set(errors) == set(names) and max(errors.values()) < 1e-10
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.eval(), reference.double().eval()
    assert torch.allclose(model(x), reference(x), atol=1e-9)


def test_truncation_error_grows_as_rank_shrinks() -> None:
    errors = []
    for rank in (16, 8, 4):
        model = _trained()
        errors.append(
            decompose_model(model, {"layer1.1.conv2": LayerSpec.tucker2(rank, rank)})["layer1.1.conv2"]
        )
    assert errors[0] < 1e-5 < errors[1] < errors[2] < 1.0
    assert isinstance(dict(_trained().named_modules())["layer1.1.conv2"], nn.Conv2d)


def test_warm_model_decomposes_the_configs_layers(tmp_path: Path) -> None:
    torch.save(_trained().state_dict(), tmp_path / "w.pt")
    config = RankConfig(ModelSpec("resnet20", 10), (3, 32, 32), {"layer2.0.conv2": LayerSpec.tucker2(16, 16)})
    warm = warm_model(config, tmp_path / "w.pt")
    assert isinstance(dict(warm.model.named_modules())["layer2.0.conv2"], Tucker2Conv2d)
    assert 0.0 < warm.errors["layer2.0.conv2"] < 1.0


# --- BatchNorm recalibration ------------------------------------------------------------------------


def test_recalibration_sets_the_batch_statistics_and_restores_momentum() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())
    model.eval()
    batches = [torch.randn(8, 3, 6, 6) * 2 + 1 for _ in range(3)]
    seen = recalibrate_bn(model, iter(batches))
    assert seen == 24
    with torch.no_grad():
        pre = torch.cat([model[0](b) for b in batches])  # the conv outputs BN saw
    bn = model[1]
    assert bn.momentum == 0.3 and not model.training
    per_batch_mean = torch.stack([model[0](b).mean((0, 2, 3)) for b in batches]).detach()
    assert torch.allclose(bn.running_mean, per_batch_mean.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_mean, pre.mean((0, 2, 3)), atol=1e-5)  # equal-size batches
    assert bn.running_var.gt(0).all()


def test_recalibration_without_data_keeps_the_trained_statistics() -> None:
    model = _trained()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert recalibrate_bn(model, iter([])) == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_config_rejects_bad_warm_start_fields() -> None:
    from rank_search.errors import ConfigError
    from rank_search.train import TrainConfig

    with pytest.raises(ConfigError, match="bn_recalibration_images"):
        TrainConfig(bn_recalibration_images=-1)
    with pytest.raises(ConfigError, match="epoch_steps"):
        TrainConfig(epoch_steps=0)
    with pytest.raises(ConfigError, match="init_rename"):
        TrainConfig(init_rename={"a": 1})  # type: ignore[dict-item]
    assert json.loads(json.dumps(TrainConfig(init_from="/w.pt", init_rename={"a": "b"}).to_dict()))
