"""CLI: models, layers, flops and the clean error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rank_search.cli import main


def test_flops_json_for_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "resnet20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == 40_551_040
    assert len(data["layers"]) == 20
    assert data["layers"][0]["name"] == "conv1"


def test_flops_for_config_and_layers_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "format": "rank-search/rank-config",
        "version": 1,
        "model": {"name": "resnet20", "num_classes": 10},
        "input_size": [3, 32, 32],
        "layers": {"layer1.0.conv1": {"format": "tucker2", "rank_in": 8, "rank_out": 8}},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["flops", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    hw = 32 * 32
    assert data["macs"] == 40_551_040 - hw * 16 * 16 * 9 + hw * (16 * 8 + 8 * 8 * 9 + 8 * 16)
    assert main(["layers", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "rank_in<=64" in out
    assert main(["models", "resnet*"]) == 0
    assert "resnet110" in capsys.readouterr().out


def test_bad_input_exits_cleanly_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "rank-search/rank-config", "version": 1}')
    proc = subprocess.run(
        [sys.executable, "-m", "rank_search", "flops", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "key 'model'" in proc.stderr and "missing" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "rank_search", "layers", "resnet21"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "resnet20" in proc.stderr and "Traceback" not in proc.stderr


def test_models_match_substrings_and_globs() -> None:
    from rank_search.models import list_models

    found = list_models("resnet")
    assert {"resnet20", "resnet110", "resnet18", "wide_resnet50_2"} <= set(found)
    assert list_models("ResNet2") == ["resnet20"]  # case-insensitive substring
    assert list_models("resnet?0") == ["resnet20", "resnet50"]
    assert list_models("no-such-model") == []


def test_torchvision_models_default_to_their_own_classes(capsys: pytest.CaptureFixture[str]) -> None:
    from rank_search.models import create_model, default_num_classes

    assert default_num_classes("resnet20") == 10 and default_num_classes("resnet18") == 1000
    assert create_model("resnet18").fc.out_features == 1000
    assert create_model("resnet18", num_classes=10).fc.out_features == 10
    assert main(["flops", "resnet18", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 11_689_512


def test_shipped_studies_and_spaces_are_listed_and_found_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from rank_search.search.study import find_named_file, shipped_files

    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "resnet20-cifar10" in out
    assert main(["spaces"]) == 0
    assert "cifar-resnet" in capsys.readouterr().out
    names = {path.stem for path in shipped_files("spaces")}
    assert {"cifar-resnet", "mobilenet-v2"} <= names
    found = find_named_file("quickstart", "studies")
    assert found is not None and found.name == "quickstart.yaml"
    assert find_named_file("quickstart.yaml", "studies") == found
    assert find_named_file("nope", "studies") is None
