"""ONNX export: equivalent forms, ONNX Runtime equals PyTorch, per-layer form choice, missing packages."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.weights import randomize_bn_and_scales
from torch import nn

from rank_search.cli import main
from rank_search.config import LayerSpec, ModelSpec, RankConfig, save_rank_config
from rank_search.convert import list_factorizable
from rank_search.errors import RankSearchError
from rank_search.inference import FORMS, apply_form, export_for_inference, exported_low_rank_formats
from rank_search.latency import num_threads
from rank_search.latency._forms import choose_form, choose_forms
from rank_search.latency._runtime import check_runtime, require
from rank_search.layers import SVDConv2d, SVDLinear, Tucker2Conv2d
from rank_search.models import create_model
from rank_search.onnx_export import export_model, read_metadata

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with num_threads(1):
        yield


def _config(name: str, input_size: tuple[int, int, int], mix: str) -> RankConfig:
    """Every factorizable layer but the first in ``mix`` ('tucker2', 'svd', 'mixed') at half rank."""
    layers = {}
    for index, info in enumerate(list_factorizable(create_model(name, num_classes=10), input_size)[1:]):
        fmt = mix if mix != "mixed" else ("tucker2", "svd")[index % 2]
        if info.allows(fmt):
            layers[info.name] = LayerSpec(fmt, **{k: max(1, v // 2) for k, v in info.full_ranks[fmt].items()})
    return RankConfig(ModelSpec(name, 10), input_size, layers)


def _run_folder(tmp_path: Path, config: RankConfig) -> Path:
    """A run folder as ``rank-search train`` writes it, with non-trivial BN statistics and scales."""
    model = randomize_bn_and_scales(config.build(seed=0), seed=1)
    run = tmp_path / "run"
    run.mkdir()
    save_rank_config(config, run / "config.json")
    torch.save(model.state_dict(), run / "model.pt")
    return run


# --------------------------------------------------------------------------- forms (PyTorch only)


def _exported_layer(layer: nn.Module) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    out = export_for_inference(layer, channels_last=False, fold_bn=False)
    assert isinstance(out, nn.Sequential)
    return out


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (Tucker2Conv2d(8, 12, 3, rank_in=3, rank_out=5, stride=2, padding=1), (2, 8, 9, 9)),
        (SVDConv2d(8, 12, 3, rank=4, padding=1), (2, 8, 7, 7)),
        (SVDLinear(10, 6, rank=3), (2, 10)),
    ],
)
def test_every_form_computes_the_same_function(layer: nn.Module, shape: tuple[int, ...]) -> None:
    exported = _exported_layer(layer)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    reference = exported(x)
    fmt = "tucker2" if isinstance(layer, Tucker2Conv2d) else "svd"
    for form in FORMS[fmt]:
        torch.testing.assert_close(apply_form(exported, form)(x), reference, atol=1e-5, rtol=1e-5)


def test_choose_form_takes_the_fastest_and_breaks_ties_in_forms_order() -> None:
    assert choose_form({"factorized": 2.0, "merge_first": 1.5, "merge_last": 1.8, "dense": 1.0}) == "dense"
    assert choose_form({"factorized": 0.5, "dense": 1.0}) == "factorized"
    assert choose_form({"dense": 1.0, "factorized": 1.0}) == "factorized"


def test_a_layer_faster_dense_is_exported_dense(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured times say dense is fastest for layer2's 32-channel 8x8 layers: they are exported
    merged to one conv, the others factorized (times are injected: the test is deterministic)."""
    import onnx

    import rank_search.latency._forms as forms_module
    import rank_search.onnx_export as onnx_export
    from rank_search.latency._timing import Spread

    config = _config("resnet20", (3, 16, 16), "tucker2")
    path = tmp_path / "config.json"
    save_rank_config(config, path)

    def fake_time_forms(layer: nn.Sequential, x: torch.Tensor, **_: Any) -> dict[str, Spread]:
        inner = layer[0].in_channels == 32 and layer[-1].out_channels == 32 and x.shape[2] == 8
        fastest = "dense" if inner else "factorized"
        return {f: Spread(1.0 if f == fastest else 2.0, 1.0, 2.0, 1.0, 2.0, 3) for f in FORMS["tucker2"]}

    def fake_time_models(models: dict[str, nn.Module], *_: Any) -> dict[str, Spread]:
        return {n: Spread(*(1.0 if n == "per-layer" else 2.0,) * 5, 3) for n in models}

    monkeypatch.setattr(forms_module, "time_forms", fake_time_forms)
    monkeypatch.setattr(onnx_export, "_time_models", fake_time_models)
    result = export_model(path, tmp_path / "auto.onnx", forms="auto")
    assert result.check_ok, result.max_abs_diff
    meta = read_metadata(tmp_path / "auto.onnx")
    assert meta["chosen"] == "per-layer"
    assert set(meta["forms"]) == set(config.layers)
    dense = sorted(n for n, r in meta["forms"].items() if r["form"] == "dense")
    assert dense == [n for n in sorted(config.layers) if n.startswith("layer2") and n != "layer2.0.conv1"]
    assert meta["forms"]["layer1.0.conv1"]["form"] == "factorized"
    export_model(path, tmp_path / "factorized.onnx", forms="factorized")

    def convs(name: str) -> int:
        return sum(n.op_type == "Conv" for n in onnx.load(str(tmp_path / name)).graph.node)

    assert convs("factorized.onnx") - convs("auto.onnx") == 2 * len(dense)


