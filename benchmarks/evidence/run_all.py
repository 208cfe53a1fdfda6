"""The whole evidence suite in one command: searches, exports, uniform baselines, full trainings,
tables and the search-efficiency plot. Resumable: run the same command again after a kill.

    python benchmarks/evidence/run_all.py --profile cpu --extract ../shared/data/cifar10-jpeg \\
        --out runs/evidence-cpu
    python benchmarks/evidence/run_all.py --profile gpu --data imagefolder:/tmp/cifar10-jpeg
    python benchmarks/evidence/run_all.py --smoke      # builtin digits, a few minutes, not evidence

Steps (every piece is skipped when its output exists, resumed when it was cut off):

1. searches, one at a time (``rank-search search`` in a subprocess; each uses the profile's
   trial concurrency): the shipped ResNet-20 study at every exp2 budget (seed 0), then for every
   exp3 search seed ASHA + TPE at 0.50 (seed 0 *is* the exp2 r20-0.50 search) and random
   sampling without early stopping, capped at the ASHA search's trial CPU/GPU time;
2. configs: each search's best within its budget (``rank-search export``) and the uniform-ratio
   Tucker-2 config at the searched config's MACs (within 1%); the exp2 searched configs are copied
   to ``benchmarks/configs/<case>.json`` (smoke: ``OUT/benchmark-configs/``);
3. full trainings (``rank-search train`` subprocesses, ``--jobs`` at a time, ``OMP_NUM_THREADS``
   from the profile): dense, searched and uniform with every seed (searched and uniform share
   seed, split and data order: paired), and each exp3 search's best with its search seed (a run
   with the same config and seed as another is trained once);
4. ``OUT/RESULTS.md`` (tables ready to paste into ``benchmarks/RESULTS.md``, settings and
   commands), ``OUT/results.json`` (every number and setting) and ``OUT/search-efficiency.png``.

Every search folder keeps its resolved ``study.yaml``; every training run folder its
``train_config.json`` and ``metrics.json`` (data, subset, image size, seed, epochs): each run's
settings sit beside its numbers. ``OUT/settings.json`` holds this command's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common import (
    REPO,
    Arm,
    export_at_budget,
    fmt,
    mean_spread,
    save_config,
    search_cost,
    search_facts,
    search_resources,
    search_status,
    summarize_arm,
    training_table,
    trial_records,
    uniform_at_macs,
)
from exp2_searched_vs_uniform import CASES, Case, search_table
from exp3_search_efficiency import RANDOM, comparison_table, random_trials, search_row
from profiles import PROFILES, Profile

from rank_search._io import atomic_write_json, atomic_write_text

EXP3_CASE = "r20-0.50"  # exp3 compares searches at this case's budget and study


# --- settings -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; unset values come from the profile."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="scale (profiles.py)")
    p.add_argument("--smoke", action="store_true", help="same as --profile smoke")
    p.add_argument("--data", help="data SPEC (default: the profile's, or the --extract folder)")
    p.add_argument(
        "--extract",
        type=Path,
        metavar="DIR",
        help="folder with train.tar.gz and test.tar.gz: extract into OUT/data",
    )
    p.add_argument("--out", type=Path, help="results folder (default runs/evidence-<profile>)")
    p.add_argument("--jobs", type=int, help="full trainings at once (default: the profile's)")
    p.add_argument("--seeds", type=int, nargs="+", help="full-training seeds (default: the profile's)")
    p.add_argument("--configs-dir", type=Path, help="where the searched configs are copied")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra study override")
    p.add_argument("--dry-run", action="store_true", help="print the plan of searches and stop")
    args = p.parse_args(argv)
    if args.smoke:
        args.profile = "smoke"
    profile = PROFILES[args.profile]
    args.out = (args.out or REPO / "runs" / f"evidence-{profile.name}").resolve()
    if args.configs_dir is None:
        smoke = profile.name == "smoke"
        args.configs_dir = args.out / "benchmark-configs" if smoke else REPO / "benchmarks" / "configs"
    args.jobs = args.jobs or profile.jobs
    if args.seeds:
        profile = replace(profile, seeds=tuple(args.seeds))
    args.scale = profile  # the profile with the command line's changes
    if args.extract is not None:
        args.data = f"imagefolder:{extract(args.extract, args.out / 'data')}"
    args.data = args.data or profile.data
    return args


def extract(archives: Path, dest: Path) -> Path:
    """Extract ``train.tar.gz`` and ``test.tar.gz`` of ``archives`` into ``dest`` once."""
    for split in ("train", "test"):
        done = dest / f".{split}-extracted"
        if done.exists():
            continue
        print(f"extracting {archives / f'{split}.tar.gz'} -> {dest}", flush=True)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives / f"{split}.tar.gz") as tar:
            tar.extractall(dest, filter="data")
        done.touch()
    return dest


def child_env(profile: Profile) -> dict[str, str]:
    """Environment of every subprocess: this checkout first on PYTHONPATH, the profile's threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if profile.threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(profile.threads)
    return env


