"""A cached table of measured layer latencies that predicts a rank config's latency without running it.

Runtime. ``runtime="torch"`` times eager PyTorch; ``runtime="onnxruntime"`` times ONNX Runtime
(CPU, float32) and each low-rank entry is the fastest of the layer's equivalent forms (factorized,
one side merged, dense; timed between context convs, :mod:`rank_search.latency._forms`), as
``rank-search export-model`` ships it; whole models are timed with their forms chosen that way.

One table per timing setting (device name, CPU threads, runtime and version, dtype, memory format:
see :func:`~rank_search.latency.device_key`), stored as JSON at
``<cache dir>/<device key>.json`` (``$RANK_SEARCH_CACHE/latency`` or
``~/.cache/rank-search/latency``), written atomically and merged with what is on disk, so a
later process never measures an entry again.

Entries are keyed by layer shape (kind, channels, kernel, stride, groups, input and output
size, batch size) plus format and ranks, so the many equal-shape layers of a ResNet share them.

Ranks. Latency is not smooth in the ranks: conv kernels work on channel blocks of 8 or 16, so on
the 2-core CPU of the benchmark a Tucker-2 16->16 layer at batch 32 took 0.68 ms at ranks (8, 8)
and 1.21 ms at (9, 9). So by default the table measures the exact ranks it is asked for (each
combination once per shape, then cached). For lookups that must not measure (``measure=False``,
e.g. inside a search's budget projection) and for tables built with ``interpolate=True``, each
rank dimension is timed on a grid instead: multiples of ``step = 8 * ceil(full / 128)`` (so at
most 16 points: every multiple of 8 up to 128) and the full rank (ranks 1 and full when the full
rank is below 8). Latency at other ranks is interpolated linearly between neighbouring grid
points (bilinearly over ``rank_in`` x ``rank_out`` for Tucker-2); a rank below the smallest grid
point takes that point's latency. Interpolation is exact on multiples of 8 up to 128 and
optimistic for ranks that are not: searches under a latency budget should use rank steps of 8.
:meth:`LatencyTable.prefill` measures the grid of every layer.

Prediction. ``predict(config, batch)`` = the measured dense model + ``scale`` x (the config's
layer sum - the dense layer sum), where the layer sum is the sum over every conv/linear layer of
its table latency (dense or low-rank). The terms are measured once per model, input size and
batch size from whole-model timings (exported for inference, each layer in the form it ships in):

* ``dense_model_ms``: the dense model; ``rest_ms`` = it minus its dense layers (activations,
  additions, pooling, the difference between a layer timed alone and inside the network);
* ``scale``: how much of a per-layer saving shows in the whole model. Reference models, uniform
  Tucker-2 at rank ratios 0.25, 0.5 and 0.75 on every layer that allows it (SVD if none does),
  are timed whole; ``scale`` is the least-squares slope through the dense point of their measured
  latency against their layer sum. Layers timed alone, between context convs, save less or more
  than they do inside the network (on ONNX Runtime, fewer kernels also means fewer layout
  reorders and less per-call work); measured on dense models alone, the rest term made the
  prediction of factorized models about 12% too high.

So the dense config predicts the measured dense model exactly, and the references their measured
latencies up to the fit's residual. ``precision="int8"`` (ONNX Runtime only) times every layer and
model statically quantized (:mod:`rank_search.latency._quant`): a separate table key.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_write_json
from ..convert import LayerInfo, layer_infos
from ..errors import RankSearchError
from ._device import (
    check_threads,
    default_cache_dir,
    device_key,
    device_name,
    num_threads,
    resolve_device,
    warn_if_busy,
)
from ._layers import build_layer, layer_input
from ._runtime import check_runtime, runner
from ._timing import Spread, summarize, time_interleaved

if TYPE_CHECKING:
    from ..config import RankConfig

__all__ = ["LatencyTable", "TimingSettings", "rank_grid"]

FORMAT_ID = "rank-search/latency-table"
VERSION = 1
REFERENCE_RATIOS = (0.25, 0.5, 0.75)
LayerTimer = Callable[[LayerInfo, str, Mapping[str, int], int], float]
ModelTimer = Callable[[torch.nn.Module, Sequence[int], int], float]


@dataclass(frozen=True)
class TimingSettings:
    """How each table entry is timed: warmup calls, repeats (median taken), and the shortest sample."""

    repeats: int = 5
    warmup: int = 2
    min_sample_ms: float = 2.0


def rank_grid(full: int) -> list[int]:
    """The ranks timed for one rank dimension whose full rank is ``full`` (see module docstring)."""
    if full < 8:
        return sorted({1, full})
    step = 8 * math.ceil(full / 128)
    return sorted({*range(step, full, step), full})


def _bracket(grid: Sequence[int], rank: int) -> list[tuple[int, float]]:
    """Grid points around ``rank`` with their linear-interpolation weights (weights > 0 only)."""
    if rank <= grid[0]:
        return [(grid[0], 1.0)]
    if rank >= grid[-1]:
        return [(grid[-1], 1.0)]
    for lo, hi in itertools.pairwise(grid):
        if lo <= rank <= hi:
            w = (rank - lo) / (hi - lo)
            return [(p, wt) for p, wt in ((lo, 1.0 - w), (hi, w)) if wt > 0]
    raise AssertionError("unreachable")


def fit_scale(dense_layers: float, dense_ms: float, references: Sequence[Mapping[str, float]]) -> float:
    """Least-squares slope through ``(dense_layers, dense_ms)`` of the references' measured
    ``model_ms`` against their ``layers_ms`` (1.0 when no reference moves the layer sum)."""
    num = sum((r["layers_ms"] - dense_layers) * (r["model_ms"] - dense_ms) for r in references)
    den = sum((r["layers_ms"] - dense_layers) ** 2 for r in references)
    return num / den if den > 0 else 1.0


def shape_key(info: LayerInfo, batch_size: int) -> str:
    """The table key of a layer's shape at ``batch_size``."""
    size = "x".join(map(str, info.input_size)) + ">" + "x".join(map(str, info.output_size))
    if info.kind == "linear":
        return f"linear {info.in_channels}>{info.out_channels} {size} b{batch_size}"
    (kh, kw), (sh, sw) = info.kernel_size, info.stride
    return (
        f"conv {info.in_channels}>{info.out_channels} k{kh}x{kw} s{sh}x{sw} g{info.groups} "
        f"{size} b{batch_size}"
    )


