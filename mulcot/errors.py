"""Typed errors. Anything derived from `MulcotError` is a user error: the CLI prints its message on one line
and exits non-zero, without a traceback."""

from __future__ import annotations


class MulcotError(Exception):
    """A problem the user can fix; `str(err)` is the one-line message shown to them."""

    exit_code = 1


class DataError(MulcotError):
    """Bad input data: names the file, the row (1-based line) and the problem."""

    exit_code = 2

    def __init__(self, problem: str, file: str | None = None, row: int | None = None, field: str | None = None):
        self.problem = problem
        self.file = file
        self.row = row
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = str(self.file)
            if self.row is not None:
                where += f":{self.row}"
            where += ": "
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}{field}{self.problem}"


class StoreError(MulcotError):
    """The store cannot be opened or is inconsistent."""


class StoreBusyError(StoreError):
    """Another process held the store's write lock past the busy timeout; trying the write again may succeed."""


class NotFoundError(MulcotError):
    """A named dataset, run or file does not exist."""


class MetricsError(MulcotError):
    """Evaluation inputs or metric settings are unusable (length mismatch, unknown metric, missing model)."""


class WordNetMissingError(MetricsError):
    """nltk's WordNet (needed by METEOR) is not installed; the message carries the one-line fix."""


class ModelError(MulcotError):
    """A model, or a tool needed to load or convert it, cannot be found, loaded or used (unsupported family,
    missing optional package, llama.cpp converter unavailable)."""


class ExportError(ModelError):
    """An export step (merge, convert, quantize, manifest) failed; names the step. What earlier steps produced is
    kept, and running the same export again resumes from the failed step."""

    def __init__(self, step: str, problem: str):
        self.step = step
        self.problem = problem
        super().__init__(f"export failed at step '{step}': {problem}")
