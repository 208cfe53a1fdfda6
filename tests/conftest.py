from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RANK_SEARCH_ROUND_TO", "1")  # the space default must not depend on the test CPU
# The thread policy of every rank-search process (rank_search.threads): waiting OpenMP threads
# sleep instead of spinning, so the suite does not collapse on a busy machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
