"""INT8: static quantization in ONNX Runtime, per-layer error and fallback, agreement, evaluate, bench."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.weights import randomize_bn_and_scales
from torch import nn

from rank_search.bench import BenchOptions, bench_config
from rank_search.cli import main
from rank_search.config import LayerSpec, ModelSpec, RankConfig, save_rank_config
from rank_search.convert import list_factorizable
from rank_search.errors import RankSearchError
from rank_search.int8 import Int8Options, layer_errors, top1_agreement
from rank_search.latency import num_threads
from rank_search.latency._forms import time_forms
from rank_search.latency._quant import check_precision
from rank_search.latency._runtime import runner
from rank_search.models import create_model
from rank_search.onnx_eval import evaluate_onnx
from rank_search.onnx_export import export_model, read_metadata

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = (3, 16, 16)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(autouse=True)
def _one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RANK_SEARCH_CACHE", str(tmp_path / "cache"))
    with num_threads(1):
        yield


def _config() -> RankConfig:
    """resnet20 at 3x16x16, every factorizable layer but the first Tucker-2 at half rank."""
    layers = {}
    for info in list_factorizable(create_model("resnet20", num_classes=10), SIZE)[1:]:
        if info.allows("tucker2"):
            layers[info.name] = LayerSpec(
                "tucker2", **{k: max(1, v // 2) for k, v in info.full_ranks["tucker2"].items()}
            )
    return RankConfig(ModelSpec("resnet20", 10), SIZE, layers)


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as ``rank-search train`` writes it (with its normalization record)."""
    config = _config()
    model = randomize_bn_and_scales(config.build(seed=0), seed=1)
    run = tmp_path / "run"
    run.mkdir()
    save_rank_config(config, run / "config.json")
    torch.save(model.state_dict(), run / "model.pt")
    metrics = {"normalization": {"mean": list(MEAN), "std": list(STD)}}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return run


