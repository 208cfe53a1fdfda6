"""Soak (issue 21): a long tiny search with one trial worker SIGKILLed every ``--kill-every`` trials.

    python benchmarks/soak.py --trials 200 --kill-every 20 --out /tmp/rank-search-soak

Runs ``rank-search search studies/quickstart.yaml`` (the CLI, as a child process) on the built-in
digits with one-epoch trials of 64 images (ASHA off, at-budget mode, ``--concurrency`` at a
time) and watches ``DIR/trials``. Each time ``--kill-every`` more trials have ended it SIGKILLs
one trial's worker process: a trial whose record says ``running``, picked at random, found by the
``pid`` in its record and killed only if that process descends from the driver this script
started (no other process is ever signalled). Then it prints:

* trials lost: planned trials with no final record (the search must still finish all of them);
* trials duplicated: Optuna trial numbers with more than one record, and Optuna trials beyond the
  planned number;
* records that disagree with Optuna (state, or value of a completed trial);
* kills made (one each time 20 more trials ended while trials remain: 9 for 200), and trials
  recorded ``failed`` (each kill should fail exactly one trial);
* wall time, and the driver's resident memory (VmRSS of the driver process) after the first trial
  ended and at the last sample before it exited, with the ratio end/start against ``--rss-bound``
  (default 1.5: the driver keeps no per-trial state that grows without bound), and the RSS each
  time 20 more trials had ended (growth that levels off is warm-up; steady growth is a leak).

Exit status 0 when nothing was lost or duplicated, records and Optuna agree, every kill failed
one trial and the RSS ratio is within the bound; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.processes import descends_from  # noqa: E402  (also the fault tests')


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scan(trials_dir: Path) -> dict[str, dict[str, Any]]:
    """Readable records by trial id (a record being replaced is skipped this round)."""
    found = {}
    for path in trials_dir.glob("*.json"):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


FINAL = ("completed", "stopped", "failed", "diverged")


def soak(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"trials={args.trials}",
        "epochs_per_trial=1",
        "mode=at_budget",
        "asha.enabled=false",
        f"resources.concurrency={args.concurrency}",
        "resources.cpu=1",
        "data_options.max_train_samples=64",
        "train.batch_size=64",
    ]
    command = [sys.executable, "-m", "rank_search", "search", args.study, "-o", str(out)]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(args.seed)
    log_path = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    kills: list[dict[str, Any]] = []
    rss_start = rss_end = None
    curve: dict[int, float] = {}  # driver RSS (MiB) when the first trial and each 20th ended
    start = time.perf_counter()
    with log_path.open("wb") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        next_kill = args.kill_every
        while driver.poll() is None:
            records = scan(out / "trials")
            ended = sum(r.get("status") in FINAL for r in records.values())
            rss = rss_mib(driver.pid)
            if rss is not None:
                rss_end = rss
                if rss_start is None and ended >= 1:
                    rss_start = rss
                mark = 1 if ended < 20 else ended // 20 * 20
                if ended >= 1 and mark not in curve:
                    curve[mark] = round(rss, 1)
            if args.kill_every and ended >= next_kill and next_kill < args.trials:
                running = [r for r in records.values() if r.get("status") == "running" and r.get("pid")]
                rng.shuffle(running)
                for record in running:
                    pid = int(record["pid"])
                    if descends_from(pid, driver.pid):
                        os.kill(pid, signal.SIGKILL)
                        kills.append({"trial_id": record["trial_id"], "pid": pid, "after": ended})
                        next_kill += args.kill_every
                        break
            time.sleep(0.05)
    wall = time.perf_counter() - start
    summary = summarize(out, args, driver.returncode, wall, kills, rss_start, rss_end, log_path)
    summary["driver_rss_mib_by_trials_ended"] = curve
    return summary


def summarize(
    out: Path,
    args: argparse.Namespace,
    code: int,
    wall: float,
    kills: list[dict[str, Any]],
    rss_start: float | None,
    rss_end: float | None,
    log_path: Path,
) -> dict[str, Any]:
    import optuna

    from rank_search.search.records import read_records
    from rank_search.search.runner import open_storage

    manifest = json.loads((out / "search.json").read_text())
    records = read_records(out)
    numbers = [r.optuna_trial_number for r in records]
    final = [r for r in records if r.status in FINAL]
    study = optuna.load_study(study_name=manifest["study_name"], storage=open_storage(manifest["storage"]))
    by_number = {t.number: t for t in study.trials}
    expected = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL", "diverged": "FAIL"}
    disagree = []
    for record in records:
        trial = by_number.get(record.optuna_trial_number)  # type: ignore[arg-type]
        same_state = trial is not None and trial.state.name == expected.get(record.status)
        value_off = trial is not None and abs((trial.value or 0) - (record.val_accuracy or 0)) > 1e-9
        if not same_state or (record.status == "completed" and value_off):
            disagree.append(record.trial_id)
    killed = {k["trial_id"] for k in kills}
    failed = {r.trial_id for r in records if r.status == "failed"}
    ratio = rss_end / rss_start if rss_start and rss_end else float("nan")
    summary = {
        "exit_code": code,
        "status": manifest["status"],
        "planned": args.trials,
        "records_final": len(final),
        "lost": args.trials - len({r.optuna_trial_number for r in final}),
        "duplicated": len(numbers) - len(set(numbers)) + max(0, len(by_number) - args.trials),
        "disagree_with_optuna": len(disagree),
        "kills": len(kills),
        "failed": len(failed),
        "kills_that_failed_their_trial": len(killed & failed),
        "wall_s": round(wall, 1),
        "driver_rss_start_mib": round(rss_start or float("nan"), 1),
        "driver_rss_end_mib": round(rss_end or float("nan"), 1),
        "rss_end_over_start": round(ratio, 3),
        "rss_bound": args.rss_bound,
        "log": str(log_path),
    }
    summary["ok"] = bool(
        code == 0
        and summary["status"] == "finished"
        and summary["lost"] == 0
        and summary["duplicated"] == 0
        and not disagree
        and killed <= failed
        and ratio <= args.rss_bound
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--kill-every", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--out", default="/tmp/rank-search-soak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-bound", type=float, default=1.5)
    args = parser.parse_args()
    summary = soak(args)
    print("soak:", json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
