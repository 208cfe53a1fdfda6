"""``rank-search train``: train a rank config (or a dense / DPRP model) into a run folder, from scratch or
from trained weights (``--init-from``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DESCRIPTION = """\
Train CONFIG.json (a rank config) from scratch, or a model by name with --model (dense baseline;
with --dprp a full-rank SVD model whose ranks shrink during training). Writes RUN_DIR/metrics.json,
model.pt, config.json, train_config.json and checkpoint.pt. A finished RUN_DIR is not overwritten
without --force; an unfinished one needs --resume (continue, same settings) or --force.
With --init-from WEIGHTS the model starts from trained weights: CONFIG's layers are decomposed
at their ranks and BatchNorm is recalibrated, then fine-tuned (state the checkpoint's input
normalization with --mean/--std).
Exit status: 0 completed, 1 diverged, 2 bad input."""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a rank config from scratch",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", type=Path, help="rank-config JSON (or use --model)")
    p.add_argument("--model", help="train this registry model (dense, or SVD with --dprp) instead of CONFIG")
    p.add_argument(
        "--data", default="builtin", help="builtin | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT"
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="overwrite whatever run RUN_DIR holds")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_train_flags(p.add_argument_group("training"))
    add_init_flags(p.add_argument_group("warm start (compress a trained model)"))
    _add_data_flags(p.add_argument_group("data"))
    _add_dprp_flags(p.add_argument_group("DPRP (dynamic rank pruning of SVD layers)"))
    p.set_defaults(run=run_train)


def _add_train_flags(g: Any) -> None:
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--speedup", default="none", choices=("none", "compile", "cudagraphs"), help="CUDA only")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--no-channels-last", action="store_true")
    g.add_argument("--rank-multiple", type=int, default=1, help="round ranks up to a multiple of this")
    g.add_argument(
        "--regularizer-decay",
        choices=("constant", "cosine", "step"),
        help="override the config's regularizer schedule",
    )
    g.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0: end only)")
    g.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: the free CPUs at start)",
    )
    g.add_argument("--epoch-steps", type=int, help="at most this many optimizer steps per epoch")


def add_init_flags(g: Any) -> None:
    """Flags of a warm start from trained weights (train and compress)."""
    g.add_argument(
        "--init-from",
        metavar="WEIGHTS",
        help="trained weights to start from (run folder, state-dict or checkpoint file)",
    )
    g.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rename a key prefix of the weights (repeatable), e.g. linear=fc",
    )
    g.add_argument(
        "--bn-images", type=int, default=2048, help="training images that recalibrate BatchNorm (0: none)"
    )


def _add_data_flags(g: Any) -> None:
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--max-train-samples", type=int, help="train on a stratified subset")
    g.add_argument("--image-size", type=int, help="imagefolder: resize to this size")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers (streamed image folders)")
    g.add_argument("--cache-dir", type=Path, help="decoded-dataset cache (default ~/.cache/rank-search)")
    g.add_argument(
        "--mean", type=float, nargs="+", help="input normalization mean per channel ([0, 1] pixels)"
    )
    g.add_argument("--std", type=float, nargs="+", help="input normalization std per channel")


def data_options(args: argparse.Namespace) -> Any:
    """The :class:`DataOptions` of the data flags."""
    from ..data import DataOptions

    return DataOptions(
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        workers=args.workers,
        max_train_samples=args.max_train_samples,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
    )


def _add_dprp_flags(g: Any) -> None:
    g.add_argument("--dprp", action="store_true", help="train with DPRP (config layers in svd format)")
    g.add_argument("--dprp-energy", type=float, default=0.99, help="fraction of sum(s^2) each layer keeps")
    g.add_argument("--dprp-structure-weight", type=float, default=1e-3)
    g.add_argument("--dprp-compression-weight", type=float, default=1e-3)
    g.add_argument("--dprp-compression", choices=("hoyer", "l1"), default="hoyer")
    g.add_argument("--dprp-every", type=int, default=1, help="prune every N epochs")
    g.add_argument("--dprp-start", type=int, default=1, help="first epoch after which to prune")


def _train_config(args: argparse.Namespace) -> Any:
    from ..train import DPRPConfig, TrainConfig

    dprp = None
    if args.dprp:
        dprp = DPRPConfig(
            structure_weight=args.dprp_structure_weight,
            compression_weight=args.dprp_compression_weight,
            compression=args.dprp_compression,
            energy=args.dprp_energy,
            prune_every=args.dprp_every,
            start_epoch=args.dprp_start,
        )
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        channels_last=not args.no_channels_last,
        speedup=args.speedup,
        rank_multiple=args.rank_multiple,
        regularizer_decay=args.regularizer_decay,
        eval_test=True,
        checkpoint_every=args.checkpoint_every,
        dprp=dprp,
        epoch_steps=args.epoch_steps,
        **init_fields(args),
    )


def init_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of the warm-start flags."""
    from ..trained import parse_rename

    init_from = None if args.init_from is None else str(Path(args.init_from).expanduser().resolve())
    return {
        "init_from": init_from,
        "init_rename": parse_rename(args.rename, "--rename"),
        "bn_recalibration_images": args.bn_images,
    }


def run_train(args: argparse.Namespace) -> int:
    from ..threads import auto_threads, available_cpus, use_threads
    from ..train.run import TrainJob, run_training

    if (args.config is None) == (args.model is None):
        raise ConfigError("give either CONFIG.json or --model NAME (not both)", key="config")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"must be at least 1, got {args.threads}", key="--threads")
    threads = args.threads if args.threads is not None else auto_threads()
    if args.threads is None and threads < available_cpus():
        print(f"threads: {threads} of {available_cpus()} CPUs (the others are busy; --threads N to choose)")
    use_threads(threads)
    options = data_options(args)
    job = TrainJob(
        args.output,
        _train_config(args),
        data_spec=args.data,
        data_options=options,
        config_path=args.config,
        model=args.model,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
    )
    result = run_training(job)
    _report(result, args.output)
    return 0 if result.status != "diverged" else 1


def _report(result: Any, run_dir: Path) -> None:
    if result.status == "diverged":
        print(f"error: {result.message}; metrics in {run_dir / 'metrics.json'}", file=sys.stderr)
        return
    acc = "-" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
    share = 100 * result.macs / result.dense_macs if result.dense_macs else 100.0
    print(
        f"{result.status}: test accuracy {acc} after {result.epochs} epochs; {result.macs:,} MACs "
        f"({share:.1f}% of dense), {result.params:,} params, {result.wall_time_s:.1f} s -> {run_dir}"
    )
