"""Build the embedded demo sample (mulcot/sample/twitter2015) from ../shared/data.

60 real Twitter-2015 posts that the MulCoT-RD authors' teacher (Qwen2.5-VL-72B) annotated, 20 per label, re-split
into train 36 / dev 12 / test 12 (12/4/4 per label). All come from the original *test* split, the only one with
released teacher chains. Written as TomBERT TSVs (index = the authors' id) plus the authors' JSON per split, so
both importers can be tried on it and the chains attach to the same samples.
Usage: python scripts/make_sample.py [SHARED_DATA] [OUT]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

PER_LABEL = {"train": 12, "dev": 4, "test": 4}
CODE = {"negative": "0", "neutral": "1", "positive": "2"}


def main() -> None:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "mulcot/sample/twitter2015")
    items = json.loads((shared / "mulcot-rd/t15-test.json").read_text())
    tsv = {}
    for line in (shared / "twitter2015/test.tsv").read_text().splitlines()[1:]:
        _, label, image, text, aspect = line.split("\t")
        tsv.setdefault((image, aspect, text.replace("$T$", aspect)), text)
    by_label: dict[str, list[dict]] = {}
    for item in sorted(items, key=lambda x: x["id"]):
        key = (item["image_path"], item["aspect"], item["text"])
        if key in tsv and "```" not in item["cot"]:
            item["raw_text"] = tsv[key]
            by_label.setdefault(item["label"], []).append(item)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "chains").mkdir()
    for label, pool in by_label.items():
        step = max(1, len(pool) // 20)
        by_label[label] = pool[::step][:20]
    start = 0
    for split, n in PER_LABEL.items():
        chosen = [x for label in ("negative", "neutral", "positive") for x in by_label[label][start : start + n]]
        start += n
        chosen.sort(key=lambda x: x["id"])
        rows = ["index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"]
        for x in chosen:
            rows.append(f"{x['id']}\t{CODE[x['label']]}\t{x['image_path']}\t{x['raw_text']}\t{x['aspect']}")
            shutil.copy(shared / "twitter2015/images" / x["image_path"], out / "images" / x["image_path"])
        (out / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        chains = [{k: x[k] for k in ("id", "text", "aspect", "label", "image_id", "image_path", "cot")} for x in chosen]
        (out / "chains" / f"{split}.json").write_text(json.dumps(chains, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
