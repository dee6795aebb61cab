"""Where the patched llama.cpp build lives: its libraries, tools and source tree.

The one place that knows it: the bindings (libraries) and the converter (convert_hf_to_gguf.py
and gguf-py of the same source) both ask here, so neither package needs the other.
LLAMA_MPQ2_LIB_DIR / LLAMA_MPQ2_SRC_DIR point elsewhere than the repository's build/.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_BUILD = Path(__file__).resolve().parents[1] / "build"


def lib_dir() -> Path:
    """LLAMA_MPQ2_LIB_DIR if set, else the repository's build/bin."""
    env = os.environ.get("LLAMA_MPQ2_LIB_DIR")
    path = Path(env) if env else REPO_BUILD / "bin"
    if not (path / "libggml-base.so").exists():
        raise OSError(f"patched llama.cpp libraries not found in {path}: build them with "
                      f"`cmake -B build && cmake --build build --target mpq2-tools` "
                      f"or set LLAMA_MPQ2_LIB_DIR")
    return path


def src_dir() -> Path:
    """The patched llama.cpp source tree the libraries were built from: LLAMA_MPQ2_SRC_DIR (or
    the older MPQ2_LLAMA_CPP_SRC), else llama.cpp-src beside LLAMA_MPQ2_LIB_DIR's directory,
    else the repository's build/llama.cpp-src."""
    candidates = [Path(os.environ[v]) for v in ("LLAMA_MPQ2_SRC_DIR", "MPQ2_LLAMA_CPP_SRC") if os.environ.get(v)]
    if os.environ.get("LLAMA_MPQ2_LIB_DIR"):
        candidates.append(Path(os.environ["LLAMA_MPQ2_LIB_DIR"]).parent / "llama.cpp-src")
    candidates.append(REPO_BUILD / "llama.cpp-src")
    for c in candidates:
        if (c / "convert_hf_to_gguf.py").exists() and (c / "ggml" / "src" / "ggml-common.h").exists():
            return c
    raise FileNotFoundError(f"patched llama.cpp source not found (tried {', '.join(map(str, candidates))}): "
                            f"build the project first (bash setup.sh) or set LLAMA_MPQ2_SRC_DIR")


def bin_path(tool: str) -> Path:
    """Path of a built llama.cpp tool (llama-cli, llama-quantize, ...)."""
    path = lib_dir() / tool
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build target {tool}")
    return path