@contextlib.contextmanager
def stop_on_exit(children: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """On any exit through an exception (a failure, Ctrl-C, SIGTERM: see :func:`main`), interrupt
    the still-running ``children`` (SIGINT: a search stops its Ray trials and saves its state), wait
    up to a minute, then kill; so the next run of the same command resumes cleanly."""
    try:
        yield children
    except BaseException:
        alive = [c for c in children if c.poll() is None]
        for child in alive:
            child.send_signal(signal.SIGINT)
        deadline = time.time() + 60.0
        for child in alive:
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
        raise


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}; run the same command again to resume")


def prime_data_cache(args: argparse.Namespace, profile: Profile, env: dict[str, str]) -> None:
    """Decode the image folder once (one-epoch run on 100 images, ``OUT/prime-cache``) so the two
    first search trials do not both decode 60k JPEGs; a bad ``--data`` fails here, early."""
    marker = args.out / "prime-cache" / "metrics.json"
    if not args.data.startswith("imagefolder:") or marker.exists():
        return
    print("decoding the data set once (cached for every later run)", flush=True)
    flags = ["--image-size", str(profile.image_size)] if profile.image_size is not None else []
    cmd = [sys.executable, "-m", "rank_search", "train", "--model", "resnet20", "--data", args.data]
    cmd += ["-o", str(marker.parent), "--force", "--quiet", "--epochs", "1", "--device", "cpu"]
    cmd += [*flags, "--max-train-samples", "100"]
    subprocess.run(cmd, check=True, env=env)


# --- searches -----------------------------------------------------------------------------------


def study_sets(args: argparse.Namespace, profile: Profile, fraction: float, seed: int) -> list[str]:
    """Overrides of one search: data, budget, seed, the profile's, then the user's."""
    return [f"data={args.data}", f"budget={fraction}", f"seed={seed}", *profile.search_sets, *args.set]


