"""Sim embeddings kept on disk (:class:`EmbeddingCache`), so texts scored again are not embedded again.

Embeddings are keyed by the sha256 of the text under ``<cache root>/embeddings/<model>/``
(:func:`default_embedding_cache_dir`, :func:`sim_model_key`): the same teacher references come up in every
evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def default_embedding_cache_dir() -> Path:
    """``<mulcot cache root>/embeddings`` (``$MULCOT_CACHE``, else ``$XDG_CACHE_HOME/mulcot``, else
    ``~/.cache/mulcot``)."""
    from mulcot.core.llamacpp import cache_root

    return cache_root() / "embeddings"


def sim_model_key(model: Any) -> str | None:
    """A folder name identifying a Sim model loaded by :func:`~mulcot.metrics.sim.load_sim_model`: its
    source (folder or hub id), the sizes and times of its weight files, its maximum sequence length and the
    sentence-transformers version. None for a model of unknown origin (then nothing is cached)."""
    source = getattr(model, "_mulcot_source", None)
    if not isinstance(source, str):
        return None
    parts = [source, str(getattr(model, "max_seq_length", "")), _st_version()]
    folder = Path(source)
    if folder.is_dir():
        for pattern in ("**/*.safetensors", "**/pytorch_model.bin"):
            for f in sorted(folder.glob(pattern)):
                st = f.stat()
                parts.append(f"{f.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    tail = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.name or source)[-40:]
    if tail == "model" and folder.parent.name:  # the offline package keeps it in <package>/model
        tail = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.parent.name)[-40:]
    return f"{tail}-{digest}"


def _st_version() -> str:
    try:
        from importlib.metadata import version

        return version("sentence-transformers")
    except Exception:  # noqa: BLE001 - only part of a cache key
        return "?"


class EmbeddingCache:
    """Embeddings of one Sim model on disk, keyed by the sha256 of the text (UTF-8).

    One append-only file per model and dimension, ``<dir>/vectors-<dim>.f32``: fixed-size records of the
    32-byte digest followed by ``dim`` little-endian float32 (the model's normalised output, unchanged).
    Writers take an exclusive ``flock`` (where available) and append whole records; a torn last record (a
    killed writer) is ignored by readers and cut off by the next writer. Delete the folder to clear it.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self._memo: dict[bytes, Any] = {}
        self._read_size = 0
        self._dim: int | None = None

    @classmethod
    def for_model(cls, model: Any, root: str | os.PathLike[str] | None = None) -> EmbeddingCache | None:
        """The cache of a model from :func:`load_sim_model` under ``root`` (default
        :func:`default_embedding_cache_dir`); None when the model's origin is unknown."""
        key = sim_model_key(model)
        if key is None:
            return None
        return cls((Path(root) if root is not None else default_embedding_cache_dir()) / key)

    @staticmethod
    def digest(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def _file(self, dim: int) -> Path:
        return self.folder / f"vectors-{dim}.f32"

    def _existing_dim(self) -> int | None:
        if self._dim is None and self.folder.is_dir():
            files = sorted(self.folder.glob("vectors-*.f32"), key=lambda f: f.stat().st_mtime)
            if files:
                with contextlib.suppress(ValueError):
                    self._dim = int(files[-1].stem.split("-", 1)[1])
        return self._dim

    def _refresh(self) -> None:
        """Read the records appended since the last read."""
        import numpy as np

        dim = self._existing_dim()
        if dim is None:
            return
        path = self._file(dim)
        record = 32 + 4 * dim
        try:
            size = path.stat().st_size
        except OSError:
            return
        whole = size - size % record
        if whole <= self._read_size:
            return
        dtype = np.dtype([("key", "S32"), ("vec", "<f4", (dim,))])
        with path.open("rb") as fh:
            fh.seek(self._read_size)
            data = np.frombuffer(fh.read(whole - self._read_size), dtype=dtype)
        for key, vec in zip(data["key"], data["vec"], strict=True):
            self._memo[bytes(key).ljust(32, b"\0")] = vec
        self._read_size = whole

    def __len__(self) -> int:
        self._refresh()
        return len(self._memo)

    def get_many(self, texts: Iterable[str]) -> dict[str, Any]:
        """The cached embeddings (float32 arrays) of those texts that are in the cache."""
        self._refresh()
        out = {}
        for t in texts:
            vec = self._memo.get(self.digest(t))
            if vec is not None:
                out[t] = vec
        return out

    def put_many(self, texts: Sequence[str], vectors: Any) -> None:
        """Append the embeddings of ``texts`` (rows of ``vectors``); texts already cached are skipped. A cache
        folder that cannot be written to is left alone (caching is an optimisation)."""
        import numpy as np

        vectors = np.asarray(vectors, dtype="<f4")
        if len(texts) == 0 or vectors.ndim != 2 or vectors.shape[0] != len(texts):
            return
        dim = int(vectors.shape[1])
        if self._existing_dim() not in (None, dim):
            return  # another dimension for the same key: not this model after all
        dtype = np.dtype([("key", "S32"), ("vec", "<f4", (dim,))])
        keys = [self.digest(t) for t in texts]
        fresh = [i for i, k in enumerate(keys) if k not in self._memo]
        if not fresh:
            return
        records = np.empty(len(fresh), dtype=dtype)
        records["key"] = [keys[i] for i in fresh]
        records["vec"] = vectors[fresh]
        record = dtype.itemsize
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._file(dim)
            with path.open("ab") as fh:
                with _locked(fh):
                    size = fh.seek(0, os.SEEK_END)
                    if size % record:
                        fh.truncate(size - size % record)
                        fh.seek(0, os.SEEK_END)
                    fh.write(records.tobytes())
                    fh.flush()
        except OSError:
            return
        self._dim = dim
        for i, k in zip(fresh, records["key"], strict=True):
            self._memo[bytes(k).ljust(32, b"\0")] = vectors[i]


@contextlib.contextmanager
def _locked(fh: Any) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: appends only, no lock
        yield
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
