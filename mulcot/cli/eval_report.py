"""How ``mulcot eval`` shows results: the paper's table, the classification detail, the intervals and the majority
comparison, the paired comparison of ``eval compare``, and an LLM judge's verdicts (``eval``, ``judge --report``)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from mulcot.cli.common import console, err_console
from mulcot.cli.tables import metrics_table


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def f1_header(rows: list[dict[str, Any]]) -> str:
    names = {r["f1_name"] for r in rows}
    if names == {"macro_f1"}:
        return "m-F1"
    if names == {"weighted_f1"}:
        return "w-F1"
    return "F1*"


def paper_table(results: list[dict[str, Any]], title: str, *, with_ids: bool = False) -> Table:
    """Rows = evaluations; columns as the paper's Tables 3-5, plus consistency; values × 100."""
    from mulcot.evaluate import METRIC_DEFINITIONS, paper_row

    rows = [paper_row(r) for r in results]
    f1 = f1_header(rows)
    names = [display_name(result, with_ids) + ("*" if row["gold_conditioned"] else "")
             for result, row in zip(results, rows, strict=True)]
    shown = ["Acc", "w-F1" if f1 == "w-F1" else "m-F1" if f1 == "m-F1" else None]
    lines = ["All values × 100; '-' = not computed."]
    if f1 == "F1*":
        lines.append("F1*: w-F1 for MSA datasets, m-F1 for MASC datasets.")
        shown = ["Acc", "w-F1", "m-F1"]
    for key in [*(s for s in shown if s), "Cons.", "Sim", "METEOR", "BLEU", "ROUGE-L", "Dist-1/2"]:
        lines.append(f"{key}: {METRIC_DEFINITIONS[key]}.")
    if any(r["gold_conditioned"] for r in rows):
        lines.append(f"*: gold-conditioned, {METRIC_DEFINITIONS['gold-conditioned']}.")
    return metrics_table(names, rows, title, f1_header=f1, caption=lines)


def ci_text(interval: dict[str, float]) -> str:
    return f"[{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}]"


def print_paired(rows: list[dict[str, Any]], pairs: list[dict[str, Any] | None]) -> None:
    """Each result against the first, over the posts both scored: accuracy and macro-F1 of both, their difference
    (this − first, × 100) with its paired bootstrap interval, exact McNemar p and the agreement rate."""
    base = rows[0]
    boot = None
    for row, pair in zip(rows, pairs, strict=True):
        if pair is None:
            continue
        boot, mc = pair["bootstrap"], pair["mcnemar"]
        table = Table(title=f"#{row['id']} {escape(display_name(row, False))} against #{base['id']} "
                      f"{escape(display_name(base, False))}: {pair['n']} posts ({pair['clusters']} tweets)",
                      title_justify="left")
        for col in ("", f"#{base['id']}", f"#{row['id']}", "Δ", "95% CI"):
            table.add_column(col, justify="left" if not col else "right")
        for name, key in (("Acc", "accuracy"), ("m-F1", "macro_f1")):
            table.add_row(name, pct(boot[f"{key}_a"]), pct(boot[f"{key}_b"]), f"{100 * boot[key]['diff']:+.2f}",
                          ci_text(boot[key]))
        console.print(table)
        console.print(f"exact McNemar p = {mc['p_value']:.4g} ({mc['a_only']} posts only #{base['id']} gets right, "
                      f"{mc['b_only']} only #{row['id']}); same label on {pct(pair['agreement'])}% of the posts",
                      highlight=False)
    if boot is not None:
        console.print(
            "Over the posts both results scored; Δ = the second − the first, × 100. McNemar: exact two-sided binomial "
            f"test on the posts only one of the two gets right. CI: percentile interval of {boot['n_boot']} paired "
            f"bootstrap draws (seed {boot['seed']}) resampling whole tweets (posts sharing an image or a text).",
            highlight=False,
        )


