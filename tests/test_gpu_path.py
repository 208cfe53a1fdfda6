"""The GPU code path (issue 13): what can run on CPU runs here; the rest is marked ``gpu``.

CPU: dtype flow under bf16 autocast, the non-finite check without per-step syncs, the
memory-fraction arithmetic, the CUDA-graph step's buffers and failure handling (with a
stand-in capture), compile on CPU, the tensor regularizer weight at 0, views under
channels_last. ``gpu`` tests run in ``benchmarks/gpu_check.py``'s first part.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from rank_search.data import DataOptions, load_data
from rank_search.layers import SVDConv2d, SVDLinear, Tucker2Conv2d, low_rank_modules
from rank_search.train import TrainConfig, fit
from rank_search.train import device as device_mod
from rank_search.train.device import (
    MIN_FRACTION,
    FiniteWatch,
    apply_gpu_share,
    memory_fraction,
    training_device,
)
from rank_search.train.step import (
    CompiledStep,
    CudaGraphStep,
    EagerStep,
    Objective,
    make_step,
)
from rank_search.uniform import uniform_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BATCH = 7  # a batch size no weight dimension has: a tensor with it as dim 0 is an activation
GiB = 1 << 30


def tiny_net(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        SVDConv2d(3, 8, 3, padding=1, rank=4),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Tucker2Conv2d(8, 8, 3, padding=1, rank_in=4, rank_out=4),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        SVDLinear(8, 10, rank=4),
    ).to(device)


def batch(device: str = "cpu", n: int = BATCH) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=gen).to(device), torch.randint(0, 10, (n,), generator=gen).to(
        device
    )


def sgd(model: nn.Module, tensor_lr: bool = False) -> torch.optim.SGD:
    lr: float | Tensor = torch.tensor(0.05) if tensor_lr else 0.05
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def objective(autocast: bool = False, device_type: str = "cpu", regularizer: str | None = "dso") -> Objective:
    return Objective(0.1, regularizer, None, autocast, device_type)


# --- dtype flow under bf16 autocast -----------------------------------------------------------


class _DtypeLog(TorchDispatchMode):
    """Records (op, dtype, shape) of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor):
                self.outputs.append((str(func), t.dtype, tuple(t.shape)))
        return out


def _fp32_activations(layer: nn.Module, x: Tensor, device_type: str = "cpu") -> list[str]:
    log = _DtypeLog()
    with torch.autocast(device_type, dtype=torch.bfloat16), log:
        out = layer(x)
    assert out.dtype == torch.bfloat16
    return [op for op, dtype, shape in log.outputs if dtype == torch.float32 and shape[:1] == (BATCH,)]


