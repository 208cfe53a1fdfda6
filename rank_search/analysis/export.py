"""Exporting the best configs: moved to :mod:`rank_search.search.export` (the search writes
``best.json`` at its end without importing analysis); re-exported here."""

from __future__ import annotations

from ..search.export import export_best as export_best
from ..search.export import export_rows as export_rows
from ..search.export import output_paths as output_paths
from ..search.export import provenance as provenance
from ..search.export import trial_rank_config as trial_rank_config
