"""Results as people read them: the files of a result, the paper's table row, stored results side by side.

:func:`write_outputs` writes ``result.json``, ``per_sample.jsonl``, ``confusion.png`` (:func:`plot_confusion`) and,
with label probabilities, ``reliability.png`` (:func:`plot_reliability`);
:func:`paper_row` gives the Table 3/4/5 numbers; :func:`compare_results` finds stored results to compare;
:data:`mulcot.evaluate.config.METRIC_DEFINITIONS` is the footer of the eval table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.errors import MulcotError, NotFoundError
from mulcot.metrics import REASONING_METRICS
from mulcot.store import Store

if TYPE_CHECKING:
    from mulcot.evaluate.config import EvalResult

PAPER_COLUMNS = ("accuracy", "f1", "sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2")

#: One line per metric: its exact definition (the footer of the eval table).
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: EvalResult, folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``result.json``, ``per_sample.jsonl``, ``confusion.png`` and, when the result has label probabilities,
    ``reliability.png`` into ``folder``; returns their paths (with any already in ``result.files``)."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MulcotError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    files = {**result.files, "json": str(out / "result.json"), "per_sample": str(out / "per_sample.jsonl"),
             "confusion": str(out / "confusion.png")}
    probs = result.metrics.get("probabilities")
    if probs:
        files["reliability"] = str(out / "reliability.png")
    result.files = files
    (out / "result.json").write_text(json.dumps(_json_safe(result.to_dict()), indent=2, ensure_ascii=False,
                                                default=str), encoding="utf-8")
    with (out / "per_sample.jsonl").open("w", encoding="utf-8") as fh:
        for row in result.per_sample:
            fh.write(json.dumps(_json_safe(row), ensure_ascii=False) + "\n")
    heads = (
        [(f"label prompt (n={result.metrics['label']['n']})", result.metrics["label"])]
        if result.metrics.get("label")
        else []
    )
    if result.metrics.get("chain"):
        heads.append((f"chain Prediction (n={result.metrics['chain']['n']})", result.metrics["chain"]))
    title = f"{result.subject.name} on {result.dataset}/{result.split}"
    plot_confusion(heads, out / "confusion.png", title=title)
    if probs:
        plot_reliability([(f"label probabilities (n={probs['n']})", probs)], out / "reliability.png", title=title)
    return files


def plot_confusion(heads: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike[str], *,
                   title: str = "") -> Path:
    """One confusion-matrix panel per (title, classification_metrics dict): gold rows × predicted columns, with an
    ``invalid`` column for unparseable predictions; counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(heads), figsize=(4.6 * len(heads), 4.0), squeeze=False)
    for ax, (name, m) in zip(axes[0], heads, strict=True):
        labels = m["labels"]
        matrix = [row + [m["per_label"][lab]["invalid"]] for row, lab in zip(m["confusion_matrix"], labels,
                                                                            strict=True)]
        cols = [*labels, "invalid"]
        peak = max(1, max(max(r) for r in matrix))
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=peak)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{name}\nacc {m['accuracy']:.3f}", fontsize=10)
        for r, row in enumerate(matrix):
            for c, v in enumerate(row):
                ax.text(c, r, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    return _save(fig, path, title)


def _save(fig: Any, path: str | os.PathLike[str], title: str) -> Path:
    """Title, lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_reliability(heads: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike[str], *,
                     title: str = "") -> Path:
    """One reliability-diagram panel per (title, :func:`~mulcot.metrics.calibration.probability_metrics`
    dict): per confidence bin, the accuracy of its posts (bars) against the diagonal of perfect calibration, the
    bin's mean confidence (dots) and its post count; ECE in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(heads), figsize=(4.6 * len(heads), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], heads, strict=True):
        width = 1.0 / len(m["bins"])
        full = [b for b in m["bins"] if b["count"]]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.bar([b["low"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
               color="tab:blue", edgecolor="black", alpha=0.8, label="accuracy")
        ax.scatter([b["confidence"] for b in full], [b["confidence"] for b in full], color="tab:orange", zorder=3,
                   s=14, label="mean confidence")
        for b in full:
            ax.text(b["low"] + width / 2, min(b["accuracy"], 0.9) + 0.03, str(b["count"]), ha="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {m['ece']:.3f} ({m['ece_bins']} bins)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path, title)


def paper_row(result: dict[str, Any]) -> dict[str, Any]:
    """The Table 3/4/5 numbers of a stored or fresh result (``EvalResult.to_dict()`` or a store row): accuracy,
    the task's F1 (``f1_name``), Sim, METEOR, BLEU, ROUGE-L, Distinct-1/2 (corpus-level when computed) and
    consistency; None where not computed."""
    m = result["metrics"]
    head = m.get("headline") or {}
    reasoning = m.get("reasoning") or {}
    values = reasoning.get("headline") or {}
    row: dict[str, Any] = {
        "accuracy": head.get("accuracy"), "f1": head.get("f1"), "f1_name": m.get("f1_reported"),
        "from": head.get("from"), "consistency": m.get("consistency"),
        "gold_conditioned": bool(m.get("gold_conditioned")),
    }
    for k in REASONING_METRICS:
        row[k] = values.get(k)
    return row


# -------------------------------------------------------------------------------------------------- compare


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "dataset", "split", "source", "model", "run_id", "n", "metrics", "config",
                                "created_at") if k in row}


def samples_digest(ids: Sequence[int]) -> str:
    """Which posts a result scored, as a short digest of their sample ids (``config["samples_sha256"]``)."""
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()[:16]


def posts_key(row: dict[str, Any]) -> tuple:
    """What a result was scored on: dataset, split, n and (results stored since it was recorded) a digest of the
    sample ids. Results with different keys are not comparable side by side."""
    return (row["dataset"], row["split"], row["n"], (row.get("config") or {}).get("samples_sha256"))


def describe_result(row: dict[str, Any]) -> str:
    """``#12 student-t15 (student) · twitter2015/test · n=1037``: one result in one line, its name whole."""
    subject = (row.get("config") or {}).get("subject") or {}
    name = subject.get("name") or row.get("run_id") or row.get("source") or row.get("model") or "?"
    source = row.get("source")
    label = name if not source or source == name else f"{name} ({source})"
    probe = (row.get("config") or {}).get("probe")
    if probe:
        label += f" [probe {probe}]"
    return f"#{row['id']} {label} · {row['dataset']}/{row['split']} · n={row['n']}"


def list_results(store: Store, *, dataset: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """The stored evaluation results (optionally of one dataset / split), oldest first."""
    return [_row_dict(r) for r in store.eval_results(dataset) if split is None or r["split"] == split]


def compare_results(store: Store, specs: Sequence[str], *, dataset: str | None = None,
                    split: str | None = None) -> list[dict[str, Any]]:
    """Stored evaluation results for each spec, in order: an eval result id (``12`` or ``#12``), else a result of a
    run id, else of a source name, else of a model (optionally within one dataset / split); ``NAME@PROBE`` is a
    modality probe's result of that name (``RUN@image-swap``), a plain name never one. A name means the latest
    of its results scored on the same posts as the results named by id (else its latest); each such row says which
    it took in ``picked``. Whether results on different posts compare is :func:`mulcot.evaluate.posts.paired_results`'
    business (post by post over the posts both scored)."""
    if not specs:
        stored = list_results(store, dataset=dataset, split=split)
        if not stored:
            raise MulcotError("no evaluation results stored yet: run `mulcot eval DATASET --source teacher` (or "
                              "--model runs/NAME) first")
        shown = "; ".join(describe_result(r) for r in stored[-3:])
        raise MulcotError(f"name the results to compare: ids or run/source names, e.g. mulcot eval compare "
                          f"{' '.join(str(r['id']) for r in stored[-2:])} (latest: {shown}; all: mulcot eval "
                          "list)")
    rows = store.eval_results(dataset)
    by_id = {r["id"]: r for r in rows} if dataset is None else {r["id"]: r for r in store.eval_results()}
    scoped = [r for r in rows if split is None or r["split"] == split]
    resolved: list[dict[str, Any] | None] = []
    for spec in specs:
        text = spec.strip()
        if re.fullmatch(r"#?\d+", text):
            rid = int(text.lstrip("#"))
            if rid not in by_id:
                raise NotFoundError(f"no evaluation result #{rid} in {store.path}")
            resolved.append(_row_dict(by_id[rid]))
        else:
            resolved.append(None)
    wanted = next((posts_key(r) for r in resolved if r is not None), None)
    for i, spec in enumerate(specs):
        if resolved[i] is not None:
            continue
        text = spec.strip()
        # NAME@PROBE: its modality probe's result (mulcot.evaluate.probes); a plain name never means a probe's
        name, _, probe = text.rpartition("@") if "@" in text else (text, "", None)
        candidates = [r for r in scoped if (r.get("config") or {}).get("probe") == (probe or None)]
        matches: list[dict[str, Any]] = []
        for col in ("run_id", "source", "model"):
            matches = [r for r in candidates if r.get(col) == name]
            if matches:
                break
        if not matches:
            known = sorted({str(r.get(c)) for r in scoped for c in ("run_id", "source") if r.get(c)})
            where = f" for {dataset or 'any dataset'}" + (f"/{split}" if split else "")
            raise NotFoundError(
                f"no evaluation result for '{text}'{where} (results exist for: {', '.join(known) or 'nothing yet'}; "
                "run `mulcot eval DATASET ...` first)"
            )
        same = [r for r in matches if wanted is not None and _same_posts(posts_key(r), wanted)]
        found = max(same or matches, key=lambda r: r["id"])
        row = _row_dict(found)
        how = "the latest on the same posts" if same and len(same) < len(matches) else "the latest"
        row["picked"] = {"spec": text, "results": len(matches), "how": how if len(matches) > 1 else "the only one"}
        resolved[i] = row
        wanted = wanted or posts_key(row)
    return [r for r in resolved if r is not None]


def _same_posts(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and (a[3] is None or b[3] is None or a[3] == b[3])
