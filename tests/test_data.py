"""Tests of rank_search.data: specs, splits, augmentation, cache, CIFAR and image-folder readers."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rank_search.data import (
    DataOptions,
    DataSpec,
    ResidentDataset,
    StreamingDataset,
    crop_flip_with,
    load_data,
    normalize,
    parse_data_spec,
    random_crop_flip,
)
from rank_search.data import imagefolder as imagefolder_module
from rank_search.data import loaders as loaders_module
from rank_search.errors import ConfigError, DataError

# ---------------------------------------------------------------------------- helpers


def _opts(tmp_path: Path, **kwargs: Any) -> DataOptions:
    return DataOptions(cache_dir=tmp_path / "cache", workers=0, **kwargs)


def _cache_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "cache" / "data"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _write_cifar(folder: Path, kind: str, per_file: int, bytes_keys: bool = False) -> dict[str, np.ndarray]:
    """Fake torchvision-format CIFAR pickles; returns the expected uint8 (N, 3, 32, 32) arrays."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    label_key, num_classes = ("labels", 10) if kind == "cifar10" else ("fine_labels", 100)
    expected: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for name in [*names, "test_batch" if kind == "cifar10" else "test"]:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, per_file).tolist()
        batch: dict[Any, Any] = {"data": data, label_key: labels, "batch_label": name}
        if bytes_keys:
            batch = {key.encode(): value for key, value in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        split = "test" if "test" in name else "train"
        expected[f"{split}_x"].append(data.reshape(-1, 3, 32, 32))
        expected[f"{split}_y"].append(np.asarray(labels))
    return {key: np.concatenate(value) for key, value in expected.items()}


def _color(label: int) -> int:
    return 30 * label + 5


def _write_png(path: Path, label: int, size: tuple[int, int], index: int) -> None:
    from PIL import Image

    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = _color(label)  # red encodes the class
    pixels[..., 1] = (index * 7) % 256
    pixels[..., 2] = 100
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _write_tree(
    root: Path,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    train_per_class: int = 6,
    test_per_class: int = 2,
    size: tuple[int, int] = (12, 10),
    eval_name: str = "test",
) -> Path:
    for label, name in enumerate(classes):
        for i in range(train_per_class):
            _write_png(root / "train" / name / f"{i:03d}.png", label, size, i)
        for i in range(test_per_class):
            _write_png(root / eval_name / name / f"{i:03d}.png", label, size, 100 + i)
    return root


def _tensors(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole uint8 split of a resident dataset."""
    assert isinstance(data, ResidentDataset)
    return data.tensors(split)


def _red_channel(images: torch.Tensor, dataset: Any) -> torch.Tensor:
    """Undo the normalization of channel 0 back to 0..255."""
    return (images[:, 0] * dataset.std[0] + dataset.mean[0]) * 255.0


# ------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    ("text", "kind", "root"),
    [
        ("builtin", "builtin", None),
        ("cifar10:/data/c10", "cifar10", Path("/data/c10")),
        ("cifar100:/data/c100", "cifar100", Path("/data/c100")),
        ("imagefolder:/d/x:y", "imagefolder", Path("/d/x:y")),
    ],
)
def test_parse_data_spec_round_trips(text: str, kind: str, root: Path | None) -> None:
    spec = parse_data_spec(text)
    assert spec == DataSpec(kind, root)
    assert str(spec) == text
    assert parse_data_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text", ["", "mnist", "cifar10", "cifar10:", "imagefolder:  ", "builtin:/x", "/data/c10"]
)
def test_parse_data_spec_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_data_spec(text)
    assert info.value.key == "data"
    assert "cifar10:ROOT" in str(info.value) or "root folder" in str(info.value)


def test_data_spec_validates_when_built_directly() -> None:
    with pytest.raises(ConfigError):
        DataSpec("cifar10")
    with pytest.raises(ConfigError):
        DataSpec("builtin", Path("/x"))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_outside_range_is_a_data_error(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        DataOptions(val_fraction=fraction)


def test_cache_dir_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK_SEARCH_CACHE", str(tmp_path / "env"))
    assert DataOptions().resolved_cache_dir() == tmp_path / "env"
    assert DataOptions(cache_dir=tmp_path / "own").resolved_cache_dir() == tmp_path / "own"
    monkeypatch.delenv("RANK_SEARCH_CACHE")
    assert DataOptions().resolved_cache_dir() == Path.home() / ".cache" / "rank-search"


def test_import_is_light() -> None:
    code = "import sys, rank_search.data; print(sorted({'sklearn', 'PIL', 'torchvision'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- builtin


def test_builtin_loads(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path))
    assert isinstance(data, ResidentDataset)
    assert data.input_size == (3, 16, 16)
    assert data.num_classes == 10
    assert data.split_size("train") + data.split_size("val") == 1438
    assert data.split_size("test") == 1797 - 1438
    assert (data.pad, data.flip) == (2, False)
    images, labels = next(data.batches("train", batch_size=2000))
    assert images.shape == (data.split_size("train"), 3, 16, 16)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert abs(float(images.mean())) < 0.2 and 0.8 < float(images.std()) < 1.2
    assert images.std(dim=0).max() > 0.5  # not constant across samples
    assert set(labels.tolist()) == set(range(10))
    assert torch.equal(images[:, 0], images[:, 2])  # grey replicated to 3 channels


def test_batches_count_and_drop_last(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path))
    size = data.split_size("test")
    for drop_last in (False, True):
        batches = list(data.batches("test", batch_size=100, drop_last=drop_last))
        assert len(batches) == data.num_batches("test", 100, drop_last=drop_last)
        assert sum(len(y) for _, y in batches) == (size // 100 * 100 if drop_last else size)
    with pytest.raises(ValueError, match="split"):
        data.batches("holdout", batch_size=10)


def test_batches_dtype_and_channels_last(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path))
    images, _ = next(data.batches("val", batch_size=8, channels_last=True, dtype=torch.bfloat16))
    assert images.dtype == torch.bfloat16
    assert images.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------ split


def _builtin_labels() -> np.ndarray:
    from rank_search.data.sources import read_builtin

    return read_builtin().train_y


def test_split_never_leaks(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path, val_fraction=0.2, split_seed=3))
    train, val, test = (data.source_indices(s) for s in ("train", "val", "test"))
    assert not set(train) & set(val)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1438))
    assert np.array_equal(test, np.arange(data.split_size("test")))
    labels = _builtin_labels()
    for label in range(10):
        total = int((labels == label).sum())
        assert abs(int((labels[val] == label).sum()) - 0.2 * total) < 1
    # the batches really come from those indices
    _, val_labels = next(data.batches("val", batch_size=10_000))
    assert np.array_equal(val_labels.numpy(), labels[val])


def test_split_seed_changes_val_only(tmp_path: Path) -> None:
    first = load_data("builtin", _opts(tmp_path, split_seed=0))
    again = load_data("builtin", _opts(tmp_path, split_seed=0))
    other = load_data("builtin", _opts(tmp_path, split_seed=1))
    assert np.array_equal(first.source_indices("val"), again.source_indices("val"))
    assert not np.array_equal(first.source_indices("val"), other.source_indices("val"))
    assert np.array_equal(first.source_indices("test"), other.source_indices("test"))


def test_zero_val_fraction_and_cap(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path, val_fraction=0.0))
    assert data.split_size("val") == 0 and data.split_size("train") == 1438
    assert list(data.batches("val", batch_size=4, train=True)) == []
    capped = load_data("builtin", _opts(tmp_path, max_train_samples=200, val_fraction=0.25))
    assert capped.split_size("train") + capped.split_size("val") == 200
    assert capped.split_size("val") == 50
    labels = _builtin_labels()
    assert set(labels[capped.source_indices("train")]) == set(range(10))


# ------------------------------------------------------------------------ augmentation


def _reference_crop_flip(
    x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int
) -> Any:
    import torchvision.transforms.functional as TF

    h, w = x.shape[2:]
    out = []
    for i in range(len(x)):
        sample = TF.crop(TF.pad(x[i], [pad]), int(oy[i]), int(ox[i]), h, w)
        out.append(TF.hflip(sample) if flip[i] else sample)
    return torch.stack(out)


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_crop_flip_with_matches_torchvision(pad: int) -> None:
    gen = torch.Generator().manual_seed(pad)
    x = torch.randint(0, 256, (6, 3, 7, 9), dtype=torch.uint8, generator=gen)
    oy, ox = torch.randint(0, 2 * pad + 1, (2, 6), generator=gen)
    flip = torch.tensor([True, False, True, True, False, False])
    expected = _reference_crop_flip(x, oy, ox, flip, pad)
    assert torch.equal(crop_flip_with(x, oy, ox, flip, pad), expected)


def _matching_transforms(out: torch.Tensor, x: torch.Tensor, pad: int) -> set[tuple[int, int, bool]]:
    """Every (offset_y, offset_x, flip) that turns x into out."""
    found = set()
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            for flip in (False, True):
                args = (torch.tensor([oy]), torch.tensor([ox]), torch.tensor([flip]))
                if torch.equal(crop_flip_with(x[None], *args, pad)[0], out):
                    found.add((oy, ox, flip))
    return found


@pytest.mark.parametrize("flip", [False, True])
def test_random_crop_flip_stays_in_range(flip: bool) -> None:
    pad = 2
    x = (torch.arange(40 * 3 * 6 * 5) % 251 + 1).to(torch.uint8).view(40, 3, 6, 5)
    out = random_crop_flip(x, pad, flip, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    flips_seen = set()
    for i in range(len(x)):
        matches = _matching_transforms(out[i], x[i], pad)
        assert matches, f"sample {i} is no crop of its input"
        flips_seen |= {f for _, _, f in matches}
    assert flips_seen == ({False, True} if flip else {False})


def test_normalize_matches_formula() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), expected)


def test_same_seed_same_batches(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path))

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(data.batches("train", batch_size=256, train=True, generator=gen))

    first, second, other = epoch(7), epoch(7), epoch(8)
    assert len(first) == data.num_batches("train", 256)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][1], other[0][1])
    # a training epoch is a permutation of the split
    seen = torch.cat([y for _, y in first]).sort().values
    assert torch.equal(seen, _tensors(data, "train")[1].sort().values)


# ------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize(
    ("kind", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_round_trip(tmp_path: Path, kind: str, folder: str) -> None:
    expected = _write_cifar(tmp_path / "root" / folder, kind, per_file=8)
    data = load_data(f"{kind}:{tmp_path / 'root'}", _opts(tmp_path, val_fraction=0.0))
    assert isinstance(data, ResidentDataset)
    assert data.input_size == (3, 32, 32) and data.num_classes == (10 if kind == "cifar10" else 100)
    train_x, train_y = _tensors(data, "train")
    test_x, test_y = _tensors(data, "test")
    assert np.array_equal(train_x.numpy(), expected["train_x"])
    assert np.array_equal(train_y.numpy(), expected["train_y"])
    assert np.array_equal(test_x.numpy(), expected["test_x"])
    assert np.array_equal(test_y.numpy(), expected["test_y"])
    assert len(_cache_files(tmp_path)) == 1


def test_cifar_channel_order_and_direct_folder(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    _write_cifar(folder, "cifar10", per_file=2, bytes_keys=True)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": row[None], b"labels": [4]}, protocol=2))
    data = load_data(f"cifar10:{folder}", _opts(tmp_path))
    images, labels = _tensors(data, "test")
    assert labels.tolist() == [4]
    assert [int(images[0, c].unique().item()) for c in range(3)] == [10, 20, 30]


def test_cifar_second_load_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path / "root" / "cifar-10-batches-py", "cifar10", per_file=4)
    first = load_data(f"cifar10:{tmp_path / 'root'}", _opts(tmp_path))

    def no_decode(*args: Any) -> Any:
        raise AssertionError("cache not used")

    monkeypatch.setattr(loaders_module, "read_cifar", no_decode)
    second = load_data(f"cifar10:{tmp_path / 'root'}", _opts(tmp_path))
    assert torch.equal(_tensors(first, "train")[0], _tensors(second, "train")[0])


def test_cifar_missing_folder_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}", _opts(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_data(f"cifar100:{tmp_path / 'empty'}", _opts(tmp_path))
    message = str(info.value)
    assert "cifar-100-python" in message and "download=True" in message and str(tmp_path / "empty") in message


def test_cifar_corrupt_or_hostile_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "cifar-10-batches-py"
    _write_cifar(folder, "cifar10", per_file=2)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data")  # truncated
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{tmp_path / 'root'}", _opts(tmp_path))
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": os.getcwd, "labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        load_data(f"cifar10:{tmp_path / 'root'}", _opts(tmp_path))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{tmp_path / 'root'}", _opts(tmp_path))
    assert _cache_files(tmp_path) == []


# ------------------------------------------------------------------------ imagefolder


def _check_eval_batches(data: Any, split: str, expected_labels: np.ndarray) -> None:
    images, labels = next(data.batches(split, batch_size=1000))
    assert images.shape == (len(expected_labels), *data.input_size)
    assert np.array_equal(labels.numpy(), expected_labels)
    red = _red_channel(images, data)
    colors = torch.tensor([_color(int(label)) for label in labels], dtype=torch.float32)
    torch.testing.assert_close(red.mean(dim=(1, 2)), colors, atol=0.6, rtol=0)


@pytest.mark.parametrize("streaming", [False, True])
def test_imagefolder_paths_yield_labelled_batches(tmp_path: Path, streaming: bool) -> None:
    root = _write_tree(tmp_path / "tree")
    options = _opts(tmp_path, val_fraction=1 / 3, resident_max_bytes=0 if streaming else 2**30)
    data = load_data(f"imagefolder:{root}", options)
    assert isinstance(data, StreamingDataset if streaming else ResidentDataset)
    assert data.classes == ("ant", "bee", "cat") and data.input_size == (3, 10, 12)
    assert (data.split_size("train"), data.split_size("val"), data.split_size("test")) == (12, 6, 6)
    train_labels = np.repeat(np.arange(3), 6)
    _check_eval_batches(data, "test", np.repeat(np.arange(3), 2))
    _check_eval_batches(data, "val", train_labels[data.source_indices("val")])
    gen = torch.Generator().manual_seed(0)
    batches = list(data.batches("train", batch_size=5, train=True, generator=gen))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(train_labels[data.source_indices("train")].tolist())
    red = _red_channel(images, data)
    colors = torch.tensor([_color(int(label)) for label in labels], dtype=torch.float32)
    # crops may show zero padding (resident path) but the image's own pixels keep their class color
    assert torch.all((red - colors[:, None, None]).abs().amin(dim=(1, 2)) < 0.6)
    assert not _cache_files(tmp_path) if streaming else len(_cache_files(tmp_path)) == 1


def test_imagefolder_uses_val_when_no_test(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", eval_name="val", test_per_class=1)
    data = load_data(f"imagefolder:{root}", _opts(tmp_path))
    assert data.split_size("test") == 3


def test_imagefolder_image_size_and_mixed_sizes(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", train_per_class=2, test_per_class=1)
    _write_png(root / "train" / "ant" / "big.png", 0, (20, 16), 9)
    with pytest.raises(DataError, match="image_size"):
        load_data(f"imagefolder:{root}", _opts(tmp_path))
    data = load_data(f"imagefolder:{root}", _opts(tmp_path, image_size=8))
    assert data.input_size == (3, 8, 8)
    assert next(data.batches("train", batch_size=4, train=True))[0].shape == (4, 3, 8, 8)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nowhere'}", _opts(tmp_path))
    (tmp_path / "no_train").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        load_data(f"imagefolder:{tmp_path / 'no_train'}", _opts(tmp_path))
    (tmp_path / "no_classes" / "train").mkdir(parents=True)
    (tmp_path / "no_classes" / "test").mkdir()
    with pytest.raises(DataError, match="class folder"):
        load_data(f"imagefolder:{tmp_path / 'no_classes'}", _opts(tmp_path))
    root = _write_tree(tmp_path / "no_eval", eval_name="holdout")
    with pytest.raises(DataError, match="no test/ or val/"):
        load_data(f"imagefolder:{root}", _opts(tmp_path))
    root = _write_tree(tmp_path / "mismatch")
    (root / "test" / "cat").rename(root / "test" / "cow")
    with pytest.raises(DataError, match="only in train: \\['cat'\\]"):
        load_data(f"imagefolder:{root}", _opts(tmp_path))


# ------------------------------------------------------------------------------ cache


def test_cache_reuse_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_tree(tmp_path / "tree", train_per_class=3, test_per_class=1)
    real_decode = imagefolder_module.decode_images
    calls: list[int] = []

    def counting_decode(paths: Any, image_size: Any, workers: int = 4) -> np.ndarray:
        calls.append(len(paths))
        return real_decode(paths, image_size, workers)

    monkeypatch.setattr(imagefolder_module, "decode_images", counting_decode)
    spec, options = f"imagefolder:{root}", _opts(tmp_path)
    first = load_data(spec, options)
    assert len(calls) == 2 and len(_cache_files(tmp_path)) == 1
    cache = _cache_files(tmp_path)[0]
    mtime = cache.stat().st_mtime_ns

    second = load_data(spec, options)
    assert len(calls) == 2 and cache.stat().st_mtime_ns == mtime
    assert torch.equal(_tensors(first, "train")[0], _tensors(second, "train")[0])

    changed = root / "train" / "bee" / "000.png"
    _write_png(changed, 2, (12, 10), 0)  # now red like a "cat"
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))
    third = load_data(spec, options)
    assert len(calls) == 4
    assert not torch.equal(_tensors(first, "train")[0], _tensors(third, "train")[0])
    assert _cache_files(tmp_path) != [cache] and len(_cache_files(tmp_path)) == 1

    _write_png(root / "train" / "ant" / "new.png", 0, (12, 10), 5)
    fourth = load_data(spec, options)
    assert len(calls) == 6 and fourth.split_size("train") + fourth.split_size("val") == 10


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_tree(tmp_path / "tree", train_per_class=2, test_per_class=1)

    def failing_decode(*args: Any, **kwargs: Any) -> np.ndarray:
        raise DataError("decode failed")

    with monkeypatch.context() as patch:
        patch.setattr(imagefolder_module, "decode_images", failing_decode)
        with pytest.raises(DataError, match="decode failed"):
            load_data(f"imagefolder:{root}", _opts(tmp_path))
    assert _cache_files(tmp_path) == []

    def failing_savez(handle: Any, **arrays: Any) -> None:
        handle.write(b"PK partial")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", failing_savez)
        data = load_data(f"imagefolder:{root}", _opts(tmp_path))  # a failed cache write is not fatal
    assert data.split_size("test") == 3
    assert _cache_files(tmp_path) == []


def test_corrupt_cache_is_redecoded(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", train_per_class=2, test_per_class=1)
    load_data(f"imagefolder:{root}", _opts(tmp_path))
    (cache,) = _cache_files(tmp_path)
    cache.write_bytes(b"not a zip file")
    data = load_data(f"imagefolder:{root}", _opts(tmp_path))
    assert data.split_size("test") == 3
    assert np.load(cache, allow_pickle=False)["train_x"].shape == (6, 3, 10, 12)


# -------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(tmp_path: Path) -> None:
    data = load_data("builtin", _opts(tmp_path))
    cpu = list(data.batches("train", batch_size=128, train=True, generator=torch.Generator().manual_seed(1)))
    cuda = list(
        data.batches(
            "train", batch_size=128, train=True, device="cuda", generator=torch.Generator().manual_seed(1)
        )
    )
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu, cuda):
        assert x_gpu.device.type == "cuda" and y_gpu.device.type == "cuda"
        torch.testing.assert_close(x_gpu.cpu(), x_cpu)
        assert torch.equal(y_gpu.cpu(), y_cpu)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, y = next(
        data.batches("train", batch_size=64, train=True, device="cuda", generator=gen, channels_last=True)
    )
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) and len(y) == 64
    assert _tensors(data, "train")[0].device.type == "cpu"
    assert isinstance(data, ResidentDataset) and data.tensors("train", "cuda")[0].is_cuda
