#!/usr/bin/env bash
# One-time set-up of WordNet 3.0 for nltk's METEOR, offline (no nltk downloader):
#   1. apt-get install -y wordnet-base wordnet-sense-index   (only when /usr/share/wordnet is missing)
#   2. copy /usr/share/wordnet/* (copies, not links: nltk refuses links) into $TARGET/corpora/wordnet/
#      and write the `lexnames` file nltk needs (see mulcot/metrics/wordnet.py).
# Usage: scripts/setup-wordnet.sh [TARGET]
#   TARGET defaults to the first entry of $NLTK_DATA, else ~/.cache/mulcot/nltk_data.
#   PYTHON selects the interpreter (default: .venv/bin/python beside this script's repo, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
target="${1:-}"

if [ ! -f /usr/share/wordnet/index.noun ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: /usr/share/wordnet is missing and apt-get is not available;" \
         "install WordNet 3.0 (Debian packages wordnet-base, wordnet-sense-index) by other means" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
  fi
fi

"$PYTHON" - "$target" <<'PY'
import sys
import time

from mulcot.metrics.wordnet import ensure_wordnet, install_wordnet_from_debian

target = sys.argv[1] or None
wn_dir = install_wordnet_from_debian(target)
start = time.perf_counter()
reader = ensure_wordnet(wn_dir.parent.parent)
assert reader.synsets("happy"), "WordNet loaded but knows no 'happy'"
print(f"WordNet installed at {wn_dir} (loads in {time.perf_counter() - start:.1f} s)")
if target:
    print(f"use it with: export NLTK_DATA={wn_dir.parent.parent}")
PY