def _image_folder(root: Path, per_class: int = 12, test_per_class: int = 4) -> str:
    """A 10-class folder of 16x16 RGB PNGs, each class a different mean colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label in range(10):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.array([25 * label, 255 - 25 * label, (80 * label) % 256])
                pixels = np.clip(base + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def _onnx_ops(path: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


# --------------------------------------------------------------------------- export


def test_int8_export_runs_in_ort_and_agrees_with_fp32(tmp_path: Path) -> None:
    run, spec = _run_folder(tmp_path), _image_folder(tmp_path / "images")
    options = Int8Options(spec, images=64, min_agreement=0.0)
    out = tmp_path / "m.onnx"
    result = export_model(run, out, batch_size=1, forms="factorized", int8=options)
    assert result.written and result.precision == "int8"
    assert result.check_images == 64  # 10 classes x 12 train images, of which 64 calibrate
    assert result.agreement >= 0.75  # most of the batch has the float32 model's top-1 class
    ops = _onnx_ops(out)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantized (QDQ)
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["input_normalization"] == {
        "mean": list(MEAN),
        "std": list(STD),
    }
    q = meta["quantization"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibration_split"] == "train"
    assert q["calibration_images"] == 64 and q["fp32_layers"] == []
    assert set(q["layer_errors"]) == set(_config().layers)
    assert all(0 < e < q["max_layer_error"] for e in q["layer_errors"].values())
    assert q["top1_agreement"] == pytest.approx(result.agreement)


def test_a_layer_above_the_error_limit_stays_fp32(tmp_path: Path) -> None:
    import onnx

    run, spec = _run_folder(tmp_path), _image_folder(tmp_path / "images")
    out = tmp_path / "m.onnx"
    options = Int8Options(spec, images=32, max_layer_error=1e-9, min_agreement=0.0)
    result = export_model(run, out, forms="factorized", int8=options)
    assert result.written
    kept = read_metadata(out)["quantization"]["fp32_layers"]
    assert sorted(kept) == sorted(_config().layers)
    proto = onnx.load(str(out))
    float_weights = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1].startswith("layer")]
    # every low-rank conv reads its float32 weight directly (no DequantizeLinear in between)
    assert convs and all(n.input[1] in float_weights for n in convs)
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) > 0  # the rest is INT8


def test_layer_errors_find_a_factor_that_quantizes_badly() -> None:
    """Per-tensor uint8 activations cannot hold one huge channel and many small ones: a Tucker-2
    layer whose inner activation has one channel 1000x the others loses the small ones."""
    g = torch.Generator().manual_seed(0)

    def layer(outlier: float) -> nn.Sequential:
        first, core, last = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 8, 1)
        with torch.no_grad():
            for conv in (first, core, last):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
                assert conv.bias is not None
                conv.bias.zero_()
            first.weight[0] *= outlier
            core.weight[:, 0] /= outlier  # the same function in float32 up to rounding
        return nn.Sequential(OrderedDict(first=first, core=core, last=last))

    model = nn.Sequential(OrderedDict(good=layer(1.0), bad=layer(1000.0))).eval()
    images = torch.randn(16, 8, 6, 6, generator=g)
    errors = layer_errors(model, ["good", "bad"], images)
    assert 0 < errors["good"] < 0.1
    assert errors["bad"] > 5 * errors["good"]


def test_int8_without_calibration_data_or_onnxruntime_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins
    import sys

    path, out = tmp_path / "config.json", tmp_path / "m.onnx"
    save_rank_config(_config(), path)
    assert main(["export-model", str(path), "-o", str(out), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--calibration-data" in err
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for name in [m for m in sys.modules if m.split(".")[0] == "onnxruntime"]:
        monkeypatch.delitem(sys.modules, name)
    argv = ["export-model", str(path), "-o", str(out), "--int8", "--calibration-data", "builtin"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "onnxruntime" in err and "pip install" in err
    assert main(["evaluate", str(out), "--data", "builtin"]) == 2
    assert "onnxruntime" in capsys.readouterr().err
    assert not out.exists()


def test_low_agreement_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rank_search.latency._runtime as runtime

    run, spec = _run_folder(tmp_path), _image_folder(tmp_path / "images")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier model")
    real_run = runtime.run_session
    monkeypatch.setattr(runtime, "run_session", lambda *a, **k: -real_run(*a, **k))  # argmax -> argmin
    result = export_model(run, out, forms="factorized", int8=Int8Options(spec, images=16))
    assert not result.written and result.agreement < 0.9
    assert out.read_bytes() == b"an earlier model"


def test_top1_agreement() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert top1_agreement(a, a) == 1.0
    assert top1_agreement(a, a.flip(1)) == 0.0
    with pytest.raises(ValueError):
        top1_agreement(a, a[:2])


def test_bad_int8_options_are_errors() -> None:
    with pytest.raises(RankSearchError, match="calibration images"):
        Int8Options("builtin", images=0).check()
    with pytest.raises(RankSearchError, match="agreement"):
        Int8Options("builtin", min_agreement=1.5).check()
    with pytest.raises(RankSearchError, match="unknown precision"):
        check_precision("int4")
    with pytest.raises(RankSearchError, match="needs runtime onnxruntime"):
        runner(nn.Identity(), torch.zeros(1), "torch", 1, "int8")


# --------------------------------------------------------------------------- evaluate


def test_evaluate_measures_the_shipped_files_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp32 file: the same test accuracy as the PyTorch model on the same images; INT8 file:
    measured on every test image, with the normalization recorded at export."""
    from rank_search.data import DataOptions, load_data
    from rank_search.runs import load_run_model

    run, spec = _run_folder(tmp_path), _image_folder(tmp_path / "images")
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_model(run, fp32, forms="factorized")
    export_model(run, int8, forms="factorized", int8=Int8Options(spec, images=32, min_agreement=0.0))
    model, _ = load_run_model(run)
    data = load_data(spec, DataOptions(mean=MEAN, std=STD))
    x, y = next(data.batches("test", batch_size=1000))
    with torch.no_grad():
        torch_correct = int((model.eval()(x).argmax(1) == y).sum())
    got = evaluate_onnx(fp32, spec, batch_size=7)  # a fixed-batch-1 file, any batch size
    assert (got.images, got.normalization_source, got.precision) == (40, "metadata", "fp32")
    assert got.normalization == {"mean": list(MEAN), "std": list(STD)}
    assert abs(got.correct - torch_correct) <= 1
    assert main(["evaluate", str(int8), "--data", spec, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images"] == 40 and record["precision"] == "int8"
    assert 0.0 <= record["accuracy"] <= 1.0


def test_evaluate_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _image_folder(tmp_path / "images", per_class=1, test_per_class=1)
    assert main(["evaluate", str(tmp_path / "none.onnx"), "--data", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.onnx" in err and "not found" in err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert main(["evaluate", str(junk), "--data", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "junk.onnx" in err


# --------------------------------------------------------------------------- timing and bench


def test_int8_forms_are_timed_quantized() -> None:
    from rank_search.inference import export_for_inference
    from rank_search.layers import Tucker2Conv2d

    layer = export_for_inference(
        Tucker2Conv2d(16, 16, 3, rank_in=8, rank_out=8, padding=1), channels_last=False
    )
    assert isinstance(layer, nn.Sequential)
    spreads = time_forms(
        layer, torch.randn(1, 16, 8, 8), precision="int8", repeats=1, warmup=0, min_sample_ms=0.1
    )
    assert set(spreads) == {"factorized", "merge_first", "merge_last", "dense"}
    assert all(s.median > 0 for s in spreads.values())


def test_bench_int8_times_four_models_side_by_side(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    options = BenchOptions(
        runtime="onnxruntime", int8=True, batch_sizes=(1,), repeats=1, warmup=0, min_sample_ms=0.1, threads=1
    )
    row = bench_config(_config(), options).to_dict()["results"][0]
    for key in ("dense_ms", "low_rank_ms", "dense_int8_ms", "low_rank_int8_ms"):
        assert row[key] > 0
    assert row["speedup_int8_vs_dense_int8"] == pytest.approx(row["dense_int8_ms"] / row["low_rank_int8_ms"])
    assert row["speedup_int8_vs_dense_fp32"] == pytest.approx(row["dense_ms"] / row["low_rank_int8_ms"])
    assert row["int8_forms"]["chosen"] in ("per-layer", "all dense", "all factorized")
    with pytest.raises(RankSearchError, match="int8 needs runtime onnxruntime"):
        BenchOptions(int8=True).check()
    path = tmp_path / "config.json"
    save_rank_config(_config(), path)
    argv = ["bench", str(path), "--runtime", "onnxruntime", "--int8", "--threads", "1", "--batch-size", "1"]
    assert main([*argv, "--repeats", "1", "--warmup", "0", "--min-sample-ms", "0.1"]) == 0
    assert "int8 low-rank ms" in capsys.readouterr().out


# --------------------------------------------------------------------------- budgets and tables


def test_int8_latency_budget_parses_and_keys_its_own_table(tmp_path: Path) -> None:
    from rank_search.errors import ConfigError
    from rank_search.latency import LatencyTable, parse_latency_budget

    budget = parse_latency_budget(
        {"latency_ms": 0.4, "runtime": "onnxruntime", "precision": "int8", "threads": 1}
    )
    assert budget is not None and budget.precision == "int8"
    assert budget.to_dict()["precision"] == "int8"
    table = budget.table(tmp_path)
    fp32 = LatencyTable.load_or_create("cpu", threads=1, runtime="onnxruntime", cache_dir=tmp_path)
    assert table.precision == "int8" and table.key == fp32.key + "-int8"
    for data, match in (
        ({"latency_ms": 1, "precision": "int8"}, "needs runtime onnxruntime"),
        ({"latency_ms": 1, "runtime": "onnxruntime", "precision": "int4"}, "expected one of"),
    ):
        with pytest.raises(ConfigError, match=match) as info:
            parse_latency_budget(data)
        assert "budget.precision" in str(info.value)
    with pytest.raises(RankSearchError, match="needs runtime onnxruntime"):
        LatencyTable("cpu", threads=1, precision="int8", cache_dir=tmp_path)
