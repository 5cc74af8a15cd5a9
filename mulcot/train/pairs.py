"""Preference pairs of reasoning chains, for DPO (the paper's future work) — built from the store, never invented.

A pair is (prompt, chosen chain, rejected chain) for **one sample**: the prompt is the sample's P_cot, the prompt
every assistant and student is trained and evaluated on, and both chains are answers about that sample.

- **chosen**: a valid chain whose Prediction is the gold label and that the training sets take — D_t (the teacher's
  final predict/explain chains) or D_a (the assistant's kept expansions) — unless a person rated it below
  :data:`MIN_CHOSEN_RATING`;
- **rejected**, by source (``--from``):

  - ``teacher``: the teacher's wrong or failed chains: stage-1 misses, explanations that still got the label
    wrong, and every failed ARC attempt (an output that did not parse);
  - ``assistant``: the assistant's wrong or failed chains (rejected expansions, evaluation chains);
  - ``student``: the student's wrong or failed chains;
  - ``ratings``: any chain of the sample that a person rated at least :data:`RATING_GAP` points below a chosen
    chain (a rating's score is the mean of faithfulness and usefulness, averaged over its ratings);
  - ``judge``: any chain of the sample that an LLM judge (``mulcot judge``) scored at least :data:`JUDGE_GAP`
    points below a chosen chain (a chain's judge score is its rubric mean, averaged over judges); with this source a
    chain the judge scored below :data:`MIN_CHOSEN_JUDGE` is not chosen.

Each wrong or failed chain is paired once, with the sample's chosen chains taken in turn (so no chosen chain is
repeated more than needed); a pair a person contradicts (both rated, the rejected one higher) is not made.
Pairs never cross samples or splits, and evaluation splits (dev, test) never give pairs: their chains must not
train anything. A wrong chain's canonical text is used (same five-field form as the chosen one); a failed
chain's raw output, since that is what the model said.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mulcot.core.labels import LABELS
from mulcot.core.prompts import get_prompt
from mulcot.errors import MulcotError
from mulcot.store import Store

PAIR_SOURCES = ("teacher", "assistant", "student", "ratings", "judge")
DEFAULT_SOURCES = PAIR_SOURCES[:4]  # the judge's pairs are asked for by name (--from ...,judge)
EVAL_SPLITS = ("dev", "test", "val", "valid", "validation")
RATING_GAP = 2.0  # a rated chain is rejected against a chosen one rated at least this much higher
MIN_CHOSEN_RATING = 3.0  # a chain a person rated below this is never chosen
JUDGE_GAP = 1.5  # a judged chain is rejected against a chosen one the judge scored at least this much higher
MIN_CHOSEN_JUDGE = 3.0  # with the judge source, a chain the judge scored below this is not chosen
PAIR_FORMATS = ("trl", "llamafactory")


@dataclass
class Pair:
    """One preference pair: two chains of one sample."""

    sample_id: int
    key: str
    split: str
    gold: str
    source: str  # teacher | assistant | student (who wrote the rejected chain) | ratings | judge
    reason: str  # wrong | failed | rated | judged
    chosen_id: int
    chosen: str
    rejected_id: int
    rejected: str


@dataclass
class PairSet:
    """The pairs of one dataset split, with the samples they belong to (for prompts and images)."""

    dataset: str
    split: str
    task: str
    sources: tuple[str, ...]
    pairs: list[Pair] = field(default_factory=list)
    samples: dict[int, dict[str, Any]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Pairs per source and gold label (every source and label present, zeros included)."""
        out = {s: dict.fromkeys(LABELS, 0) for s in self.sources}
        for p in self.pairs:
            out[p.source][p.gold] = out[p.source].get(p.gold, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        """What ``mulcot data pairs`` reports: totals, per source × label, per reason, samples covered."""
        return {
            "dataset": self.dataset, "split": self.split, "sources": list(self.sources), "pairs": len(self.pairs),
            "samples": len({p.sample_id for p in self.pairs}), "counts": self.counts(),
            "reasons": dict(Counter(p.reason for p in self.pairs)),
        }

    def prompt(self, pair: Pair) -> str:
        """The pair's prompt text (P_cot for its sample; the image travels separately)."""
        s = self.samples[pair.sample_id]
        return get_prompt("cot", self.task).render(s["text"], s["aspect"])

    def image(self, pair: Pair) -> str | None:
        s = self.samples[pair.sample_id]
        return s["image_path"] if s["has_image"] else None


def parse_sources(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"teacher,ratings"`` -> ("teacher", "ratings"), in canonical order; unknown names refused in one line."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [n for n in names if n not in PAIR_SOURCES]
    if unknown or not names:
        raise MulcotError(f"--from '{value}': use one or more of {','.join(PAIR_SOURCES)}")
    return tuple(s for s in PAIR_SOURCES if s in names)


def _output(chain: dict[str, Any]) -> str:
    """What a chain said: the canonical text of a valid chain, else its raw output."""
    text = chain["text"] if chain["valid"] == 1 and chain["text"] else chain["raw"] or chain["text"]
    return (text or "").strip()


def _contradicted(chosen: dict[str, Any], rejected: dict[str, Any]) -> bool:
    """A person rated the rejected chain higher than the chosen one."""
    return chosen["rating"] is not None and rejected["rating"] is not None and rejected["rating"] > chosen["rating"]


def _sample_pairs(rows: list[dict[str, Any]], sources: tuple[str, ...]) -> list[tuple[str, str, dict, dict]]:
    """(source, reason, chosen, rejected) for one sample's chains."""
    chosen = [r for r in rows if r["chosen_set"] and _output(r)
              and (r["rating"] is None or r["rating"] >= MIN_CHOSEN_RATING)
              and ("judge" not in sources or r["judge"] is None or r["judge"] >= MIN_CHOSEN_JUDGE)]
    if not chosen:
        return []
    out: list[tuple[str, str, dict, dict]] = []
    rejected = [r for r in rows if r["source"] in sources and r["outcome"] in ("wrong", "failed") and _output(r)]
    for i, bad in enumerate(rejected):
        for j in range(len(chosen)):
            good = chosen[(i + j) % len(chosen)]
            if not _contradicted(good, bad) and _output(good) != _output(bad):
                out.append((bad["source"], bad["outcome"], good, bad))
                break
    if "ratings" in sources:
        made = {(g["id"], b["id"]) for _, _, g, b in out}
        rated = [r for r in rows if r["rating"] is not None and _output(r)]
        for good in (c for c in chosen if c["rating"] is not None):
            for bad in rated:
                if (bad["id"] != good["id"] and good["rating"] - bad["rating"] >= RATING_GAP
                        and (good["id"], bad["id"]) not in made and _output(good) != _output(bad)):
                    out.append(("ratings", "rated", good, bad))
    if "judge" in sources:
        out += _judged_pairs(rows, chosen, {(g["id"], b["id"]) for _, _, g, b in out})
    return out


def _judged_pairs(rows: list[dict[str, Any]], chosen: list[dict[str, Any]],
                  made: set[tuple[int, int]]) -> list[tuple[str, str, dict, dict]]:
    """(judge, judged, chosen, rejected): a chain the judge scored at least :data:`JUDGE_GAP` below a chosen one
    (not one a person contradicts)."""
    out = []
    judged = [r for r in rows if r["judge"] is not None and _output(r)]
    for good in (c for c in chosen if c["judge"] is not None):
        for bad in judged:
            if (bad["id"] != good["id"] and good["judge"] - bad["judge"] >= JUDGE_GAP
                    and (good["id"], bad["id"]) not in made and not _contradicted(good, bad)
                    and _output(good) != _output(bad)):
                out.append(("judge", "judged", good, bad))
                made.add((good["id"], bad["id"]))
    return out


def build_pairs(store: Store, dataset: str, split: str = "train",
                sources: tuple[str, ...] | str = DEFAULT_SOURCES) -> PairSet:
    """The preference pairs of one (training) split of ``dataset`` from ``sources`` (see the module docstring)."""
    ds = store.require_dataset(dataset)
    sources = parse_sources(sources)
    if split.lower() in EVAL_SPLITS:
        raise MulcotError(f"preference pairs come from training data only: '{split}' is an evaluation split and its "
                          "chains must not train anything (use --split train)")
    if split not in store.splits(dataset):
        raise MulcotError(f"dataset '{dataset}' has no split '{split}' (splits: {', '.join(store.splits(dataset))})")
    by_sample: dict[int, list[dict[str, Any]]] = {}
    rows = store.pair_candidates(dataset, split)
    judged = store.judge_means([r["id"] for r in rows]) if "judge" in sources else {}
    for row in rows:
        row["judge"] = judged.get(row["id"])
        by_sample.setdefault(row["sample_id"], []).append(row)
    result = PairSet(dataset=dataset, split=split, task=ds["task"], sources=sources)
    for sample_id, rows in by_sample.items():
        for source, reason, good, bad in _sample_pairs(rows, sources):
            assert good["sample_id"] == bad["sample_id"] == sample_id and good["split"] == bad["split"] == split
            result.pairs.append(Pair(sample_id=sample_id, key=good["key"], split=split, gold=good["gold"],
                                     source=source, reason=reason, chosen_id=good["id"], chosen=_output(good),
                                     rejected_id=bad["id"], rejected=_output(bad)))
    if result.pairs:
        wanted = {p.sample_id for p in result.pairs}
        result.samples = {s["id"]: s for s in store.samples(dataset, split) if s["id"] in wanted}
    return result


def _trl_record(pairs: PairSet, p: Pair) -> dict[str, Any]:
    image = pairs.image(p)
    return {
        "prompt": [{"role": "user", "content": pairs.prompt(p)}],
        "chosen": [{"role": "assistant", "content": p.chosen}],
        "rejected": [{"role": "assistant", "content": p.rejected}],
        "images": [image] if image else [],
        "sample": p.key, "source": p.source, "reason": p.reason,
    }


def _llamafactory_record(pairs: PairSet, p: Pair) -> dict[str, Any]:
    image = pairs.image(p)
    return {
        "conversations": [{"from": "human", "value": ("<image>" if image else "") + pairs.prompt(p)}],
        "chosen": {"from": "gpt", "value": p.chosen},
        "rejected": {"from": "gpt", "value": p.rejected},
        "images": [image] if image else [],
    }


def export_pairs(pairs: PairSet, fmt: str, out: TextIO | Path) -> int:
    """Write ``pairs`` to ``out`` (a path or an open text stream); returns how many.

    - ``trl``: JSONL, one conversational preference example per line (``prompt``/``chosen``/``rejected`` message
      lists, ``images`` as file paths — cast the column to ``Sequence(Image())`` to load it with ``datasets``),
      plus the sample key, source and reason;
    - ``llamafactory``: a JSON array in LLaMA-Factory's ranking ShareGPT format (``conversations`` with an
      ``<image>`` placeholder, ``chosen`` and ``rejected`` turns, ``images``); register it with
      ``"formatting": "sharegpt", "ranking": true`` and ``columns`` messages/chosen/rejected/images.
    """
    if fmt not in PAIR_FORMATS:
        raise MulcotError(f"unknown pair format '{fmt}': use {' or '.join(PAIR_FORMATS)}")
    stream = out.open("w", encoding="utf-8") if isinstance(out, Path) else out
    try:
        if fmt == "trl":
            for p in pairs.pairs:
                stream.write(json.dumps(_trl_record(pairs, p), ensure_ascii=False) + "\n")
        else:
            stream.write("[\n")
            for i, p in enumerate(pairs.pairs):
                stream.write((",\n" if i else "") + json.dumps(_llamafactory_record(pairs, p), ensure_ascii=False))
            stream.write("\n]\n")
    finally:
        if isinstance(out, Path):
            stream.close()
    return len(pairs.pairs)



