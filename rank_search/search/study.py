"""Study files (``studies/*.yaml``): what to search, on which data, under which budget, how.

Schema (every key but ``model``, ``data``, ``space`` and ``budget`` has a default)::

    name: resnet20-cifar10         # default: the file's stem; letters, digits, '_', '-', '.'
    description: "..."
    model: resnet20                # see `rank-search models`
    data: cifar10:/path/to/cifar   # builtin | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT (relative: cwd)
    data_options: {val_fraction: 0.1, max_train_samples: null, ...}   # rank_search.data.DataOptions
    space: cifar-resnet            # a path (absolute, or relative to this file or the working
                                   #   directory) or the name of a file in the repo's spaces/
    budget: 0.5                    # fraction of dense MACs, or {fraction: 0.5} or {macs: 20000000},
                                   #   or latency: {latency_ms: 3.0, device: cpu, batch_size: 32,
                                   #   threads: N} (predicted ms per batch from the latency table,
                                   #   measured by the driver before any trial trains)
    mode: at_budget                # at_budget (max val_accuracy) | front (max val_accuracy, min macs;
                                   #   min latency_ms under a latency budget)
    sampler: tpe                   # tpe | nsga2 | gp | random
    sampler_options: {}            # keyword arguments of the Optuna sampler (e.g. population_size)
    trials: 20
    epochs_per_trial: 10
    asha: {enabled: true, grace_period: 1, reduction_factor: 3}
    resources: {cpu: 1, gpu: 0, concurrency: null}   # per trial; gpu may be fractional;
                                   #   concurrency: most trials at once (null: as many as fit)
    seed: 0                        # sampler seed and every trial's training seed
    storage: null                  # Optuna SQLAlchemy URL; default sqlite:///<out>/optuna.db
    train: {batch_size: 128, ...}  # rank_search.train.TrainConfig overrides (not epochs/seed)
    starting_points: {uniform: true, configs: []}   # rank-config JSONs (e.g. from DPRP)

``--set key.sub=value`` overrides any key by its dotted path before validation; the value is
parsed as a YAML scalar (``--set asha.enabled=false --set train.lr=0.05``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validate import as_int, check_keys, require
from ..errors import ConfigError
from .budget import Budget, parse_budget
from .records import AshaSettings

__all__ = [
    "MODES",
    "SAMPLERS",
    "AshaSettings",
    "Resources",
    "StartingPoints",
    "Study",
    "apply_overrides",
    "find_named_file",
    "load_study",
    "parse_study",
]

MODES = ("at_budget", "front")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
_TOP_KEYS = (
    "name",
    "description",
    "model",
    "data",
    "data_options",
    "space",
    "budget",
    "mode",
    "sampler",
    "sampler_options",
    "trials",
    "epochs_per_trial",
    "asha",
    "resources",
    "seed",
    "storage",
    "train",
    "init",
    "starting_points",
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Resources:
    """Per-trial resources and the most trials running at once (``None``: as many as fit)."""

    cpu: float = 1.0
    gpu: float = 0.0
    concurrency: int | None = None


@dataclass(frozen=True)
class StartingPoints:
    """Configs evaluated first: the uniform Tucker-2 config at the budget and rank-config files."""

    uniform: bool = True
    configs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    """A validated study; ``source`` is the file it came from (relative paths start there)."""

    name: str
    model: str
    data: str
    space: str
    budget: Budget
    mode: str = "at_budget"
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    trials: int = 20
    epochs_per_trial: int = 10
    asha: AshaSettings = field(default_factory=AshaSettings)
    resources: Resources = field(default_factory=Resources)
    seed: int = 0
    storage: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    starting_points: StartingPoints = field(default_factory=StartingPoints)
    description: str = ""
    source: str = "<study>"

    def space_path(self) -> Path:
        """The space file: a path (absolute, next to the study, in the working dir) or a name."""
        return _locate(self.space, self.source, "spaces", key="space")

    def config_paths(self) -> list[Path]:
        """The starting-point rank-config files, resolved like :meth:`space_path`."""
        return [
            _locate(p, self.source, None, key=f"starting_points.configs[{i}]")
            for i, p in enumerate(self.starting_points.configs)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The study as plain data (every default filled in), for ``study.yaml``."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        data["budget"] = self.budget.to_dict()
        for name in ("asha", "resources", "starting_points"):
            data[name] = dataclasses.asdict(getattr(self, name))
        data["starting_points"]["configs"] = list(self.starting_points.configs)
        return data


# --- file discovery -----------------------------------------------------------------------------


def find_named_file(name: str, folder: str) -> Path | None:
    """``name`` or ``name.yaml`` among the shipped ``folder`` files (``spaces``/``studies``)."""
    for path in shipped_files(folder):
        if name in (path.name, path.stem):
            return path
    return None


def shipped_files(folder: str) -> list[Path]:
    """The YAML files shipped with the package in ``folder`` (``spaces``/``studies``), by name."""
    package = Path(__file__).resolve().parents[1]
    return sorted((package / f"builtin_{folder}").glob("*.yaml"))


def _locate(value: str, source: str, folder: str | None, *, key: str) -> Path:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path(source).resolve().parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    named = find_named_file(value, folder) if folder else None
    if named is not None:
        return named
    where = ", ".join(str(c) for c in candidates) + (f" or a name in {folder}/" if folder else "")
    raise ConfigError(f"file {value!r} not found (looked at {where})", key=key, source=source)


# --- overrides ----------------------------------------------------------------------------------


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.sub=value`` applied (value parsed as a YAML scalar)."""
    import copy

    import yaml

    out = copy.deepcopy(dict(data))
    for item in overrides:
        dotted, sep, text = item.partition("=")
        parts = dotted.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"expected KEY.SUB=VALUE, got {item!r}", key="--set")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse value {text!r}: {exc}", key=f"--set {dotted}") from None
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"'{prefix}' is not a mapping; to replace it whole: --set '{prefix}={{...}}'",
                    key=f"--set {dotted}",
                )
            node = child
        node[parts[-1]] = value
    return out


