"""Loading search directories, the analyze pipeline, its files and figures, and clear errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.searchdir import PLANNED, T, config_dict, make_run_dir, make_search_dir, one_torch_thread

from rank_search.analysis.pipeline import analyze, compute_analysis, make_figures, summary
from rank_search.analysis.redundancy import layer_importance, partial_spearman, spearman
from rank_search.analysis.results import AshaSettings, SearchDirError, load_search
from rank_search.analysis.spectra import LayerSpectrum, layer_spectra, load_run_model, spectra_table
from rank_search.cli import main
from rank_search.config import load_rank_config
from rank_search.errors import RankSearchError

FIGURES = ("pareto", "allocation", "redundancy", "learning_curves", "spectra")
FRONT_IDS = ["t001", "t004", "t005", "t003", "t000"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_search_dir(tmp_path_factory.mktemp("analysis") / "search")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def analyzed(search_dir: Path, run_dir: Path) -> tuple[Path, dict[str, list[Path]]]:
    """The CLI run once on the standard directory with a run for spectra."""
    code = main(["analyze", str(search_dir), "--budget", "0.5", "--run", str(run_dir), "--bootstrap", "50"])
    assert code == 0
    out = search_dir / "analysis"
    return out, {name: [out / f"{name}.png", out / f"{name}.pdf"] for name in FIGURES}


# --- the trials frame -----------------------------------------------------------------------------


def test_frame_has_one_row_per_trial_with_the_documented_columns(search_dir: Path) -> None:
    results = load_search(search_dir)
    frame = results.trials.set_index("trial_id")
    assert len(frame) == 12
    for column in ("optuna_trial_number", "status", "epochs", "epochs_planned", "fully_trained", "tags",
                   "macs", "dense_macs", "macs_fraction", "params", "val_accuracy", "best_val_accuracy",
                   "wall_time_s", "regularizer", "regularizer_weight", "format:layer1.0.conv1",
                   "rank:layer1.0.conv1", "rank_in:layer1.0.conv1", "rank_out:layer1.0.conv1",
                   "svd_rank:fc", "param:scale", *(f"val_accuracy@{e}" for e in range(1, PLANNED + 1)),
                   ):  # fmt: skip
        assert column in frame.columns, column
    assert frame["fully_trained"][frame["fully_trained"]].index.tolist() == [
        "t001", "t002", "t003", "t004", "t005", "t006", "t000"]  # fmt: skip
    assert pd.isna(frame.loc["t000", "optuna_trial_number"]) and frame.loc["t005", "optuna_trial_number"] == 5
    assert frame.loc["t002", "rank:layer2.0.conv2"] == 0.5 and frame.loc["t000", "rank:fc"] == 1.0
    assert frame.loc["t005", "format:fc"] == "svd" and frame.loc["t005", "svd_rank:fc"] == 5
    assert frame.loc["t002", "format:fc"] == "dense" and math.isnan(frame.loc["t002", "svd_rank:fc"])
    assert frame.loc["t005", "macs"] == config_dict("A")["cost"]["macs"]
    assert frame.loc["t002", "macs_fraction"] == pytest.approx(15030912 / 40551040)
    assert frame.loc["t001", "tags"] == ["uniform"]
    assert frame.loc["t008", "val_accuracy@2"] == 0.99 and math.isnan(frame.loc["t008", "val_accuracy@3"])
    # per-layer columns in network (execution) order
    layers = [c.removeprefix("rank:") for c in results.trials.columns if c.startswith("rank:")]
    assert (
        layers[0] == "conv1"
        and layers[-1] == "fc"
        and layers.index("layer1.0.conv2") < layers.index("layer2.0.conv1")
    )
    assert layers == results.layers


def test_asha_rungs() -> None:
    assert AshaSettings(True, 1, 2).rungs(4) == [1, 2]
    assert AshaSettings(True, 1, 3).rungs(10) == [1, 3, 9]
    assert AshaSettings(True, 2, 3).rungs(6) == [2]
    assert AshaSettings(False, 1, 3).rungs(10) == []


# --- the pipeline and its files -------------------------------------------------------------------


def test_analyze_writes_tables_figures_and_report(analyzed: tuple[Path, dict[str, list[Path]]]) -> None:
    out, figures = analyzed
    csv = pd.read_csv(out / "trials.csv")
    assert {"trial_id", "status", "epochs", "macs", "dense_macs", "params", "val_accuracy"} <= set(
        csv.columns
    )
    assert len(csv) == 12
    assert pd.read_parquet(out / "trials.parquet")["trial_id"].tolist() == csv["trial_id"].tolist()
    assert pd.read_csv(out / "pareto.csv")["trial_id"].tolist() == FRONT_IDS
    assert pd.read_csv(out / "top.csv")["trial_id"].tolist()[:3] == ["t005", "t006", "t004"]
    for png, pdf in figures.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    expected = (
        "t005",
        "20,275,520 MACs",
        "0.500 of dense",
        "fitted accuracy at the budget",
        "dense val accuracy",
        "best uniform within budget (t002)",
        "Per-layer sensitivity",
    )
    for text in expected:
        assert text in html, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["fully_trained"] == 7 and summary["trials"]["running"] == 1
    assert summary["best_at_budget"][0]["trial_id"] == "t005"
    assert summary["prediction_at_budget"]["accuracy"] == pytest.approx(0.85, abs=0.01)
    assert summary["dense"]["val_accuracy"] == 0.92
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_pareto_and_plot_data(search_dir: Path) -> None:
    analysis = compute_analysis(search_dir, max_macs=20_275_520, importance=False, n_boot=30)
    assert analysis.front["trial_id"].tolist() == FRONT_IDS
    assert analysis.fit.ok and analysis.prediction is not None and analysis.prediction.ok
    assert analysis.baselines.dense_accuracy == 0.92
    assert analysis.baselines.uniform["trial_id"].tolist() == ["t001", "t002", "t003"]
    assert analysis.rungs == [1, 2]
    # allocation: the chosen trial against the uniform ratio at (about) the same MACs
    allocation = analysis.allocation
    assert allocation is not None and allocation.trial_id == "t005"
    assert allocation.layers["layer"].tolist() == analysis.results.layers
    assert abs(allocation.uniform_macs / allocation.chosen_macs - 1) < 0.05
    assert allocation.layers["uniform"].iloc[1:-1].between(0.5, 0.7).all()
    # redundancy over the best 25% (at least 3) fully-trained trials
    assert sorted(analysis.distribution["trial_id"].unique()) == ["t000", "t003", "t005"]
    assert len(analysis.distribution) == 3 * len(analysis.results.layers)
    sens = analysis.sensitivity.set_index("layer")
    assert sens.loc["layer1.0.conv1", "spearman"] > 0.5 and sens.loc["layer1.0.conv1", "n"] == 7
    # learning curves: every epoch that has a value, running and stopped trials included
    curves = analysis.curves
    assert curves[curves["trial_id"] == "t008"]["epoch"].tolist() == [1, 2]
    assert "t009" not in set(curves["trial_id"])  # failed at epoch 0


def test_every_figure_renders_on_edge_cases(tmp_path: Path) -> None:
    """Two front points (no fit), no dense or uniform trial, no budget: still every figure."""
    trials = [T("a", "u0.25", acc=0.6, number=0), T("b", "A", acc=0.7, number=1),
              T("c", "B", "stopped", acc=0.5, epochs=1, number=2),
              T("d", "u0.5", "failed", epochs=0, number=3)]  # fmt: skip
    directory = make_search_dir(tmp_path / "s", trials, budget_macs=None, asha={"enabled": False})
    analysis = compute_analysis(directory, importance=False)
    assert not analysis.fit.ok and analysis.prediction is None and analysis.chosen_id == "b"
    figures = make_figures(analysis)
    assert set(figures) == {"pareto", "allocation", "redundancy", "learning_curves"}
    for fig in figures.values():
        fig.savefig(tmp_path / "f.png")
        assert (tmp_path / "f.png").stat().st_size > 5000


def test_analyze_a_running_search(tmp_path: Path) -> None:
    trials = [T("r1", "A", "running", acc=0.99, epochs=2, number=0),
              T("r2", "B", "running", epochs=0, number=1),
              T("c1", "u0.5", acc=0.7, number=2), T("c2", "u0.25", acc=0.6, number=3)]  # fmt: skip
    directory = make_search_dir(tmp_path / "s", trials, status="running")
    analysis, written = analyze(directory, importance=False, n_boot=20)
    assert analysis.front["trial_id"].tolist() == ["c2", "c1"]
    assert analysis.counts["running"] == 2 and analysis.chosen_id == "c1"
    assert written["report"][0].is_file() and "running" in written["report"][0].read_text()


def test_record_without_macs_is_kept_off_the_front(tmp_path: Path) -> None:
    trials = [T("a", "u0.25", acc=0.6, number=0), T("b", "u0.5", acc=0.7, number=1),
              T("c", "u0.75", acc=0.8, number=2)]  # fmt: skip
    directory = make_search_dir(tmp_path / "s", trials)
    record = json.loads((directory / "trials" / "c.json").read_text())
    record["macs"] = None
    (directory / "trials" / "c.json").write_text(json.dumps(record))
    analysis = compute_analysis(directory, budget_fraction=1.0, importance=False, n_boot=10)
    frame = analysis.results.trials.set_index("trial_id")
    assert not frame.loc["c", "fully_trained"] and math.isnan(frame.loc["c", "macs"])
    assert analysis.front["trial_id"].tolist() == ["a", "b"]
    assert analysis.selection["trial_id"].tolist()[0] == "b"
    make_figures(analysis)["pareto"].savefig(tmp_path / "p.png")


def test_analyze_an_interrupted_search_over_budget(tmp_path: Path) -> None:
    trials = [T("a", "u0.75", acc=0.8, number=0), T("b", "A", "stopped", acc=0.6, epochs=1, number=1)]
    directory = make_search_dir(tmp_path / "s", trials, status="interrupted")
    info = summary(compute_analysis(directory, budget_fraction=0.2, importance=False))
    assert info["search_status"] == "interrupted" and info["best_at_budget"] == []
    assert "cheapest fully-trained is trial a (optuna #0)" in info["selection_error"]
    assert info["fit"]["ok"] is False and info["trials"]["stopped"] == 1


# --- malformed and empty directories --------------------------------------------------------------


def _break(directory: Path, how: str) -> str:
    """Damage a fresh search dir; return the file name the error must mention."""
    manifest = directory / "search.json"
    if how == "no_manifest":
        manifest.unlink()
        return "search.json"
    if how == "bad_json":
        manifest.write_text('{"format": ')
        return "search.json"
    if how == "wrong_format":
        manifest.write_text(json.dumps({"format": "something-else", "version": 1}))
        return "search.json"
    if how == "wrong_version":
        manifest.write_text(json.dumps({"format": "rank-search/search", "version": 7}))
        return "search.json"
    trial = directory / "trials" / "t1.json"
    if how == "no_trials":
        trial.unlink()
        return "trials"
    if how == "bad_trial_json":
        trial.write_text("{not json")
        return "t1.json"
    data = json.loads(trial.read_text())
    if how == "missing_key":
        del data["rank_config"]
    elif how == "bad_status":
        data["status"] = "paused"
    trial.write_text(json.dumps(data))
    return "t1.json"


REASONS = {"no_manifest": "search.json not found", "bad_json": "malformed JSON", "wrong_format": "format",
           "wrong_version": "unsupported version", "no_trials": "no trial records",
           "bad_trial_json": "malformed JSON", "missing_key": "rank_config",
           "bad_status": "unknown status"}  # fmt: skip


@pytest.mark.parametrize("how", list(REASONS))
def test_malformed_directories_give_clear_errors(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_search_dir(tmp_path / "s", [T("t1", "u0.5", acc=0.5)])
    name = _break(directory, how)
    with pytest.raises(SearchDirError) as info:
        load_search(directory)
    assert name in str(info.value) and REASONS[how] in str(info.value)
    assert isinstance(info.value, RankSearchError)
    assert main(["analyze", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and "Traceback" not in err


def test_not_a_directory_and_no_trials_dir(tmp_path: Path) -> None:
    with pytest.raises(SearchDirError, match="not a directory"):
        load_search(tmp_path / "nope")
    directory = make_search_dir(tmp_path / "s", [])
    (directory / "trials").rmdir()
    with pytest.raises(SearchDirError, match="no trials directory"):
        load_search(directory)


# --- redundancy, importance and spectra -----------------------------------------------------------


def test_spearman_helpers() -> None:
    x = np.array([1.0, 2, 3, 4, 5])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(5))) and math.isnan(spearman(x[:2], x[:2]))
    # y follows z (total MACs) plus a part that only x explains: the partial correlation finds it
    z = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    x = np.array([0.0, 1, 0, 1, 0, 1, 0, 1])
    y = z + 1.5 * x
    assert partial_spearman(x, y, z) > 0.8 > spearman(x, y)
    assert math.isnan(partial_spearman(x, z, z))  # nothing left of y once z is removed
    importances = {"ratio:layer1.0.conv1": 0.3, "layer1.0.conv1.rank_in": 0.1, "ratio:layer1.0.conv10": 0.5}
    assert layer_importance("layer1.0.conv1", importances) == pytest.approx(0.4)
    assert math.isnan(layer_importance("conv1", importances))
    assert math.isnan(layer_importance("fc", {"ratio:conv1": 1.0}))


def test_optuna_importances_from_a_real_study(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    from rank_search.analysis.redundancy import optuna_importances
    from rank_search.analysis.results import load_manifest

    directory = make_search_dir(tmp_path / "s", [T("t1", "u0.5", acc=0.5)])
    storage = f"sqlite:///{directory / 'optuna.db'}"
    study = optuna.create_study(study_name="fixture-study", storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    for _ in range(12):
        trial = study.ask()
        a, b = (
            trial.suggest_float("ratio:layer1.0.conv1", 0.1, 1.0),
            trial.suggest_float("ratio:fc", 0.1, 1.0),
        )
        study.tell(trial, a + 0.01 * b + 0.001 * rng.normal())
    importances, note = optuna_importances(load_manifest(directory))
    assert importances is not None and "fANOVA" in note
    assert importances["ratio:layer1.0.conv1"] > importances["ratio:fc"]
    missing = make_search_dir(tmp_path / "m", [T("t1", "u0.5", acc=0.5)])
    assert optuna_importances(load_manifest(missing))[0] is None
    assert not (missing / "optuna.db").exists()  # never created by looking


def test_spectra_of_a_trained_run(run_dir: Path, tmp_path: Path) -> None:
    model, name = load_run_model(run_dir)
    spectra = layer_spectra(model)
    table = spectra_table(spectra).set_index("layer")
    assert name == "resnet20" and len(spectra) == 20 and spectra[0].layer == "conv1"
    config = config_dict("A")["layers"]
    for layer in ("layer1.0.conv1", "layer3.2.conv2"):
        rank_out = config[layer]["rank_out"]
        assert table.loc[layer, "source"] == "to_dense" and table.loc[layer, "config_rank"] == rank_out
        assert table.loc[layer, "erank90"] <= table.loc[layer, "erank99"] <= rank_out
    assert table.loc["fc", "format"] == "svd" and table.loc["fc", "erank99"] <= 5
    spectrum = LayerSpectrum("x", "dense", "weight", np.array([3.0, 1.0, 0.1]), None)
    assert [spectrum.effective_rank(p) for p in (0.85, 0.99, 1.0)] == [1, 2, 3]
    with pytest.raises(RankSearchError, match=r"config\.json: not found"):
        load_run_model(run_dir.parent)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(RankSearchError, match=r"model\.pt: not found"):
        load_run_model(partial)


def test_figures_and_report_include_spectra(analyzed: tuple[Path, dict[str, list[Path]]]) -> None:
    out, _ = analyzed
    spectra = pd.read_csv(out / "spectra.csv")
    assert {"layer", "erank90", "erank99", "source", "run"} <= set(spectra.columns)
    assert "Spectra: run" in (out / "report.html").read_text()


# --- import hygiene and a real search -------------------------------------------------------------


def test_data_modules_do_not_import_matplotlib_or_optuna() -> None:
    modules = ("results", "pareto", "redundancy", "spectra", "allocation", "baselines", "pipeline")
    imports = ", ".join(f"rank_search.analysis.{m}" for m in modules)
    check = "bad = [m for m in ('matplotlib', 'optuna', 'ray') if m in sys.modules]; assert not bad, bad"
    code = f"import sys, {imports}; {check}"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_on_a_real_tiny_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rank-search search` for real (3 trials x 2 epochs of the quickstart), then analyze and export."""
    runner = pytest.importorskip("rank_search.search.runner")
    if not hasattr(runner, "run_search"):
        pytest.skip("rank_search.search has no run_search yet")
    out = tmp_path / "search"
    overrides = ["--set", "trials=3", "--set", "epochs_per_trial=2", "--set", "asha.enabled=false"]
    assert main(["search", "quickstart", "-o", str(out), *overrides]) == 0
    analysis, written = analyze(out, importance=True, n_boot=20)
    assert len(analysis.results.trials) == 3 and written["report"][0].is_file()
    assert set(analysis.results.trials["status"]) == {"completed"}
    assert analysis.results.trials["fully_trained"].all()
    assert main(["export", str(out), "--budget", "1.0", "-o", str(tmp_path / "best.json")]) == 0
    exported = load_rank_config(tmp_path / "best.json")
    assert exported.provenance["study"] == analysis.results.manifest.study_name
    # the search's own best.json and the export agree: one selection rule, one provenance
    own = load_rank_config(out / "best.json")
    assert own.provenance["trial_id"] == exported.provenance["trial_id"]
    assert own.provenance["source"] == exported.provenance["source"] == "rank-search search"


