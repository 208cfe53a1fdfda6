from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RANK_SEARCH_ROUND_TO", "1")  # the space default must not depend on the test CPU
