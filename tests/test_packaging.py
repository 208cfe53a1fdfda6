"""A non-editable install ships the studies and spaces and runs the quickstart by name anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps .`` (a real wheel build, not editable) into a private folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    env = {**os.environ, "PIP_NO_INPUT": "1", "TMPDIR": str(build)}
    proc = subprocess.run(
        [*pip, "--target", str(target), str(ROOT)], capture_output=True, text=True, cwd=build, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "rank_search", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_wheel_ships_studies_and_spaces(installed: Path, tmp_path: Path) -> None:
    package = installed / "rank_search"
    assert (package / "builtin_studies" / "quickstart.yaml").is_file()
    assert (package / "builtin_spaces" / "cifar-resnet.yaml").is_file()
    proc = _run(installed, tmp_path, "studies")
    assert proc.returncode == 0 and "quickstart" in proc.stdout, proc.stderr
    where = [sys.executable, "-c", "import rank_search; print(rank_search.__file__)"]
    env = {**os.environ, "PYTHONPATH": str(installed)}
    check = subprocess.run(where, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert check.stdout.strip().startswith(str(installed))


@pytest.mark.slow
def test_installed_quickstart_runs_by_name_from_another_folder(installed: Path, tmp_path: Path) -> None:
    small = ["trials=2", "epochs_per_trial=2", "asha.enabled=false", "data_options.max_train_samples=200"]
    overrides = [arg for item in small for arg in ("--set", item)]
    proc = _run(installed, tmp_path, "search", "quickstart", "-o", "runs/q", *overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "runs" / "q"
    manifest = json.loads((out / "search.json").read_text())
    assert manifest["status"] == "finished"
    assert (out / "best.json").is_file()
