"""The dataset card (``README.md`` with a YAML header) of a Hugging Face export: what the rows are, where the posts,
images and chains come from, and under what terms."""

from __future__ import annotations

from typing import Any

from mulcot.core.chains import release_chain
from mulcot.store import Store

# Where the posts of each import format come from (the attributions of ../shared/data and the embedded sample).
FORMAT_SOURCES: dict[str, str] = {
    "twitter-tsv": "Twitter-2015/-2017 posts and aspect labels: Yu & Jiang, \"Adapting BERT for Target-Oriented "
                   "Multimodal Sentiment Classification\", IJCAI 2019 (github.com/jefferyYu/TomBERT); originally "
                   "Zhang et al., AAAI 2018.",
    "mvsa-raw": "MVSA posts, images and labels: Niu et al., \"Sentiment Analysis on Multi-View Social Data\", "
                "MMM 2016.",
    "clmlf-json": "MVSA posts and labels (CLMLF's split): Li et al., \"CLMLF: A Contrastive Learning and Multi-Layer "
                  "Fusion Method for Multimodal Sentiment Detection\", Findings of NAACL 2022 "
                  "(github.com/Link-Li/CLMLF); originally Niu et al., MMM 2016.",
    "mulcot-json": "Posts, images and teacher chains: the MulCoT-RD release (github.com/123sghn/MulCoTRD).",
    "jsonl": "Posts imported from a user's own JSONL file: add its source and terms here before publishing.",
}
RELEASE_SOURCE = (
    "Teacher chains (and images) from the MulCoT-RD release (github.com/123sghn/MulCoTRD): Shangguan, Yang et al., "
    "\"Resource-Limited Joint Multimodal Sentiment Reasoning and Classification via Chain-of-Thought Enhancement "
    "and Distillation\"."
)
LICENCE = (
    "The posts are public tweets (or other social-media posts) redistributed by the sources above for research use "
    "only; they keep their authors' and the platform's terms, so this card declares `license: other`. Check each "
    "source's terms before you publish or use this dataset beyond research. The reasoning chains written by models "
    "follow the terms of the models named below."
)


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dataset_card(store: Store, ds: dict[str, Any], by_split: dict[str, list[dict]], counts: dict[str, int]) -> str:
    """The card text: a YAML header (licence, one config whose splits point at ``data/<split>-*.parquet``) and
    sections on the rows, the sources and the licence."""
    name = ds["name"]
    chain_ids = {r["chain_id"] for rows in by_split.values() for r in rows if r["chain_id"] is not None}
    chains = [c for c in store.reasonings(dataset=name, final_only=True) if c["id"] in chain_ids]
    sources = [FORMAT_SOURCES.get(ds["format"], f"Imported as '{ds['format']}' from {ds['source']}.")]
    if any(release_chain(c) for c in chains):
        sources.append(RELEASE_SOURCE)
    models = sorted({(c["source"], c["model"] or "unknown model") for c in chains if not release_chain(c)})
    sources += [f"{src.capitalize()} chains written by {model} through mulcot." for src, model in models]
    samples = {(r["split"], r["id"]) for rows in by_split.values() for r in rows}
    header = [
        "---", "license: other", "task_categories:", "- image-text-to-text", "- text-classification",
        "language:", "- en", "tags:", "- sentiment", "- chain-of-thought", "- multimodal", "- mulcot",
        f"pretty_name: {_yaml_str(name)}", "configs:", "- config_name: default", "  data_files:",
    ]
    for split in by_split:
        header += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    header.append("---")
    split_lines = [f"| {s} | {counts[s]} | {len({k for sp, k in samples if sp == s})} |" for s in by_split]
    body = [
        f"# {name}", "",
        f"Exported from a mulcot store ({ds['task']}, imported as `{ds['format']}`). Each row is one reasoning chain "
        "(the final attempt) with its post's fields; a post without any chain has one row with empty chain columns.",
        "", "| split | rows | posts |", "| --- | ---: | ---: |", *split_lines, "",
        "## Columns", "",
        "- `id`, `split`, `text`, `aspect` (aspect-level data only), `label` (gold: positive, neutral, negative), "
        "`image` (the post's image, decoded by the `Image` feature);",
        "- `chain_id`, `source` (teacher, assistant, student), `model`, `stage`, `prompt_version`, `reasoning` (the "
        "canonical five-field text), `Text_analysis`, `Image_analysis`, `Conflict_resolution`, `Final_conclusion`, "
        "`prediction`, `parse_status` (full, partial, none), `correct` (prediction equals the gold label).",
        "", "```python", "from datasets import load_dataset", "", 'ds = load_dataset("path/to/this/folder")', "```",
        "", "## Sources", "", *[f"- {s}" for s in sources], "", "## Licence", "", LICENCE, "",
    ]
    return "\n".join(header + body)
