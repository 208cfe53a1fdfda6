"""Loading a search directory: moved to :mod:`rank_search.search.results` (the search reads
back its own output, and selects from it, without importing analysis); re-exported here."""

from __future__ import annotations

from ..search.results import INT_COLUMNS as INT_COLUMNS
from ..search.results import RAW_RANK_COLUMNS as RAW_RANK_COLUMNS
from ..search.results import REQUIRED_TRIAL_KEYS as REQUIRED_TRIAL_KEYS
from ..search.results import SEARCH_FORMAT as SEARCH_FORMAT
from ..search.results import SEARCH_VERSION as SEARCH_VERSION
from ..search.results import TRIAL_STATUSES as TRIAL_STATUSES
from ..search.results import AshaSettings as AshaSettings
from ..search.results import SearchDirError as SearchDirError
from ..search.results import SearchManifest as SearchManifest
from ..search.results import SearchResults as SearchResults
from ..search.results import flat_for_csv as flat_for_csv
from ..search.results import has_tag as has_tag
from ..search.results import layer_order as layer_order
from ..search.results import learning_curves as learning_curves
from ..search.results import load_manifest as load_manifest
from ..search.results import load_search as load_search
from ..search.results import load_trial_records as load_trial_records
from ..search.results import rank_ratio as rank_ratio
from ..search.results import ratio_columns as ratio_columns
from ..search.results import read_json as read_json
from ..search.results import status_counts as status_counts
from ..search.results import trials_frame as trials_frame
