#!/usr/bin/env bash
# llama.cpp's own llama-server (continuous batching over --parallel slots), built from the llama.cpp that the
# installed llama-cpp-python vendors (its sdist, fetched once with pip), into the venv's bin/ beside python.
# bench/generation_throughput.py measures it when it is on PATH; mulcot itself does not need it.
#   PYTHON=.venv/bin/python bash scripts/build-llama-server.sh      (make llama-server)
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
VERSION=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
WORK=${MULCOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mulcot}/llama-server/$VERSION
mkdir -p "$WORK"
if [ ! -f "$WORK/src/vendor/llama.cpp/CMakeLists.txt" ]; then
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  tar xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK/src" --strip-components=1
fi
GENERATOR=()
if command -v ninja >/dev/null; then GENERATOR=(-G Ninja); fi
# GGML_NATIVE=OFF like the Makefile's llama-cpp-python wheel (the same kernels), static so the binary can be copied
cmake -S "$WORK/src/vendor/llama.cpp" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF > "$WORK/cmake.log"
cmake --build "$WORK/build" --target llama-server -j "$(nproc)"
cp "$WORK/build/bin/llama-server" "$BIN/llama-server"
"$BIN/llama-server" --version 2>&1 | head -1
echo "llama-server -> $BIN/llama-server"