def run_search(study: Path, out_dir: Path, sets: list[str], env: dict[str, str]) -> Path:
    """Run, resume or reuse one search through ``rank-search search`` (log beside it)."""
    status = search_status(out_dir)
    if status == "finished":
        print(f"reusing finished search {out_dir}", flush=True)
        return out_dir
    cmd = [sys.executable, "-m", "rank_search", "search", str(study), "-o", str(out_dir)]
    cmd += [a for s in sets for a in ("--set", s)] + (["--resume"] if status is not None else [])
    print(f"search -> {out_dir}", flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{out_dir.name}.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with stop_on_exit([proc]):
            if proc.wait() != 0:
                raise SystemExit(f"search {out_dir} failed (exit {proc.returncode}); see {out_dir}.log")
    return out_dir


@dataclass
class Searches:
    """Folders of every search of the suite."""

    cases: dict[str, Path]
    asha: dict[int, Path]
    random: dict[int, Path]


def run_searches(args: argparse.Namespace, profile: Profile, env: dict[str, str]) -> Searches:
    """exp2's searches (seed 0, one per case), then exp3's (ASHA + TPE and random per seed)."""
    cases = [c for c in CASES if c.name in profile.cases]
    root = args.out / "search"
    found = Searches({}, {}, {})
    for case in cases:
        found.cases[case.name] = run_search(
            case.study, root / case.name, study_sets(args, profile, case.fraction, 0), env
        )
    exp3 = next(c for c in CASES if c.name == EXP3_CASE)
    for seed in profile.search_seeds:
        sets = study_sets(args, profile, exp3.fraction, seed)
        asha = found.cases.get(exp3.name) if seed == 0 else None
        found.asha[seed] = asha or run_search(exp3.study, root / f"asha-tpe-seed{seed}", sets, env)
        count = random_trials(found.asha[seed])
        rand_sets = [*sets, *RANDOM, f"trials={count}"]
        found.random[seed] = run_search(exp3.study, root / f"random-seed{seed}", rand_sets, env)
    return found


# --- configs and trainings ----------------------------------------------------------------------


@dataclass
class Run:
    """One full training: an arm (config file or dense model) with one seed."""

    arm: Arm
    seed: int

    def key(self) -> str:
        """Identity of what is trained: the config's content without its provenance (or the model
        name) and the seed. A search that exports its uniform starting point and the uniform
        config at the same MACs differ only in provenance: one training serves both."""
        if self.arm.model:
            return f"{self.arm.model}:{self.seed}"
        data = json.loads(Path(str(self.arm.config_path)).read_text())
        data.pop("provenance", None)
        what = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        return f"{what}:{self.seed}"


def case_configs(case: Case, search_dir: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """The searched config (exported; copied to ``--configs-dir``), the uniform one at its MACs,
    and the search's facts."""
    from rank_search.config import load_rank_config

    configs = args.out / "configs"
    searched = configs / f"{case.name}-searched.json"
    if not searched.exists():
        export_at_budget(search_dir, case.fraction, searched)
    config = load_rank_config(searched)
    save_config(config, args.configs_dir / f"{case.name}.json")
    uniform = configs / f"{case.name}-uniform.json"
    if not uniform.exists():
        assert config.cost is not None
        base = uniform_at_macs(
            case.study, case.model, config.model.num_classes, config.input_size, config.cost.macs
        )
        save_config(base, uniform)
    facts = {"case": case.name, "budget": case.fraction, **search_facts(search_dir, case.fraction)}
    return searched, uniform, facts


def train_command(run: Run, run_dir: Path, args: argparse.Namespace, profile: Profile) -> list[str]:
    """``rank-search train`` of one run (``--resume`` after a checkpoint, ``--force`` over debris)."""
    cmd = [sys.executable, "-m", "rank_search", "train"]
    cmd += [str(run.arm.config_path)] if run.arm.config_path else ["--model", str(run.arm.model)]
    cmd += ["--data", args.data, "-o", str(run_dir), "--quiet", *profile.data_options()]
    cmd += ["--epochs", str(profile.epochs), "--batch-size", str(profile.batch_size), "--lr", str(profile.lr)]
    cmd += [
        "--seed",
        str(run.seed),
        "--device",
        profile.device,
        "--checkpoint-every",
        str(profile.checkpoint_every),
    ]
    if (run_dir / "checkpoint.pt").exists():
        cmd.append("--resume")
    elif run_dir.exists():
        cmd.append("--force")
    return cmd


def train_all(
    runs: list[Run], args: argparse.Namespace, profile: Profile, env: dict[str, str]
) -> dict[str, Path]:
    """Train every run not finished yet, ``args.jobs`` at a time; returns run key -> run folder."""
    folders: dict[str, Path] = {}
    todo: list[tuple[list[str], Path]] = []
    for run in runs:
        key = run.key()
        if key in folders:
            continue
        run_dir = args.out / "train" / run.arm.label / f"seed{run.seed}"
        folders[key] = run_dir
        if not (run_dir / "metrics.json").exists():
            todo.append((train_command(run, run_dir, args, profile), run_dir))
    running: list[tuple[subprocess.Popen[bytes], Path, Any]] = []
    with stop_on_exit([]) as children:
        _train_pool(todo, running, children, args.jobs, env)
    return folders


def _train_pool(
    todo: list[tuple[list[str], Path]],
    running: list[tuple[subprocess.Popen[bytes], Path, Any]],
    children: list[subprocess.Popen[bytes]],
    jobs: int,
    env: dict[str, str],
) -> None:
    """Start ``todo`` commands ``jobs`` at a time (registered in ``children``) until all ended."""
    while todo or running:
        while todo and len(running) < jobs:
            cmd, run_dir = todo.pop(0)
            print(f"training -> {run_dir}", flush=True)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(run_dir.parent / f"{run_dir.name}.log", "a", encoding="utf-8")  # noqa: SIM115
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            children.append(proc)
            running.append((proc, run_dir, log))
        time.sleep(1.0)
        for item in [r for r in running if r[0].poll() is not None]:
            proc, run_dir, log = item
            log.close()
            running.remove(item)
            if not (run_dir / "metrics.json").exists():  # exit 1 (diverged) still writes metrics
                raise SystemExit(f"training {run_dir} failed (exit {proc.returncode}); see {run_dir}.log")


def metrics_of(folder: Path) -> dict[str, Any]:
    """A run's ``metrics.json``."""
    return dict(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))


# --- results ------------------------------------------------------------------------------------


def rows_of(arms: list[Arm], seeds: list[int], folders: dict[str, Path]) -> list[dict[str, Any]]:
    """One summary row per arm over its seeds (see :func:`common.summarize_arm`)."""
    rows = []
    for arm in arms:
        metrics = [metrics_of(folders[Run(arm, s).key()]) for s in seeds]
        by_seed = {
            m["seed"]: None if m.get("test_accuracy") is None else 100.0 * m["test_accuracy"] for m in metrics
        }
        rows.append(
            {
                **summarize_arm(arm, metrics),
                "acc_by_seed": by_seed,
                "run_dirs": [str(folders[Run(arm, s).key()]) for s in seeds],
            }
        )
    return rows


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: test accuracy of every seed, mean ± sample SD."""
    seeds = rows[0]["seeds"] if rows else []
    head = "| config | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
    lines = [head, "|---" * (len(seeds) + 2) + "|"]
    for r in rows:
        accs = " | ".join(f"{a:.2f}" for a in r["test_accs"])
        lines.append(
            f"| {r['config']} | {accs} | "
            f"{fmt(r['test_acc_mean'], '.2f')} ± {fmt(r['test_acc_spread'], '.2f')} |"
        )
    return "\n".join(lines)


def paired(
    rows: dict[str, dict[str, Any]], cases: list[str], dense: dict[str, Any] | None
) -> tuple[str, list[Any]]:
    """Markdown and values: searched - uniform per seed (paired), mean ± SD; searched - dense."""
    lines = [
        "| budget | searched - uniform per seed (points) | mean ± sd | searched - dense (means) |",
        "|---|---|---|---|",
    ]
    values = []
    for case in cases:
        s, u = rows[f"{case}-searched"], rows[f"{case}-uniform"]
        mine, base = s["acc_by_seed"], u["acc_by_seed"]
        both = [k for k, a in mine.items() if a is not None and base.get(k) is not None]
        diffs = [mine[k] - base[k] for k in both]  # a diverged run drops its pair
        mean, sd = mean_spread(diffs)
        vs_dense = s["test_acc_mean"] - dense["test_acc_mean"] if dense else None
        values.append(
            {"case": case, "diffs": diffs, "mean": mean, "sd": sd, "searched_minus_dense": vs_dense}
        )
        lines.append(
            f"| {case} | {', '.join(f'{d:+.2f}' for d in diffs)} | "
            f"{mean:+.2f} ± {sd:.2f} | {fmt(vs_dense, '+.2f')} |"
        )
    return "\n".join(lines), values


def best_curve(search_dir: Path, fraction: float) -> tuple[list[float], list[float | None]]:
    """Best validation accuracy (%) of a fully trained trial so far against cumulative trial device
    minutes, trials in the order they were sampled (stopped trials add time, not accuracy)."""
    res = search_resources(search_dir)
    share = res["gpu"] if res["gpu"] > 0 else res["cpu"]
    records = sorted(trial_records(search_dir), key=lambda r: (r.optuna_trial_number or 0, r.trial_id))
    limit = fraction * records[0].dense_macs * (1 + 1e-9) if records else 0.0
    xs: list[float] = []
    ys: list[float | None] = []
    spent, best = 0.0, None
    for r in records:
        spent += share * r.wall_time_s / 60.0
        if r.status == "completed" and r.val_accuracy is not None and r.macs <= limit:
            best = max(best or 0.0, 100.0 * r.val_accuracy)
        xs.append(spent)
        ys.append(best)
    return xs, ys


def time_to_reach(curve: tuple[list[float], list[float | None]], target: float | None) -> float | None:
    """Device minutes until the curve first reaches ``target`` (None if never)."""
    if target is None:
        return None
    return next((x for x, y in zip(*curve, strict=True) if y is not None and y >= target - 1e-9), None)


def efficiency(searches: Searches, fraction: float) -> tuple[str, list[dict[str, Any]]]:
    """Markdown and values: per seed, when ASHA + TPE reaches random's final best."""
    lines = [
        "| seed | random: final best val % | its time (min) | ASHA + TPE reaches it after (min) | ratio |",
        "|---|---|---|---|---|",
    ]
    values = []
    for seed in searches.asha:
        rand, asha = best_curve(searches.random[seed], fraction), best_curve(searches.asha[seed], fraction)
        target = rand[1][-1] if rand[1] else None
        reach = time_to_reach(asha, target)
        total = rand[0][-1] if rand[0] else None
        ratio = reach / total if reach is not None and total else None
        values.append(
            {
                "seed": seed,
                "random_best": target,
                "random_minutes": total,
                "asha_minutes": reach,
                "ratio": ratio,
            }
        )
        lines.append(
            f"| {seed} | {fmt(target, '.2f')} | {fmt(total, '.1f')} | "
            f"{fmt(reach, '.1f')} | {fmt(ratio, '.2f')} |"
        )
    return "\n".join(lines), values


def plot(searches: Searches, fraction: float, unit: str, path: Path) -> None:
    """Best validation accuracy against trial device time, every exp3 search (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {
        (kind, seed): best_curve(folder, fraction)
        for kind, group in (("ASHA + TPE", searches.asha), ("random, no early stopping", searches.random))
        for seed, folder in group.items()
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (kind, seed), (xs, ys) in curves.items():
        style = "-" if kind.startswith("ASHA") else "--"
        color = "tab:blue" if kind.startswith("ASHA") else "tab:orange"
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if points:
            ax.step(
                *zip(*points, strict=True),
                style,
                where="post",
                color=color,
                alpha=0.5 + 0.5 / (1 + seed),
                label=f"{kind}, seed {seed}",
            )
    ax.set_xlabel(f"cumulative trial {unit} time (minutes)")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title(f"ResNet-20 rank search at {fraction:.2f} of dense MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def script_name() -> str:
    """This script's path relative to the repository (as typed from its root)."""
    path = Path(sys.argv[0]).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def settings_block(args: argparse.Namespace, profile: Profile) -> str:
    """Markdown: the profile's settings and the command."""
    s = asdict(profile)
    return "\n".join(
        [
            f"Command: `python {' '.join([script_name(), *sys.argv[1:]])}`"
            f" (profile `{profile.name}`, data `{args.data}`).",
            "",
            f"Full training: {s['epochs']} epochs, batch {s['batch_size']}, peak lr {s['lr']}, "
            f"image size {s['image_size'] or 'native'}, train+val pool {s['max_train_samples'] or 'all'} "
            f"(val fraction {s['val_fraction']}), seeds {list(s['seeds'])} (paired: same split and data "
            f"order for every config), device {s['device']}, {profile.threads or 'default'} thread(s) per "
            f"process, {args.jobs} at a time. Test split used only after the last epoch.",
            "",
            "Searches (study overrides): `"
            + " ".join(profile.search_sets)
            + "`"
            + (f" plus `{' '.join(args.set)}`" if args.set else "")
            + f"; exp3 search seeds {list(profile.search_seeds)}.",
        ]
    )


def report(
    args: argparse.Namespace,
    profile: Profile,
    searches: Searches,
    folders: dict[str, Path],
    arms: dict[str, Arm],
    started: float,
) -> None:
    """Write ``OUT/RESULTS.md``, ``OUT/results.json`` and ``OUT/search-efficiency.png``."""
    seeds = list(profile.seeds)
    labels = [f"dense-{m}" for m in profile.dense_models]
    labels += [f"{c}-{k}" for c in profile.cases for k in ("uniform", "searched")]
    rows = {r["config"]: r for r in rows_of([arms[label] for label in labels], seeds, folders)}
    dense = rows.get("dense-resnet20")
    paired_md, paired_values = paired(rows, list(profile.cases), dense)
    exp3 = next(c for c in CASES if c.name == EXP3_CASE)
    search_rows = [
        row
        for seed in profile.search_seeds
        for row in (
            search_row("asha+tpe", seed, searches.asha[seed], exp3.fraction),
            search_row("random", seed, searches.random[seed], exp3.fraction),
        )
    ]
    best_arms = [arms[f"{r['search'].replace('+', '-')}-best-seed{r['seed']}"] for r in search_rows]
    trained = [rows_of([arm], [r["seed"]], folders)[0] for arm, r in zip(best_arms, search_rows, strict=True)]
    eff_md, eff_values = efficiency(searches, exp3.fraction)
    unit = search_cost(searches.asha[profile.search_seeds[0]]).unit
    png = args.out / "search-efficiency.png"
    plot(searches, exp3.fraction, unit, png)
    title = f"Evidence on real data ({profile.name} profile)"
    md = "\n\n".join(
        [
            f"## {title}",
            settings_block(args, profile),
            "Device time: CPU time of the training process (wall time x threads) on CPU, GPU time on GPU.",
            "### Dense, uniform and searched: full training\n\n" + training_table(list(rows.values())),
            "### Test accuracy per seed\n\n" + per_seed_table(list(rows.values())),
            "### Paired difference, searched - uniform\n\n" + paired_md,
            "### The searches behind the searched configs\n\n"
            + search_table([r for r in rows.values() if "search_dir" in r]),
            f"### Search efficiency at {exp3.fraction:.2f} of dense MACs: "
            f"ASHA + TPE vs random at equal {unit} time\n\n" + comparison_table(search_rows),
            "Time for ASHA + TPE to reach random search's final best validation accuracy:\n\n" + eff_md,
            "Each search's best, trained in full with its search seed:\n\n" + training_table(trained),
            f"![best validation accuracy against search time]({png.name})",
        ]
    )
    atomic_write_text(args.out / "RESULTS.md", md + "\n")
    payload = {
        "profile": asdict(profile),
        "data": args.data,
        "jobs": args.jobs,
        "command": sys.argv,
        "rows": list(rows.values()),
        "paired": paired_values,
        "searches": search_rows,
        "efficiency": eff_values,
        "search_bests_trained": trained,
        "wall_s": round(time.time() - started, 1),
    }
    atomic_write_json(args.out / "results.json", payload)
    print(f"\n{md}\n\nwrote {args.out / 'RESULTS.md'}, {args.out / 'results.json'} and {png}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the suite (or print its plan with ``--dry-run``)."""
    args = parse_args(argv)
    profile: Profile = args.scale
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    env = child_env(profile)
    started = time.time()
    if args.dry_run:
        print(json.dumps({"profile": asdict(profile), "data": args.data, "out": str(args.out)}, indent=2))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out / "settings.json",
        {
            "profile": asdict(profile),
            "data": args.data,
            "jobs": args.jobs,
            "set": args.set,
            "command": sys.argv,
        },
    )
    prime_data_cache(args, profile, env)
    searches = run_searches(args, profile, env)
    arms: dict[str, Arm] = {f"dense-{m}": Arm(f"dense-{m}", model=m) for m in profile.dense_models}
    for case in [c for c in CASES if c.name in profile.cases]:
        searched, uniform, facts = case_configs(case, searches.cases[case.name], args)
        arms[f"{case.name}-searched"] = Arm(f"{case.name}-searched", config_path=searched, extra=facts)
        extra = {"case": case.name, "budget": case.fraction}
        arms[f"{case.name}-uniform"] = Arm(f"{case.name}-uniform", config_path=uniform, extra=extra)
    exp3 = next(c for c in CASES if c.name == EXP3_CASE)
    for kind, group in (("asha-tpe", searches.asha), ("random", searches.random)):
        for seed, folder in group.items():
            label = f"{kind}-best-seed{seed}"
            path = args.out / "configs" / f"{label}.json"
            if not path.exists():
                export_at_budget(folder, exp3.fraction, path)
            arms[label] = Arm(label, config_path=path, extra={"search_dir": str(folder)})
    runs = [Run(arms[f"dense-{m}"], s) for m in profile.dense_models for s in profile.seeds]
    for seed in profile.seeds:  # paired runs next to each other, so a cut-off run leaves pairs
        runs += [Run(arms[f"{c}-{k}"], seed) for c in profile.cases for k in ("searched", "uniform")]
    runs += [Run(arms[f"{k}-best-seed{s}"], s) for k in ("asha-tpe", "random") for s in profile.search_seeds]
    folders = train_all(runs, args, profile, env)
    report(args, profile, searches, folders, arms, started)


if __name__ == "__main__":
    main()