def entry_key(info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int) -> str:
    """The table key of one layer shape in one format and ranks."""
    rank_text = ",".join(f"{k}={ranks[k]}" for k in sorted(ranks))
    return f"{shape_key(info, batch_size)} | {fmt}" + (f" {rank_text}" if rank_text else "")


class LatencyTable:
    """Measured per-layer latencies (milliseconds) for one device key, with prediction.

    Create with :meth:`load_or_create`. ``measurements`` counts the timings this object ran.
    ``interpolate=True`` measures grid points only (a bounded table) and interpolates every
    other rank. ``layer_timer`` replaces the real layer timing and ``model_timer`` the real
    whole-model timing (tests, simulations).
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        threads: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        cache_dir: str | Path | None = None,
        settings: TimingSettings | None = None,
        layer_timer: LayerTimer | None = None,
        model_timer: ModelTimer | None = None,
        interpolate: bool = False,
        runtime: str = "torch",
        precision: str = "fp32",
    ) -> None:
        from ._quant import check_precision

        check_threads(threads)
        self.device = resolve_device(device)
        check_runtime(runtime, self.device)
        if runtime != "torch" and dtype != torch.float32:
            raise RankSearchError(f"runtime {runtime} is timed in float32 only, got {dtype}")
        if check_precision(precision) != "fp32" and runtime != "onnxruntime":
            raise RankSearchError(f"precision {precision} needs runtime onnxruntime")
        self.runtime = runtime
        self.precision = precision
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.dtype = dtype
        self.channels_last = channels_last and runtime == "torch"
        self.settings = settings or TimingSettings()
        self.key = device_key(self.device, self.threads, dtype, self.channels_last, runtime, precision)
        self.path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.path = self.path / f"{self.key}.json"
        self.layers: dict[str, float] = {}
        self.rest: dict[str, dict[str, float]] = {}
        self.measurements = 0
        self.interpolate = interpolate
        self._layer_timer = layer_timer
        self._model_timer = model_timer
        self._dirty = False
        self._infos: dict[tuple[Any, ...], list[LayerInfo]] = {}

    # ----------------------------------------------------------------- storage

    @classmethod
    def load_or_create(cls, device: str | torch.device = "cpu", **kwargs: Any) -> LatencyTable:
        """The table for this device key from the cache, or an empty one (saved on first measurement).

        Keyword arguments are those of the constructor.
        """
        table = cls(device, **kwargs)
        table._merge(table._read())
        return table

    def _read(self) -> dict[str, Any]:
        """The stored table for this key, or ``{}`` if absent, unreadable or for another key."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"{self.path}: unreadable latency table ({exc}); starting a new one", stacklevel=3)
            return {}
        ok = isinstance(data, dict) and data.get("format") == FORMAT_ID and data.get("version") == VERSION
        if not ok or data.get("key") != self.key:
            warnings.warn(
                f"{self.path}: not a version-{VERSION} latency table for key {self.key!r}; "
                "starting a new one",
                stacklevel=3,
            )
            return {}
        return data

    def _merge(self, data: Mapping[str, Any]) -> None:
        """Add stored entries this object does not have (its own measurements win)."""
        for name, ms in data.get("layers", {}).items():
            self.layers.setdefault(name, float(ms))
        for name, record in data.get("rest", {}).items():
            self.rest.setdefault(name, {k: float(v) for k, v in record.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_ID,
            "version": VERSION,
            "key": self.key,
            "device": {
                "type": self.device.type,
                "name": device_name(self.device),
                "threads": self.threads,
                "torch": torch.__version__,
                "dtype": str(self.dtype).removeprefix("torch."),
                "channels_last": self.channels_last,
                "runtime": self.runtime,
                "precision": self.precision,
            },
            "settings": asdict(self.settings),
            "unit": "ms",
            "layers": dict(sorted(self.layers.items())),
            "rest": dict(sorted(self.rest.items())),
        }

    def save(self) -> Path:
        """Merge with the file on disk (another process may have added entries) and write atomically."""
        self._merge(self._read())
        self._dirty = False
        return atomic_write_json(self.path, self.to_dict())

    def _save_if_dirty(self) -> None:
        if self._dirty:
            self.save()

    # ----------------------------------------------------------------- measuring

    @property
    def _cpu_threads(self) -> int | None:
        return self.threads if self.device.type == "cpu" else None

    def _warn_before_first(self, stacklevel: int) -> None:
        """Before the table's first timing only (what is measured now is cached for good): warn
        if other processes keep the machine busy. ``stacklevel`` as seen from the caller."""
        if self.measurements == 0:
            warn_if_busy(self.device, stacklevel=stacklevel + 1)

    def _count_measurement(self) -> None:
        """One timing ran: count it (:attr:`measurements`) and mark the table for saving."""
        self.measurements += 1
        self._dirty = True

    def _time(self, module: torch.nn.Module, x: torch.Tensor) -> Spread:
        self._warn_before_first(stacklevel=5)
        s = self.settings
        with num_threads(self._cpu_threads):
            call = runner(module, x, self.runtime, self.threads, self.precision)
        with num_threads(self._cpu_threads), torch.inference_mode():
            (samples,) = time_interleaved(
                [call],
                self.device,
                repeats=s.repeats,
                warmup=s.warmup,
                min_sample_ms=s.min_sample_ms,
            )
        self._count_measurement()
        return summarize(samples)

    def _measure_layer(self, info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int) -> float:
        if self._layer_timer is not None:
            self._count_measurement()
            return float(self._layer_timer(info, fmt, ranks, batch_size))
        with num_threads(self._cpu_threads):  # building runs LAPACK: keep it to the timing threads too
            module = build_layer(info, fmt, ranks, self.device, self.dtype, self.channels_last)
        x = layer_input(info, batch_size, self.device, self.dtype, self.channels_last)
        if self.runtime == "onnxruntime":  # as exported: the fastest form, between context convs
            from ._forms import in_context, time_forms

            if fmt == "dense":
                return self._time(in_context(module, x), x).median
            self._warn_before_first(stacklevel=4)
            s = self.settings
            assert isinstance(module, torch.nn.Sequential)
            spreads = time_forms(
                module,
                x,
                runtime=self.runtime,
                threads=self.threads,
                repeats=s.repeats,
                warmup=s.warmup,
                min_sample_ms=s.min_sample_ms,
                precision=self.precision,
            )
            self._count_measurement()
            return min(spread.median for spread in spreads.values())
        return self._time(module, x).median

    def point_ms(
        self, info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int, *, measure: bool = True
    ) -> float:
        """The stored latency of exactly these ranks, measured now if missing and ``measure``."""
        key = entry_key(info, fmt, ranks, batch_size)
        if key not in self.layers:
            if not measure:
                raise KeyError(key)
            self.layers[key] = self._measure_layer(info, fmt, ranks, batch_size)
        return self.layers[key]

    def grid(self, info: LayerInfo, fmt: str) -> dict[str, list[int]]:
        """The rank grid of each rank dimension of ``info`` in format ``fmt``."""
        if fmt == "dense":
            return {}
        return {k: rank_grid(v) for k, v in info.full_ranks[fmt].items()}

    def layer_ms(
        self, info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int, *, measure: bool = True
    ) -> float:
        """Latency of ``info`` in ``fmt`` with ``ranks``: the stored exact entry; else measured
        exactly (``measure`` and not ``interpolate``); else interpolated on the rank grid, whose
        points are measured if missing and ``measure`` (``KeyError`` otherwise)."""
        key = entry_key(info, fmt, ranks, batch_size)
        if key in self.layers:
            return self.layers[key]
        if measure and not self.interpolate:
            return self.point_ms(info, fmt, ranks, batch_size)
        return self.interpolated_ms(info, fmt, ranks, batch_size, measure=measure)

    def interpolated_ms(
        self, info: LayerInfo, fmt: str, ranks: Mapping[str, int], batch_size: int, *, measure: bool = True
    ) -> float:
        """Latency of ``info`` in ``fmt`` with ``ranks`` interpolated on the rank grid."""
        corners: list[tuple[dict[str, int], float]] = [({}, 1.0)]
        for name, grid in self.grid(info, fmt).items():
            corners = [({**c, name: p}, w * pw) for c, w in corners for p, pw in _bracket(grid, ranks[name])]
        return sum(w * self.point_ms(info, fmt, c, batch_size, measure=measure) for c, w in corners)

    def model_infos(
        self, model_name: str, input_size: Sequence[int], num_classes: int = 10
    ) -> list[LayerInfo]:
        """The conv/linear layers of the dense model (cached in memory)."""
        key = (model_name, num_classes, tuple(input_size))
        if key not in self._infos:
            self._infos[key] = list(layer_infos(model_name, num_classes, tuple(input_size)).values())
        return self._infos[key]

    def rest_ms(
        self,
        model_name: str,
        input_size: Sequence[int],
        batch_size: int,
        num_classes: int = 10,
        *,
        measure: bool = True,
    ) -> float:
        """The whole dense model's latency minus its dense layers' table latencies (see module doc)."""
        return self._rest_record(model_name, input_size, batch_size, num_classes, measure)["rest_ms"]

    def _rest_record(
        self, model_name: str, input_size: Sequence[int], batch_size: int, num_classes: int, measure: bool
    ) -> dict[str, float]:
        key = f"{model_name}/{num_classes} {'x'.join(map(str, input_size))} b{batch_size}"
        if "scale" not in self.rest.get(key, {}):  # absent, or stored before the scale was fitted
            if not measure:
                raise KeyError(key)
            self.rest[key] = self._measure_rest(model_name, input_size, batch_size, num_classes)
        return self.rest[key]

    def _measure_rest(
        self, model_name: str, input_size: Sequence[int], batch_size: int, num_classes: int
    ) -> dict[str, float]:
        """Time the dense and the reference models and fit the terms (see module doc)."""
        from ..config import ModelSpec, RankConfig

        dense = RankConfig(ModelSpec(model_name, num_classes), (input_size[0], input_size[1], input_size[2]))
        dense_layers = self._layer_sum(dense, batch_size, True)
        dense_ms = self.measure_dense_model(model_name, input_size, batch_size, num_classes).median
        record = {
            "rest_ms": dense_ms - dense_layers,
            "dense_model_ms": dense_ms,
            "dense_layers_ms": dense_layers,
        }
        references = []
        for ratio, config in self._reference_configs(dense):
            layers = self._layer_sum(config, batch_size, True)
            model_ms = self.measure_model(config.build(seed=0), input_size, batch_size).median
            references.append({"layers_ms": layers, "model_ms": model_ms})
            record[f"reference_{ratio}_layers_ms"], record[f"reference_{ratio}_model_ms"] = layers, model_ms
        record["scale"] = fit_scale(dense_layers, dense_ms, references)
        if references and not record["scale"] > 0:
            warnings.warn(
                f"{model_name} b{batch_size}: smaller layers made the whole model slower "
                f"(fitted scale {record['scale']:.2f}): the timings disagree, the machine was probably "
                f"busy; delete {self.path} and measure again on a quiet machine",
                stacklevel=4,
            )
        return record

    def _reference_configs(self, dense: RankConfig) -> list[tuple[float, RankConfig]]:
        """Uniform Tucker-2 (else SVD) at each of ``REFERENCE_RATIOS`` on every layer allowing it;
        none if no layer does."""
        from ..uniform import uniform_config

        m = dense.model
        infos = self.model_infos(m.name, dense.input_size, m.num_classes)
        for fmt in ("tucker2", "svd"):
            names = [i.name for i in infos if i.allows(fmt)]
            if names:
                return [
                    (r, uniform_config(m.name, m.num_classes, dense.input_size, r, names, fmt))
                    for r in REFERENCE_RATIOS
                ]
        return []

    def _layer_sum(self, config: RankConfig, batch_size: int, measure: bool) -> float:
        """Sum of the config's layer latencies."""
        return sum(
            self.layer_ms(info, fmt, ranks, batch_size, measure=measure)
            for info, fmt, ranks in self._choices(config)
        )

    def measure_dense_model(
        self, model_name: str, input_size: Sequence[int], batch_size: int, num_classes: int = 10
    ) -> Spread:
        """Time the dense model, exported for inference, with this table's settings."""
        from ..models import create_model

        return self.measure_model(create_model(model_name, num_classes=num_classes), input_size, batch_size)

    def measure_model(self, model: torch.nn.Module, input_size: Sequence[int], batch_size: int) -> Spread:
        """Time any model (exported for inference here) with this table's settings."""
        if self._model_timer is not None:
            ms = float(self._model_timer(model, input_size, batch_size))
            return Spread(ms, ms, ms, ms, ms, 1)
        from ..inference import export_for_inference

        exported = export_for_inference(
            model.to(self.device),
            channels_last=self.channels_last,
            dtype=self.dtype,
            input_size=tuple(input_size),
        )
        x = torch.randn(batch_size, *input_size, device=self.device, dtype=self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.runtime == "onnxruntime":  # as export-model ships it: fastest form per layer
            from ..onnx_export import fastest_form

            s = self.settings
            with num_threads(self._cpu_threads):
                exported, _ = fastest_form(
                    exported,
                    x,
                    threads=self.threads,
                    precision=self.precision,
                    repeats=s.repeats,
                    warmup=s.warmup,
                )
        return self._time(exported, x)

    # ----------------------------------------------------------------- prediction

    def _choices(self, config: RankConfig) -> Iterable[tuple[LayerInfo, str, dict[str, int]]]:
        for info in self.model_infos(config.model.name, config.input_size, config.model.num_classes):
            spec = config.layers.get(info.name)
            if spec is None or spec.format == "dense":
                yield info, "dense", {}
            else:
                yield info, spec.format, spec.ranks()

    def predict(self, config: RankConfig, batch_size: int, *, measure: bool = True) -> float:
        """Predicted latency (ms) of ``config`` at ``batch_size``: sum of layer latencies + rest
        (see the module docstring).

        Missing entries are measured (and the table saved) unless ``measure=False``, which raises
        ``KeyError`` naming the first missing entry instead.
        """
        model = config.model
        record = self._rest_record(model.name, config.input_size, batch_size, model.num_classes, measure)
        layers = self._layer_sum(config, batch_size, measure)
        self._save_if_dirty()
        return record["dense_model_ms"] + record["scale"] * (layers - record["dense_layers_ms"])

    def prefill(
        self,
        model_name: str,
        input_size: Sequence[int],
        batch_size: int,
        formats: Sequence[str] = ("tucker2",),
        num_classes: int = 10,
    ) -> int:
        """Measure the whole rank grid of every layer in ``formats`` (and dense), plus the rest.

        Run once before a latency-constrained search so that no trial times layers while others
        train. Returns how many entries were measured.
        """
        before = self.measurements
        self.rest_ms(model_name, input_size, batch_size, num_classes)
        for info in self.model_infos(model_name, input_size, num_classes):
            for fmt in formats:
                if not info.allows(fmt) or fmt == "dense":
                    continue
                grids = self.grid(info, fmt)
                points: list[dict[str, int]] = [{}]
                for name, grid in grids.items():
                    points = [{**p, name: r} for p in points for r in grid]
                for ranks in points:
                    self.point_ms(info, fmt, ranks, batch_size)
        self._save_if_dirty()
        return self.measurements - before
