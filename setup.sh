#!/usr/bin/env bash
# Installs everything into the current Python (use a venv if you like) and builds the patched
# llama.cpp into build/. With --demo, then quantizes SmolLM2-135M-Instruct to MPQ2 and chats.
#
#   bash setup.sh --demo        # install + demo
#   bash setup.sh               # install only
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

need_apt=()
for tool in cmake g++ patch; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
command -v ccache >/dev/null || need_apt+=(ccache)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need_apt[*]} with apt-get"
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]/g++/build-essential}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (cmake, a C/C++ compiler and patch are required)" >&2
        [[ " ${need_apt[*]} " == " ccache " ]] || exit 1
    fi
fi

# torch first and pinned: any other spec pulls CUDA wheels of several GB.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet numpy cffi sentencepiece protobuf safetensors transformers accelerate tqdm pytest

echo "setup: building the patched llama.cpp (first build takes several minutes)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j "$JOBS" --target mpq2-tools 2>&1 | grep -E "error|Error|warning: .*mpq2|Built target (llama-cli|llama-quantize|test-backend-ops)$" || true
test -x build/bin/llama-quantize || { echo "setup: build failed, see: cmake --build build --target mpq2-tools" >&2; exit 1; }

# gguf-py of the same pinned source, patched to know MPQ2, then this project.
"$PY" -m pip install --quiet ./build/llama.cpp-src/gguf-py
"$PY" -m pip install --quiet -e .
echo "setup: done. Tools in build/bin, Python packages mpq2 and llama_mpq2 installed."

if [[ "${1:-}" == "--demo" ]]; then
    "$PY" bench/demo.py
fi