# --- parsing ------------------------------------------------------------------------------------


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Read a study YAML file, apply ``--set`` overrides and validate."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        named = find_named_file(str(path), "studies")
        if named is None:
            raise ConfigError("study file not found", source=path) from None
        return load_study(named, overrides)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read YAML: {exc}", source=path) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of study keys", source=path)
    data = apply_overrides(data, overrides)
    data.setdefault("name", path.stem)
    source = str(path.resolve()) + (" (with --set overrides)" if overrides else "")
    try:
        return parse_study(data, source=str(path.resolve()))
    except ConfigError as exc:
        raise exc.with_source(source) from None


def parse_study(data: Any, source: str = "<study>") -> Study:
    """Validate parsed study data (after overrides); errors name ``source`` and the key."""
    try:
        return _parse_study(data, source)
    except ConfigError as exc:
        raise exc if exc.source else exc.with_source(source) from None


def _parse_study(data: Any, source: str) -> Study:
    check_keys(data, _TOP_KEYS, "")
    stem = Path(source).stem
    name = _string(data.get("name", stem if _NAME.match(stem) else "study"), "name")
    if not _NAME.match(name):
        raise ConfigError(f"use letters, digits, '_', '-', '.' only, got {name!r}", key="name")
    epochs = as_int(data.get("epochs_per_trial", 10), "epochs_per_trial", 1)
    return Study(
        name=name,
        model=_model(_string(require(data, "model"), "model")),
        data=_data(_string(require(data, "data"), "data")),
        space=_string(require(data, "space"), "space"),
        budget=parse_budget(require(data, "budget")),
        mode=_choice(data.get("mode", "at_budget"), MODES, "mode"),
        sampler=_choice(data.get("sampler", "tpe"), SAMPLERS, "sampler"),
        sampler_options=_mapping(data.get("sampler_options"), "sampler_options"),
        trials=as_int(data.get("trials", 20), "trials", 1),
        epochs_per_trial=epochs,
        asha=_asha(data.get("asha"), epochs),
        resources=_resources(data.get("resources")),
        seed=as_int(data.get("seed", 0), "seed", 0),
        storage=_optional_string(data.get("storage"), "storage"),
        train=_train(data.get("train"), _init(data.get("init"), source)),
        data_options=_data_options(data.get("data_options")),
        starting_points=_starting_points(data.get("starting_points")),
        description=_string(data.get("description", ""), "description"),
        source=source,
    )


def _model(name: str) -> str:
    from ..models import is_model

    if not is_model(name):
        raise ConfigError(f"unknown model {name!r}; see `rank-search models`", key="model")
    return name


def _data(spec: str) -> str:
    """The data spec with its root made absolute (from the current directory): trials run in
    Ray workers whose working directory is not the driver's."""
    from ..data.spec import parse_data_spec

    parsed = parse_data_spec(spec)
    if parsed.root is None or parsed.root.is_absolute():
        return str(parsed)
    return f"{parsed.kind}:{parsed.root.resolve()}"


def _asha(data: Any, epochs: int) -> AshaSettings:
    data = _mapping(data, "asha")
    check_keys(data, ("enabled", "grace_period", "reduction_factor"), "asha.")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"expected true or false, got {enabled!r}", key="asha.enabled")
    grace = as_int(data.get("grace_period", 1), "asha.grace_period", 1)
    if enabled and grace > epochs:  # a disabled scheduler's grace period is never used
        raise ConfigError(f"grace_period {grace} exceeds epochs_per_trial {epochs}", key="asha.grace_period")
    factor = _number(data.get("reduction_factor", 3), "asha.reduction_factor")
    if factor <= 1:
        raise ConfigError(f"must be > 1, got {factor}", key="asha.reduction_factor")
    return AshaSettings(enabled, grace, factor)


