#!/usr/bin/env bash
# Installs everything into the current Python (use a venv if you like) and builds the patched
# llama.cpp into build/. With --demo, then converts SmolLM2-135M-Instruct at a bit budget and sets
# it beside the F16 file: size, perplexity, tokens/s and the same chat questions (bench/demo.py).
#
#   bash setup.sh --demo        # install + demo
#   bash setup.sh               # install only
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

# Debian packages: a C/C++ toolchain, cmake and patch for the build; ccache for fast rebuilds;
# the aarch64 cross compiler and qemu-user for the tests of the NEON kernels; clang for the fuzzer.
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(build-essential)
command -v patch >/dev/null || need_apt+=(patch)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v clang >/dev/null || need_apt+=(clang)      # libFuzzer + sanitizers: tests/test_fuzz.py
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need_apt[*]} with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install: ${need_apt[*]}" >&2
        for tool in cmake g++ patch; do command -v "$tool" >/dev/null || exit 1; done
    fi
fi

# torch first and pinned: any other spec pulls CUDA wheels of several GB.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet numpy cffi sentencepiece protobuf safetensors transformers accelerate tqdm pytest
"$PY" -m pip install --quiet hypothesis                # property-based fuzzing: tests/test_fuzz.py

echo "setup: building the patched llama.cpp (first build takes several minutes)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j "$JOBS" --target mpq2-tools 2>&1 | grep -E "error|Error|warning: .*mpq2|Built target (llama-cli|llama-quantize|test-backend-ops)$" || true
test -x build/bin/llama-quantize || { echo "setup: build failed, see: cmake --build build --target mpq2-tools" >&2; exit 1; }

# gguf-py of the same pinned source, patched to know MPQ2, then this project.
"$PY" -m pip install --quiet ./build/llama.cpp-src/gguf-py
"$PY" -m pip install --quiet -e .

# The integration tests (docs/INTEGRATIONS.md): llama-cpp-python's Python half only (it loads the
# patched build/bin/libllama.so through LLAMA_CPP_LIB_PATH, no llama.cpp build of its own), openai.
CMAKE_ARGS="-DLLAMA_BUILD=OFF" "$PY" -m pip install --quiet --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
"$PY" -m pip install --quiet openai
echo "setup: done. Tools in build/bin, Python packages mpq2 and llama_mpq2 installed."

if [[ "${1:-}" == "--demo" ]]; then
    "$PY" bench/demo.py
fi
