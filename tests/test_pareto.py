"""Pareto sets, the fitted monotone front, budgets and selection (hand-built frames, no files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rank_search.analysis.pareto import (
    fit_front,
    non_dominated,
    pareto_front,
    resolve_budget,
    select_at_budget,
    selection_note,
    selection_summary,
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


def test_fit_is_isotonic_over_every_fully_trained_trial() -> None:
    """Pool-adjacent-violators by hand: sorted by MACs the accuracies are .60 .70 .65 .72 .71 .80;
    the two violating pairs pool to their means (.675, .715). Early-stopped trials are left out."""
    fit = fit_front(trials(*FRONT), n_boot=100)
    assert fit.ok and fit.knots_macs.tolist() == [100, 200, 300, 400, 700, 800]
    assert np.allclose(fit.knots_accuracy, [0.60, 0.675, 0.675, 0.715, 0.715, 0.80])
    grid = np.geomspace(100, 2000, 300)
    values = fit.curve(grid)
    assert np.all(np.diff(values) >= -1e-12)
    assert np.all(values >= 0.60 - 1e-12) and np.all(values <= 0.80 + 1e-12)
    # piecewise linear in log(MACs): halfway in log between 300 and 400 is the mean
    assert fit.curve([math.sqrt(300 * 400)])[0] == pytest.approx(0.695)
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


def test_fit_needs_three_fully_trained_trials_and_always_fits_with_them() -> None:
    """Three trials of which only two are non-dominated (the old envelope fit refused them), or
    three at the same cost: a front. Two fully-trained trials: none, and it says why."""
    fit = fit_front(trials(("a", 100, 0.6), ("b", 200, 0.7), ("c", 300, 0.65), ("s", 50, 0.9, "stopped", 1)))
    assert fit.ok and np.allclose(fit.knots_accuracy, [0.6, 0.675, 0.675])
    same = fit_front(trials(("a", 500, 0.6), ("b", 500, 0.7), ("c", 500, 0.65)))
    assert (
        same.ok
        and same.curve([500])[0] == pytest.approx(0.65)
        and same.curve([900])[0] == pytest.approx(0.65)
    )
    two = fit_front(trials(("a", 100, 0.6), ("b", 200, 0.7), ("s", 50, 0.9, "stopped", 1)))
    assert not two.ok and "need >= 3 fully-trained trials, have 2" in two.message
    prediction = two.predict(150)
    assert not prediction.ok and math.isnan(prediction.accuracy) and "need >= 3" in prediction.message
    assert np.isnan(two.curve([150])).all() and np.isnan(two.band([150])[0]).all()
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


def _paired(
    frame: pd.DataFrame, uniform: str, flips: dict[str, tuple[int, int]], n: int = 2000
) -> pd.DataFrame:
    """Give every trial per-image outcomes on the same ``n`` images: a shared base vector (half
    right), then for trial ``t`` with ``flips[t] = (gain, loss)`` ``gain`` wrong images made right
    and ``loss`` right images made wrong (disjoint per trial), so the discordant counts between
    any two trials are known exactly. ``val_accuracy`` is set from the outcomes."""
    base = np.zeros(n, dtype=bool)
    base[: n // 2] = True
    vectors, right, wrong = [], n // 2 - 1, n - 1  # take images from the ends, never twice
    for trial in frame["trial_id"]:
        gain, loss = flips.get(trial, (0, 0))
        v = base.copy()
        v[wrong - gain + 1 : wrong + 1] = True
        v[right - loss + 1 : right + 1] = False
        wrong, right = wrong - gain, right - loss
        vectors.append(v)
    frame["tags"] = [["uniform"] if t == uniform else [] for t in frame["trial_id"]]
    frame["val_size"] = float(n)
    frame["val_outcomes"] = vectors
    frame["val_accuracy"] = [float(v.mean()) for v in vectors]
    return frame


def test_mcnemar_against_a_known_result() -> None:
    """One-sided exact McNemar: 10 wins, 2 losses -> P(X >= 10 | n=12, 1/2) = 79/4096 (the
    two-sided textbook value is twice it, 0.0386); no discordant images -> 1."""
    from rank_search.outcomes import compare, decode_outcomes, encode_outcomes, mcnemar_p

    assert mcnemar_p(10, 2) == pytest.approx(79 / 4096, rel=1e-12)
    assert mcnemar_p(2, 10) == pytest.approx(1 - 13 / 4096, rel=1e-12)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3000, 2900) < 0.2 < mcnemar_p(3000, 2950)
    a = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1], dtype=bool)
    b = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=bool)
    result = compare(a, b)
    assert (result.wins, result.losses) == (3, 1) and result.p == pytest.approx(5 / 16)
    assert result.z == pytest.approx(2 / 2)
    packed = encode_outcomes(a)
    assert packed["n"] == 11 and np.array_equal(decode_outcomes(packed), a)
    assert decode_outcomes({"format": "bits-v1", "n": 30, "bits": packed["bits"]}) is None
    assert decode_outcomes(None) is None and decode_outcomes({"format": "other"}) is None


def test_tied_trials_export_the_cheapest() -> None:
    """The best trial leads the others by 5-10 of 2,000 images (p > 0.05): all tied, the cheapest
    within the budget is chosen and the note says why; the over-budget trial never counts."""
    rows = [("u", 500, 0), ("s", 499, 0), ("cheap", 340, 0), ("mid", 420, 0), ("over", 600, 0)]
    frame = _paired(trials(*rows), "u", {"s": (30, 20), "cheap": (20, 20), "mid": (25, 20), "over": (90, 0)})
    chosen = select_at_budget(frame, 500, top=4)
    assert chosen["trial_id"].tolist() == ["cheap", "mid", "s", "u"]  # chosen, then tied by cost
    note = selection_note(chosen)
    assert note is not None and "4 trials within the budget are statistically tied" in note
    assert "best trial s" in note and "chose the cheapest of them, trial cheap" in note
    detail = selection_summary(chosen)
    assert detail is not None and detail["rule"] == "cheapest-tied" and detail["chosen"] == "cheap"
    assert sorted(detail["tied"]) == ["cheap", "mid", "s", "u"]
    # alpha 0: plain best first, and the note says the test is off
    plain = select_at_budget(frame, 500, top=2, alpha=0)
    assert plain["trial_id"].tolist() == ["s", "mid"] and "paired test is off" in str(selection_note(plain))


def test_a_clearly_better_trial_is_chosen() -> None:
    """80 wins against 10 losses (p ~ 1e-15): the best trial beats every other, so it is chosen
    even though cheaper trials exist."""
    rows = [("u", 500, 0), ("s", 499, 0), ("cheap", 340, 0)]
    frame = _paired(trials(*rows), "u", {"s": (90, 10), "cheap": (10, 10)})
    chosen = select_at_budget(frame, 500, top=3)
    assert chosen["trial_id"].tolist()[0] == "s"
    assert "beats every other trial" in str(selection_note(chosen))
    assert selection_summary(chosen)["tied"] == ["s"]  # type: ignore[index]


def test_equal_costs_prefer_the_uniform_starting_point() -> None:
    """Searched configs are projected onto the budget, so tied trials often cost the same to 1%:
    then the uniform starting point is chosen, the note naming it."""
    rows = [("s", 500, 0), ("u", 497, 0), ("t", 499, 0)]
    frame = _paired(trials(*rows), "u", {"s": (25, 15), "t": (20, 15)})
    chosen = select_at_budget(frame, 500)
    assert chosen["trial_id"].tolist() == ["u"]
    assert "the uniform starting point" in str(selection_note(chosen))
    # without a uniform trial: the cheapest (by 1%: equal) goes by accuracy, then order
    frame = _paired(trials(*rows), "none", {"s": (25, 15), "t": (20, 15)})
    assert select_at_budget(frame, 500)["trial_id"].tolist() == ["s"]


def test_a_tied_config_must_save_ten_percent_to_replace_the_uniform_point() -> None:
    """The issue-20 rerun at 0.50: a tied config 3% cheaper than uniform lost 2.3 points in full
    training. Tied configs less than 10% cheaper than the uniform point do not replace it; one
    more than 10% cheaper does."""
    rows = [("u", 500, 0), ("s", 499, 0), ("aggressive", 487, 0)]
    frame = _paired(trials(*rows), "u", {"s": (30, 20), "aggressive": (20, 20)})
    chosen = select_at_budget(frame, 500, top=3)
    assert chosen["trial_id"].tolist()[0] == "u"
    assert "chose the uniform starting point, trial u" in str(selection_note(chosen))
    assert "no tied trial costs 10% less" in str(selection_note(chosen))
    rows = [("u", 500, 0), ("s", 499, 0), ("cheap", 440, 0)]
    frame = _paired(trials(*rows), "u", {"s": (30, 20), "cheap": (20, 20)})
    assert select_at_budget(frame, 500)["trial_id"].tolist() == ["cheap"]


def test_records_without_outcomes_select_plain_best() -> None:
    rows = [("u", 500, 0.4495), ("s", 499, 0.4635), ("t", 400, 0.455)]
    chosen = select_at_budget(trials(*rows), 500, top=3)
    assert chosen["trial_id"].tolist() == ["s", "t", "u"]
    assert "no per-image validation outcomes" in str(selection_note(chosen))
    with pytest.raises(RankSearchError, match="alpha"):
        select_at_budget(trials(*rows), 500, alpha=1.5)


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
