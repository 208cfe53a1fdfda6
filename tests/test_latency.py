"""Latency: rank grids and interpolation, table caching and keys, prediction, budgets, layer timing."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import torch

from rank_search.cli import main
from rank_search.config import LayerSpec, ModelSpec, RankConfig
from rank_search.convert import LayerInfo, list_factorizable
from rank_search.errors import BudgetError, ConfigError, RankSearchError
from rank_search.latency import (
    LatencyBudget,
    LatencyTable,
    TimingSettings,
    build_dense_layer,
    device_key,
    factorization_pays,
    latency_of_config,
    measure_layer_latency,
    num_threads,
    parse_latency_budget,
    rank_grid,
    resolve_device,
)
from rank_search.models import create_model
from rank_search.uniform import uniform_config

TINY = (3, 8, 8)
FAST = TimingSettings(repeats=2, warmup=1, min_sample_ms=0.0)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread while building models: fast and steady on a small or shared CPU."""
    with num_threads(1):
        yield


def _fake_timer(info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int) -> float:
    """A bilinear function of the ranks: interpolation on the grid must reproduce it exactly."""
    if fmt == "dense":
        return 1.0 + info.out_channels / 64
    return (
        0.5 + 0.01 * ranks.get("rank_in", 0) + 0.002 * ranks.get("rank_out", 0) + 0.003 * ranks.get("rank", 0)
    )


def _table(tmp_path: Path, **kwargs: object) -> LatencyTable:
    options: dict[str, object] = {"threads": 1, "cache_dir": tmp_path, "settings": FAST, **kwargs}
    return LatencyTable.load_or_create("cpu", **options)  # type: ignore[arg-type]


def _infos(size: tuple[int, int, int] = TINY) -> dict[str, LayerInfo]:
    return {i.name: i for i in list_factorizable(create_model("resnet20"), size)}


def _config(size: tuple[int, int, int] = TINY, ratio: float = 0.5) -> RankConfig:
    names = [n for n in _infos(size) if n.startswith("layer")]
    return uniform_config("resnet20", 10, size, ratio, names, "tucker2")


def test_rank_grid() -> None:
    assert rank_grid(3) == [1, 3]
    assert rank_grid(16) == [8, 16]
    assert rank_grid(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert rank_grid(10) == [8, 10]
    assert rank_grid(512) == list(range(32, 513, 32))
    assert len(rank_grid(576)) <= 16


def test_interpolation_is_exact_for_bilinear_costs(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer, interpolate=True)
    info = _infos()["layer3.1.conv1"]  # 64 -> 64: grid 8, 16, ..., 64
    expected = 0.5 + 0.01 * 44 + 0.002 * 20
    assert table.layer_ms(info, "tucker2", {"rank_in": 44, "rank_out": 20}, 1) == pytest.approx(expected)
    assert table.measurements == 4  # the four corners (40|48) x (16|24)
    assert table.layer_ms(info, "tucker2", {"rank_in": 48, "rank_out": 24}, 1) == pytest.approx(
        0.5 + 0.48 + 0.048
    )
    assert table.measurements == 4  # a grid point already measured
    small = table.layer_ms(info, "tucker2", {"rank_in": 2, "rank_out": 8}, 1)
    assert small == pytest.approx(0.5 + 0.08 + 0.016)  # below the grid: clamped to rank 8


def test_exact_ranks_are_measured_by_default(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer)
    info = _infos()["layer3.1.conv1"]
    assert table.layer_ms(info, "tucker2", {"rank_in": 44, "rank_out": 20}, 1) == pytest.approx(0.98)
    assert table.measurements == 1
    with pytest.raises(KeyError):  # no grid yet: a pure lookup cannot interpolate
        table.layer_ms(info, "tucker2", {"rank_in": 45, "rank_out": 20}, 1, measure=False)
    assert table.layer_ms(
        info, "tucker2", {"rank_in": 44, "rank_out": 20}, 1, measure=False
    ) == pytest.approx(0.98)


def test_table_is_cached_and_keyed(tmp_path: Path) -> None:
    config = _config()
    first = _table(tmp_path, layer_timer=_fake_timer)
    predicted = first.predict(config, 2)
    assert predicted > 0 and first.measurements > 0
    assert first.path.exists() and first.path.parent == tmp_path
    second = _table(tmp_path, layer_timer=_fake_timer)
    assert second.predict(config, 2) == pytest.approx(predicted)
    assert second.measurements == 0  # everything came from the cache
    other = _table(tmp_path, threads=2, layer_timer=_fake_timer)  # another device key: nothing reused
    assert other.key != first.key and other.path != first.path and not other.layers
    other.predict(config, 2)
    assert other.measurements > 0
    assert json.loads(first.path.read_text())["key"] == first.key


def test_file_for_another_key_is_ignored(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer)
    table.layers["x"] = 1.0
    table.save()
    data = json.loads(table.path.read_text())
    data["key"] = "some-other-device"
    table.path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="starting a new one"):
        fresh = _table(tmp_path)
    assert not fresh.layers


