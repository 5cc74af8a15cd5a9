"""The ``reasonings`` table: every chain ever produced (every attempt), the training sets they form, their
statistics, and the index of cached soft labels.

A chain row's columns and vocabulary are defined here, and so is, once, the SQL meaning of the chain concepts:

- :data:`FINAL` — the last attempt of its retry sequence (the one that counts);
- :data:`OUTCOME` — ``failed`` (no valid prediction), ``predicted`` (no gold label), ``correct`` or ``wrong``;
- :data:`TEACHER_SET` — D_t: the teacher's final, valid chains whose Prediction is the gold label, from stage 1
  (predict, correct) or stage 2 (explain, written given the gold label);
- :data:`ASSISTANT_SET` — D_a: the assistant's final, valid expansion chains whose Prediction is the gold label.

``valid`` means one thing for every source: the output parsed into the five fields with a valid label (a label
answer: a label was found). Whether it is *correct* is derived from ``prediction`` and the sample's label.
Rows are built by :func:`mulcot.chains.chain_row`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mulcot.errors import StoreError
from mulcot.store.connection import Connection, equals, from_json, now, to_json

REASONING_COLUMNS = (
    "sample_id", "source", "model", "stage", "prompt_version", "raw", "text", "fields", "prediction",
    "parse_status", "valid", "attempt", "final", "tokens_in", "tokens_out", "cost_usd", "latency_s", "run_id",
    "error", "origin", "created_at",
)

# who wrote a chain (other names, e.g. student-gguf, are allowed and sort after these)
SOURCES = ("teacher", "assistant", "student")
# why it was written: stage 1 (predict, explain), stage 3 (expand), and evaluation (eval: a chain from P_cot;
# label: an answer to P_label; probe: an answer to P_label about a changed post, a modality probe's, which probe in
# its origin)
PREDICT, EXPLAIN, EXPAND, EVAL, LABEL, PROBE = "predict", "explain", "expand", "eval", "label", "probe"
STAGES = (PREDICT, EXPLAIN, EXPAND, EVAL, LABEL, PROBE)  # chain stages (the pipeline's are recipes.PIPELINE_STAGES)
ANSWERS = (LABEL, PROBE)  # stages whose rows are label answers, not chains: never a subject, reference or pair
OUTCOMES = ("correct", "wrong", "failed")

# The SQL of the chain concepts, over ``reasonings r JOIN samples s ON s.id = r.sample_id``.
FINAL = "r.final = 1"


def is_final(row: dict[str, Any]) -> bool:
    """:data:`FINAL` for a row already read (pure functions over rows use it): the last attempt of its sequence."""
    return row.get("final") in (1, True)



OUTCOME = (
    "CASE WHEN r.valid = 0 OR r.prediction IS NULL THEN 'failed' WHEN s.label IS NULL THEN 'predicted'"
    " WHEN r.prediction = s.label THEN 'correct' ELSE 'wrong' END"
)
_CORRECT = "r.valid = 1 AND r.prediction = s.label"
TEACHER_SET = f"r.source = 'teacher' AND r.stage IN ('{PREDICT}', '{EXPLAIN}') AND {FINAL} AND {_CORRECT}"
ASSISTANT_SET = f"r.source = 'assistant' AND r.stage = '{EXPAND}' AND {FINAL} AND {_CORRECT}"
_JOIN = "reasonings r JOIN samples s ON s.id = r.sample_id"
# One row per attempt (a unique index, m008): a second writer's copy of an attempt is ignored.
ATTEMPT_KEY = ("sample_id", "source", "model", "stage", "prompt_version", "run_id", "attempt")
_INSERT = (
    f"INSERT OR IGNORE INTO reasonings ({', '.join(REASONING_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in REASONING_COLUMNS)})"
)


def _row_values(row: dict[str, Any], stamp: str) -> list[Any]:
    unknown = set(row) - set(REASONING_COLUMNS)
    if unknown:
        raise StoreError(f"unknown reasoning columns: {sorted(unknown)}")
    out = []
    for col in REASONING_COLUMNS:
        v = row.get(col)
        if col == "fields" and isinstance(v, dict):
            v = to_json(v)
        elif col in ("valid", "final") and v is not None:
            v = int(bool(v))
        elif col == "valid" and row.get("parse_status") is not None:
            v = int(row["parse_status"] == "full")  # valid = parsed into the five fields with a valid label
        elif col == "final" and v is None:
            v = 1  # a chain outside a retry sequence is its own final attempt
        elif col == "created_at" and v is None:
            v = stamp
        out.append(v)
    return out


def _with_fields(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r["fields"] = from_json(r["fields"]) or {}
        out.append(r)
    return out


class ChainsMixin(Connection):
    """Writing and reading chains, D_t and D_a, per-dataset statistics, and the soft-label index."""

    def add_reasoning(self, **row: Any) -> int:
        """Store one chain (one attempt); returns its id. ``fields`` may be a dict; ``created_at`` defaults to now.
        An attempt already stored (same sample, source, model, stage, prompt version, run and attempt: another
        writer's copy) is left as it is and its id returned."""
        values = _row_values(row, now())
        with self.transaction():
            cur = self.db.execute(_INSERT, values)
            if cur.rowcount:
                return cur.lastrowid
            key = dict(zip(REASONING_COLUMNS, values, strict=True))
            found = self.db.execute(
                "SELECT id FROM reasonings WHERE sample_id = ? AND source = ? AND model IS ? AND stage = ?"
                " AND prompt_version IS ? AND run_id IS ? AND attempt IS ?",
                [key[c] for c in ATTEMPT_KEY],
            ).fetchone()
            return found[0]

    def add_reasonings(self, rows: Iterable[dict[str, Any]]) -> int:
        """Bulk-insert chains (``executemany`` in one transaction); returns how many were new. Same columns as
        :meth:`add_reasoning` (attempts already stored are left as they are)."""
        stamp = now()
        with self.transaction():
            return self.db.conn.executemany(_INSERT, (_row_values(row, stamp) for row in rows)).rowcount

    def reasoning_exists(self, sample_id: int, source: str, stage: str, raw: str, model: str | None) -> bool:
        rows = self.db.execute(
            "SELECT 1 FROM reasonings WHERE sample_id = ? AND source = ? AND stage = ? AND raw = ?"
            " AND model IS ? LIMIT 1",
            [sample_id, source, stage, raw, model],
        ).fetchall()
        return bool(rows)

    def reasonings(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        source: str | None = None,
        stage: str | None = None,
        sample_id: int | None = None,
        run_id: str | None = None,
        final_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Chains matching the filters, joined with their sample's dataset, split, key and gold label."""
        where, params = equals(("s.dataset", dataset), ("s.split", split), ("r.source", source), ("r.stage", stage),
                               ("r.sample_id", sample_id), ("r.run_id", run_id))
        if final_only:
            where.append(FINAL)
        sql = f"SELECT r.*, s.dataset, s.split, s.key, s.label AS gold FROM {_JOIN}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return _with_fields(self.db.query(sql + " ORDER BY r.id", params))

    def chain_progress(
        self,
        dataset: str,
        split: str | None,
        *,
        source: str,
        model: str | None,
        stage: str,
        prompt_version: str,
    ) -> dict[int, dict[str, Any]]:
        """Per sample: the number of attempts so far and the final chain (or None), for one source, model, stage
        and prompt version — what every resumable generator needs to know."""
        sql = f"""
            SELECT r.sample_id, COUNT(*) AS attempts, MAX(CASE WHEN {FINAL} THEN r.id END) AS final_id
            FROM {_JOIN}
            WHERE s.dataset = ? AND r.source = ? AND r.model IS ? AND r.stage = ? AND r.prompt_version IS ?
        """
        clauses, more = equals(("s.split", split))
        sql += "".join(f" AND {c}" for c in clauses) + " GROUP BY r.sample_id"
        params: list[Any] = [dataset, source, model, stage, prompt_version, *more]
        out: dict[int, dict[str, Any]] = {}
        finals = []
        for r in self.db.query(sql, params):
            out[r["sample_id"]] = {"attempts": r["attempts"], "final": None}
            if r["final_id"] is not None:
                finals.append(r["final_id"])
        for i in range(0, len(finals), 500):
            chunk = finals[i : i + 500]
            for r in self.db.query(
                f"SELECT id, sample_id, valid, prediction, parse_status FROM reasonings WHERE id IN "
                f"({', '.join('?' for _ in chunk)})",
                chunk,
            ):
                out[r["sample_id"]]["final"] = r
        return out

    def chain_counts(self, dataset: str, split: str, *, source: str, stage: str, run_id: str,
                     prompt_version: str) -> dict[int, int]:
        """Per sample, how many chains a run has already produced (for resuming sampled generation)."""
        return {
            r["sample_id"]: r["n"]
            for r in self.db.query(
                f"""
                SELECT r.sample_id, COUNT(*) AS n FROM {_JOIN}
                WHERE s.dataset = ? AND s.split = ? AND r.source = ? AND r.stage = ? AND r.run_id = ?
                  AND r.prompt_version IS ?
                GROUP BY r.sample_id
                """,
                [dataset, split, source, stage, run_id, prompt_version],
            )
        }

    def teacher_set(self, dataset: str, split: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """D_t (:data:`TEACHER_SET`) of a dataset, optionally one split and one teacher model."""
        clauses, params = equals(("s.dataset", dataset), ("s.split", split), ("r.model", model))
        sql = f"SELECT r.*, s.split, s.key, s.label AS gold FROM {_JOIN} WHERE {TEACHER_SET}"
        sql += "".join(f" AND {c}" for c in clauses)
        return _with_fields(self.db.query(sql + " ORDER BY r.sample_id, r.id", params))

    def assistant_set(self, dataset: str, split: str, run_id: str) -> list[dict[str, Any]]:
        """D_a (:data:`ASSISTANT_SET`) of one assistant run on a split."""
        return _with_fields(
            self.db.query(
                f"SELECT r.*, s.split, s.key, s.label AS gold FROM {_JOIN}"
                f" WHERE s.dataset = ? AND s.split = ? AND r.run_id = ? AND {ASSISTANT_SET} ORDER BY r.sample_id, r.id",
                [dataset, split, run_id],
            )
        )

    def pair_candidates(self, dataset: str, split: str) -> list[dict[str, Any]]:
        """Every chain of one split that may enter a preference pair (:mod:`mulcot.pairs`): every attempt of every
        source except label answers, in sample order, each with its sample's key and gold label, its
        :data:`OUTCOME`, ``chosen_set`` (1 when it is in D_t or D_a: :data:`TEACHER_SET`, :data:`ASSISTANT_SET`)
        and its human ratings: ``rating`` (the mean over its ratings of (faithfulness + usefulness) / 2; None when
        unrated) and ``ratings`` (how many)."""
        sql = f"""
            SELECT r.id, r.sample_id, r.source, r.model, r.stage, r.run_id, r.attempt, r.final, r.valid,
              r.prediction, r.parse_status, r.text, r.raw, s.split, s.key, s.label AS gold, {OUTCOME} AS outcome,
              CASE WHEN ({TEACHER_SET}) OR ({ASSISTANT_SET}) THEN 1 ELSE 0 END AS chosen_set,
              t.rating, COALESCE(t.n, 0) AS ratings
            FROM {_JOIN}
            LEFT JOIN (SELECT reasoning_id, AVG((faithfulness + usefulness) / 2.0) AS rating, COUNT(*) AS n
                       FROM ratings GROUP BY reasoning_id) t ON t.reasoning_id = r.id
            WHERE s.dataset = ? AND s.split = ? AND r.stage NOT IN ({', '.join(f"'{a}'" for a in ANSWERS)})
            ORDER BY r.sample_id, r.id
        """
        return list(self.db.query(sql, [dataset, split]))

    # -- soft labels -------------------------------------------------------------------------------------

    def soft_label_index(self, run_id: str, source: str | None = None) -> dict[str, dict[str, Any]]:
        """item key -> {shard, positions, k} for a distill run's cached soft labels (only those computed from
        ``source``, :func:`mulcot.train.soft_labels.cache_source`, when given)."""
        clauses, params = equals(("run_id", run_id), ("source", source))
        return {
            r["item_key"]: r
            for r in self.db.query(
                f"SELECT item_key, shard, positions, k FROM soft_labels WHERE {' AND '.join(clauses)}", params
            )
        }

    def add_soft_labels(self, run_id: str, shard: str, entries: Iterable[tuple[str, int, int]],
                        source: str | None = None) -> None:
        """Index one written shard: (item key, positions, k) per entry, computed from ``source``, all in one
        transaction (an entry from another source is replaced)."""
        stamp = now()
        with self.transaction():
            for key, positions, k in entries:
                self.db.execute(
                    "INSERT OR REPLACE INTO soft_labels (run_id, item_key, shard, positions, k, created_at, source)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [run_id, key, shard, positions, k, stamp, source],
                )

    # -- stats -------------------------------------------------------------------------------------------

    def dataset_stats(self, name: str) -> dict[str, Any]:
        """Counts per split and label, images found, and per reasoning source/stage: parse quality and
        agreement of the chain's Prediction with the gold label (final attempts only); D_t per split."""
        ds = self.require_dataset(name)  # type: ignore[attr-defined]
        splits: dict[str, dict[str, Any]] = {}
        for r in self.db.query(
            "SELECT split, label, COUNT(*) AS n, SUM(has_image) AS images FROM samples WHERE dataset = ?"
            " GROUP BY split, label ORDER BY split, label",
            [name],
        ):
            s = splits.setdefault(r["split"], {"samples": 0, "images": 0, "labels": {}})
            s["samples"] += r["n"]
            s["images"] += r["images"] or 0
            s["labels"][r["label"] or "unlabelled"] = r["n"]
        chains = [
            dict(r)
            for r in self.db.query(
                f"""
                SELECT r.source, r.stage, s.split, COUNT(*) AS chains,
                  COUNT(DISTINCT r.sample_id) AS samples,
                  SUM(r.parse_status = 'full') AS full, SUM(r.parse_status = 'partial') AS partial,
                  SUM(r.parse_status = 'none' OR r.parse_status IS NULL) AS unparsed,
                  SUM(r.prediction IS NOT NULL AND r.prediction = s.label) AS correct
                FROM {_JOIN}
                WHERE s.dataset = ? AND {FINAL}
                GROUP BY r.source, r.stage, s.split ORDER BY r.source, r.stage, s.split
                """,
                [name],
            )
        ]
        teacher_set = {
            r["split"]: r["n"]
            for r in self.db.query(
                f"SELECT s.split, COUNT(DISTINCT r.sample_id) AS n FROM {_JOIN} WHERE s.dataset = ? AND {TEACHER_SET}"
                " GROUP BY s.split",
                [name],
            )
        }
        attempts = self.db.execute(f"SELECT COUNT(*) FROM {_JOIN} WHERE s.dataset = ?", [name]).fetchone()[0]
        return {
            "dataset": name,
            "task": ds["task"],
            "format": ds["format"],
            "source": ds["source"],
            "samples": sum(s["samples"] for s in splits.values()),
            "splits": splits,
            "chains": chains,
            "teacher_set": teacher_set,
            "attempts": attempts,
        }
