"""Dataset importers and exporters (TomBERT TSV, MVSA raw and CLMLF JSON, the authors' JSON, JSONL)."""

from mulcot.datasets.importer import FORMATS, ImportAborted, ImportReport, import_dataset
from mulcot.datasets.writers import EXPORT_FORMATS, export_dataset

__all__ = ["EXPORT_FORMATS", "FORMATS", "ImportAborted", "ImportReport", "export_dataset", "import_dataset"]
