"""The embedded sample in a store, teacher chains included: the starting point of tests, benchmarks and the TUI's
examples (``mulcot demo`` itself runs the whole pipeline through the bundled tiny-cpu recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mulcot.datasets import ImportReport, import_dataset
from mulcot.sample import SAMPLE_DIR, SAMPLE_NAME
from mulcot.store import Store


@dataclass
class DemoResult:
    dataset: str
    imports: list[ImportReport]
    stats: dict[str, Any]


def run_demo(store: Store, name: str = SAMPLE_NAME) -> DemoResult:
    """Import the embedded sample (samples, then the authors' teacher chains) and return its statistics."""
    samples = import_dataset(store, "twitter-tsv", SAMPLE_DIR, name=name)
    chains = import_dataset(store, "mulcot-json", SAMPLE_DIR / "chains", name=name, images=SAMPLE_DIR / "images")
    return DemoResult(dataset=name, imports=[samples, chains], stats=store.dataset_stats(name))
