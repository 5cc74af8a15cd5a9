"""Build the embedded text-only sample (mulcot/sample/twitter2015-text) from ../shared/data: the real-weights laptop
recipe's data (recipes/smollm2-cpu.toml).

- train 128 / dev 32 posts: Twitter-2015 *test* posts (the only split whose teacher chains were released), whole
  tweets drawn in a seeded order, with the MulCoT-RD authors' chains (Qwen2.5-VL-72B) in their JSON format, each
  chain field cut to its first sentence (as bench/learning.py does: training time on 2 cores grows with chain length);
- test 300 posts: Twitter-2015 *dev* rows, shuffled with seed 0, rows 150-449 (the head of bench/learning.py's
  report set; its first 150 are that benchmark's tuning set). No chains: the recipe's eval scores labels.

No images (the recipe's model, SmolLM2-135M, reads text only). TomBERT TSVs (index, label 0/1/2, image file, text
with $T$, aspect) plus chains/{train,dev}.json.
Usage: python scripts/make_text_sample.py [SHARED_DATA] [OUT]
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from pathlib import Path

from mulcot.core.reasoning import format_reasoning, parse_reasoning

SIZES = {"train": 128, "dev": 32}
TEST = (150, 450)
CODE = {"negative": "0", "neutral": "1", "positive": "2"}
HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"


def first_sentences(cot: str) -> str | None:
    """The chain in the canonical five-field form, each field cut to its first sentence (None: no Prediction)."""
    parsed = parse_reasoning(cot)
    if parsed.prediction is None:
        return None
    fields = {k: re.split(r"(?<=[.!?])\s", v.strip())[0] for k, v in parsed.fields.items() if k != "Prediction"}
    return format_reasoning({**fields, "Prediction": parsed.prediction})


def main() -> None:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "mulcot/sample/twitter2015-text")
    items = json.loads((shared / "mulcot-rd/t15-test.json").read_text(encoding="utf-8"))
    raw = {}
    for line in (shared / "twitter2015/test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        _, _, image, text, aspect = line.split("\t")
        raw.setdefault((image, aspect, text.replace("$T$", aspect)), text)
    tweets: dict[str, list[dict]] = {}
    for item in sorted(items, key=lambda x: x["id"]):
        key = (item["image_path"], item["aspect"], item["text"])
        chain = first_sentences(item["cot"]) if "```" not in item["cot"] else None
        if key in raw and chain:
            tweets.setdefault(item["image_path"], []).append({**item, "raw_text": raw[key], "cot": chain})
    order = sorted(tweets)
    random.Random(0).shuffle(order)
    if out.exists():
        shutil.rmtree(out)
    (out / "chains").mkdir(parents=True)
    for split, size in SIZES.items():
        chosen: list[dict] = []
        while len(chosen) < size:
            chosen.extend(tweets[order.pop(0)])
        chosen = sorted(chosen[:size], key=lambda x: x["id"])
        rows = [f"{x['id']}\t{CODE[x['label']]}\t{x['image_path']}\t{x['raw_text']}\t{x['aspect']}" for x in chosen]
        (out / f"{split}.tsv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
        chains = [{k: x[k] for k in ("id", "text", "aspect", "label", "image_id", "image_path", "cot")} for x in chosen]
        (out / "chains" / f"{split}.json").write_text(json.dumps(chains, indent=1, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")
    lines = (shared / "twitter2015/dev.tsv").read_text(encoding="utf-8").splitlines()
    rows = lines[1:]
    random.Random(0).shuffle(rows)
    (out / "test.tsv").write_text("\n".join([HEADER, *rows[TEST[0] : TEST[1]]]) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
