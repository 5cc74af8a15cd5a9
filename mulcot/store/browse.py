"""The TUI's read model: paged, filtered sample lists with per-source marks, one sample with its chains and retry
attempts, full-text search — and the one thing the browser writes: human ratings of chains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mulcot.errors import NotFoundError, StoreError
from mulcot.store.connection import Connection, equals, from_json, now
from mulcot.store.judgements import JUDGE_BANDS, RUBRIC
from mulcot.store.reasonings import FINAL, OUTCOME, OUTCOMES, SOURCES, STAGES, is_final


class SearchSyntaxError(StoreError):
    """A search the browser cannot run as typed (an ``OR`` with nothing on one side); the message says how."""


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: ``match``, the FTS5 query of the terms to find (excluded terms folded in with ``NOT``), or
    None when only excluded terms were typed; ``exclude``, the FTS5 query of the excluded terms; ``key``, the text
    when it may be a sample id (a single word with a digit in it)."""

    match: str | None
    exclude: str | None
    key: str | None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def parse_search(text: str) -> SearchQuery | None:
    """What a user typed as a full-text search, safely in FTS5's syntax. Words are all required (the last one also
    as a prefix: ``zyg`` finds zygote); ``"two words"`` is a phrase; ``OR`` (upper case) between two words or phrases
    takes either; ``-word``, ``-"a phrase"`` or ``NOT word`` excludes. Every word or phrase travels as a quoted
    FTS5 string, so no other FTS5 syntax (``NEAR(``, ``*``, ``^``, ``column:``) survives; a NUL is dropped, other
    control characters become spaces. None when nothing searchable is left (only punctuation). Raises
    :class:`SearchSyntaxError` for an ``OR`` without a term on each side."""
    text = _CONTROL.sub(" ", text.replace("\x00", ""))
    terms: list[tuple[str, bool, bool]] = []  # (FTS5 string, excluded, bare word)
    ors: list[int] = []  # term indexes an OR joins with the term before them
    pending_or = negate_next = False
    for m in _TOKEN.finditer(text):
        minus, phrase, word = m.group(1), m.group(2), m.group(3)
        if word == "OR":
            if not terms or pending_or:
                raise SearchSyntaxError("OR needs a word or phrase on each side, e.g. cat OR dog")
            pending_or = True
            continue
        if word in ("AND", "NOT"):
            negate_next = negate_next or word == "NOT"
            continue
        excluded = negate_next or bool(minus)
        if word is not None and word.startswith("-") and len(word) > 1:
            excluded, word = True, word[1:]
        body = phrase if phrase is not None else word
        negate_next = False
        if not any(ch.isalnum() for ch in body):
            continue  # punctuation only: nothing for the index to match
        if pending_or:
            if excluded or terms[-1][1]:
                raise SearchSyntaxError("OR joins words or phrases to find, not excluded ones (-word)")
            ors.append(len(terms))
            pending_or = False
        terms.append((_phrase(body), excluded, phrase is None))
    if pending_or:
        raise SearchSyntaxError("OR needs a word or phrase on each side, e.g. cat OR dog")
    if terms and not terms[-1][1] and terms[-1][2]:  # the last word typed is a prefix (results while typing)
        terms[-1] = (terms[-1][0] + "*", False, True)
    found = [i for i, t in enumerate(terms) if not t[1]]
    groups: list[list[str]] = []
    for i in found:
        if i in ors:
            groups[-1].append(terms[i][0])
        else:
            groups.append([terms[i][0]])
    wanted = " ".join(g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups)
    excluded = " OR ".join(t[0] for t in terms if t[1])
    if not wanted and not excluded:
        return None
    stripped = text.strip()
    # a sample id: one word with a digit in it (ids are numbers or codes; a plain word costs no id lookup)
    one_word = stripped and not any(ch.isspace() or ch == '"' for ch in stripped)
    key = stripped if one_word and any(ch.isdigit() for ch in stripped) else None
    if wanted and excluded:
        return SearchQuery(match=f"({wanted}) NOT ({excluded})", exclude=excluded, key=None)
    return SearchQuery(match=wanted or None, exclude=excluded or None, key=key if wanted else None)


