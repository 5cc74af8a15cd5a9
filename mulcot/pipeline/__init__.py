"""The whole pipeline (layer 4 of the house plan): a recipe run stage after stage, and what surrounds it.

- :mod:`~mulcot.pipeline.recipes`: the TOML recipe, validated on load (``bundled/`` holds the shipped ones);
- :mod:`~mulcot.pipeline.runner`: :func:`run_recipe` / :class:`Pipeline`, one stage after another, resumable;
- :mod:`~mulcot.pipeline.demo`: the embedded sample in a store;
- :mod:`~mulcot.pipeline.doctor`: what this machine can do, and what to fix.
"""

from mulcot.pipeline.runner import Pipeline, PipelineResult, StageOutcome, run_recipe

__all__ = ["Pipeline", "PipelineResult", "StageOutcome", "run_recipe"]
