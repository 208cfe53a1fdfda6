"""`rank-search export` and :func:`export_best`: right trial, files, provenance, exact rebuild."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.searchdir import T, config_dict, make_search_dir, one_torch_thread

from rank_search.analysis.export import export_best, output_paths
from rank_search.analysis.pareto import resolve_budget
from rank_search.analysis.results import load_search
from rank_search.cli import main
from rank_search.config import load_rank_config, rank_config_from_dict
from rank_search.errors import BudgetError


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_search_dir(tmp_path_factory.mktemp("export") / "search")


@pytest.fixture(scope="module")
def exported(search_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The top 3 at half the dense MACs."""
    results = load_search(search_dir)
    budget = resolve_budget(results.dense_macs, fraction=0.5)
    assert budget is not None
    return export_best(results, budget, tmp_path_factory.mktemp("out") / "cfg.json", top=3)


def test_export_best_at_budget_with_provenance(search_dir: Path, exported: list[Path]) -> None:
    provenance = json.loads(exported[0].read_text())["provenance"]
    assert provenance["trial_id"] == "t005"  # ties with its duplicate t006: the earlier trial
    assert provenance["optuna_trial_number"] == 5
    assert provenance["val_accuracy"] == 0.85 and provenance["epochs"] == 4
    assert provenance["study"] == "fixture-study"
    assert provenance["search_dir"] == str(search_dir.resolve())
    dense = config_dict("dense")["cost"]["dense_macs"]
    assert provenance["budget_macs"] == dense // 2 and provenance["place"] == 1


def test_exported_json_rebuilds_the_trials_model_exactly(search_dir: Path, exported: list[Path]) -> None:
    record = json.loads((search_dir / "trials" / "t005.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CostMismatchWarning: the stored cost is exact
        config = load_rank_config(exported[0])
    original = rank_config_from_dict(record["rank_config"], validate=False)
    a, b = config.build(seed=0).state_dict(), original.build(seed=0).state_dict()
    assert [(k, tuple(v.shape)) for k, v in a.items()] == [(k, tuple(v.shape)) for k, v in b.items()]
    assert config.layers == original.layers and config.layers["fc"].format == "svd"
    assert config.cost is not None
    assert config.cost.macs == record["macs"] == record["rank_config"]["cost"]["macs"]
    assert config.cost.params == record["params"]


def test_export_top_k_files(exported: list[Path], tmp_path: Path) -> None:
    assert [p.name for p in exported] == ["cfg.json", "cfg-2.json", "cfg-3.json"]
    ids = [json.loads(p.read_text())["provenance"]["trial_id"] for p in exported]
    assert ids == ["t005", "t006", "t004"]
    assert [json.loads(p.read_text())["provenance"]["place"] for p in exported] == [1, 2, 3]
    folder = tmp_path / "out"
    folder.mkdir()
    assert [p.name for p in output_paths(folder, 2)] == ["best.json", "best-2.json"]


def test_budget_nobody_met_names_the_cheapest(search_dir: Path, tmp_path: Path) -> None:
    results = load_search(search_dir)
    with pytest.raises(BudgetError) as info:
        export_best(results, 0.1 * results.dense_macs, tmp_path / "best.json")  # type: ignore[operator]
    message = str(info.value)
    assert "trial t001 (optuna #1) with 4,972,160 MACs, 0.123 of dense" in message
    assert not (tmp_path / "best.json").exists()


def test_cli_export_and_its_errors(
    search_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "best.json"
    macs = config_dict("B")["cost"]["macs"]
    assert main(["export", str(search_dir), "--max-macs", str(macs), "-o", str(out)]) == 0
    assert "best.json" in capsys.readouterr().out
    assert json.loads(out.read_text())["provenance"]["trial_id"] == "t004"
    assert main(["export", str(search_dir), "--budget", "0.01", "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "t001" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing"), "--budget", "0.5"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a budget is required
        main(["export", str(search_dir)])


def test_export_from_a_running_search_ignores_unfinished_trials(tmp_path: Path) -> None:
    trials = [T("r1", "A", "running", acc=0.99, epochs=2, number=0), T("c1", "u0.5", acc=0.7, number=1),
              T("c2", "B", acc=0.75, epochs=3, number=2)]  # fmt: skip
    directory = make_search_dir(tmp_path / "running", trials, status="running")
    results = load_search(directory)
    [path] = export_best(results, results.dense_macs, tmp_path / "best.json")  # type: ignore[arg-type]
    assert json.loads(path.read_text())["provenance"]["trial_id"] == "c1"


def _outcomes(gain: int, loss: int, n: int = 2000) -> np.ndarray:
    """Half of ``n`` images right, then ``gain`` more right (from the end) and ``loss`` fewer."""
    v = np.zeros(n, dtype=bool)
    v[: n // 2] = True
    v[n - gain :] = True
    v[n // 2 - loss : n // 2] = False
    return v


def _tied_search(path: Path) -> Path:
    """The uniform trial and a searched one (config B) that leads it by 1 point on 2,000 images,
    120 wins against 100 losses (McNemar p = 0.10): statistically tied; a third (config A) that B
    beats on 40 images and loses to on none (p = 1e-12)."""
    return make_search_dir(
        path,
        [T("u", "u0.5", acc=0.50, tags=["uniform"], number=0, val_size=2000, outcomes=_outcomes(0, 0)),
         T("b", "B", acc=0.51, number=1, val_size=2000, outcomes=_outcomes(120, 100)),
         T("a", "A", acc=0.49, number=2, val_size=2000, outcomes=_outcomes(100, 120))],
    )  # fmt: skip


def test_export_picks_the_cheapest_tied_trial_and_says_why(tmp_path: Path) -> None:
    """best.json is the cheapest trial the best one does not beat by the paired test, the uniform
    point when the tied searched trial saves less than 10% (B: 5.6%); its provenance says which
    rule chose, with the tied trials and p-values."""
    results = load_search(_tied_search(tmp_path / "s"))
    costs = results.trials.set_index("trial_id")["macs"]
    assert 0.90 < costs["b"] / costs["u"] < 0.95
    path = export_best(results, results.dense_macs, tmp_path / "best.json")[0]
    provenance = json.loads(path.read_text())["provenance"]
    assert provenance["trial_id"] == "u"
    assert (
        "2 trials within the budget are statistically tied with the best trial b" in provenance["selection"]
    )
    assert "chose the uniform starting point, trial u" in provenance["selection"]
    detail = provenance["selection_detail"]
    assert detail["rule"] == "cheapest-tied" and sorted(detail["tied"]) == ["b", "u"]
    assert detail["p_values"]["a"] < 1e-9
    assert detail["p_values"]["u"] == pytest.approx(0.1002, abs=2e-3)
    path = export_best(results, results.dense_macs, tmp_path / "plain.json", alpha=0)[0]
    assert json.loads(path.read_text())["provenance"]["trial_id"] == "b"


def test_cli_export_prints_the_selection_and_takes_alpha(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    search = _tied_search(tmp_path / "s")
    args = ["export", str(search), "--budget", "1.0"]
    assert main([*args, "-o", str(tmp_path / "a.json")]) == 0
    assert "selection: 2 trials within the budget are statistically tied" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "b.json"), "--alpha", "0"]) == 0
    assert "selection: best val_accuracy within the budget: the paired test is off" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["provenance"]["trial_id"] == "b"
    assert main([*args, "-o", str(tmp_path / "c.json"), "--alpha", "-1"]) == 2
    assert "--alpha must be in [0, 1)" in capsys.readouterr().err