def test_whole_model_guard_ships_dense_unless_faster_beyond_noise() -> None:
    from rank_search.latency._timing import Spread
    from rank_search.onnx_export import choose_model

    def spread(median: float, iqr: float) -> Spread:
        return Spread(median, median - iqr / 2, median + iqr / 2, median - iqr, median + iqr, 5)

    clear = {"per-layer": spread(1.0, 0.1), "all dense": spread(2.0, 0.1), "all factorized": spread(1.5, 0.1)}
    assert choose_model(clear) == "per-layer"
    noisy = {"per-layer": spread(1.8, 0.6), "all dense": spread(2.0, 0.6), "all factorized": spread(1.9, 0.1)}
    assert choose_model(noisy) == "all dense"
    slower = {"per-layer": spread(2.5, 0.1), "all dense": spread(2.0, 0.1)}
    assert choose_model(slower) == "all dense"


def test_choose_forms_measures_each_shape_once_and_records_times() -> None:
    model = _config("resnet20", (3, 16, 16), "mixed").build(seed=0)
    exported = export_for_inference(model, channels_last=False, input_size=(3, 16, 16))
    choices = choose_forms(exported, torch.randn(1, 3, 16, 16), repeats=1, warmup=0, min_sample_ms=0.0)
    assert set(choices) == set(exported_low_rank_formats(exported))
    for choice in choices.values():
        assert set(choice.times_ms) == set(FORMS[choice.format])
        assert choice.times_ms[choice.form] == min(choice.times_ms.values())


# --------------------------------------------------------------------------- ONNX Runtime equals PyTorch


@pytest.mark.parametrize(
    ("name", "input_size", "mix", "forms"),
    [
        ("resnet20", (3, 32, 32), "tucker2", "factorized"),
        ("resnet20", (3, 32, 32), "svd", "dense"),
        ("resnet20", (3, 32, 32), "mixed", "factorized"),
        ("resnet56", (3, 16, 16), "mixed", "dense"),
        ("resnet18", (3, 32, 32), "tucker2", "factorized"),
        ("resnet18", (3, 32, 32), "mixed", "dense"),
        ("mobilenet_v2", (3, 32, 32), "svd", "factorized"),
        ("mobilenet_v2", (3, 32, 32), "mixed", "dense"),
    ],
)
def test_onnx_runtime_equals_pytorch_for_trained_runs(
    tmp_path: Path, name: str, input_size: tuple[int, int, int], mix: str, forms: str
) -> None:
    run = _run_folder(tmp_path, _config(name, input_size, mix))
    result = export_model(run, tmp_path / "m.onnx", batch_size=2, forms=forms)
    assert result.kind == "run"
    assert result.check_ok and result.max_abs_diff <= 1e-4 * max(1.0, result.max_abs_output)


def test_export_model_cli_dynamic_batch_names_and_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    import onnxruntime as ort

    config = _config("resnet20", (3, 16, 16), "mixed")
    path = tmp_path / "config.json"
    save_rank_config(config, path)
    out = tmp_path / "m.onnx"
    assert main(["export-model", str(path), "-o", str(out), "--dynamic-batch", "--forms", "factorized"]) == 0
    text = capsys.readouterr().out
    assert "largest absolute difference" in text and ": ok" in text
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        (logits,) = session.run(None, {"input": torch.randn(n, 3, 16, 16).numpy()})
        assert logits.shape == (n, 10)
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == "rank_search"))
    assert meta["kind"] == "config" and meta["batch_size"] is None
    assert {r["form"] for r in meta["forms"].values()} <= {"factorized"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_model_bad_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-model", str(tmp_path / "missing.json"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.json" in err and "Traceback" not in err


def test_export_model_mismatch_leaves_the_output_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose ONNX Runtime output disagrees with PyTorch's is not written: the file already
    at the output path stays, and the command exits 1 saying so."""
    import rank_search.latency._runtime as runtime

    path, out = tmp_path / "config.json", tmp_path / "m.onnx"
    save_rank_config(_config("resnet20", (3, 16, 16), "tucker2"), path)
    out.write_bytes(b"an earlier model")
    real_run = runtime.run_session
    monkeypatch.setattr(runtime, "run_session", lambda *a, **k: real_run(*a, **k) + 1.0)
    assert main(["export-model", str(path), "-o", str(out), "--forms", "factorized"]) == 1
    printed = capsys.readouterr().out
    assert "NOT written (check failed)" in printed and "MISMATCH" in printed
    assert out.read_bytes() == b"an earlier model" and not list(tmp_path.glob(".*.tmp"))


def test_export_model_form_batch_needs_dynamic_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    save_rank_config(_config("resnet20", (3, 16, 16), "tucker2"), path)
    assert main(["export-model", str(path), "-o", str(tmp_path / "m.onnx"), "--form-batch", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--form-batch needs --dynamic-batch" in err
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- missing packages


def _hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == package or name.startswith(package + "."):
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, package, raising=False)


def test_missing_runtime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(RankSearchError, match=r"'onnxruntime' is not installed.*rank-search\[onnx\]"):
        check_runtime("onnxruntime")
    with pytest.raises(RankSearchError, match="onnxruntime"):
        require("onnx", "onnxruntime")
    check_runtime("torch")


def test_missing_runtime_cli_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    save_rank_config(_config("resnet20", (3, 16, 16), "tucker2"), path)
    _hide(monkeypatch, "onnxruntime")
    assert main(["export-model", str(path), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "onnxruntime" in err and "pip install" in err
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_runtime_is_an_error() -> None:
    with pytest.raises(RankSearchError, match="unknown runtime"):
        check_runtime("tensorrt")
