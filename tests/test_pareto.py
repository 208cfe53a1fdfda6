"""Pareto sets, the fitted monotone front, budgets and selection (hand-built frames, no files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rank_search.analysis.pareto import (
    fit_front,
    noise_margin,
    non_dominated,
    pareto_front,
    resolve_budget,
    select_at_budget,
    selection_note,
)
from rank_search.errors import BudgetError, RankSearchError

DENSE = 1000


def trials(*rows: tuple) -> pd.DataFrame:
    """Rows ``(trial_id, macs, acc[, status[, epochs]])``; 4 epochs planned."""
    records = []
    for number, row in enumerate(rows):
        trial_id, macs, acc = row[:3]
        status = row[3] if len(row) > 3 else "completed"
        epochs = row[4] if len(row) > 4 else 4
        records.append({
            "trial_id": trial_id, "optuna_trial_number": number, "status": status, "epochs": epochs,
            "epochs_planned": 4, "macs": macs, "dense_macs": DENSE, "macs_fraction": macs / DENSE,
            "val_accuracy": acc, "tags": [],
            "fully_trained": status == "completed" and epochs >= 4 and not math.isnan(acc),
        })  # fmt: skip
    frame = pd.DataFrame(records)
    frame["optuna_trial_number"] = frame["optuna_trial_number"].astype("Int64")
    return frame


# --- non_dominated --------------------------------------------------------------------------------


def test_non_dominated_min_max() -> None:
    points = [[100, 0.7], [200, 0.8], [150, 0.6], [300, 0.8], [50, 0.5]]
    assert non_dominated(points, ["min", "max"]).tolist() == [0, 1, 4]


def test_ties_in_one_objective_keep_the_better_other() -> None:
    # same MACs: only the more accurate; same accuracy: only the cheaper
    points = [[100, 0.7], [100, 0.75], [200, 0.9], [250, 0.9]]
    assert non_dominated(points, ["min", "max"]).tolist() == [1, 2]


def test_exact_duplicates_first_or_all() -> None:
    points = [[100, 0.7], [200, 0.9], [100, 0.7], [200, 0.9], [300, 0.8]]
    assert non_dominated(points, ["min", "max"]).tolist() == [0, 1]
    assert non_dominated(points, ["min", "max"], duplicates="all").tolist() == [0, 1, 2, 3]


def test_mixed_directions_three_objectives() -> None:
    # (macs min, accuracy max, latency min)
    points = [[100, 0.8, 5.0], [100, 0.8, 4.0], [90, 0.7, 9.0], [120, 0.9, 9.0], [130, 0.85, 10.0]]
    assert non_dominated(points, ["min", "max", "min"]).tolist() == [1, 2, 3]
    # all maximize: the mirror image
    assert non_dominated([[1, 1], [2, 0], [0, 2], [0, 0]], ["max", "max"]).tolist() == [0, 1, 2]


def test_nan_rows_never_on_the_front_and_bad_arguments() -> None:
    assert non_dominated([[1, math.nan], [2, 0.5]], ["min", "max"]).tolist() == [1]
    assert non_dominated(np.empty((0, 2)), ["min", "max"]).tolist() == []
    with pytest.raises(ValueError, match="directions"):
        non_dominated([[1, 2]], ["min", "up"])
    with pytest.raises(ValueError, match="n x 3"):
        non_dominated([[1, 2]], ["min", "max", "min"])
    with pytest.raises(ValueError, match="duplicates"):
        non_dominated([[1, 2]], ["min", "max"], duplicates="last")


def test_pareto_front_only_fully_trained() -> None:
    frame = trials(
        ("a", 100, 0.70), ("b", 200, 0.80), ("c", 300, 0.85),
        ("stopped", 50, 0.99, "stopped", 1), ("failed", 40, math.nan, "failed", 0),
        ("running", 60, 0.99, "running", 2), ("short", 70, 0.99, "completed", 3),
        ("dup", 200, 0.80), ("dominated", 250, 0.75),
    )  # fmt: skip
    front = pareto_front(frame)
    assert front["trial_id"].tolist() == ["a", "b", "c"]  # "dup" duplicates "b": first kept
    assert pareto_front(frame, duplicates="all")["trial_id"].tolist() == ["a", "b", "dup", "c"]
    assert pareto_front(frame.iloc[3:7]).empty


# --- fitted front ---------------------------------------------------------------------------------


FRONT = (("a", 100, 0.60), ("b", 200, 0.70), ("c", 400, 0.72), ("d", 800, 0.80), ("x", 300, 0.65),
         ("y", 700, 0.71), ("s", 150, 0.95, "stopped", 1))  # fmt: skip


def test_fit_is_monotone_and_passes_through_the_front() -> None:
    fit = fit_front(trials(*FRONT), n_boot=100)
    assert fit.ok and fit.knots_macs.tolist() == [100, 200, 400, 800]
    assert np.allclose(fit.curve(fit.knots_macs), [0.60, 0.70, 0.72, 0.80])
    grid = np.geomspace(100, 2000, 300)
    values = fit.curve(grid)
    assert np.all(np.diff(values) >= -1e-12)
    assert np.all(values >= 0.60 - 1e-12) and np.all(values <= 0.80 + 1e-12)
    # piecewise linear in log(MACs): halfway in log between 200 and 400 is the mean
    assert fit.curve([math.sqrt(200 * 400)])[0] == pytest.approx(0.71)
    assert math.isnan(fit.curve([50])[0])  # nothing that cheap was trained


def test_fit_prediction_band_and_extrapolation() -> None:
    fit = fit_front(trials(*FRONT), n_boot=100, seed=1)
    inside = fit.predict(300)
    assert inside.ok and not inside.extrapolated and inside.message == ""
    assert inside.low <= inside.high and math.isfinite(inside.low)
    assert inside.low <= inside.accuracy + 1e-12
    above = fit.predict(5000)
    assert above.extrapolated and above.accuracy == pytest.approx(0.80) and "lower bound" in above.message
    below = fit.predict(10)
    assert math.isnan(below.accuracy) and "below the cheapest" in below.message
    again = fit_front(trials(*FRONT), n_boot=100, seed=1).predict(300)
    assert (again.low, again.high) == (inside.low, inside.high)  # seeded bootstrap


def test_fit_needs_three_front_points() -> None:
    fit = fit_front(trials(("a", 100, 0.6), ("b", 200, 0.7), ("c", 300, 0.65), ("s", 50, 0.9, "stopped", 1)))
    assert not fit.ok and "need >= 3" in fit.message and "have 2" in fit.message
    prediction = fit.predict(150)
    assert not prediction.ok and math.isnan(prediction.accuracy) and "need >= 3" in prediction.message
    assert np.isnan(fit.curve([150])).all() and np.isnan(fit.band([150])[0]).all()
    assert not fit_front(trials(("s", 50, 0.9, "stopped", 1))).ok


# --- budgets and selection ------------------------------------------------------------------------


def test_select_best_and_top_k_with_tie_breaks() -> None:
    frame = trials(
        ("a", 100, 0.60), ("b", 200, 0.75), ("c", 180, 0.75), ("d", 400, 0.90), ("e", 180, 0.75),
        ("stopped", 150, 0.99, "stopped", 1), ("running", 150, 0.99, "running", 2),
    )  # fmt: skip
    assert select_at_budget(frame, 250)["trial_id"].tolist() == ["c"]
    # equal accuracy: fewer MACs first, then the earlier trial
    assert select_at_budget(frame, 250, top=4)["trial_id"].tolist() == ["c", "e", "b", "a"]
    assert select_at_budget(frame, 1000, top=2)["trial_id"].tolist() == ["d", "c"]
    assert len(select_at_budget(frame, 1000, top=50)) == 5
    with pytest.raises(RankSearchError, match="--top"):
        select_at_budget(frame, 250, top=0)


def _with_uniform(frame: pd.DataFrame, uniform: str, val_size: float) -> pd.DataFrame:
    frame["tags"] = [["uniform"] if t == uniform else [] for t in frame["trial_id"]]
    frame["val_size"] = val_size
    return frame


def test_noise_margin_is_two_standard_errors_of_a_difference() -> None:
    assert noise_margin(0.5, 0.5, 2000) == pytest.approx(2 * math.sqrt(0.5 / 2000))
    assert noise_margin(0.46, 0.45, 2000) == pytest.approx(0.0315, abs=5e-4)
    assert noise_margin(0.46, 0.45, 2000, z=0) == 0


def test_uniform_starting_point_is_kept_unless_beaten_beyond_the_noise() -> None:
    """The evidence run's case: the best trial leads uniform by 1.4 points on 2,000 validation
    images (margin 3.2 points), so uniform is selected and the note says why; a lead beyond the
    margin, a search without a uniform trial, records without val_size or noise_z=0 select plain
    best-first."""
    rows = [("u", 500, 0.4495), ("s", 499, 0.4635), ("t", 500, 0.455), ("over", 600, 0.9)]
    chosen = select_at_budget(_with_uniform(trials(*rows), "u", 2000), 500, top=3)
    assert chosen["trial_id"].tolist() == ["u", "s", "t"]
    note = selection_note(chosen)
    assert note is not None and "trial s led it by 0.0140" in note and "2000 validation images" in note
    plain = select_at_budget(_with_uniform(trials(*rows), "u", 2000), 500, top=3, noise_z=0)
    assert plain["trial_id"].tolist() == ["s", "t", "u"] and selection_note(plain) is None
    bigger = select_at_budget(_with_uniform(trials(*rows), "u", 50_000), 500)
    assert bigger["trial_id"].tolist() == ["s"] and selection_note(bigger) is None  # margin 0.63 points
    far = [("u", 500, 0.40), ("s", 499, 0.46)]
    assert select_at_budget(_with_uniform(trials(*far), "u", 2000), 500)["trial_id"].tolist() == ["s"]
    assert select_at_budget(_with_uniform(trials(*rows), "none", 2000), 500)["trial_id"].tolist() == ["s"]
    unknown = _with_uniform(trials(*rows), "u", math.nan)
    assert select_at_budget(unknown, 500)["trial_id"].tolist() == ["s"]
    assert selection_note(select_at_budget(_with_uniform(trials(*rows), "s", 2000), 500)) is None


def test_budget_error_names_the_cheapest_fully_trained_trial() -> None:
    frame = trials(("a", 300, 0.6), ("cheap", 120, 0.5), ("stopped", 50, 0.9, "stopped", 1))
    with pytest.raises(BudgetError) as info:
        select_at_budget(frame, 100)
    message = str(info.value)
    assert "cheapest fully-trained is trial cheap (optuna #1)" in message
    assert "120 MACs" in message and "0.120 of dense" in message and "100 MACs (0.100 of dense)" in message
    with pytest.raises(BudgetError, match="no fully-trained trial yet"):
        select_at_budget(trials(("s", 50, 0.9, "stopped", 1)), 100)


def test_resolve_budget() -> None:
    assert resolve_budget(1000, fraction=0.25) == 250
    assert resolve_budget(1000, max_macs=123.0) == 123
    assert resolve_budget(1000) is None
    for kwargs in ({"fraction": 0.0}, {"max_macs": -1.0}, {"fraction": 0.5, "max_macs": 10.0}):
        with pytest.raises(RankSearchError):
            resolve_budget(1000, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RankSearchError, match="dense model's MACs are unknown"):
        resolve_budget(None, fraction=0.5)
