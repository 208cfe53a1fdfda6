"""``rank-search compress``: a trained model in, a smaller fine-tuned model out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DESCRIPTION = """\
Compress the trained WEIGHTS (a run folder, a state-dict or checkpoint file; read with
weights_only=True) of --model to --budget (a fraction of the dense MACs, or absolute MACs):
1. the allocation baselines at the budget, on the search space's rank levels: uniform, spectral
   energy (BALF-style knapsack) and measured sensitivity (AIMET-style, cached in
   OUT/sensitivity.json), each scored zero-shot and after BatchNorm recalibration;
2. with --trials N > 0, a search of warm trials (decompose, recalibrate BN, fine-tune
   --trial-steps steps per epoch, ASHA) started from the baselines;
3. with --epochs E > 0, the chosen config fine-tuned for E epochs (OUT/finetuned, a run folder
   that export-model ships).
Writes OUT/allocations/METHOD.json, OUT/compress.json (every method side by side) and
OUT/allocations.png. State the normalization the checkpoint was trained with (--mean/--std).
Latency budgets are not supported here yet (use a search study with init: trained)."""


def add_parsers(sub: Any) -> None:
    from .train import _add_data_flags

    p = sub.add_parser(
        "compress",
        help="compress a trained model: allocation baselines, warm search, fine-tune",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", help="trained weights: run folder, state-dict or checkpoint file")
    p.add_argument("--model", required=True, help="registry model the weights belong to")
    p.add_argument("--budget", type=float, required=True, help="fraction of dense MACs (<= 1) or MACs")
    p.add_argument(
        "--data", default="builtin", help="builtin | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT"
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="results folder")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a key prefix")
    p.add_argument("--space", default="cifar-resnet", help="search space (name or YAML path)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["uniform", "energy", "sensitivity"],
        choices=["uniform", "energy", "sensitivity"],
        help="allocation baselines to compute",
    )
    p.add_argument("--max-levels", type=int, default=12, help="rank levels per unit the baselines consider")
    p.add_argument("--bn-images", type=int, default=2048, help="training images that recalibrate BatchNorm")
    p.add_argument(
        "--sensitivity-images", type=int, default=1000, help="validation images per sensitivity probe"
    )
    p.add_argument("--trials", type=int, default=0, help="warm search trials (0: pick the best baseline)")
    p.add_argument("--trial-epochs", type=int, default=3, help="epochs per trial (ASHA rungs)")
    p.add_argument("--trial-steps", type=int, default=40, help="fine-tuning steps per trial epoch")
    p.add_argument("--epochs", type=int, default=0, help="final fine-tuning epochs of the chosen config")
    p.add_argument("--lr", type=float, default=0.01, help="final fine-tuning peak learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--onnx", action="store_true", help="export the fine-tuned model to OUT/model.onnx")
    _add_data_flags(p.add_argument_group("data"))
    p.set_defaults(run=run_compress_cli)


def run_compress_cli(args: argparse.Namespace) -> int:
    from ..compress import CompressJob, run_compress
    from ..trained import parse_rename
    from .train import data_options

    for flag in ("trials", "epochs", "bn_images", "max_levels", "sensitivity_images"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"must be >= 0, got {getattr(args, flag)}", key=f"--{flag.replace('_', '-')}")
    options = data_options(args)
    data_opts = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(options).items()
        if v is not None and k != "cache_dir"
    }
    finetune = {}
    if args.epochs > 0:
        finetune = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "warmup_epochs": 0.1,
                    "label_smoothing": 0.0}  # fmt: skip
    job = CompressJob(
        weights=str(Path(args.weights).expanduser().resolve()),
        model=args.model,
        budget=args.budget,
        data=args.data,
        out_dir=args.output,
        rename=parse_rename(args.rename, "--rename"),
        data_options=data_opts,
        space=args.space,
        methods=tuple(args.methods),
        max_levels=max(args.max_levels, 2),
        bn_images=args.bn_images,
        sensitivity_val_images=max(args.sensitivity_images, 1),
        trials=args.trials,
        trial_epochs=args.trial_epochs,
        trial_steps=args.trial_steps,
        finetune=finetune,
        seed=args.seed,
        onnx=args.onnx,
    )
    if args.onnx and args.epochs == 0:
        raise ConfigError("--onnx exports the fine-tuned model: give --epochs N > 0", key="--onnx")
    report = run_compress(job)
    print(f"chosen: {report['chosen']} ({report['chosen_by']})")
    if "finetuned" in report:
        ft = report["finetuned"]
        print(f"fine-tuned: test accuracy {100 * (ft['test_accuracy'] or 0):.2f}% -> {ft['run']}")
    if "onnx" in report:
        written = (
            "written" if report["onnx"]["written"] else "NOT written (ONNX Runtime disagreed with PyTorch)"
        )
        print(f"onnx: {report['onnx']['path']} {written}")
    print(f"report: {Path(args.output) / 'compress.json'}")
    return 0
