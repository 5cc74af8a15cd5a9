"""Schema migrations: forward only, each applied once, in definition order, as plain functions (the pattern of
simonw/llm); ``_mulcot_migrations`` records which ran. Each runs in its own transaction (see
:meth:`mulcot.store.connection.Connection.migrate`)."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    """Register a forward migration; they run in definition order, each once."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["datasets"].create(
        {
            "name": str, "task": str, "format": str, "source": str, "images_root": str, "has_images": int,
            "created_at": str, "updated_at": str,
        },
        pk="name",
        not_null={"task", "format"},
    )
    db["samples"].create(
        {
            "id": int, "dataset": str, "split": str, "key": str, "text": str, "raw_text": str, "aspect": str,
            "label": str, "image_name": str, "image_path": str, "image_sha256": str, "has_image": int,
            "meta": str, "created_at": str, "updated_at": str,
        },
        pk="id",
        not_null={"dataset", "split", "key", "text"},
        foreign_keys=[("dataset", "datasets", "name")],
    )
    db["samples"].create_index(["dataset", "split", "key"], unique=True)
    db["samples"].create_index(["dataset", "label"])
    db["runs"].create(
        {
            "id": str, "kind": str, "dataset": str, "status": str, "config": str, "metrics": str,
            "output_dir": str, "recipe_hash": str, "error": str, "created_at": str, "updated_at": str,
            "finished_at": str,
        },
        pk="id",
        not_null={"kind", "status"},
    )
    db["reasonings"].create(
        {
            "id": int, "sample_id": int, "source": str, "model": str, "stage": str, "prompt_version": str,
            "raw": str, "text": str, "fields": str, "prediction": str, "parse_status": str, "valid": int,
            "attempt": int, "final": int, "tokens_in": int, "tokens_out": int, "cost_usd": float,
            "latency_s": float, "run_id": str, "error": str, "origin": str, "created_at": str,
        },
        pk="id",
        not_null={"sample_id", "source", "stage"},
        foreign_keys=[("sample_id", "samples", "id")],
    )
    db["reasonings"].create_index(["sample_id", "source", "stage"])
    db["reasonings"].create_index(["source", "model", "prompt_version", "final"])
    db["reasonings"].create_index(["run_id"])
    db["eval_results"].create(
        {
            "id": int, "run_id": str, "dataset": str, "split": str, "source": str, "model": str, "n": int,
            "metrics": str, "config": str, "created_at": str,
        },
        pk="id",
        not_null={"dataset", "split", "metrics"},
    )
    db["eval_results"].create_index(["dataset", "split"])


# The text of every chain of a sample (raw output, else the canonical text), one per line: what search sees.
_SAMPLE_CHAINS_SQL = (
    "SELECT COALESCE(group_concat(COALESCE(r.raw, r.text, ''), char(10)), '') FROM reasonings r"
    " WHERE r.sample_id = {sid}"
)


