from __future__ import annotations

import os
from pathlib import Path

import pytest

from mulcot.store import Store

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the project (../shared/data); tests using it skip when it is absent."""
    if not (SHARED_DATA / "twitter2015").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "mulcot.db")
    yield s
    s.close()


def dump(store_or_path: Store | Path) -> list[str]:
    """Every row of every table, as SQL text (to compare a store before and after)."""
    if isinstance(store_or_path, Store):
        return list(store_or_path.db.conn.iterdump())
    with Store(store_or_path, migrate=False) as s:
        return list(s.db.conn.iterdump())


@pytest.fixture(scope="session")
def compact_model(tmp_path_factory):
    """``compact_model(family)``: a tiny random-weight model on the compact 4k vocabulary (fast to train on the
    CPU), built once per session."""
    from mulcot.models import build_tiny

    built: dict[str, Path] = {}

    def get(family: str = "qwen2.5-vl", seed: int = 0) -> Path:
        if (family, seed) not in built:
            out = tmp_path_factory.mktemp(f"compact-{family}-{seed}") / "model"
            built[(family, seed)] = build_tiny(out, family, seed=seed, vocab="compact")
        return built[(family, seed)]

    return get


@pytest.fixture
def demo_store(tmp_path) -> Store:
    """A store holding the embedded sample with its teacher chains (D_t: 34 train, 12 dev, 12 test)."""
    from mulcot.demo import run_demo

    s = Store.open(tmp_path / "mulcot.db")
    run_demo(s)
    yield s
    s.close()
