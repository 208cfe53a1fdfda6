from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RANK_SEARCH_ROUND_TO", "1")  # the space default must not depend on the test CPU
# The thread policy of every rank-search process (rank_search.threads): waiting OpenMP threads
# sleep instead of spinning, so the suite does not collapse on a busy machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Optuna's log handler binds sys.stderr when optuna is first imported. Imported first inside a test
# that captures stderr (capsys), it keeps that test's stream, closed after it: a later Optuna
# warning (a failed trial is told FAIL) then prints "--- Logging error ---" into another test's
# output (issue 21, the removed-data-root fault test). Import it here, under pytest's session capture.
import optuna  # noqa: F401
