"""A rationale judge (beyond the paper): an LLM scores chains on a small versioned rubric, tells whether the label
leaked into a chain's wording, and its agreement with people's ratings is measured. See :mod:`mulcot.judge.run`,
:mod:`mulcot.core.rubric` and :mod:`mulcot.judge.report`."""

from __future__ import annotations

from mulcot.core.rubric import CRITERIA, LEAKAGE_VERSION, RUBRIC_VERSION
from mulcot.judge.report import judge_report
from mulcot.judge.run import SOURCES, JudgeConfig, JudgeSummary, run_judge

__all__ = ["CRITERIA", "LEAKAGE_VERSION", "RUBRIC_VERSION", "SOURCES", "JudgeConfig", "JudgeSummary",
           "judge_report", "run_judge"]