def test_allocation_reference_is_the_searchs_uniform_starting_point(tmp_path: Path) -> None:
    """With the space file at hand the reference is uniform_sample at the search's budget: the
    search's own uniform trial, never over the budget."""
    from rank_search.search.budget import uniform_sample
    from rank_search.search.space import load_space, resolve_space

    space_path = Path(__file__).resolve().parents[1] / "spaces" / "cifar-resnet.yaml"
    directory = make_search_dir(tmp_path / "s", space=str(space_path))
    results = load_search(directory)
    budget = results.manifest.budget_macs
    assert budget is not None
    analysis = compute_analysis(directory, importance=False, n_boot=10)
    allocation = analysis.allocation
    assert allocation is not None and "search's uniform starting point" in allocation.uniform_source
    raw = results.manifest.raw
    res = resolve_space(
        load_space(space_path), raw["model"], list(results.layer_infos.values()), input_size=(3, 32, 32)
    )
    expected = res.macs(uniform_sample(res, budget))
    assert allocation.uniform_macs == expected <= budget
    assert allocation.uniform_macs >= 0.99 * budget


def test_few_trials_hide_correlations_and_label_what_is_shown(tmp_path: Path) -> None:
    from rank_search.analysis.redundancy import best_trials_label

    trials = [
        T("a", "u0.25", acc=0.6, number=0),
        T("b", "A", acc=0.7, number=1),
        T("c", "B", acc=0.65, number=2),
        T("d", "u0.5", acc=0.8, number=3),
    ]
    directory = make_search_dir(tmp_path / "s", trials)
    analysis = compute_analysis(directory, importance=False, n_boot=10)
    assert analysis.sensitivity["spearman"].isna().all()
    assert analysis.sensitivity["partial_spearman"].isna().all()
    assert set(analysis.sensitivity["n"]) == {4}
    label = best_trials_label(analysis.results.trials, 0.25)
    assert label.startswith("best 3 of 4 fully-trained trials")
    assert analysis.distribution["trial_id"].nunique() == 3
    out = tmp_path / "out"
    analyze(directory, out_dir=out, importance=False, n_boot=10)
    assert "Only 4 fully-trained trials" in (out / "report.html").read_text()
