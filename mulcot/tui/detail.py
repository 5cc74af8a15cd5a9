"""The selected sample, as rich renderables: the post (aspect highlighted), a summary of what each source predicted,
a bar of its chains, and one chain in five labelled sections with its retry attempts, tokens, cost and ratings.

Plain functions of the dicts that :meth:`mulcot.store.Store.browse_sample` returns; the widget only places them.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Group, RenderableType
from rich.style import Style
from rich.text import Text

from mulcot.core.reasoning import FIELDS
from mulcot.core.rubric import CRITERIA
from mulcot.tui.state import OUTCOME_MARK

FIELD_TITLES = {f: f.replace("_", " ") for f in FIELDS}


def chain_outcome(chain: dict[str, Any], gold: str | None = None) -> str:
    """correct / wrong / failed (no valid prediction) / predicted (no gold label): the ``outcome`` the store
    computed for the chain (:data:`mulcot.store.reasonings.OUTCOME`, the one definition)."""
    return chain["outcome"]


OUTCOME_STYLE = {"correct": "bold green", "wrong": "bold red", "failed": "bold yellow", "predicted": "bold"}


def chain_labels(chains: list[dict[str, Any]]) -> list[str]:
    """``source·stage`` per chain, with the model (or a number) added where two chains would read the same."""
    base = [f"{c['source']}·{c['stage']}" for c in chains]
    labels = []
    for i, c in enumerate(chains):
        same = [j for j, b in enumerate(base) if b == base[i]]
        if len(same) == 1:
            labels.append(base[i])
        elif len({chains[j]["model"] for j in same}) > 1:
            labels.append(f"{base[i]} ({c['model']})")
        else:
            labels.append(f"{base[i]} {same.index(i) + 1}")
    return labels


def highlight_aspect(text: str, aspect: str | None) -> Text:
    """The post's text with each occurrence of the aspect (case-insensitive) highlighted."""
    out = Text(text)
    if aspect:
        out.highlight_regex(re.compile(re.escape(aspect), re.IGNORECASE), "bold black on yellow")
    return out


def render_head(detail: dict[str, Any]) -> RenderableType:
    """Where the sample comes from, its text, aspect and gold label, and one line per source's predictions."""
    s, chains = detail["sample"], detail["chains"]
    gold = s["label"]
    title = Text(f"{s['dataset']} · {s['split']} · {s['key']}", style="bold")
    labels = Text.assemble("gold ", (gold or "unlabelled", "bold reverse" if gold else "dim"))
    if s["aspect"]:
        labels.append_text(Text.assemble("   aspect ", (s["aspect"], "bold yellow")))
    lines: list[RenderableType] = [title, labels, highlight_aspect(s["text"], s["aspect"])]
    verdict = Text()
    predictions = set()
    for c, label in zip(chains, chain_labels(chains), strict=True):
        outcome = chain_outcome(c, gold)
        if outcome in ("correct", "wrong", "predicted"):
            predictions.add(c["prediction"])
        if verdict:
            verdict.append("  ")
        verdict.append(f"{label} ")
        verdict.append(f"{OUTCOME_MARK[outcome]} {c['prediction'] or 'failed'}", OUTCOME_STYLE[outcome])
    if len(predictions) > 1:
        verdict.append("   ⚠ sources disagree", "bold magenta")
    if chains:
        lines.append(verdict)
    else:
        lines.append(Text("no reasoning chains for this sample yet", style="dim italic"))
    return Group(*lines)


def render_chain_bar(chains: list[dict[str, Any]], active: int, gold: str | None) -> Text:
    """One clickable tab per chain: number, source and stage, its outcome mark."""
    bar = Text(no_wrap=False)
    for i, (c, label) in enumerate(zip(chains, chain_labels(chains), strict=True)):
        outcome = chain_outcome(c, gold)
        click = Style(meta={"@click": f"app.show_chain({i})"})
        bar.append(f" {i + 1} {label} ", Style(bold=i == active, reverse=i == active) + click)
        bar.append(OUTCOME_MARK[outcome], Style.parse(OUTCOME_STYLE[outcome]) + click)
        bar.append("  ")
    return bar


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:.4f}"


def _tokens(tin: int | None, tout: int | None) -> str:
    if tin is None and tout is None:
        return "tokens —"
    return f"tokens {tin if tin is not None else '?'}→{tout if tout is not None else '?'}"


