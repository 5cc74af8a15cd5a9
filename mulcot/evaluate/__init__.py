"""Stage 5: evaluation of a model, or of stored chains, on a split (DESIGN.md §1 Stage 5).

- :mod:`~mulcot.evaluate.select`: what is evaluated (a model or a source of stored chains) and which chains and
  references stand for it;
- :mod:`~mulcot.evaluate.generate`: model mode, the chains generated and the label answers scored by forced choice
  (or generated) where missing (resumable);
- :mod:`~mulcot.evaluate.config`: :class:`EvalConfig` (one evaluation's settings) and :class:`EvalResult`;
- :mod:`~mulcot.evaluate.run`: :func:`evaluate`, gather → classify → score the reasoning → store and write;
- :mod:`~mulcot.metrics`: the classification and reasoning metrics;
- :mod:`~mulcot.evaluate.report`: the result's files, the paper's table row, :func:`compare_results`;
- :mod:`~mulcot.evaluate.files`: :func:`score_files` scores two files of chains.

No printing here: progress goes through callbacks.
"""

from mulcot.evaluate.config import METRIC_DEFINITIONS, EvalConfig, EvalResult
from mulcot.evaluate.files import FileScores, read_chain_file, score_files
from mulcot.evaluate.report import (
    PAPER_COLUMNS,
    compare_results,
    describe_result,
    list_results,
    paper_row,
    plot_confusion,
    posts_key,
    write_outputs,
)
from mulcot.evaluate.run import default_out_dir, evaluate, human_ratings
from mulcot.evaluate.select import (
    KNOWN_SOURCES,
    REFERENCE_STAGE_ORDER,
    RUN_KIND_SOURCE,
    STAGE_EVAL,
    STAGE_LABEL,
    SUBJECT_STAGE_ORDER,
    Subject,
    choose_group,
    resolve_chain_source,
    resolve_model,
    select_chains,
    select_references,
)
from mulcot.events import Progress

__all__ = [
    "KNOWN_SOURCES",
    "METRIC_DEFINITIONS",
    "PAPER_COLUMNS",
    "REFERENCE_STAGE_ORDER",
    "RUN_KIND_SOURCE",
    "STAGE_EVAL",
    "STAGE_LABEL",
    "SUBJECT_STAGE_ORDER",
    "EvalConfig",
    "EvalResult",
    "FileScores",
    "Progress",
    "Subject",
    "choose_group",
    "compare_results",
    "describe_result",
    "list_results",
    "posts_key",
    "default_out_dir",
    "evaluate",
    "human_ratings",
    "paper_row",
    "plot_confusion",
    "read_chain_file",
    "resolve_model",
    "resolve_chain_source",
    "score_files",
    "select_chains",
    "select_references",
    "write_outputs",
]
