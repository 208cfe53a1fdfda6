"""bench: JSON schema and values of a tiny run, interleaving, and clean errors (no wall-clock asserts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rank_search.bench import BenchOptions, bench_config, default_batch_sizes
from rank_search.cli import main
from rank_search.cli.bench import format_bench
from rank_search.config import LayerSpec, ModelSpec, RankConfig
from rank_search.cost import count_cost
from rank_search.errors import RankSearchError
from rank_search.latency import num_threads, summarize, time_interleaved
from rank_search.models import create_model

SIZE = (3, 16, 16)
TINY = {"repeats": 2, "warmup": 1, "threads": 1, "min_sample_ms": 0.0}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread while building models: fast and steady on a small or shared CPU."""
    with num_threads(1):
        yield


def _config() -> RankConfig:
    layers = {
        "layer1.0.conv1": LayerSpec.tucker2(8, 8),
        "layer2.1.conv2": LayerSpec.svd(12),
        "layer3.0.conv1": LayerSpec.tucker2(16, 32),
    }
    return RankConfig(ModelSpec("resnet20", 10), SIZE, layers)


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config().to_dict()))
    return path


def _check_row(row: dict[str, Any], mac_ratio: float) -> None:
    assert row["speedup"] == pytest.approx(row["dense_ms"] / row["low_rank_ms"])
    assert row["mac_ratio"] == pytest.approx(mac_ratio)
    for side in ("dense", "low_rank"):
        spread = row[f"{side}_spread"]
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
        assert spread["median"] == row[f"{side}_ms"] > 0
        assert row[f"{side}_images_per_s"] == pytest.approx(row["batch_size"] / (row[f"{side}_ms"] / 1e3))


def test_bench_config_values() -> None:
    config = _config()
    result = bench_config(config, BenchOptions(batch_sizes=(1, 3), **TINY))
    data = result.to_dict()
    dense_macs = count_cost(create_model("resnet20"), SIZE).macs
    low_macs = count_cost(config.build(), SIZE).macs
    assert data["macs"] == {"dense": dense_macs, "low_rank": low_macs}
    assert data["mac_ratio"] == pytest.approx(dense_macs / low_macs)
    assert [r["batch_size"] for r in data["results"]] == [1, 3]
    for row in data["results"]:
        _check_row(row, dense_macs / low_macs)
    assert data["device"]["type"] == "cpu" and data["device"]["threads"] == 1
    assert data["device"]["torch"] == torch.__version__ and data["device"]["name"]
    assert data["settings"]["interleaved"] is True and data["settings"]["repeats"] == 2
    assert data["results"][0]["dense_spread"]["samples"] == 2
    json.dumps(data, allow_nan=False)
    assert "speedup" in format_bench(data)


def test_bench_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "bench.json"
    args = [
        "bench",
        str(_write_config(tmp_path)),
        "--batch-size",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--min-sample-ms",
        "0",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mac_ratio" in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert data["format"] == "rank-search/bench" and data["model"] == "resnet20"
    assert len(data["results"]) == 1
    _check_row(data["results"][0], data["mac_ratio"])
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "batch-size must be positive"),
        (["--repeats", "0"], "repeats must be >= 1"),
        (["--threads", "0"], "threads must be a positive integer"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bench_bad_input_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["bench", str(_write_config(tmp_path)), *extra]) == 2
    assert message in capsys.readouterr().err


def test_bench_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(tmp_path / "missing.json")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_bench_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(_write_config(tmp_path)), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is available" in err and "--device cpu" in err
    with pytest.raises(RankSearchError, match="cuda_graph needs a CUDA device"):
        bench_config(_config(), BenchOptions(cuda_graph=True))


def test_default_batch_sizes() -> None:
    assert default_batch_sizes(torch.device("cpu")) == (1, 32)
    assert default_batch_sizes(torch.device("cuda")) == (1, 1024)


def test_time_interleaved_alternates_order() -> None:
    calls: list[str] = []
    samples = time_interleaved(
        [lambda: calls.append("a"), lambda: calls.append("b")], torch.device("cpu"), repeats=4, warmup=1
    )
    assert calls[:2] == ["a", "b"]  # warmup
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(s) for s in samples] == [4, 4]


def test_summarize_quartiles() -> None:
    spread = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (spread.median, spread.q1, spread.q3, spread.min, spread.max) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert spread.iqr == 2.0
    assert summarize([7.0]).q1 == 7.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_with_graphs() -> None:
    for cuda_graph in (False, True):
        options = BenchOptions(device="cuda", batch_sizes=(1, 64), cuda_graph=cuda_graph, **TINY)
        data = bench_config(_config(), options).to_dict()
        assert data["device"]["type"] == "cuda"
        for row in data["results"]:
            _check_row(row, data["mac_ratio"])


def test_bench_onnxruntime_json_keys(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    args = ["bench", str(_write_config(tmp_path)), "--runtime", "onnxruntime", "--device", "cpu"]
    args += ["--batch-size", "2", "--threads", "1", "--repeats", "2", "--warmup", "0"]
    args += ["--min-sample-ms", "0", "-o", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["runtime"] == "onnxruntime" and data["threads"] == 1 and data["batch_size"] == 2
    row = data["results"][0]
    assert data["dense_ms"] == row["dense_ms"] and data["lowrank_ms"] == row["low_rank_ms"]
    assert data["speedup"] == pytest.approx(data["dense_ms"] / data["lowrank_ms"])
    assert data["mac_ratio"] == row["mac_ratio"]
    assert set(row["forms"]["forms"]) == set(_config().layers)
    assert row["forms"]["chosen"] in ("per-layer", "all dense", "all factorized")


def test_bench_onnxruntime_not_installed_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    args = ["bench", str(_write_config(tmp_path)), "--runtime", "onnxruntime"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: package 'onnxruntime' is not installed") and "\n" not in err


def test_bench_onnxruntime_needs_float32_cpu() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(RankSearchError, match="float32"):
        bench_config(_config(), BenchOptions(runtime="onnxruntime", dtype="bfloat16", **TINY))
