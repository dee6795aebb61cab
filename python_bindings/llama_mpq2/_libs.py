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


def bin_path(tool: str) -> Path:
    """Path of a built llama.cpp tool (llama-cli, llama-quantize, ...)."""
    path = lib_dir() / tool
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build target {tool}")
    return path


def dlopen(ffi: FFI, name: str):
    return ffi.dlopen(str(lib_dir() / name))
