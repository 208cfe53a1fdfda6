"""Warm trials in a real Ray search: the compress workflow on the built-in digits (slow lane)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rank_search.cli import main
from rank_search.models import create_model
from rank_search.search.records import read_records
from rank_search.search.study import load_study
from tests.fixtures.weights import randomize_bn_and_scales


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "trained.pt"
    torch.save(randomize_bn_and_scales(create_model("resnet20", seed=0), 0).state_dict(), path)
    return path


def test_study_init_trained_becomes_the_trials_warm_start(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    study_file = tmp_path / "s.yaml"
    base = {"model": "resnet20", "data": "builtin", "space": "cifar-resnet", "budget": 0.5}
    study_file.write_text(
        yaml.safe_dump({**base, "init": {"weights": "trained.pt", "rename": {"linear": "fc"}}})
    )
    study = load_study(study_file)
    assert study.train["init_from"] == str(weights.resolve())
    assert study.train["init_rename"] == {"linear": "fc"}
    study_file.write_text(yaml.safe_dump({**base, "init": {"weights": "missing.pt"}}))
    with pytest.raises(Exception, match=r"key 'init.weights': no such weights file"):
        load_study(study_file)
    study_file.write_text(yaml.safe_dump({**base, "init": {"from": "scratch", "weights": "trained.pt"}}))
    with pytest.raises(Exception, match="need from: trained"):
        load_study(study_file)


@pytest.mark.slow
def test_compress_with_a_warm_search(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    weights = _weights(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "compress", str(weights), "--model", "resnet20", "--budget", "0.4", "--data", "builtin",
            "-o", str(out), "--max-levels", "2", "--sensitivity-images", "64", "--bn-images", "64",
            "--trials", "4", "--trial-epochs", "2", "--trial-steps", "3", "--val-fraction", "0.2",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = read_records(out / "search")
    assert len(records) == 4 and all(r.status in ("completed", "stopped") for r in records)
    tags = sorted(t for r in records for t in r.tags)
    assert {"uniform", "energy", "sensitivity"} <= set(tags)
    report = json.loads((out / "compress.json").read_text())
    assert report["chosen_by"].startswith("search") and Path(report["chosen"]).is_file()
    assert all(r.macs <= report["budget_macs"] for r in records)
    study = yaml.safe_load((out / "search" / "study.yaml").read_text())
    assert study["train"]["init_from"] == str(weights.resolve()) and study["train"]["epoch_steps"] == 3