def render_chain(chain: dict[str, Any], gold: str | None, chains: list[dict[str, Any]]) -> RenderableType:
    """One chain: provenance, attempts (retries with their errors, tokens, cost, latency), ratings, then the five
    fields; the Prediction is compared with the gold label and with the other sources."""
    parts: list[RenderableType] = []
    head = Text.assemble(
        (chain["source"], "bold"), " · ", chain["model"] or "model ?", " · ", (chain["stage"], "bold"),
        (f" · prompt {chain['prompt_version']}" if chain.get("prompt_version") else "", "dim"),
        (f" · run {chain['run_id']}" if chain.get("run_id") else "", "dim"),
        (f" · chain #{chain['id']}", "dim"),
    )
    parts.append(head)
    attempts = chain["attempts"]
    n = len(attempts)
    status = Text.assemble(
        f"attempt {chain['attempt'] or n} ({n} stored)" if n > 1 else f"attempt {chain['attempt'] or 1}",
        " · ",
        ("valid", "green") if chain.get("valid") else ("invalid", "bold yellow"),
        f" · parsed {chain.get('parse_status') or '?'}",
        f" · {_tokens(chain.get('tokens_in'), chain.get('tokens_out'))}",
        f" · {_money(chain.get('cost_usd'))}",
        f" · {chain['latency_s']:.1f} s" if chain.get("latency_s") is not None else "",
    )
    parts.append(status)
    if n > 1:
        total = Text(
            f"all {n} attempts: {_tokens(chain.get('total_tokens_in'), chain.get('total_tokens_out'))}"
            f" · {_money(chain.get('total_cost_usd'))}"
            + (f" · {chain['total_latency_s']:.1f} s" if chain.get("total_latency_s") is not None else ""),
            style="dim",
        )
        parts.append(total)
        for a in attempts[:-1]:
            mark = "✓" if a["valid"] else "✗"
            parts.append(
                Text.assemble(
                    ("  retry ", "dim"), f"{a['attempt'] or '?'} ", (mark, "green" if a["valid"] else "yellow"),
                    f" {a['error'] or a['parse_status'] or ''}",
                    (f"  {_tokens(a['tokens_in'], a['tokens_out'])} · {_money(a['cost_usd'])}", "dim"),
                )
            )
    if chain.get("error"):
        parts.append(Text.assemble(("error ", "bold yellow"), chain["error"]))
    ratings = chain.get("ratings") or []
    if ratings:
        faith = sum(r["faithfulness"] for r in ratings) / len(ratings)
        use = sum(r["usefulness"] for r in ratings) / len(ratings)
        line = Text.assemble(
            ("rated ", "cyan"),
            f"{len(ratings)}× · faithfulness {faith:.1f} · usefulness {use:.1f}",
        )
        last = ratings[-1]
        if last.get("comment"):
            line.append(f" · “{last['comment']}”", "italic")
        parts.append(line)
    else:
        parts.append(Text("not rated yet (r to rate)", style="dim"))
    parts += [render_judgement(j) for j in chain.get("judgements") or []]

    fields = chain.get("fields") or {}
    if not fields and chain.get("raw"):
        parts.append(Text("\nraw output (not parsed)", style="bold yellow"))
        parts.append(Text(chain["raw"]))
        return Group(*parts)
    for field in FIELDS:
        parts.append(Text(f"\n{FIELD_TITLES[field]}", style="bold underline"))
        value = fields.get(field)
        if field == "Prediction":
            parts.append(_prediction_line(chain, gold, chains))
        elif value:
            parts.append(Text(value))
        else:
            parts.append(Text("(missing)", style="dim italic"))
    return Group(*parts)


def render_judgement(j: dict[str, Any]) -> Text:
    """An LLM judge's verdict on a chain (``mulcot judge``): its rubric scores with their reasons, or the label it
    read from the chain alone (leakage), or why it failed."""
    line = Text.assemble(("judged ", "magenta"), (j["judge_model"], "bold"), (f" · {j['kind']} {j['rubric_version']}",
                                                                              "dim"))
    if j["status"] != "judged":
        line.append(f" · failed: {j['error'] or '?'}", "yellow")
    elif j["kind"] == "leakage":
        line.append(f" · names {j['label']} from the chain alone")
        if j["leaked"] is not None:
            line.append(" (the gold label: leaked)" if j["leaked"] else " (not the gold label)",
                        "bold red" if j["leaked"] else "green")
    else:
        line.append(f" · mean {j['mean']:.2f}", "bold")
        for name in sorted(j["scores"], key=lambda n: (list(CRITERIA).index(n) if n in CRITERIA else 9, n)):
            score, reason = j["scores"][name], j["reasons"].get(name)
            line.append(f"\n  {name} {score}/5" + (f" — {reason}" if reason else ""))
    return line


def _prediction_line(chain: dict[str, Any], gold: str | None, chains: list[dict[str, Any]]) -> Text:
    outcome = chain_outcome(chain, gold)
    line = Text()
    said = chain.get("prediction") or (chain.get("fields") or {}).get("Prediction") or "none"
    line.append(said, OUTCOME_STYLE[outcome])
    if outcome == "correct":
        line.append("  ✓ matches the gold label", "green")
    elif outcome == "wrong":
        line.append(f"  ✗ gold label is {gold}", "red")
    elif outcome == "failed":
        line.append("  ! no valid prediction", "yellow")
    labels = dict(zip((c["id"] for c in chains), chain_labels(chains), strict=True))
    others = sorted(
        {
            f"{labels[c['id']]} says {c['prediction']}"
            for c in chains
            if c is not chain and c.get("prediction") and chain.get("prediction")
            and c["prediction"] != chain["prediction"] and chain_outcome(c, gold) != "failed"
        }
    )
    if others:
        line.append("  ⚠ " + "; ".join(others), "magenta")
    return line