@pytest.mark.parametrize(
    "make",
    [
        lambda: SVDConv2d(6, 8, 3, padding=1, rank=4),
        lambda: SVDLinear(6, 8, rank=4),
        lambda: Tucker2Conv2d(6, 8, 3, padding=1, rank_in=4, rank_out=4),
    ],
    ids=["svd-conv", "svd-linear", "tucker2"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_fp32_activation_inside_a_low_rank_layer_under_bf16_autocast(
    make: Callable[[], nn.Module], channels_last: bool
) -> None:
    layer = make()
    x = torch.randn(BATCH, 6, 5, 5) if not isinstance(layer, SVDLinear) else torch.randn(BATCH, 6)
    if channels_last and x.dim() == 4:
        layer, x = layer.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    assert _fp32_activations(layer, x.bfloat16()) == []


def test_svd_forward_with_folded_s_equals_the_factored_product() -> None:
    conv = SVDConv2d(6, 8, 3, padding=1, rank=4)
    with torch.no_grad():
        conv.s.mul_(torch.linspace(0.5, 2.0, 4))
    x = torch.randn(2, 6, 5, 5)
    expected = conv.u(conv.v(x) * conv.s.view(1, -1, 1, 1))
    torch.testing.assert_close(conv(x), expected)
    linear = SVDLinear(6, 8, rank=4)
    z = torch.randn(3, 6)
    torch.testing.assert_close(linear(z), linear.u(linear.v(z) * linear.s))


# --- views under channels_last, init on the layer's device ---------------------------------------


def test_v_matrix_is_a_view_under_channels_last_with_the_same_gram() -> None:
    layer = SVDConv2d(6, 8, 3, rank=4)
    plain_v, plain_dense = layer.v_matrix().detach().clone(), layer.dense_weight().detach().clone()
    layer = layer.to(memory_format=torch.channels_last)
    v = layer.v_matrix()
    assert v.data_ptr() == layer.v.weight.data_ptr() and v._base is not None  # a view, no copy
    torch.testing.assert_close(v.T @ v, plain_v.T @ plain_v)
    torch.testing.assert_close(layer.dense_weight(), plain_dense)


def test_svd_layer_on_meta_device_skips_init() -> None:
    layer = SVDConv2d(6, 8, 3, rank=4, device="meta")
    assert layer.s.device.type == "meta"


def test_svd_init_runs_on_the_layer_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.device] = []
    real = torch.linalg.svd

    def spy(matrix: Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(matrix.device)
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    SVDConv2d(6, 8, 3, rank=4, device="cpu")
    assert seen == [torch.device("cpu")]


# --- the non-finite check ----------------------------------------------------------------------


def _count_blocking_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = device_mod.blocking_read

    def counted(flag: Tensor) -> bool:
        calls[0] += 1
        return real(flag)

    monkeypatch.setattr(device_mod, "blocking_read", counted)
    return calls


def test_async_watch_finds_a_nan_a_window_later_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_blocking_reads(monkeypatch)
    watch = FiniteWatch(torch.device("cpu"), window=4, asynchronous=True)
    sums = torch.zeros(2)
    found_at = None
    for step in range(1, 41):
        sums += 1.0 if step != 10 else float("nan")
        if not watch.update(sums):
            found_at = step
            break
    assert found_at is not None and 10 <= found_at <= 10 + 2 * 4
    assert calls[0] == 0
    assert watch.final(torch.zeros(2)) and calls[0] == 1


def test_async_watch_passes_finite_sums() -> None:
    watch = FiniteWatch(torch.device("cpu"), window=3, asynchronous=True)
    sums = torch.zeros(2)
    for _ in range(20):
        sums += 1.0
        assert watch.update(sums)
    assert watch.final(sums)
    with pytest.raises(ValueError):
        FiniteWatch(torch.device("cpu"), window=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.mktemp("cache")
    return load_data("builtin", DataOptions(cache_dir=cache, val_fraction=0.2, max_train_samples=240))


def test_fit_makes_one_blocking_finite_check_per_epoch(monkeypatch: pytest.MonkeyPatch, digits: Any) -> None:
    calls = _count_blocking_reads(monkeypatch)
    config = uniform_config("resnet20", 10, (3, 16, 16), 0.5, ["layer1.0.conv1", "layer2.0.conv2"])
    result = fit(config, digits, TrainConfig(epochs=2, batch_size=64, lr=0.05, device="cpu"))
    assert result.status == "completed" and calls[0] == 2  # 3 steps an epoch, one read each epoch


# --- GPU share arithmetic ----------------------------------------------------------------------


def test_memory_fraction_leaves_room_for_every_process_and_its_context() -> None:
    total = 141 * GiB
    for share in (0.5, 0.25, 0.125):
        fraction = memory_fraction(share, total)
        assert fraction is not None
        assert fraction == pytest.approx((share * total - GiB) / total)
        processes = round(1 / share)
        assert processes * (fraction * total + GiB) <= total  # caps plus contexts fit
    assert memory_fraction(1.0, total) is None and memory_fraction(2.0, total) is None
    assert memory_fraction(0.01, 8 * GiB) == MIN_FRACTION
    with pytest.raises(ValueError):
        memory_fraction(0.0, total)
    with pytest.raises(ValueError):
        memory_fraction(0.5, 0)


def test_gpu_share_is_a_no_op_without_cuda_or_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert apply_gpu_share(0.25) is None
    assert apply_gpu_share(None) is None
    assert device_mod.cudnn_autotune()


def test_training_device() -> None:
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type in ("cpu", "cuda")


# --- the tensor regularizer weight ---------------------------------------------------------------


def test_tensor_weight_zero_gives_zero_term_and_finite_grads_with_blown_up_factors() -> None:
    model = tiny_net()
    obj = objective()
    with torch.no_grad():
        model[0].u.weight.fill_(1e30)  # the penalty overflows to inf
    reg = obj.regularization(model, torch.tensor(0.0))
    assert reg.item() == 0.0
    reg.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert not torch.isfinite(obj.regularization(model, torch.tensor(1e-3)))


def test_tensor_weight_equals_float_weight() -> None:
    model = tiny_net()
    obj = objective()
    torch.testing.assert_close(obj.regularization(model, torch.tensor(1e-3)), obj.regularization(model, 1e-3))
    for capturing in (False, True):
        assert obj.regularization(model, torch.tensor(0.0), capturing=capturing).item() == 0.0


def test_bound_objective_does_not_walk_modules_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_net()
    obj = objective()
    step = make_step("none", model, sgd(model), obj)
    assert [layer for _, layer in low_rank_modules(model)] == obj.layers(model)

    def refuse(_: nn.Module) -> list[Any]:
        raise AssertionError("named_modules walked during a step")

    monkeypatch.setattr("rank_search.train.step.low_rank_modules", refuse)
    x, y = batch()
    task, reg = step(x, y, 1e-3)
    assert torch.isfinite(task) and reg.item() > 0


# --- the CUDA-graph step with a stand-in capture --------------------------------------------------


def _trajectory(
    step: Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]], steps: int = 6
) -> list[float]:
    x, y = batch()
    out = []
    for i in range(steps):
        task, reg = step(x + 0.01 * i, y, 1e-3)
        out.append(task.item() + reg.item())
    return out


def test_graph_step_static_buffers_and_cloned_outputs_match_eager() -> None:
    eager_model, graph_model = tiny_net(), tiny_net()
    eager = EagerStep(eager_model, sgd(eager_model, tensor_lr=True), objective())
    graph_opt = sgd(graph_model, tensor_lr=True)

    def stand_in(work: Callable[[], None]) -> Callable[[], None]:
        def replay() -> None:  # a real graph rewrites its gradient buffers, it does not accumulate
            graph_opt.zero_grad(set_to_none=True)
            work()

        return replay

    graph = CudaGraphStep(graph_model, graph_opt, objective(), warmup=2, capture=stand_in)
    expected = _trajectory(eager)
    got = _trajectory(graph)
    assert graph.captured and not graph.failed
    assert got == pytest.approx(expected, rel=1e-5)
    task, _ = graph(*batch(), 1e-3)
    graph._static["task"].fill_(123.0)
    assert task.item() != 123.0  # a clone, not the static buffer


def test_failed_capture_leaves_no_state_and_trains_eagerly() -> None:
    eager_model, graph_model = tiny_net(), tiny_net()
    eager = EagerStep(eager_model, sgd(eager_model, tensor_lr=True), objective())
    graph_opt = sgd(graph_model, tensor_lr=True)
    attempts = [0]

    def failing(work: Callable[[], None]) -> Callable[[], None]:
        attempts[0] += 1
        for param in graph_model.parameters():  # what a capture leaves: gradients from its pool
            param.grad = torch.full_like(param, float("nan"))
        raise RuntimeError("operation not permitted when stream is capturing")

    graph = CudaGraphStep(graph_model, graph_opt, objective(), warmup=2, capture=failing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _trajectory(graph)
    assert graph.failed and not graph.captured and graph._static == {}
    assert attempts[0] == 1 and sum("capture failed" in str(w.message) for w in caught) == 1
    assert got == pytest.approx(_trajectory(eager), rel=1e-5)


# --- compile on CPU ------------------------------------------------------------------------------


@pytest.mark.slow  # inductor compiles C++: about 90 s on a busy 2-core machine
def test_compiled_step_on_cpu_matches_eager() -> None:
    pytest.importorskip("torch._inductor")
    eager_model, compiled_model = tiny_net(), tiny_net()
    eager = EagerStep(eager_model, sgd(eager_model), objective())
    compiled = CompiledStep(compiled_model, sgd(compiled_model), objective())
    assert compiled.mode == "default"
    assert _trajectory(compiled, 3) == pytest.approx(_trajectory(eager, 3), rel=1e-4)


# --- CUDA only (run by benchmarks/gpu_check.py) ----------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_no_fp32_activation_inside_low_rank_layers() -> None:
    for layer in (SVDConv2d(6, 8, 3, padding=1, rank=4), Tucker2Conv2d(6, 8, 3, rank_in=4, rank_out=4)):
        layer = layer.cuda().to(memory_format=torch.channels_last)
        x = torch.randn(BATCH, 6, 5, 5, device="cuda").to(memory_format=torch.channels_last)
        assert _fp32_activations(layer, x.bfloat16(), "cuda") == []


@pytest.mark.gpu
@needs_cuda
def test_cuda_svd_layer_initialized_on_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = torch.linalg.svd

    def spy(matrix: Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(matrix.device.type)
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    layer = SVDConv2d(16, 32, 3, rank=8, device="cuda")
    assert seen == ["cuda"] and layer.s.is_cuda
    u = layer.u_matrix()
    torch.testing.assert_close(u.T @ u, torch.eye(8, device="cuda"), atol=1e-4, rtol=0)


@pytest.mark.gpu
@needs_cuda
def test_cuda_watch_finds_nan_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_blocking_reads(monkeypatch)
    watch = FiniteWatch(torch.device("cuda"), window=4)
    sums = torch.zeros(2, device="cuda")
    found = False
    for step in range(1, 200):
        sums += 1.0 if step != 10 else float("nan")
        if not watch.update(sums):
            found = True
            break
    torch.cuda.synchronize()
    assert found and calls[0] == 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("speedup", ["cudagraphs", "compile"])
def test_cuda_step_variants_track_eager(speedup: str) -> None:
    obj = objective(autocast=True, device_type="cuda")
    eager_model, fast_model = tiny_net("cuda"), tiny_net("cuda")

    def cuda_sgd(model: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), lr=torch.tensor(0.05, device="cuda"), momentum=0.9)

    eager = EagerStep(eager_model, cuda_sgd(eager_model), obj)
    fast = make_step(speedup, fast_model, cuda_sgd(fast_model), objective(autocast=True, device_type="cuda"))

    def run(step: Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]) -> list[float]:
        x, y = batch("cuda", 64)
        return [sum(t.item() for t in step(x, y, 1e-3)) for _ in range(8)]

    assert run(fast) == pytest.approx(run(eager), rel=5e-2)
    if speedup == "cudagraphs":
        assert isinstance(fast, CudaGraphStep) and fast.captured


@pytest.mark.gpu
@needs_cuda
def test_cuda_timing_on_the_timed_device() -> None:
    from rank_search.latency._timing import time_calls

    x = torch.randn(256, 256, device="cuda")
    assert time_calls(lambda: x @ x, 5, torch.device("cuda", torch.cuda.device_count() - 1)) > 0


@pytest.mark.gpu
@needs_cuda
def test_cuda_gpu_share_caps_the_allocator(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import torch; from rank_search.train.device import apply_gpu_share, cudnn_autotune;"
        "f = apply_gpu_share(0.25); total = torch.cuda.get_device_properties(0).total_memory;"
        "assert f is not None and not cudnn_autotune() and not torch.backends.cudnn.benchmark;"
        "ok = False\n"
        "try:\n    torch.empty(int(0.5 * total), dtype=torch.uint8, device='cuda')\n"
        "except torch.OutOfMemoryError:\n    ok = True\n"
        "assert ok, 'allocation above the cap succeeded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