def test_dense_config_predicts_the_dense_model_measurement(tmp_path: Path) -> None:
    table = _table(tmp_path)
    dense = RankConfig(ModelSpec("resnet20"), TINY)
    record = table.rest
    predicted = table.predict(dense, 1)
    (entry,) = record.values()
    assert predicted == pytest.approx(entry["dense_model_ms"])


def test_prediction_is_calibrated_on_whole_low_rank_models(tmp_path: Path) -> None:
    """Whole models run in 0.3 ms + 0.8 x the sum of their layers timed alone (a layer's saving
    shows only 80% in the network): the fitted scale recovers 0.8, and a mixed config unlike the
    uniform references is predicted exactly. A rest term measured on the dense model alone (the
    sum of layers plus a constant) would miss it."""
    from fixtures.timing import macs_model_timer, macs_timer

    def model_timer(model: torch.nn.Module, size: Sequence[int], batch: int) -> float:
        return 0.3 + 0.8 * macs_model_timer(model, size, batch)

    table = _table(tmp_path, layer_timer=macs_timer, model_timer=model_timer)
    infos = _infos()
    layers = {}
    for index, (name, info) in enumerate(list(infos.items())[1:-1]):
        fmt = ("tucker2", "tucker2", "dense")[index % 3]
        if fmt != "dense" and info.allows(fmt):
            layers[name] = LayerSpec(fmt, **{k: max(1, v // 3) for k, v in info.full_ranks[fmt].items()})
    config = RankConfig(ModelSpec("resnet20"), TINY, layers)
    predicted = table.predict(config, 1)
    (record,) = table.rest.values()
    assert record["scale"] == pytest.approx(0.8)
    measured = model_timer(config.build(seed=0), TINY, 1)
    assert predicted == pytest.approx(measured, rel=1e-9)
    dense_rest_only = table._layer_sum(config, 1, False) + record["rest_ms"]
    assert abs(dense_rest_only - measured) > 0.01 * measured  # what the dense-only rest term predicted
    for ratio in (0.25, 0.5, 0.75):
        assert record[f"reference_{ratio}_model_ms"] > 0


def test_a_rest_record_without_a_scale_is_measured_again(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer)
    key = f"resnet20/10 {'x'.join(map(str, TINY))} b1"
    table.rest[key] = {"rest_ms": 1.0, "dense_model_ms": 5.0, "per_kernel_ms": 0.0}  # an older table
    with pytest.raises(BudgetError, match="prefill"):
        latency_of_config(table, _config(), 1, measure=False)
    table.predict(_config(), 1)
    assert "scale" in table.rest[key]


def test_latency_of_config_without_measuring(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer)
    config = _config()
    with pytest.raises(BudgetError, match="prefill"):
        latency_of_config(table, config, 1, measure=False)
    assert table.prefill("resnet20", TINY, 1, ("tucker2",)) > 0
    before = table.measurements
    value = latency_of_config(table, config, 1, measure=False)
    assert value > 0 and table.measurements == before


def test_parse_latency_budget() -> None:
    budget = parse_latency_budget({"latency_ms": 2.5, "device": "cpu", "batch_size": 32, "threads": 2})
    assert budget == LatencyBudget(2.5, "cpu", 32, 2)
    assert parse_latency_budget({"macs": 10}, other_keys=("macs",)) is None
    assert parse_latency_budget({"latency_ms": 1, "macs": 10}, other_keys=("macs",)) == LatencyBudget(1.0)
    bad = [
        ({"latency_ms": -1}, "budget.latency_ms"),
        ({"latency_ms": 1, "device": "tpu"}, "budget.device"),
        ({"latency_ms": 1, "batch_size": 0}, "budget.batch_size"),
        ({"latency_ms": 1, "dtype": "int8"}, "budget.dtype"),
        ({"latency_ms": 1, "speed": 3}, "budget"),
        ({"device": "cuda"}, "budget.latency_ms"),
    ]
    for data, key in bad:
        with pytest.raises(ConfigError) as info:
            parse_latency_budget(data)
        assert info.value.key == key


def test_budget_table_uses_its_settings(tmp_path: Path) -> None:
    table = LatencyBudget(1.0, threads=1).table(cache_dir=tmp_path)
    assert table.threads == 1 and table.key == device_key(torch.device("cpu"), 1)


def test_device_errors_and_keys() -> None:
    with pytest.raises(RankSearchError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RankSearchError, match="no CUDA device"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert device_key(cpu, 1) != device_key(cpu, 2)
    assert device_key(cpu, 1) != device_key(cpu, 1, torch.bfloat16)
    assert "/" not in device_key(cpu, 1) and " " not in device_key(cpu, 1)


def test_dense_layer_rebuilt_from_info_has_the_same_shape() -> None:
    with num_threads(1):
        infos = list_factorizable(create_model("resnet18", num_classes=10), (3, 16, 16))
        for info in infos:
            out = build_dense_layer(info)(torch.zeros(1, *info.input_size))
            assert tuple(out.shape[1:]) == info.output_size, info.name


def test_measure_layer_latency_and_advice() -> None:
    info = _infos()["layer2.1.conv1"]
    timing = measure_layer_latency(
        info, "svd", {"rank": 8}, 2, "cpu", repeats=2, warmup=1, threads=1, min_sample_ms=0.0
    )
    assert timing.dense.median > 0 and timing.low_rank.median > 0
    assert timing.speedup == pytest.approx(timing.dense.median / timing.low_rank.median)
    assert timing.low_rank_macs == info.macs("svd", {"rank": 8}) < timing.dense_macs
    advice = factorization_pays(
        "resnet20",
        TINY,
        names=["layer1.0.conv1", "layer1.1.conv1"],
        ratios=(0.5, 1.0),
        repeats=1,
        warmup=0,
        threads=1,
        min_sample_ms=0.0,
    )
    assert [a.name for a in advice] == ["layer1.0.conv1", "layer1.1.conv1"]
    assert len(advice[0].timings) == 2 and isinstance(advice[0].pays, bool)
    assert advice[0].to_dict()["best_ranks"] is not None


def test_cli_latency_table_and_layer_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "--batch-size",
        "1",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path),
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--min-sample-ms",
        "0",
    ]
    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps(_config().to_dict()))
    assert main(["latency-table", str(config_path), "--verify", *common]) == 0
    out = capsys.readouterr().out
    assert "predicted ms" in out and "error" in out
    assert (
        main(
            [
                "layer-speed",
                "resnet20",
                "--input-size",
                "3",
                "8",
                "8",
                "--batch-size",
                "1",
                "--threads",
                "1",
                "--ratios",
                "0.5",
                "--repeats",
                "1",
                "--min-sample-ms",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "pays" in out
    assert main(["latency-table", "resnet21", *common]) == 2
    assert (
        main(["latency-table", "resnet20", "--input-size", "3", "8", "8", "--formats", "svd", *common]) == 0
    )
    assert "new entries" in capsys.readouterr().out


def test_layers_with_equal_shapes_share_entries(tmp_path: Path) -> None:
    table = _table(tmp_path, layer_timer=_fake_timer)
    infos = _infos()
    spec = LayerSpec.tucker2(8, 8)
    a = table.layer_ms(infos["layer1.0.conv1"], "tucker2", spec.ranks(), 1)
    count = table.measurements
    assert table.layer_ms(infos["layer1.2.conv2"], "tucker2", spec.ranks(), 1) == a
    assert table.measurements == count


def test_onnxruntime_layer_timing_records_every_form() -> None:
    pytest.importorskip("onnxruntime")
    from rank_search.inference import FORMS
    from rank_search.latency import measure_layer_latency

    info = _infos()["layer3.0.conv2"]
    timing = measure_layer_latency(
        info, "tucker2", {"rank_in": 16, "rank_out": 16}, 1, repeats=2, warmup=0, min_sample_ms=0.0,
        runtime="onnxruntime",
    )  # fmt: skip
    assert timing.runtime == "onnxruntime" and timing.forms is not None
    assert set(timing.forms) == set(FORMS["tucker2"])
    assert timing.low_rank == timing.forms[timing.form] == min(timing.forms.values(), key=lambda s: s.median)


def test_onnxruntime_table_has_its_own_key(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch_table = _table(tmp_path)
    ort_table = _table(tmp_path, runtime="onnxruntime")
    assert ort_table.key != torch_table.key and "ort" in ort_table.key and not ort_table.channels_last
    with pytest.raises(RankSearchError, match="float32"):
        _table(tmp_path, runtime="onnxruntime", dtype=torch.bfloat16)
    with pytest.raises(RankSearchError, match="unknown runtime"):
        _table(tmp_path, runtime="tflite")


def test_layer_speed_onnxruntime_explains_the_export_form(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    args = ["layer-speed", "resnet20", "--runtime", "onnxruntime", "--input-size", "3", "8", "8"]
    args += ["--batch-size", "1", "--ratios", "0.5", "--repeats", "1", "--min-sample-ms", "0"]
    args += ["--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "export form" in out and "factorized=" in out and "dense=" in out


def test_default_round_to_follows_the_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from rank_search.latency import _isa

    monkeypatch.delenv(_isa.ENV, raising=False)
    assert _isa.round_to_reason(frozenset({"sse2", "avx2", "avx512f"}))[0] == 16
    assert _isa.round_to_reason(frozenset({"sse2", "avx2"}))[0] == 8
    assert _isa.round_to_reason(frozenset({"neon"}))[0] == 1
    monkeypatch.setenv(_isa.ENV, "4")
    assert _isa.default_round_to() == 4
    monkeypatch.setenv(_isa.ENV, "x")
    with pytest.raises(RankSearchError, match=_isa.ENV):
        _isa.default_round_to()


def test_space_default_round_to_is_the_isa_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from rank_search.search.space import parse_space

    monkeypatch.setenv("RANK_SEARCH_ROUND_TO", "8")
    data = {"models": ["resnet20"], "layers": [{"match": "layer3.*", "ratio": [0.25, 1.0]}]}
    assert parse_space(data, "s.yaml").groups[0].round_to == 8
    data["layers"][0]["round_to"] = 2  # type: ignore[index]
    assert parse_space(data, "s.yaml").groups[0].round_to == 2


def test_layers_states_the_round_to(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "resnet20"]) == 0
    assert "round_to use multiples of 1 (set by RANK_SEARCH_ROUND_TO)" in capsys.readouterr().out


def test_load_check_warns_when_the_machine_gets_busier(monkeypatch: pytest.MonkeyPatch) -> None:
    from rank_search.latency import _device

    spins = iter([1.0, 2.0, 1.0, 1.1])
    monkeypatch.setattr(_device, "spin_ms", lambda: next(spins))
    monkeypatch.setattr(_device, "load_average", lambda: 0.0)
    with pytest.warns(UserWarning, match="calibration spin ran 2.00x slower"), _device.load_check():
        pass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _device.load_check():  # 1.1x: within SPIN_SLOWDOWN, no warning
            pass
    monkeypatch.setattr(_device, "load_average", lambda: 99.0)
    spins = iter([1.0, 1.0])
    with pytest.warns(UserWarning, match="load average 99") as record, _device.load_check():
        _device.warn_if_busy(torch.device("cpu"))  # timing code inside: the command warned already
    assert len([w for w in record if "load average" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match="load average 99"):
        _device.warn_if_busy(torch.device("cpu"))  # outside a load check it warns on its own


@pytest.mark.parametrize("command", ["layer-speed", "latency-table"])
def test_timing_commands_name_an_unknown_device_in_one_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "resnet20", "--input-size", "3", "8", "8", "--device", "gpu", "--repeats", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown device 'gpu'" in err


def test_load_check_rejects_an_unknown_device_before_timing() -> None:
    from rank_search.latency._device import load_check

    with pytest.raises(RankSearchError, match="unknown device 'gpu'"), load_check("gpu"):
        pass
