"""Load trained weights into a registry model.

Sources, tried in this order:

* a run folder of ours (``rank-search train``: ``config.json`` + ``model.pt``): the run's model
  is rebuilt, its weights loaded and every low-rank layer multiplied back to a dense one, so a
  factorized run can seed a new decomposition;
* a file holding a plain state dict (torchvision weights files are one);
* a file holding a checkpoint dict with the state dict under ``state_dict``, ``model``,
  ``model_state_dict``, ``net`` or ``weights``.

Every file is read with ``torch.load(weights_only=True)``: loading never executes code. Wrapper
prefixes (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``) are stripped
when every key carries them; a rename map (``{"linear": "fc"}``) renames key prefixes for heads
named differently. A mismatch is one :class:`WeightsError` naming the missing, unexpected and
mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RankSearchError

__all__ = [
    "CHECKPOINT_KEYS",
    "WRAPPER_PREFIXES",
    "WeightsError",
    "load_weights",
    "parse_rename",
    "read_state_dict",
]

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 4  # keys named per kind of mismatch
OPTIONAL_SUFFIX = "num_batches_tracked"  # older checkpoints lack it; only momentum=None reads it


class WeightsError(RankSearchError):
    """Trained weights that cannot be read or do not fit the model."""


def parse_rename(pairs: Any, key: str = "rename") -> dict[str, str]:
    """A rename map from ``{"old": "new"}`` or ``["old=new", ...]`` (CLI form)."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    elif isinstance(pairs, list | tuple):
        items = []
        for text in pairs:
            old, sep, new = str(text).partition("=")
            if not sep or not old:
                raise WeightsError(f"{key}: expected OLD=NEW, got {text!r}")
            items.append((old, new))
    else:
        raise WeightsError(f"{key}: expected a mapping or a list of OLD=NEW, got {type(pairs).__name__}")
    return {str(old).strip(): str(new).strip() for old, new in items}


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsafe globals, truncated zip
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot read weights with weights_only=True: {reason}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_state_dict(inner):
                return dict(inner)
        shown = ", ".join(sorted(map(str, obj))[:8])
        raise WeightsError(
            f"{path}: no state dict found (looked for a dict of tensors, or one under "
            f"{', '.join(CHECKPOINT_KEYS)}; top-level keys: {shown})"
        )
    raise WeightsError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")


def _run_folder_state(folder: Path) -> dict[str, Tensor]:
    """A run folder's final weights as a dense state dict (low-rank layers multiplied back)."""
    from ..config import load_rank_config
    from ..layers import low_rank_modules

    config = load_rank_config(folder / "config.json")
    model = config.build()
    state = _unwrap(_torch_load(folder / "model.pt"), folder / "model.pt")
    _check_keys(model, state, folder / "model.pt")
    model.load_state_dict(state)
    for name, module in low_rank_modules(model):
        model.set_submodule(name, module.to_dense())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_state_dict(source: str | Path) -> dict[str, Tensor]:
    """The state dict held by ``source`` (a run folder, a state-dict or a checkpoint file)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model.pt").is_file() or not (path / "config.json").is_file():
            raise WeightsError(
                f"{path}: a folder must be a finished rank-search run (config.json and model.pt)"
            )
        return _run_folder_state(path)
    return _unwrap(_torch_load(path), path)


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _rename(state: Mapping[str, Tensor], rename: Mapping[str, str]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in rename.items():
            if key == old or key.startswith(old + "."):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _check_keys(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_listed(unexpected)}")
    if shapes:
        parts.append(f"mis-shaped {len(shapes)}: {_listed(shapes)}")
    hint = ""
    if unexpected and missing:
        hint = " (a head named differently? pass a rename such as linear=fc)"
    raise WeightsError(f"{source}: weights do not fit the model: {'; '.join(parts)}{hint}")


def load_weights(
    model: nn.Module, source: str | Path, *, rename: Mapping[str, str] | None = None
) -> nn.Module:
    """Load the trained weights of ``source`` into the dense ``model`` (in place) and return it."""
    state = _rename(_strip_wrappers(read_state_dict(source)), rename or {})
    _check_keys(model, state, source)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return model
