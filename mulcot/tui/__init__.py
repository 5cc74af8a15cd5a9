"""The chain browser (``mulcot tui``): a Textual app over the store. The app is a thin shell; the data comes from
the store's browsing methods (``Store.browse_*``) and ratings go through ``Store.add_rating``."""

from __future__ import annotations

from mulcot.tui.app import ChainBrowser
from mulcot.tui.state import Filters
from mulcot.tui.table import SampleTable

__all__ = ["ChainBrowser", "Filters", "SampleTable"]
