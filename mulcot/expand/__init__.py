"""Stage 3, data expansion: the trained assistant writes chains for the training split; the correct ones form D_a
(:mod:`~mulcot.expand.run`)."""

from mulcot.expand.run import ExpandConfig, ExpandSummary, expand

__all__ = ["ExpandConfig", "ExpandSummary", "expand"]
