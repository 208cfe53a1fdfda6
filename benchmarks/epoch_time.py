"""Seconds per training epoch: our harness against the plain torchvision recipe, side by side.

Rows: {harness, torchvision} x {dense ResNet-20, Tucker-2 ResNet-20 (rank ratio 0.5, DSO on)}.

* harness: ``rank_search.train.fit`` on the resident dataset (uint8 on the device, crop/flip
  as whole-batch tensor ops), bf16 autocast + channels_last on CUDA, optional ``--speedup``.
* torchvision: ``ImageFolder`` + ``DataLoader`` (``--workers``), PIL RandomCrop(pad 4) + flip,
  ToTensor + Normalize, fp32, eager; the Tucker-2 row adds the same DSO penalty.

Warmup epochs (compile, graph capture, cuDNN autotuning, worker start-up) are excluded. With
``--max-batches N`` every epoch stops after N batches and "s/epoch" is extrapolated from the
measured images/s to a full epoch of the train split. Example (CPU, a quick check)::

    python benchmarks/epoch_time.py --data imagefolder:/tmp/cifar10-jpeg --device cpu \\
        --epochs 1 --warmup-epochs 1 --max-batches 4 --batch-size 128 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rank_search.config import RankConfig
from rank_search.data import DataOptions, load_data, parse_data_spec
from rank_search.regularizers import orthogonality_penalty
from rank_search.train import TrainConfig, fit, training_device
from rank_search.uniform import uniform_config

BLOCK_CONVS = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def model_configs(num_classes: int, input_size: tuple[int, int, int]) -> dict[str, RankConfig]:
    """Dense ResNet-20 and Tucker-2 ResNet-20 at rank ratio 0.5 with DSO (weight 1e-3)."""
    dense = RankConfig(uniform_config("resnet20", num_classes, input_size, 1.0, []).model, input_size)
    tucker = uniform_config("resnet20", num_classes, input_size, 0.5, BLOCK_CONVS)
    return {"dense": dense.with_cost(), "tucker2-0.5": tucker.with_cost()}


class Truncated:
    """A dataset view whose train split yields at most ``max_batches`` batches per epoch."""

    def __init__(self, data: Any, max_batches: int | None) -> None:
        self._data = data
        self._max = max_batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        count = int(self._data.num_batches(split, batch_size, drop_last))
        return min(count, self._max) if split == "train" and self._max else count

    def batches(self, split: str, **kwargs: Any) -> Iterator[Any]:
        batches = self._data.batches(split, **kwargs)
        return itertools.islice(batches, self._max) if split == "train" and self._max else batches


def time_harness(config: RankConfig, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Epoch times of :func:`fit` (training pass only, validation split empty)."""
    train = TrainConfig(
        epochs=args.warmup_epochs + args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        speedup=args.speedup,
        warmup_epochs=0.0,
        seed=0,
    )
    result = fit(config, Truncated(data, args.max_batches), train)  # type: ignore[arg-type]
    times = [stats.epoch_time_s for stats in result.history[args.warmup_epochs :]]
    steps = Truncated(data, args.max_batches).num_batches("train", args.batch_size, drop_last=True)
    return _row("harness", config, times, steps * args.batch_size, data.split_size("train"), args.batch_size)


def _row(
    pipeline: str, config: RankConfig, times: list[float], images: int, epoch_images: int, batch_size: int
) -> dict[str, Any]:
    assert config.cost is not None
    seconds = statistics.median(times)
    rate = images / seconds
    return {
        "pipeline": pipeline,
        "model": config.provenance.get("label", ""),
        "batch_size": batch_size,
        "seconds_measured": seconds,
        "images_per_s": rate,
        "s_per_epoch": epoch_images / rate,
        "epoch_times": times,
        "macs": config.cost.macs,
    }


def _loader(root: Path, args: argparse.Namespace, device: torch.device) -> Any:
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    folder = datasets.ImageFolder(str(root / "train"), tf)
    return torch.utils.data.DataLoader(
        folder,
        batch_size=args.baseline_batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )


def time_torchvision(config: RankConfig, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Epoch times of the plain recipe: ImageFolder + DataLoader, PIL augmentation, fp32, eager."""
    device = training_device(args.device)
    model = config.build(seed=0).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    regularized = any(spec.format != "dense" for spec in config.layers.values())
    loader = _loader(root, args, device)
    times, steps = [], 0
    for _ in range(args.warmup_epochs + args.epochs):
        start, steps = time.perf_counter(), 0
        for x, y in itertools.islice(loader, args.max_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            if regularized:
                loss = loss + config.regularizer.weight * orthogonality_penalty(model, "dso")
            loss.backward()
            optimizer.step()
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    images = steps * args.baseline_batch_size
    return _row(
        "torchvision",
        config,
        times[args.warmup_epochs :],
        images,
        len(loader.dataset),
        args.baseline_batch_size,
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'pipeline':<12} {'model':<12} {'batch':>5} {'s/epoch':>9} {'images/s':>10} {'MACs':>12}")
    for r in rows:
        print(
            f"{r['pipeline']:<12} {r['model']:<12} {r['batch_size']:>5} {r['s_per_epoch']:>9.2f} "
            f"{r['images_per_s']:>10.0f} {r['macs']:>12,}"
        )
    by = {(r["pipeline"], r["model"]): r["s_per_epoch"] for r in rows}
    for model in ("dense", "tucker2-0.5"):
        if ("torchvision", model) in by and ("harness", model) in by:
            speedup = by["torchvision", model] / by["harness", model]
            print(f"{model}: harness is {speedup:.2f}x faster than torchvision")
    for pipeline in ("harness", "torchvision"):
        if (pipeline, "dense") in by and (pipeline, "tucker2-0.5") in by:
            ratio = by[pipeline, "tucker2-0.5"] / by[pipeline, "dense"]
            print(f"{pipeline}: Tucker-2 epoch takes {ratio:.2f}x the dense epoch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="imagefolder:ROOT (ROOT/train, ROOT/test)")
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per row")
    p.add_argument("--warmup-epochs", type=int, default=1, help="excluded epochs per row")
    p.add_argument("--max-batches", type=int, help="stop every epoch after this many batches")
    p.add_argument("--batch-size", type=int, default=512, help="harness batch size")
    p.add_argument("--baseline-batch-size", type=int, default=128, help="torchvision batch size")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the torchvision recipe")
    p.add_argument("--speedup", default="none", choices=("none", "compile", "cudagraphs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-baseline", action="store_true", help="time the harness only")
    p.add_argument("-o", "--output", type=Path, help="write the rows as JSON")
    args = p.parse_args()
    spec = parse_data_spec(args.data)
    if spec.kind != "imagefolder" or spec.root is None:
        p.error("--data must be imagefolder:ROOT")
    data = load_data(spec, DataOptions(val_fraction=0.0, workers=args.workers))
    configs = model_configs(data.num_classes, data.input_size)
    rows = []
    for label, config in configs.items():
        config.provenance["label"] = label
        rows.append(time_harness(config, data, args))
        if not args.skip_baseline:
            rows.append(time_torchvision(config, spec.root, args))
    device = training_device(args.device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}, speedup {args.speedup}, {args.epochs} measured + "
        f"{args.warmup_epochs} warmup epochs"
        + (f", {args.max_batches} batches each (s/epoch extrapolated)" if args.max_batches else "")
    )
    print_table(rows)
    if args.output:
        args.output.write_text(
            json.dumps({"args": vars(args) | {"output": str(args.output)}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
