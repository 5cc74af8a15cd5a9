#!/usr/bin/env bash
# `mulcot eval --calibrate-on` on real weights, against the learning benchmark's own recalibration
# (bench/learning.py, README "the learning benchmark"): the multi-task SmolLM2 assistant (seed 0) fitted on the
# 150 tuning posts, reported on the 972 report posts. The store is copied first: /tmp/learning is only read.
#
#   bash bench/calibrate_on.sh [/tmp/learning] [/tmp/calibrate-on]
set -euo pipefail
src=${1:-/tmp/learning}
work=${2:-/tmp/calibrate-on}
mkdir -p "$work"
[ -f "$work/mulcot.db" ] || .venv/bin/python -c "
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as a, sqlite3.connect(sys.argv[2]) as b:
    a.backup(b)" "$src/mulcot.db" "$work/mulcot.db"
export HF_HUB_OFFLINE=1
start=$(date +%s)
/usr/bin/time -v .venv/bin/mulcot eval t15 --split report --model "$src/runs/smol-multitask-s0" --max-chains 0 \
    --calibrate-on tune --db "$work/mulcot.db" --runs-dir "$work/runs" --out "$work/eval" --json \
    > "$work/eval.json" 2> "$work/time.txt"
end=$(date +%s)
.venv/bin/python - "$work" $((end - start)) <<'PY'
import json, sys
from pathlib import Path
work, wall = Path(sys.argv[1]), int(sys.argv[2])
d = json.loads((work / "eval.json").read_text())
m = d["metrics"]
r = m["recalibrated"]
peak = next((int(l.split(":")[1]) for l in (work / "time.txt").read_text().splitlines()
             if "Maximum resident" in l), None)
out = {"model": "smol-multitask-s0", "n": d["n"], "fit_on": r["on"], "n_fit": r["n_fit"],
       "raw": {"accuracy": m["label"]["accuracy"], "macro_f1": m["label"]["macro_f1"]},
       "recalibrated": {"accuracy": r["label"]["accuracy"], "macro_f1": r["label"]["macro_f1"],
                        "balanced_accuracy": r["label"].get("balanced_accuracy"),
                        "auroc": r["probabilities"]["auroc_macro_ovr"], "ece": r["probabilities"]["ece"],
                        "intervals": r["intervals"]},
       "temperature": r["temperature"], "bias": r["bias"],
       "vs_majority": r.get("vs_majority"), "vs_label_head": r["vs_label_head"],
       "generated": m.get("generated"), "wall_s": wall, "peak_rss_mb": peak and round(peak / 1024)}
Path("bench/results/calibrate_on.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps({k: out[k] for k in ("n", "raw", "temperature", "bias", "wall_s")}, indent=1))
print("recalibrated acc", out["recalibrated"]["accuracy"], "m-F1", out["recalibrated"]["macro_f1"],
      "McNemar p vs majority", (out["vs_majority"] or {}).get("mcnemar", {}).get("p_value"))
PY
