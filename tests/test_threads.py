"""The thread policy (rank_search.threads): wait policy in effect in CLI processes, thread counts,
the driver's core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rank_search import threads

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def _spincount(command: list[str], env: dict[str, str]) -> str:
    """libgomp's effective spin count, as it prints it at start-up (OMP_DISPLAY_ENV=VERBOSE)."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    lines = [line for line in result.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, result.stderr[-2000:]
    return lines[0].split("=")[1].strip().strip("'")


def test_the_cli_makes_openmp_threads_sleep_instead_of_spinning() -> None:
    env = _env(OMP_DISPLAY_ENV="VERBOSE")
    plain = _spincount([sys.executable, "-c", "import torch"], env)
    cli = _spincount([sys.executable, "-m", "rank_search", "flops", "resnet20"], env)
    assert plain != "0", "libgomp's default spins; the check below would prove nothing"
    assert cli == "0", "OMP_WAIT_POLICY=PASSIVE did not reach libgomp in the CLI process"


def test_a_wait_policy_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.prepare_process()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and threads.worker_env() == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize(("total", "given"), [(1, 1), (2, 2), (3, 3), (4, 3), (16, 15)])
def test_the_driver_keeps_a_core_from_four_cpus(total: int, given: int) -> None:
    assert threads.ray_cpus(total) == given


def test_use_threads_sets_torch_threads() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert threads.use_threads(None) == threads.available_cpus() == torch.get_num_threads()
        assert threads.thread_report()["torch_threads"] == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_busy_cpus_reads_the_instant_runnable_count() -> None:
    from rank_search.threads import busy_cpus

    reads = iter(["2.0 1.0 0.5 3/90 100", "2.0 1.0 0.5 4/90 100", "2.0 1.0 0.5 3/90 100"])
    assert busy_cpus(lambda: next(reads), samples=3, interval_s=0) == 2  # median 3, less ourselves
    assert busy_cpus(lambda: "1/50", samples=1) == 0  # only ourselves
    assert busy_cpus(lambda: "garbage", samples=1) == 0


@pytest.mark.parametrize(("cpus", "busy", "threads"), [(2, 0, 2), (2, 1, 1), (2, 2, 1), (2, 5, 1), (8, 3, 5)])
def test_auto_threads_leaves_busy_cpus_alone(cpus: int, busy: int, threads: int) -> None:
    from rank_search.threads import auto_threads

    assert auto_threads(cpus, busy) == threads


def test_cgroup_v2_quota_caps_the_cpus(tmp_path: Path) -> None:
    from rank_search.threads import available_cpus, cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_and_no_cgroup(tmp_path: Path) -> None:
    from rank_search.threads import available_cpus, cgroup_cpu_limit

    assert cgroup_cpu_limit(tmp_path) is None  # no files: no limit
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.0 and available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_auto_threads_scales_the_host_wide_load_to_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "busy_cpus", lambda: 16)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert threads.auto_threads(cpus=8) == 6  # 16 busy of 64 host CPUs: 2 of this process's 8
    assert threads.auto_threads(cpus=64) == 48
