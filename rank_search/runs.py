"""Reading a ``rank-search train`` run directory back: its trained model.

Below the export, measurement and analysis code that all read runs (:mod:`rank_search.onnx_export`,
:mod:`rank_search.analysis.spectra`, which re-exports :func:`load_run_model`); above the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import load_rank_config
from .errors import RankSearchError

if TYPE_CHECKING:
    from torch import nn


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, str]:
    """The trained model of a ``rank-search train`` run directory and its model name.

    Reads ``config.json`` (rank config) and ``model.pt`` (state dict, ``weights_only``).
    """
    import torch

    run = Path(run_dir)
    if not run.is_dir():
        raise RankSearchError(f"{run}: not a run directory (expected config.json and model.pt)")
    config_path, weights_path = run / "config.json", run / "model.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise RankSearchError(f"{path}: not found; is {run} a `rank-search train` run directory?")
    config = load_rank_config(config_path)
    model = config.build()
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # pickle errors, wrong keys or shapes
        raise RankSearchError(f"{weights_path}: cannot load into the model of config.json: {exc}") from None
    return model, config.model.name
