"""Datasets and their samples (keyed by dataset, split and key; re-imports are idempotent)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mulcot.errors import NotFoundError
from mulcot.store.connection import Connection, from_json, now, to_json

# Sample columns that define a sample's content; a re-import that changes one of them counts as an update (and
# then also rewrites raw_text and meta, which alone do not: the same post may come from two formats).
SAMPLE_CONTENT = ("text", "aspect", "label", "image_name", "image_path", "image_sha256", "has_image")


@dataclass
class UpsertCounts:
    """What a sample upsert changed."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (split, key) -> sample id


class SamplesMixin(Connection):
    """The ``datasets`` and ``samples`` tables."""


    # -- datasets ----------------------------------------------------------------------------------------

    def get_dataset(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM datasets WHERE name = ?", [name]))
        return rows[0] if rows else None

    def require_dataset(self, name: str) -> dict[str, Any]:
        ds = self.get_dataset(name)
        if ds is None:
            names = ", ".join(d["name"] for d in self.list_datasets()) or "none yet"
            raise NotFoundError(f"no dataset named '{name}' in {self.path} (datasets: {names})")
        return ds

    def upsert_dataset(
        self, name: str, *, task: str, format: str, source: str, images_root: str | None, has_images: bool
    ) -> bool:
        """Create or refresh a dataset row; returns True when it was created."""
        existing = self.get_dataset(name)
        with self.transaction():
            if existing is None:
                self._insert(
                    "datasets",
                    {
                        "name": name, "task": task, "format": format, "source": source,
                        "images_root": images_root, "has_images": int(has_images), "created_at": now(),
                        "updated_at": now(),
                    },
                )
                return True
            has = int(bool(existing["has_images"]) or has_images)
            self._update(
                "datasets", "name", name,
                {"images_root": images_root or existing["images_root"], "has_images": has, "updated_at": now()},
            )
            return False

    def list_datasets(self) -> list[dict[str, Any]]:
        """Datasets with sample and chain counts."""
        return list(
            self.db.query(
                """
                SELECT d.*,
                  (SELECT COUNT(*) FROM samples s WHERE s.dataset = d.name) AS samples,
                  (SELECT COUNT(*) FROM reasonings r JOIN samples s ON s.id = r.sample_id
                     WHERE s.dataset = d.name) AS chains
                FROM datasets d ORDER BY d.name
                """
            )
        )

    # -- samples -----------------------------------------------------------------------------------------

    def upsert_samples(self, dataset: str, rows: Iterable[dict[str, Any]]) -> UpsertCounts:
        """Insert or update samples keyed by (dataset, split, key); must run inside :meth:`transaction`.

        Each row has ``split``, ``key`` and the columns of :data:`SAMPLE_CONTENT` (``meta`` optional). A stored
        caption is kept when an update keeps the sample's image.
        """
        counts = UpsertCounts()
        existing = {
            (r["split"], r["key"]): r for r in self.db.query("SELECT * FROM samples WHERE dataset = ?", [dataset])
        }
        stamp = now()
        for row in rows:
            ident = (row["split"], row["key"])
            content = {c: row.get(c) for c in SAMPLE_CONTENT}
            content["has_image"] = int(bool(content["has_image"]))
            extra = {"raw_text": row.get("raw_text") or row["text"], "meta": to_json(row.get("meta") or {})}
            old = existing.get(ident)
            if old is None:
                sid = self._insert(
                    "samples",
                    {"dataset": dataset, "split": row["split"], "key": row["key"], **content, **extra,
                     "created_at": stamp, "updated_at": stamp},
                )
                existing[ident] = {"id": sid, **content}
                counts.added += 1
            else:
                sid = old["id"]
                if any(old[c] != content[c] for c in SAMPLE_CONTENT):
                    kept = from_json(old.get("meta")) or {}
                    if "caption" in kept and old["image_sha256"] == content["image_sha256"]:
                        # a caption describes the image: it survives a re-import that keeps the image
                        caption = {k: kept[k] for k in ("caption", "caption_source") if k in kept}
                        extra["meta"] = to_json({**caption, **(row.get("meta") or {})})
                    self._update("samples", "id", sid, {**content, **extra, "updated_at": stamp})
                    existing[ident] = {"id": sid, **content}
                    counts.updated += 1
                else:
                    counts.unchanged += 1
            counts.ids[ident] = sid
        return counts

    def sample_ids(self, dataset: str) -> dict[tuple[str, str], int]:
        """(split, key) -> sample id for one dataset."""
        return {
            (r["split"], r["key"]): r["id"]
            for r in self.db.query("SELECT id, split, key FROM samples WHERE dataset = ?", [dataset])
        }

    def samples(
        self, dataset: str, split: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Samples of a dataset (optionally one split), in import order."""
        sql = "SELECT * FROM samples WHERE dataset = ?"
        params: list[Any] = [dataset]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        out = []
        for r in self.db.query(sql, params):
            r["meta"] = from_json(r["meta"]) or {}
            out.append(r)
        return out

    def get_sample(self, sample_id: int) -> dict[str, Any]:
        rows = list(self.db.query("SELECT * FROM samples WHERE id = ?", [sample_id]))
        if not rows:
            raise NotFoundError(f"no sample with id {sample_id}")
        rows[0]["meta"] = from_json(rows[0]["meta"]) or {}
        return rows[0]

    def set_caption(self, sample_id: int, caption: str | None, source: dict[str, Any] | None = None) -> None:
        """Store (or, with None, remove) a sample's image caption, ``meta["caption"]``: what a text-only
        backbone reads in place of the image. ``source`` is its provenance (e.g. the teacher model, prompt
        version, tokens and cost), kept as ``meta["caption_source"]`` and removed with the caption."""
        meta = self.get_sample(sample_id)["meta"]
        meta.pop("caption_source", None)
        if caption is None:
            meta.pop("caption", None)
        else:
            meta["caption"] = caption
            if source is not None:
                meta["caption_source"] = source
        with self.transaction():
            self._update("samples", "id", sample_id, {"meta": to_json(meta), "updated_at": now()})

    def splits(self, dataset: str) -> list[str]:
        return [
            r["split"]
            for r in self.db.query("SELECT DISTINCT split FROM samples WHERE dataset = ? ORDER BY split", [dataset])
        ]
