"""Finds and opens the patched llama.cpp shared libraries (cffi ABI mode, see docs/BINDINGS.md)."""
from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_REPO_BUILD = Path(__file__).resolve().parents[2] / "build" / "bin"


def lib_dir() -> Path:
    """LLAMA_MPQ2_LIB_DIR if set, else the repository's build/bin."""
    env = os.environ.get("LLAMA_MPQ2_LIB_DIR")
    path = Path(env) if env else _REPO_BUILD
    if not (path / "libggml-base.so").exists():
        raise OSError(f"patched llama.cpp libraries not found in {path}: build them with "
                      f"`cmake -B build && cmake --build build --target mpq2-tools` "
                      f"or set LLAMA_MPQ2_LIB_DIR")
    return path


def src_dir() -> Path:
    """The patched llama.cpp source tree the libraries were built from (headers for tests and
    benchmarks that compile against ggml): LLAMA_MPQ2_SRC_DIR, else llama.cpp-src beside
    LLAMA_MPQ2_LIB_DIR's directory, else the repository's build/llama.cpp-src."""
    candidates = []
    if os.environ.get("LLAMA_MPQ2_SRC_DIR"):
        candidates.append(Path(os.environ["LLAMA_MPQ2_SRC_DIR"]))
    if os.environ.get("LLAMA_MPQ2_LIB_DIR"):
        candidates.append(Path(os.environ["LLAMA_MPQ2_LIB_DIR"]).parent / "llama.cpp-src")
    candidates.append(_REPO_BUILD.parent / "llama.cpp-src")
    for c in candidates:
        if (c / "ggml" / "src" / "ggml-common.h").exists():
            return c
    raise FileNotFoundError(f"patched llama.cpp source not found (tried {', '.join(map(str, candidates))}): "
                            f"build the project first (bash setup.sh) or set LLAMA_MPQ2_SRC_DIR")


def bin_path(tool: str) -> Path:
    """Path of a built llama.cpp tool (llama-cli, llama-quantize, ...)."""
    path = lib_dir() / tool
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build target {tool}")
    return path


def dlopen(ffi: FFI, name: str):
    return ffi.dlopen(str(lib_dir() / name))