def _resources(data: Any) -> Resources:
    data = _mapping(data, "resources")
    check_keys(data, ("cpu", "gpu", "concurrency"), "resources.")
    cpu = _number(data.get("cpu", 1), "resources.cpu")
    gpu = _number(data.get("gpu", 0), "resources.gpu")
    if cpu <= 0:
        raise ConfigError(f"must be > 0, got {cpu}", key="resources.cpu")
    if gpu < 0 or (gpu > 1 and gpu != int(gpu)):
        raise ConfigError(
            f"expected 0, a fraction in (0, 1] or a whole number, got {gpu}", key="resources.gpu"
        )
    concurrency = data.get("concurrency")
    if concurrency is not None:
        concurrency = as_int(concurrency, "resources.concurrency", 1)
    return Resources(cpu, gpu, concurrency)


def _train(data: Any, init: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The study's training overrides, with the warm-start fields of ``init:`` merged in."""
    from ..train import TrainConfig

    data = _mapping(data, "train")
    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("epochs", "seed")]
    for key in ("epochs", "seed"):
        if key in data:
            where = "epochs_per_trial" if key == "epochs" else "the study's seed"
            raise ConfigError(f"set by {where}, not here", key=f"train.{key}")
    check_keys(data, allowed, "train.")
    from ..train.config import train_config_from_dict

    merged = {**data, **(init or {})}
    try:
        train_config_from_dict(merged)
    except ConfigError as exc:
        raise ConfigError(exc.reason, key="train." + exc.key if exc.key else "train") from None
    return merged


def _init(data: Any, source: str) -> dict[str, Any]:
    """``init: {from: trained, weights: PATH, rename: {linear: fc}, bn_images: N}``: warm trials
    that decompose a trained model (TrainConfig's ``init_from`` fields); ``None`` or
    ``{from: scratch}``: trials train from scratch. The weights path is made absolute (relative
    to the study file's folder, then the working directory): trials run in Ray workers."""
    from ..trained import WeightsError, parse_rename

    data = _mapping(data, "init")
    check_keys(data, ("from", "weights", "rename", "bn_images"), "init.")
    kind = _choice(
        data.get("from", "trained" if "weights" in data else "scratch"), ("scratch", "trained"), "init.from"
    )
    if kind == "scratch":
        if set(data) - {"from"}:
            raise ConfigError("weights, rename and bn_images need from: trained", key="init")
        return {}
    weights = Path(_string(require(data, "weights"), "init.weights")).expanduser()
    if not weights.is_absolute():
        beside = Path(source).parent / weights
        weights = beside if beside.exists() else weights
    if not weights.exists():
        raise ConfigError(f"no such weights file or run folder: {weights}", key="init.weights")
    try:
        rename = parse_rename(data.get("rename"), "init.rename")
    except WeightsError as exc:
        raise ConfigError(str(exc), key="init.rename") from None
    out: dict[str, Any] = {"init_from": str(weights.resolve()), "init_rename": rename}
    if "bn_images" in data:
        out["bn_recalibration_images"] = as_int(data["bn_images"], "init.bn_images", 0)
    return out


def _data_options(data: Any) -> dict[str, Any]:
    from ..data import DataOptions
    from ..errors import DataError

    data = _mapping(data, "data_options")
    check_keys(data, [f.name for f in dataclasses.fields(DataOptions)], "data_options.")
    try:
        DataOptions(**data)
    except (DataError, TypeError) as exc:
        raise ConfigError(str(exc), key="data_options") from None
    return dict(data)


def _starting_points(data: Any) -> StartingPoints:
    data = _mapping(data, "starting_points")
    check_keys(data, ("uniform", "configs"), "starting_points.")
    uniform = data.get("uniform", True)
    if not isinstance(uniform, bool):
        raise ConfigError(f"expected true or false, got {uniform!r}", key="starting_points.uniform")
    configs = data.get("configs") or []
    if not isinstance(configs, list) or not all(isinstance(c, str) for c in configs):
        raise ConfigError(
            f"expected a list of rank-config JSON paths, got {configs!r}", key="starting_points.configs"
        )
    return StartingPoints(uniform, tuple(configs))


# --- small validators ---------------------------------------------------------------------------


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {value!r}", key=key)
    return dict(value)


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}", key=key)
    return value


def _optional_string(value: Any, key: str) -> str | None:
    return None if value is None else _string(value, key)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number, got {value!r}", key=key)
    return float(value)


def _choice(value: Any, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"expected one of {list(choices)}, got {value!r}", key=key)
    return str(value)
