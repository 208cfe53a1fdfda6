"""The scales the evidence scripts run at: ``gpu`` (the full protocol), ``cpu`` (2 idle cores,
<= 150 minutes for the whole suite) and ``smoke`` (builtin digits, minutes; not evidence).

One :class:`Profile` per scale holds every setting that differs between them: the full-training
recipe and data subset, the study overrides of every search, the seeds, which cases run and how
many processes share the machine. ``README.md`` justifies the ``cpu`` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Settings of one scale of the evidence suite.

    Attributes:
        name: ``gpu`` / ``cpu`` / ``smoke``.
        data: default data SPEC.
        image_size: imagefolder decode size (None: native 32x32).
        max_train_samples: full training's stratified train+val pool (None: all 50k).
        val_fraction: full training's held-out split.
        epochs: full-training epochs.
        seeds: full-training seeds (searched and uniform share them: same split, same data order).
        search_seeds: exp3's search seeds.
        batch_size: full-training batch size.
        lr: full-training peak learning rate.
        device: full-training device.
        search_sets: study overrides of every search (``--set KEY=VALUE``), before the user's.
        cases: exp2's cases (names in ``exp2_searched_vs_uniform.CASES``).
        dense_models: exp1's models.
        jobs: full trainings run at once by ``run_all.py`` (each a ``rank-search train`` process).
        threads: torch threads per process (``OMP_NUM_THREADS``); None leaves it alone.
        checkpoint_every: epochs between training checkpoints.
    """

    name: str
    data: str
    image_size: int | None
    max_train_samples: int | None
    val_fraction: float
    epochs: int
    seeds: tuple[int, ...]
    search_seeds: tuple[int, ...]
    batch_size: int
    lr: float
    device: str
    search_sets: tuple[str, ...]
    cases: tuple[str, ...]
    dense_models: tuple[str, ...]
    jobs: int
    threads: int | None
    checkpoint_every: int

    def data_options(self) -> list[str]:
        """``rank-search train`` data flags of the full trainings."""
        flags = ["--val-fraction", str(self.val_fraction)]
        if self.image_size is not None:
            flags += ["--image-size", str(self.image_size)]
        if self.max_train_samples is not None:
            flags += ["--max-train-samples", str(self.max_train_samples)]
        return flags


GPU = Profile(
    name="gpu",
    data="imagefolder:/tmp/cifar10-jpeg",
    image_size=None,
    max_train_samples=None,
    val_fraction=0.1,
    epochs=200,
    seeds=(0, 1, 2),
    search_seeds=(0, 1),
    batch_size=256,
    lr=0.1,
    device="auto",
    search_sets=(),
    cases=("r20-0.50", "r20-0.28", "r56-0.40"),
    dense_models=("resnet20", "resnet56"),
    jobs=1,
    threads=None,
    checkpoint_every=10,
)

# 2 idle cores, <= 150 min for the whole suite (estimate in README.md): 16x16 input (about 5x the
# 32x32 speed on CPU), a 20k-image subset for full training (18k train + 2k val), 12 epochs, 3 paired
# seeds; searches on a 10k subset (8k train + 2k val) with 6-epoch trials, ASHA rungs at 2 and 6
# epochs, 20 trials, two one-thread trials at a time.
CPU = Profile(
    name="cpu",
    data="imagefolder:/tmp/cifar10-jpeg",
    image_size=16,
    max_train_samples=20000,
    val_fraction=0.1,
    epochs=12,
    seeds=(0, 1, 2),
    search_seeds=(0, 1),
    batch_size=128,
    lr=0.1,
    device="cpu",
    search_sets=(
        "data_options.image_size=16",
        "data_options.max_train_samples=10000",
        "data_options.val_fraction=0.2",
        "trials=20",
        "epochs_per_trial=6",
        "asha.grace_period=2",
        "asha.reduction_factor=3",
        "resources.cpu=1",
        "resources.gpu=0",
        "resources.concurrency=2",
        "train.batch_size=128",
        "train.lr=0.1",
        "train.warmup_epochs=0.5",
        "train.device=cpu",
    ),
    cases=("r20-0.50", "r20-0.28"),
    dense_models=("resnet20",),
    jobs=2,
    threads=1,
    checkpoint_every=5,
)

SMOKE = Profile(
    name="smoke",
    data="builtin",
    image_size=None,
    max_train_samples=300,
    val_fraction=0.2,
    epochs=2,
    seeds=(0, 1),
    search_seeds=(0,),
    batch_size=64,
    lr=0.05,
    device="cpu",
    search_sets=(
        "data=builtin",
        "data_options.val_fraction=0.2",
        "data_options.max_train_samples=300",
        "trials=4",
        "epochs_per_trial=2",
        "asha.grace_period=1",
        "asha.reduction_factor=2",
        "resources.cpu=1",
        "resources.gpu=0",
        "resources.concurrency=1",
        "train.batch_size=64",
        "train.lr=0.05",
        "train.warmup_epochs=0.5",
        "train.device=cpu",
    ),
    cases=("r20-0.50",),
    dense_models=("resnet20",),
    jobs=2,
    threads=1,
    checkpoint_every=1,
)

PROFILES = {p.name: p for p in (GPU, CPU, SMOKE)}
