"""One folder, one kind of result: search and train refuse each other's folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rank_search._rundir import folder_kind, refuse_other_kind
from rank_search.errors import ConfigError


def test_folder_kind_by_markers(tmp_path: Path) -> None:
    assert folder_kind(tmp_path) is None
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert folder_kind(tmp_path) == "train"
    refuse_other_kind(tmp_path, "train")
    with pytest.raises(ConfigError, match="rank-search train"):
        refuse_other_kind(tmp_path, "search")
    refuse_other_kind(tmp_path / "missing", "search")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rank_search", *args], capture_output=True, text=True)


def test_search_refuses_a_training_run_folder(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ((), ("--resume",)):
        proc = _cli("search", "quickstart", "-o", str(tmp_path), *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert str(tmp_path) in proc.stderr and "metrics.json" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_refuses_a_search_folder(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(
        '{"format": "rank-search/rank-config", "version": 1, "model": {"name": "resnet20", '
        '"num_classes": 10}, "input_size": [3, 16, 16], "layers": {}}'
    )
    out = tmp_path / "search"
    out.mkdir()
    (out / "search.json").write_text("{}")
    for extra in ((), ("--force",)):
        proc = _cli("train", str(config), "--data", "builtin", "-o", str(out), *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "search.json" in proc.stderr and "rank-search search" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["search.json"]