@migration
def m002_browse_search(db: sqlite_utils.Database) -> None:
    """Browsing (TUI): full-text search over a sample's text, aspect and chains, kept in sync by triggers (one FTS5
    document per sample, rowid = sample id), and covering indexes for paged, filtered sample lists."""
    db.execute(
        "CREATE VIRTUAL TABLE samples_fts USING fts5(text, aspect, chains, tokenize = 'unicode61 remove_diacritics 2')"
    )
    db.execute(
        "INSERT INTO samples_fts (rowid, text, aspect, chains) SELECT s.id, s.text, s.aspect, ("
        + _SAMPLE_CHAINS_SQL.format(sid="s.id")
        + ") FROM samples s"
    )
    db.execute(
        "CREATE TRIGGER samples_fts_insert AFTER INSERT ON samples BEGIN"
        " INSERT OR REPLACE INTO samples_fts (rowid, text, aspect, chains)"
        f" VALUES (new.id, new.text, new.aspect, ({_SAMPLE_CHAINS_SQL.format(sid='new.id')})); END"
    )
    db.execute(
        "CREATE TRIGGER samples_fts_update AFTER UPDATE OF id, text, aspect ON samples BEGIN"
        " DELETE FROM samples_fts WHERE rowid = old.id;"
        " INSERT OR REPLACE INTO samples_fts (rowid, text, aspect, chains)"
        f" VALUES (new.id, new.text, new.aspect, ({_SAMPLE_CHAINS_SQL.format(sid='new.id')})); END"
    )
    db.execute("CREATE TRIGGER samples_fts_delete AFTER DELETE ON samples BEGIN"
               " DELETE FROM samples_fts WHERE rowid = old.id; END")
    db.execute(
        "CREATE TRIGGER reasonings_fts_insert AFTER INSERT ON reasonings BEGIN"
        " UPDATE samples_fts SET chains = COALESCE(NULLIF(chains, '') || char(10), '')"
        " || COALESCE(new.raw, new.text, '') WHERE rowid = new.sample_id; END"
    )
    db.execute(
        "CREATE TRIGGER reasonings_fts_update AFTER UPDATE OF sample_id, raw, text ON reasonings BEGIN"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='old.sample_id')})"
        " WHERE rowid = old.sample_id;"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='new.sample_id')})"
        " WHERE rowid = new.sample_id AND new.sample_id IS NOT old.sample_id; END"
    )
    db.execute(
        "CREATE TRIGGER reasonings_fts_delete AFTER DELETE ON reasonings BEGIN"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='old.sample_id')})"
        " WHERE rowid = old.sample_id; END"
    )
    db.execute("CREATE INDEX idx_samples_dataset ON samples (dataset)")
    db.execute("CREATE INDEX idx_samples_dataset_split ON samples (dataset, split)")
    db.execute("CREATE INDEX idx_reasonings_browse ON reasonings (sample_id, source, stage, final, valid, prediction)")
    db.execute("CREATE INDEX idx_reasonings_stage ON reasonings (stage)")


