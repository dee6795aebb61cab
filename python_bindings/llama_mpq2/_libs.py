"""Finds and opens the patched llama.cpp shared libraries (cffi ABI mode, see docs/BINDINGS.md)."""
from __future__ import annotations

from cffi import FFI

from llama_cpp_build import bin_path, lib_dir, src_dir  # noqa: F401  (re-exported)


def dlopen(ffi: FFI, name: str):
    return ffi.dlopen(str(lib_dir() / name))
