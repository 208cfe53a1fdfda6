"""``rank-search models | layers | flops``: inspect models and count MACs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._table import format_table, human


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument(
        "pattern", nargs="?", default="*", help="part of a name (e.g. 'resnet') or a glob (e.g. 'resnet?0')"
    )
    p.set_defaults(run=run_models)

    for folder, what in (("studies", "study"), ("spaces", "search space")):
        p = sub.add_parser(folder, help=f"list the shipped {what} files (use them by name)")
        p.set_defaults(run=run_shipped, folder=folder)

    p = sub.add_parser("layers", help="table of a model's factorizable layers")
    p.add_argument("model", help="model name (see `rank-search models`)")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=int, help="default: the model's own (10 CIFAR, 1000 torchvision)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_layers)

    p = sub.add_parser("flops", help="per-layer MACs and params of a model or a rank-config JSON")
    p.add_argument("target", help="model name or rank-config .json file")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=int, help="default: the model's own (10 CIFAR, 1000 torchvision)")
    p.add_argument("--json", action="store_true", help='print {"macs": ..., "params": ..., "layers": [...]}')
    p.set_defaults(run=run_flops)


def run_models(args: argparse.Namespace) -> int:
    from ..models import default_input_size, list_models

    names = list_models(args.pattern)
    rows = [(name, "x".join(map(str, default_input_size(name)))) for name in names]
    print(format_table(["model", "input"], rows))
    return 0


def run_shipped(args: argparse.Namespace) -> int:
    from ..search.study import shipped_files

    rows = [(path.stem, _summary(path)) for path in shipped_files(args.folder)]
    print(format_table(["name", "what"], rows))
    if args.folder == "studies":
        print("\nrun one by name: rank-search search quickstart -o runs/quickstart")
    else:
        print("\nname one in a study: space: cifar-resnet")
    return 0


def _summary(path: Path) -> str:
    """The first comment line of a shipped YAML file, without its leading ``#``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _input_size(args: argparse.Namespace, model: str) -> tuple[int, int, int]:
    from ..models import default_input_size

    if args.input_size:
        if min(args.input_size) < 1:
            raise ConfigError(f"sizes must be >= 1, got {args.input_size}", key="--input-size")
        return (args.input_size[0], args.input_size[1], args.input_size[2])
    return default_input_size(model)


def run_layers(args: argparse.Namespace) -> int:
    from ..convert import layer_infos

    size = _input_size(args, args.model)
    infos = list(layer_infos(args.model, args.num_classes, size).values())
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2, default=list))
        return 0
    rows = []
    for info in infos:
        shape = f"{info.out_channels}x{info.in_channels}" + (
            f"x{info.kernel_size[0]}x{info.kernel_size[1]}" if info.kind == "conv" else ""
        )
        ranks = "; ".join(
            f"{f}: " + ",".join(f"{k}<={v}" for k, v in r.items()) for f, r in info.full_ranks.items()
        )
        note = "; ".join(
            f"{f}: {why}" for f, why in info.reasons.items() if f == "svd" or info.kind == "conv"
        )
        out = "x".join(map(str, info.output_size))
        rows.append((info.name, info.kind, shape, out, info.dense_macs, ranks or "-", note))
    print(format_table(["layer", "kind", "shape", "output", "MACs", "max ranks", "not factorized"], rows))
    print(f"\n{len(infos)} conv/linear layers, {human(sum(i.dense_macs for i in infos))} MACs at {size}")
    from ..latency._isa import round_to_reason

    step, why = round_to_reason()
    print(
        f"ranks: spaces without round_to use multiples of {step} ({why}); ranks off the CPU's "
        "channel block lose ONNX Runtime's blocked conv layout and run slower despite fewer MACs"
    )
    return 0


def run_flops(args: argparse.Namespace) -> int:
    from ..config import load_rank_config
    from ..cost import count_cost
    from ..models import create_model

    if args.target.endswith(".json") or Path(args.target).is_file():
        config = load_rank_config(args.target)
        model = config.build()
        size: tuple[int, int, int] = config.input_size
        if args.input_size:
            size = _input_size(args, config.model.name)
    else:
        model = create_model(args.target, num_classes=args.num_classes)
        size = _input_size(args, args.target)
    report = count_cost(model, size)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    rows = []
    for layer in report.layers:
        ranks = ",".join(f"{k}={v}" for k, v in layer.ranks.items()) or "-"
        rows.append((layer.name, layer.format, ranks, layer.macs, layer.params))
    print(format_table(["layer", "format", "ranks", "MACs", "params"], rows))
    print(f"\ntotal: {report.macs:,} MACs ({human(report.macs)}), {report.params:,} params "
          f"({human(report.params)}) at input {'x'.join(map(str, size))}")  # fmt: skip
    return 0