@migration
def m003_ratings(db: sqlite_utils.Database) -> None:
    """Human ratings of chains (beyond the paper): faithfulness and usefulness 1-5, an optional comment."""
    db.execute(
        """
        CREATE TABLE ratings (
          id INTEGER PRIMARY KEY,
          reasoning_id INTEGER NOT NULL REFERENCES reasonings (id) ON DELETE CASCADE,
          faithfulness INTEGER NOT NULL CHECK (faithfulness BETWEEN 1 AND 5),
          usefulness INTEGER NOT NULL CHECK (usefulness BETWEEN 1 AND 5),
          comment TEXT,
          rater TEXT,
          created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_ratings_reasoning ON ratings (reasoning_id)")


@migration
def m004_soft_label_index(db: sqlite_utils.Database) -> None:
    """Where each cached soft label lives: the assistant's top-k log-probs per target position of one training
    sequence, in a safetensors shard under the distill run's folder."""
    db.execute(
        """
        CREATE TABLE soft_labels (
          run_id TEXT NOT NULL,
          item_key TEXT NOT NULL,
          shard TEXT NOT NULL,
          positions INTEGER NOT NULL,
          k INTEGER NOT NULL,
          created_at TEXT NOT NULL,
          PRIMARY KEY (run_id, item_key)
        )
        """
    )



@migration
def m005_valid_means_parsed(db: sqlite_utils.Database) -> None:
    """One meaning for ``valid``: the output parsed into the five fields with a valid label (a label answer: a label
    was found). Earlier versions also required the gold label in expand and in annotate's explain stage; correctness
    is now derived from ``prediction`` and the sample's label (:func:`mulcot.chains.outcome`). ``final`` is never
    NULL: a chain outside a retry sequence is its own final attempt. Expansion chains name the base model in
    ``model`` like every other generated chain (the run is ``run_id``)."""
    db.execute("UPDATE reasonings SET valid = (parse_status IS 'full') WHERE valid IS NOT (parse_status IS 'full')")
    db.execute("UPDATE reasonings SET final = 1 WHERE final IS NULL")
    db.execute(
        "UPDATE reasonings SET model = COALESCE((SELECT json_extract(r.config, '$.model') FROM runs r"
        " WHERE r.id = reasonings.run_id), model)"
        " WHERE source = 'assistant' AND stage = 'expand' AND model IS run_id"
    )


@migration
def m006_batches(db: sqlite_utils.Database) -> None:
    """Annotation batches (OpenAI Batch API jobs and offline ``vllm run-batch`` files): which requests (by
    ``custom_id``) each holds, where it stands, what it cost, and whether its results are in ``reasonings``."""
    db.execute(
        """
        CREATE TABLE batches (
          id TEXT PRIMARY KEY,
          run_id TEXT NOT NULL,
          dataset TEXT NOT NULL,
          split TEXT,
          model TEXT,
          kind TEXT NOT NULL CHECK (kind IN ('api', 'file')),
          stage TEXT,
          remote_id TEXT,
          input_path TEXT,
          input_file_id TEXT,
          output_file_id TEXT,
          error_file_id TEXT,
          status TEXT NOT NULL,
          requests INTEGER NOT NULL,
          completed INTEGER,
          failed INTEGER,
          estimate_usd REAL,
          cost_usd REAL,
          tokens_in INTEGER,
          tokens_out INTEGER,
          custom_ids TEXT NOT NULL,
          errors TEXT,
          ingested INTEGER NOT NULL DEFAULT 0,
          ingested_at TEXT,
          created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_batches_run ON batches (run_id, ingested)")
    db.execute("CREATE INDEX idx_batches_dataset ON batches (dataset)")


@migration
def m007_eval_posts(db: sqlite_utils.Database) -> None:
    """Each evaluation's per-post predictions (gold, the headline prediction, the chain's and the label head's, and
    the label probabilities of forced-choice scoring), so that results can be compared post by post (McNemar,
    paired bootstrap) and exported. ``key`` is the sample's key in its dataset (the post id)."""
    db.execute(
        """
        CREATE TABLE eval_posts (
          result_id INTEGER NOT NULL REFERENCES eval_results (id) ON DELETE CASCADE,
          sample_id INTEGER NOT NULL,
          key TEXT NOT NULL,
          gold TEXT NOT NULL,
          prediction TEXT,
          chain_prediction TEXT,
          label_prediction TEXT,
          chain_id INTEGER,
          label_id INTEGER,
          p_positive REAL,
          p_neutral REAL,
          p_negative REAL,
          PRIMARY KEY (result_id, sample_id)
        )
        """
    )


@migration
def m008_one_writer(db: sqlite_utils.Database) -> None:
    """One writer per run: the process holding a run (pid, host, a token per invocation, its last heartbeat), and
    the jobs (requests) each writer of a run has claimed, so that two writers never send the same request."""
    for column in ("writer_pid INTEGER", "writer_host TEXT", "writer_token TEXT", "heartbeat_at TEXT"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    db.execute(
        """
        CREATE TABLE run_jobs (
          run_id TEXT NOT NULL,
          job TEXT NOT NULL,
          token TEXT NOT NULL,
          pid INTEGER,
          host TEXT,
          claimed_at TEXT NOT NULL,
          PRIMARY KEY (run_id, job)
        ) WITHOUT ROWID
        """
    )


# The columns that make a chain row one attempt of one sequence; the unique index of m009 is over them.
_ATTEMPT_KEY = "sample_id, source, model, stage, prompt_version, run_id, attempt"


@migration
def m009_one_row_per_attempt(db: sqlite_utils.Database) -> None:
    """At most one row per attempt (sample, source, model, stage, prompt version, run, attempt): a unique index, so
    that a second writer's copy of an answer is ignored rather than stored twice. Expansion chains are numbered
    (``attempt`` = the chain's number among the sample's n, as expand now writes them); of existing duplicates
    (two processes that annotated or predicted one run at once) the first is kept, and ratings of the copies move
    to it."""
    db.execute("CREATE TEMP TABLE _renumbered (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    db.execute(
        "INSERT INTO _renumbered (id, n) SELECT id, ROW_NUMBER() OVER (PARTITION BY sample_id, source, model, stage,"
        " prompt_version, run_id ORDER BY id) FROM reasonings WHERE stage = 'expand'"
    )
    db.execute(
        "UPDATE reasonings SET attempt = (SELECT n FROM _renumbered WHERE _renumbered.id = reasonings.id)"
        " WHERE id IN (SELECT id FROM _renumbered) AND attempt IS NOT (SELECT n FROM _renumbered"
        " WHERE _renumbered.id = reasonings.id)"
    )
    db.execute("DROP TABLE _renumbered")
    db.execute("CREATE TEMP TABLE _copies (id INTEGER PRIMARY KEY, keep INTEGER NOT NULL)")
    db.execute(
        f"INSERT INTO _copies (id, keep) SELECT id, keep FROM (SELECT id, MIN(id) OVER (PARTITION BY {_ATTEMPT_KEY})"
        " AS keep FROM reasonings WHERE model IS NOT NULL AND prompt_version IS NOT NULL AND run_id IS NOT NULL"
        " AND attempt IS NOT NULL) WHERE id != keep"
    )
    db.execute(
        "UPDATE ratings SET reasoning_id = (SELECT keep FROM _copies WHERE _copies.id = ratings.reasoning_id)"
        " WHERE reasoning_id IN (SELECT id FROM _copies)"
    )
    db.execute("DELETE FROM reasonings WHERE id IN (SELECT id FROM _copies)")
    db.execute("DROP TABLE _copies")
    db.execute(f"CREATE UNIQUE INDEX idx_reasonings_attempt ON reasonings ({_ATTEMPT_KEY})")


@migration
def m010_settings(db: sqlite_utils.Database) -> None:
    """What a run's result depends on: a hash of its deciding settings (a resume with other ones is refused), and
    which assistant (adapter digest, mode, k) a cached soft label came from (a cache is reused for that one only)."""
    db.execute("ALTER TABLE runs ADD COLUMN settings_hash TEXT")
    db.execute("ALTER TABLE soft_labels ADD COLUMN source TEXT")


@migration
def m011_judgements(db: sqlite_utils.Database) -> None:
    """An LLM judge's verdicts on chains (``mulcot judge``): per chain, kind (``rubric``: scores 1-5 with a reason per
    criterion; ``leakage``: the label the judge reads from the chain alone), rubric version and judge model, one row
    — ``judged``, or ``failed`` with its error (a rerun judges it again in place) — with tokens, cost and latency."""
    db.execute(
        """
        CREATE TABLE judgements (
          id INTEGER PRIMARY KEY,
          reasoning_id INTEGER NOT NULL REFERENCES reasonings (id) ON DELETE CASCADE,
          kind TEXT NOT NULL,
          rubric_version TEXT NOT NULL,
          judge_model TEXT NOT NULL,
          status TEXT NOT NULL,
          scores TEXT,
          reasons TEXT,
          mean REAL,
          label TEXT,
          leaked INTEGER,
          error TEXT,
          attempts INTEGER,
          http_retries INTEGER,
          tokens_in INTEGER,
          tokens_out INTEGER,
          cost_usd REAL,
          latency_s REAL,
          run_id TEXT,
          created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX idx_judgements_one ON judgements (reasoning_id, kind, rubric_version, judge_model)")
    db.execute("CREATE INDEX idx_judgements_mean ON judgements (kind, mean)")