class BrowseMixin(Connection):
    """Browsing and rating chains."""

    BROWSE_OUTCOMES = OUTCOMES
    SOURCE_ORDER = SOURCES
    STAGE_ORDER = STAGES

    @staticmethod
    def fts_query(text: str) -> str | None:
        """The FTS5 query of the terms to find in what a user typed (see :func:`parse_search`); None when nothing
        searchable is left."""
        parsed = parse_search(text)
        return parsed.match if parsed else None

    def _browse_where(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        gold: str | None = None,
        predicted: str | None = None,
        source: str | None = None,
        stage: str | None = None,
        outcome: str | None = None,
        run_id: str | None = None,
        judge: str | None = None,
        search: str | None = None,
    ) -> tuple[str, str, list[Any]]:
        """FROM and WHERE clauses over ``samples s`` and the column that orders the rows by sample id. A search
        joins the full-text index and is driven by it (its rowids come in sample-id order). Chain filters
        (source, run, stage, predicted label, outcome, judge score band) select the samples that have one final chain
        meeting them."""
        tables, where, params = "samples s", [], []
        if search is not None and search.strip():
            query = parse_search(search)
            if query is None:
                where.append("0")
            elif query.key is not None and self._key_exists(query.key, dataset, split):
                # an id typed alone finds its sample, besides the samples whose words match it
                where.append("(s.key = ? OR s.id IN (SELECT rowid FROM samples_fts WHERE samples_fts MATCH ?))")
                params += [query.key, query.match]
            elif query.match is not None:
                tables = "samples_fts f JOIN samples s ON s.id = f.rowid"
                where.append("samples_fts MATCH ?")
                params.append(query.match)
            else:  # only excluded terms
                where.append("s.id NOT IN (SELECT rowid FROM samples_fts WHERE samples_fts MATCH ?)")
                params.append(query.exclude)
        sample_clauses, sample_params = equals(("s.dataset", dataset), ("s.split", split), ("s.label", gold))
        chain, chain_params = equals(("r.source", source), ("r.run_id", run_id), ("r.stage", stage),
                                     ("r.prediction", predicted))
        where += sample_clauses
        params += sample_params + chain_params
        if outcome is not None:
            if outcome not in OUTCOMES:
                raise StoreError(f"unknown outcome '{outcome}': use {', '.join(OUTCOMES)}")
            chain.append(f"({OUTCOME}) = ?")
            params.append(outcome)
        if judge is not None:
            if judge not in JUDGE_BANDS:
                raise StoreError(f"unknown judge score band '{judge}': use {', '.join(JUDGE_BANDS)}")
            chain.append(f"EXISTS (SELECT 1 FROM judgements j WHERE j.reasoning_id = r.id AND j.kind = '{RUBRIC}'"
                         f" AND {JUDGE_BANDS[judge]})")
        if chain:
            where.append(
                f"EXISTS (SELECT 1 FROM reasonings r WHERE r.sample_id = s.id AND {FINAL}"
                " AND " + " AND ".join(chain) + ")"
            )
        return tables, " AND ".join(where) or "1", params

    def _key_exists(self, key: str, dataset: str | None, split: str | None) -> bool:
        clauses, params = equals(("dataset", dataset), ("split", split), ("key", key))
        return bool(self.db.execute(f"SELECT 1 FROM samples WHERE {' AND '.join(clauses)} LIMIT 1", params).fetchall())

    def browse_tree(self, *, chains: bool = True) -> list[dict[str, Any]]:
        """Datasets (name, task, samples, chains) each with its splits (split, samples, chains). Counting chains
        reads every chain's index entry; ``chains=False`` leaves them None (instant)."""
        tree: dict[str, dict[str, Any]] = {}
        for d in self.db.query("SELECT name, task FROM datasets ORDER BY name"):
            tree[d["name"]] = {"name": d["name"], "task": d["task"], "samples": 0, "chains": 0 if chains else None,
                               "splits": {}}
        for r in self.db.query("SELECT dataset, split, COUNT(*) AS n FROM samples GROUP BY dataset, split"):
            ds = tree.get(r["dataset"])
            if ds is not None:
                ds["splits"][r["split"]] = {"split": r["split"], "samples": r["n"], "chains": 0 if chains else None}
                ds["samples"] += r["n"]
        query = (
            "SELECT s.dataset, s.split, COUNT(*) AS n FROM reasonings r JOIN samples s ON s.id = r.sample_id"
            " GROUP BY s.dataset, s.split"
        )
        for r in self.db.query(query) if chains else []:
            ds = tree.get(r["dataset"])
            if ds is not None and r["split"] in ds["splits"]:
                ds["splits"][r["split"]]["chains"] = r["n"]
                ds["chains"] += r["n"]
        order = {"train": 0, "dev": 1, "test": 2}
        return [
            {**ds, "splits": sorted(ds["splits"].values(), key=lambda s: (order.get(s["split"], 3), s["split"]))}
            for ds in tree.values()
        ]

    def browse_choices(self) -> dict[str, list[str]]:
        """The values the chain filters can take in this store: sources, stages and run ids (all in use), and the
        judge score bands when a judge has scored chains (else none)."""

        def distinct(col: str) -> set[str]:  # a loose index scan: one index seek per distinct value
            return {
                r["v"]
                for r in self.db.query(
                    f"WITH RECURSIVE v(v) AS (SELECT MIN({col}) FROM reasonings UNION ALL"
                    f" SELECT (SELECT MIN({col}) FROM reasonings WHERE {col} > v.v) FROM v WHERE v.v IS NOT NULL)"
                    " SELECT v FROM v WHERE v IS NOT NULL"
                )
            }

        sources, stages, runs = distinct("source"), distinct("stage"), distinct("run_id")

        def ordered(values: set[str], first: tuple[str, ...]) -> list[str]:
            return [v for v in first if v in values] + sorted(values - set(first))

        judged = self.db.execute(f"SELECT 1 FROM judgements WHERE kind = '{RUBRIC}' LIMIT 1").fetchone()
        return {
            "sources": ordered(sources, self.SOURCE_ORDER),
            "stages": ordered(stages, self.STAGE_ORDER),
            "runs": sorted(runs),
            "judge": list(JUDGE_BANDS) if judged else [],
        }

    def browse_count(self, **filters: Any) -> int:
        """How many samples match the filters (see :meth:`browse_page`)."""
        tables, where, params = self._browse_where(**filters)
        return self.db.execute(f"SELECT COUNT(*) FROM {tables} WHERE {where}", params).fetchone()[0]

    def browse_page(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        after_id: int | None = None,
        before_id: int | None = None,
        from_end: bool = False,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """One page of the samples matching ``filters``, in id order, each with a text excerpt and ``marks``: per
        source, the outcome of its final chains (``wrong`` before ``failed`` before ``correct``; ``predicted`` when
        the sample has no gold label) and that chain's prediction.

        Filters: dataset, split, gold (label), predicted (label), source, run_id, stage, outcome (correct, wrong,
        failed), judge (a rubric score band of :data:`~mulcot.store.judgements.JUDGE_BANDS`) and search (free
        text over text, aspect and chains; any input is safe). Paging: ``offset`` rows
        after the start, or keyset — rows after ``after_id`` / the ``limit`` rows before ``before_id`` — or, with
        ``from_end``, the page ending ``offset`` rows before the last match (cheap near the end).
        """
        tables, where, params = self._browse_where(**filters)
        order = "f.rowid" if tables.startswith("samples_fts") else "s.id"
        descending = from_end or before_id is not None
        if after_id is not None:
            where += f" AND {order} > ?"
            params.append(after_id)
        if before_id is not None:
            where += f" AND {order} < ?"
            params.append(before_id)
        rows = list(
            self.db.query(
                "SELECT s.id, s.dataset, s.split, s.key, s.label, s.aspect, substr(s.text, 1, 240) AS text,"
                f" s.has_image FROM {tables} WHERE {where} ORDER BY {order} {'DESC' if descending else 'ASC'}"
                " LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
        )
        if descending:
            rows.reverse()
        marks = self._browse_marks([r["id"] for r in rows], stage=filters.get("stage"), run_id=filters.get("run_id"))
        for r in rows:
            r["marks"] = marks.get(r["id"], {})
        return rows

    def _browse_marks(
        self, sample_ids: list[int], *, stage: str | None = None, run_id: str | None = None
    ) -> dict[int, dict[str, dict[str, Any]]]:
        rank = {"wrong": 3, "failed": 2, "correct": 1, "predicted": 0}
        out: dict[int, dict[str, dict[str, Any]]] = {}
        if not sample_ids:
            return out
        sql = (
            f"SELECT r.sample_id, r.source, r.prediction, {OUTCOME} AS outcome FROM reasonings r"
            " JOIN samples s ON s.id = r.sample_id"
            f" WHERE r.sample_id IN ({', '.join('?' for _ in sample_ids)}) AND {FINAL}"
        )
        clauses, more = equals(("r.stage", stage), ("r.run_id", run_id))
        sql += "".join(f" AND {c}" for c in clauses)
        params: list[Any] = [*sample_ids, *more]
        for r in self.db.query(sql + " ORDER BY r.id", params):
            outcome = r["outcome"]
            per = out.setdefault(r["sample_id"], {})
            mark = per.get(r["source"])
            if mark is None or rank[outcome] > rank[mark["outcome"]]:
                per[r["source"]] = {"outcome": outcome, "prediction": r["prediction"],
                                    "chains": (mark or {}).get("chains", 0) + 1}
            else:
                mark["chains"] += 1
        return out

    def browse_sample(self, sample_id: int) -> dict[str, Any]:
        """One sample with its chains: each final chain (or, for an unfinished retry sequence, its last attempt)
        with ``fields`` parsed, ``attempts`` (every attempt of that sequence, this one last: attempt, valid,
        parse status, prediction, error, tokens, cost, latency), totals over the attempts, its ``ratings`` and its
        ``judgements`` (an LLM judge's verdicts; ``scores`` and ``reasons`` decoded). Chains are ordered teacher,
        assistant, student (then others), predict, explain, expand."""
        sample = self.get_sample(sample_id)
        rows = list(self.db.query(f"SELECT r.*, {OUTCOME} AS outcome FROM reasonings r JOIN samples s"
                                  " ON s.id = r.sample_id WHERE r.sample_id = ? ORDER BY r.id", [sample_id]))
        sequences: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            key = (r["source"], r["model"], r["stage"], r["prompt_version"], r["run_id"])
            sequences.setdefault(key, []).append(r)
        chains: list[dict[str, Any]] = []
        for seq in sequences.values():
            pending: list[dict[str, Any]] = []
            for r in seq:
                pending.append(r)
                if is_final(r):
                    chains.append(self._browse_chain(pending))
                    pending = []
            if pending:
                chains.append(self._browse_chain(pending))
        ratings: dict[int, list[dict[str, Any]]] = {}
        ids = [c["id"] for c in chains]
        if ids:
            for r in self.db.query(
                f"SELECT * FROM ratings WHERE reasoning_id IN ({', '.join('?' for _ in ids)}) ORDER BY id", ids
            ):
                ratings.setdefault(r["reasoning_id"], []).append(r)
        verdicts: dict[int, list[dict[str, Any]]] = {}
        if ids:
            for r in self.db.query(
                f"SELECT * FROM judgements WHERE reasoning_id IN ({', '.join('?' for _ in ids)}) ORDER BY id", ids
            ):
                r["scores"], r["reasons"] = from_json(r["scores"]) or {}, from_json(r["reasons"]) or {}
                verdicts.setdefault(r["reasoning_id"], []).append(r)
        for c in chains:
            c["ratings"] = ratings.get(c["id"], [])
            c["judgements"] = verdicts.get(c["id"], [])
        src_rank = {s: i for i, s in enumerate(self.SOURCE_ORDER)}
        stage_rank = {s: i for i, s in enumerate(self.STAGE_ORDER)}
        chains.sort(key=lambda c: (src_rank.get(c["source"], 9), c["source"], stage_rank.get(c["stage"], 9), c["id"]))
        return {"sample": sample, "chains": chains}

    @staticmethod
    def _browse_chain(attempts: list[dict[str, Any]]) -> dict[str, Any]:
        chain = dict(attempts[-1])
        chain["fields"] = from_json(chain["fields"]) or {}
        keep = ("id", "attempt", "valid", "parse_status", "prediction", "outcome", "error", "tokens_in",
                "tokens_out", "cost_usd", "latency_s")
        chain["attempts"] = [{k: a[k] for k in keep} for a in attempts]
        for key in ("tokens_in", "tokens_out", "cost_usd", "latency_s"):
            values = [a[key] for a in attempts if a[key] is not None]
            chain[f"total_{key}"] = sum(values) if values else None
        return chain

    # -- ratings -----------------------------------------------------------------------------------------------

    def add_rating(
        self,
        reasoning_id: int,
        *,
        faithfulness: int,
        usefulness: int,
        comment: str | None = None,
        rater: str | None = None,
    ) -> int:
        """Store a human rating of one chain (faithfulness and usefulness, integers 1-5); returns its id."""
        for name, value in (("faithfulness", faithfulness), ("usefulness", usefulness)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise StoreError(f"{name} must be an integer from 1 to 5, not {value!r}")
        if not self.db.execute("SELECT 1 FROM reasonings WHERE id = ?", [reasoning_id]).fetchall():
            raise NotFoundError(f"no reasoning chain with id {reasoning_id}")
        comment = (comment or "").strip() or None
        with self.transaction():
            return self._insert(
                "ratings",
                {"reasoning_id": reasoning_id, "faithfulness": faithfulness, "usefulness": usefulness,
                 "comment": comment, "rater": rater, "created_at": now()},
            )

    def ratings(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        source: str | None = None,
        reasoning_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Ratings in the order given, each with its chain (source, model, stage, prompt version, run, prediction)
        and sample (dataset, split, key, gold label)."""
        where, params = equals(("s.dataset", dataset), ("s.split", split), ("r.source", source),
                               ("t.reasoning_id", reasoning_id))
        sql = (
            "SELECT t.id, t.reasoning_id, t.faithfulness, t.usefulness, t.comment, t.rater, t.created_at,"
            " r.source, r.model, r.stage, r.prompt_version, r.run_id, r.prediction,"
            " s.dataset, s.split, s.key, s.label AS gold"
            " FROM ratings t JOIN reasonings r ON r.id = t.reasoning_id JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        return list(self.db.query(sql + " ORDER BY t.id", params))

    def rating_summary(self, *, dataset: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        """Mean ratings per source and model: ratings, chains rated, mean faithfulness, mean usefulness."""
        where, params = equals(("s.dataset", dataset), ("s.split", split))
        sql = (
            "SELECT r.source, r.model, COUNT(*) AS ratings, COUNT(DISTINCT t.reasoning_id) AS chains,"
            " AVG(t.faithfulness) AS faithfulness, AVG(t.usefulness) AS usefulness"
            " FROM ratings t JOIN reasonings r ON r.id = t.reasoning_id JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = list(self.db.query(sql + " GROUP BY r.source, r.model", params))
        rank = {s: i for i, s in enumerate(self.SOURCE_ORDER)}
        rows.sort(key=lambda r: (rank.get(r["source"], 9), r["source"], r["model"] or ""))
        return rows