def print_probes(name: str, intact_id: int | None, probes: list[dict[str, Any]]) -> None:
    """Each modality probe against the intact evaluation: its accuracy and macro-F1, their differences with
    paired intervals, McNemar p, the share of answers that changed and how far the probabilities moved."""
    from mulcot.evaluate.probes import PROBES

    table = Table(title=f"modality probes: {escape(name)}, label head, against the intact inputs (#{intact_id})",
                  title_justify="left")
    for col in ("probe", "n", "Acc", "ΔAcc [95% CI]", "Δm-F1 [95% CI]", "McNemar p", "changed", "p shift"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    for p in probes:
        boot, mc = p["comparison"]["bootstrap"], p["comparison"]["mcnemar"]
        shift = "-" if p.get("probability_shift") is None else f"{p['probability_shift']:.3f}"
        table.add_row(f"#{p['id']} {p['name']}", str(p["n"]), pct(p["accuracy"]),
                      f"{100 * boot['accuracy']['diff']:+.2f} {ci_text(boot['accuracy'])}",
                      f"{100 * boot['macro_f1']['diff']:+.2f} {ci_text(boot['macro_f1'])}",
                      f"{mc['p_value']:.3g}", pct(p["changed"]), shift)
    table.caption = "\n".join([
        *(f"{k}: {v}." for k, v in PROBES.items() if any(p["name"] == k for p in probes)),
        "Δ = probe − intact, × 100, over the same posts; CI: paired bootstrap resampling whole tweets. changed: "
        "posts whose answer changed (%); p shift: mean total-variation distance of the label probabilities.",
    ])
    table.caption_justify = "left"
    console.print(table)


def display_name(result: dict[str, Any], with_ids: bool) -> str:
    subject = (result.get("config") or {}).get("subject") or result.get("subject") or {}
    name = subject.get("name") or result.get("run_id") or result.get("source") or result.get("model") or "?"
    source = result.get("source")
    label = name if not source or source == name else f"{name} ({source})"
    probe = (result.get("config") or {}).get("probe")
    if probe:
        label += f"@{probe}"
    if not with_ids:
        return label
    # the row's id only: the names, whole and pasteable, follow the table (describe_result), one line each, instead
    # of folding mid-word in a narrow column
    return f"#{result.get('id')}"


def uncertainty_lines(u: dict[str, Any] | None) -> list[str]:
    """A result's intervals and its comparison with the majority baseline, in two or three plain lines."""
    if not u:
        return []
    iv = u["intervals"]
    lines = [f"Acc {pct(iv['accuracy']['diff'])} [{pct(iv['accuracy']['low'])}, {pct(iv['accuracy']['high'])}], "
             f"m-F1 {pct(iv['macro_f1']['diff'])} [{pct(iv['macro_f1']['low'])}, {pct(iv['macro_f1']['high'])}] "
             f"(95% intervals: {iv['n_boot']} bootstrap draws of the {iv['clusters']} tweets)"]
    maj = u.get("majority") or {}
    if "label" not in maj:
        return [*lines, escape(maj.get("note", "no majority baseline"))]
    pair = maj["vs_model"]
    boot, mc = pair["bootstrap"], pair["mcnemar"]
    lines.append(f"majority baseline ({escape(maj['label'])} for every post, the most frequent label of "
                 f"{escape(maj['from_split'])}): Acc {pct(maj['accuracy'])}, m-F1 {pct(maj['macro_f1'])}")
    lines.append(f"this model − majority: Acc {100 * boot['accuracy']['diff']:+.2f} {ci_text(boot['accuracy'])}, m-F1 "
                 f"{100 * boot['macro_f1']['diff']:+.2f} {ci_text(boot['macro_f1'])}; exact McNemar p = "
                 f"{mc['p_value']:.3g} ({mc['b_only']} posts only the model gets right, {mc['a_only']} only the "
                 "majority)")
    return lines


def recalibrated_lines(r: dict[str, Any] | None) -> list[str]:
    """The label head recalibrated on a tuning split (``eval --calibrate-on``): the fit, its scores with their
    intervals, and its paired comparisons with the raw label head and the majority answer."""
    if not r:
        return []
    bias = ", ".join(f"{escape(lab)} {b:+.2f}" for lab, b in r["bias"].items())
    iv = r["intervals"]
    lines = [f"recalibrated on {escape(r['on'])} (bias-corrected temperature scaling, n={r['n_fit']}: T "
             f"{r['temperature']:.2f}, offsets {bias}; tuning log loss {r['fit_nll_before']:.3f} → "
             f"{r['fit_nll_after']:.3f}): Acc {pct(iv['accuracy']['diff'])} [{pct(iv['accuracy']['low'])}, "
             f"{pct(iv['accuracy']['high'])}], m-F1 {pct(iv['macro_f1']['diff'])} [{pct(iv['macro_f1']['low'])}, "
             f"{pct(iv['macro_f1']['high'])}], ECE {r['probabilities']['ece']:.3f}"]
    for key, what in (("vs_label_head", "the raw label head"), ("vs_majority", "majority")):
        pair = r.get(key)
        if pair:
            boot, mc = pair["bootstrap"], pair["mcnemar"]
            lines.append(f"recalibrated − {what}: Acc {100 * boot['accuracy']['diff']:+.2f} "
                         f"{ci_text(boot['accuracy'])}, m-F1 {100 * boot['macro_f1']['diff']:+.2f} "
                         f"{ci_text(boot['macro_f1'])}; exact McNemar p = {mc['p_value']:.3g}")
    return lines


def show_detail(result: dict[str, Any]) -> None:
    m = result["metrics"]
    table = Table(title="classification (gold labels)", title_justify="left")
    for col in ("head", "n", "Acc", "w-F1", "m-F1", "bal.Acc", "invalid"):
        table.add_column(col, justify="left" if col == "head" else "right")
    recalls = []
    for head, name in (("label", "label prompt (P_label)"), ("chain", "chain's own Prediction")):
        c = m.get(head)
        if c:
            table.add_row(name, str(c["n"]), pct(c["accuracy"]), pct(c["weighted_f1"]), pct(c["macro_f1"]),
                          pct(c.get("balanced_accuracy")), str(c["invalid_predictions"]))
            recalls.append(f"{head} " + " / ".join(pct(c["per_label"][lab]["recall"]) for lab in c["labels"]))
        else:
            table.add_row(name, "-", "-", "-", "-", "-", "no label head")
    table.caption = "bal.Acc: mean recall over the labels present in the gold labels"
    table.caption_justify = "left"
    console.print(table)
    if recalls:
        console.print(f"recall (positive / neutral / negative): {'; '.join(recalls)}", highlight=False)
    for line in uncertainty_lines(m.get("uncertainty")):
        console.print(line, highlight=False)
    for line in recalibrated_lines(m.get("recalibrated")):
        console.print(line, highlight=False)
    probs = m.get("probabilities")
    if probs:
        auroc = probs["auroc_macro_ovr"]
        console.print(
            f"label probabilities (n={probs['n']}): AUROC (macro one-vs-rest) "
            f"{'-' if auroc is None else f'{auroc:.3f}'}, ECE {probs['ece']:.3f} ({probs['ece_bins']} equal-width "
            f"bins of the top probability), log loss {probs['nll']:.3f}, Brier {probs['brier']:.3f}",
            highlight=False,
        )
    notes = []
    if m.get("consistency") is not None:
        notes.append(f"consistency (chain Prediction = label prediction): {100 * m['consistency']:.2f}% of "
                     f"{m['consistency_n']}")
    cov = m.get("coverage") or {}
    if cov.get("without_chain"):
        notes.append(f"{cov['without_chain']} of {cov['considered']} samples have no chain from this source "
                     "(left out)")
    if cov.get("unlabelled_skipped"):
        notes.append(f"{cov['unlabelled_skipped']} unlabelled samples skipped")
    gen = m.get("generated")
    if gen:
        how = "generated" if (result.get("config") or {}).get("label_scoring") == "generate" else "forced choice"
        notes.append(f"generated {gen['chains_generated']} chains and {gen['labels_generated']} label answers ({how}; "
                     f"reused {gen['chains_reused']} and {gen['labels_reused']} stored ones)")
    reasoning = m.get("reasoning") or {}
    if reasoning.get("refs"):
        line = f"reasoning metrics against '{reasoning['refs']}' chains: {reasoning['pairs']} pairs"
        if reasoning.get("missing_refs"):
            line += f", {reasoning['missing_refs']} chains without a reference (left out; Distinct covers all)"
        notes.append(line)
    else:
        notes.append("no reference chains (the teacher itself, or --refs none): only Distinct-n is computed")
    cache = reasoning.get("sim_cache")
    if cache:
        notes.append(f"Sim embeddings: {cache.get('cached', 0)} from the cache, {cache.get('embedded', 0)} computed")
    for line in notes:
        console.print(escape(line), highlight=False)
    for metric, why in (reasoning.get("unavailable") or {}).items():
        err_console.print(f"[yellow]{escape(metric)} unavailable:[/] {escape(why)}", highlight=False, soft_wrap=True)
    ratings = m.get("ratings")
    if ratings is None:
        console.print("human ratings: not supported by this store", highlight=False)
    elif ratings:
        rt = Table(title="human ratings (1-5)", title_justify="left")
        for col in ("source", "model", "ratings", "chains", "faithfulness", "usefulness"):
            rt.add_column(col, justify="left" if col in ("source", "model") else "right")
        for r in ratings:
            rt.add_row(escape(str(r.get("source"))), escape(str(r.get("model") or "-")), str(r.get("ratings")),
                       str(r.get("chains")), f"{r.get('faithfulness') or 0:.2f}",
                       f"{r.get('usefulness') or 0:.2f}")
        console.print(rt)
    if m.get("judge"):
        print_judge(m["judge"])


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def print_judge(result: dict[str, Any]) -> None:
    """An LLM judge's verdicts summarised (:func:`mulcot.metrics.judge.judge_summary`): rubric means per chain
    group, leakage rates, agreement with people's ratings (``mulcot judge --report``, ``mulcot eval``)."""
    if result["rubric"]:
        table = Table(title="judge rubric (mean 1-5)", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("judge", overflow="fold", min_width=8)
        table.add_column("chains", no_wrap=True)
        for col in ("n", "fail", *result["criteria"], "mean"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in result["rubric"]:  # (the cost of each group is in --json)
            table.add_row(escape(r["judge"]), r["group"], str(r["judged"]), str(r["failed"]),
                          *(_fmt(r[c]) for c in result["criteria"]), _fmt(r["mean"]))
        console.print(table)
    if result["leakage"]:
        table = Table(title="label leakage (gold label named from the chain alone)",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("judge", "chains", "n", "fail", "leaked", "rate"):
            table.add_column(col, justify="left" if col in ("judge", "chains") else "right")
        for r in result["leakage"]:
            table.add_row(escape(r["judge"]), r["group"], str(r["judged"]), str(r["failed"]), str(r["leaked"]),
                          "-" if r["rate"] is None else f"{100 * r['rate']:.1f} %")
        console.print(table)
    for r in result["agreement"]:
        console.print(f"agreement of {escape(r['judge'])} with people's ratings on {r['n']} chains: Spearman ρ "
                      f"{_fmt(r['spearman'])}, Cohen's κ (good at ≥ {r['good_at']:g}) {_fmt(r['kappa'])}")
    if not (result["rubric"] or result["leakage"]):
        console.print("no verdicts yet: run mulcot judge DATASET --judge MODEL")
