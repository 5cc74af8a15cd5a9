"""The ``judgements`` table (m011): an LLM judge's verdicts on chains (:mod:`mulcot.judge`) — rubric scores and
leakage guesses — and the chains a judge may be given.

One row per (chain, kind, rubric version, judge model): ``judged``, or ``failed`` with its error. Saving again
replaces a failed row (a rerun judges it again) and never a judged one, so a rerun never duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mulcot.store.connection import Connection, equals, from_json, now, to_json
from mulcot.store.reasonings import EXPLAIN, FINAL, LABEL, PREDICT

JUDGED, FAILED = "judged", "failed"
RUBRIC, LEAKAGE = "rubric", "leakage"
# who wrote a chain, as the judge groups them: the teacher's stage 1 (predict) and stage 2 (explain, written given
# the gold label) apart, then the other sources by name
GROUP = (f"CASE WHEN r.source = 'teacher' AND r.stage = '{PREDICT}' THEN 'stage1'"
         f" WHEN r.source = 'teacher' AND r.stage = '{EXPLAIN}' THEN 'stage2' ELSE r.source END")
# the browser's judge filter: a chain's rubric verdict, by its mean (good at 3.5, as mulcot.judge.report counts it)
JUDGE_BANDS = {
    "high": f"j.status = '{JUDGED}' AND j.mean >= 3.5",
    "mid": f"j.status = '{JUDGED}' AND j.mean >= 2.5 AND j.mean < 3.5",
    "low": f"j.status = '{JUDGED}' AND j.mean < 2.5",
    "failed": f"j.status = '{FAILED}'",
}
JUDGEMENT_COLUMNS = (
    "reasoning_id", "kind", "rubric_version", "judge_model", "status", "scores", "reasons", "mean", "label",
    "leaked", "error", "attempts", "http_retries", "tokens_in", "tokens_out", "cost_usd", "latency_s", "run_id",
    "created_at",
)
_KEY = ("reasoning_id", "kind", "rubric_version", "judge_model")
_SAVE = (
    f"INSERT INTO judgements ({', '.join(JUDGEMENT_COLUMNS)}) VALUES ({', '.join('?' for _ in JUDGEMENT_COLUMNS)})"
    f" ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in JUDGEMENT_COLUMNS if c not in _KEY)
    + f" WHERE judgements.status != '{JUDGED}'"
)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["scores"] = from_json(row.get("scores")) or {}
    row["reasons"] = from_json(row.get("reasons")) or {}
    return row


class JudgementsMixin(Connection):
    """Chains to judge, and the judge's verdicts."""

    def judge_candidates(self, dataset: str, *, split: str | None = None, groups: Iterable[str] | None = None,
                         limit: int | None = None) -> list[dict[str, Any]]:
        """The chains a judge may score: final, valid chains (label answers excluded) of ``dataset``, in id order,
        each with its ``group`` (:data:`GROUP`), parsed ``fields`` and its sample's text, aspect, image and gold
        label; ``groups`` keeps those groups only, ``limit`` the first N."""
        where, params = equals(("s.dataset", dataset), ("s.split", split))
        where += [FINAL, "r.valid = 1", f"r.stage != '{LABEL}'"]
        groups = list(groups) if groups is not None else None
        if groups is not None:
            where.append(f"({GROUP}) IN ({', '.join('?' for _ in groups)})")
            params += groups
        sql = (
            f"SELECT r.id, r.sample_id, r.source, r.model, r.stage, r.run_id, r.fields, r.prediction, ({GROUP}) AS"
            " grp, s.split, s.key, s.text, s.aspect, s.label AS gold, s.has_image, s.image_path"
            " FROM reasonings r JOIN samples s ON s.id = r.sample_id WHERE " + " AND ".join(where) + " ORDER BY r.id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = list(self.db.query(sql, params))
        for r in rows:
            r["fields"] = from_json(r["fields"]) or {}
            r["group"] = r.pop("grp")
        return rows

    def judged_ids(self, kind: str, rubric_version: str, judge_model: str) -> set[int]:
        """The chains this judge has judged (not failed) on this rubric version."""
        return {r[0] for r in self.db.execute(
            "SELECT reasoning_id FROM judgements WHERE kind = ? AND rubric_version = ? AND judge_model = ?"
            " AND status = ?", [kind, rubric_version, judge_model, JUDGED]).fetchall()}

    def save_judgement(self, **row: Any) -> None:
        """Store one verdict (``scores`` and ``reasons`` may be dicts); a failed row of the same chain, kind,
        version and judge is replaced, a judged one kept."""
        row = {**row, "created_at": row.get("created_at") or now()}
        for key in ("scores", "reasons"):
            if isinstance(row.get(key), dict):
                row[key] = to_json(row[key])
        if "leaked" in row and row["leaked"] is not None:
            row["leaked"] = int(bool(row["leaked"]))
        with self.transaction():
            self.db.execute(_SAVE, [row.get(c) for c in JUDGEMENT_COLUMNS])

    def judgements(self, *, dataset: str | None = None, split: str | None = None, kind: str | None = None,
                   reasoning_ids: list[int] | None = None, judge_model: str | None = None) -> list[dict[str, Any]]:
        """Verdicts in id order, each with its chain's ``group``, source, stage, prediction, and its sample's key,
        split and gold label; ``scores`` and ``reasons`` decoded."""
        where, params = equals(("s.dataset", dataset), ("s.split", split), ("j.kind", kind),
                               ("j.judge_model", judge_model))
        if reasoning_ids is not None:
            where.append(f"j.reasoning_id IN ({', '.join('?' for _ in reasoning_ids)})" if reasoning_ids else "0")
            params += reasoning_ids
        sql = (
            f"SELECT j.*, ({GROUP}) AS grp, r.source, r.stage, r.prediction, s.key, s.split, s.label AS gold"
            " FROM judgements j JOIN reasonings r ON r.id = j.reasoning_id JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = [_decoded(r) for r in self.db.query(sql + " ORDER BY j.id", params)]
        for r in rows:
            r["group"] = r.pop("grp")
        return rows

    def rated_judgements(self, *, dataset: str | None = None, split: str | None = None,
                         reasoning_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Per judged chain that people rated too, per judge model and rubric version: the judge's ``mean`` and the
        people's ``rating`` (the mean over its ratings of (faithfulness + usefulness) / 2) and ``ratings`` (how
        many); ``reasoning_ids`` keeps those chains only."""
        where, params = equals(("s.dataset", dataset), ("s.split", split))
        where.append(f"j.kind = '{RUBRIC}' AND j.status = '{JUDGED}'")
        if reasoning_ids is not None:
            where.append(f"j.reasoning_id IN ({', '.join('?' for _ in reasoning_ids)})" if reasoning_ids else "0")
            params += reasoning_ids
        sql = (
            "SELECT j.reasoning_id, j.judge_model, j.rubric_version, j.mean, t.rating, t.n AS ratings"
            " FROM judgements j JOIN reasonings r ON r.id = j.reasoning_id JOIN samples s ON s.id = r.sample_id"
            " JOIN (SELECT reasoning_id, AVG((faithfulness + usefulness) / 2.0) AS rating, COUNT(*) AS n"
            " FROM ratings GROUP BY reasoning_id) t ON t.reasoning_id = j.reasoning_id"
            " WHERE " + " AND ".join(where) + " ORDER BY j.reasoning_id"
        )
        return list(self.db.query(sql, params))

    def judge_means(self, reasoning_ids: list[int]) -> dict[int, float]:
        """Per chain, the mean rubric score over the judges that judged it (for preference pairs)."""
        if not reasoning_ids:
            return {}
        out: dict[int, float] = {}
        for i in range(0, len(reasoning_ids), 500):
            chunk = reasoning_ids[i: i + 500]
            for r in self.db.execute(
                f"SELECT reasoning_id, AVG(mean) FROM judgements WHERE kind = '{RUBRIC}' AND status = '{JUDGED}'"
                f" AND reasoning_id IN ({', '.join('?' for _ in chunk)}) GROUP BY reasoning_id", chunk
            ).fetchall():
                out[r[0]] = r[1]
        return out
