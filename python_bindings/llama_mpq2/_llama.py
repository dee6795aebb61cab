"""The compiled cffi module over libllama, built on first use next to the libraries."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

from ._libs import lib_dir

MODULE = "_llama_mpq2_cffi"


def _include_dirs() -> list[str]:
    env = os.environ.get("LLAMA_MPQ2_INCLUDE_DIR")
    if env:
        return env.split(os.pathsep)
    src = lib_dir().parent / "llama.cpp-src"
    return [str(src / "include"), str(src / "ggml" / "include")]


def _build(out_dir: Path) -> None:
    from cffi import FFI
    from ._llama_cdef import CDEF
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, '#include "llama.h"', include_dirs=_include_dirs(),
                   library_dirs=[str(lib_dir())], libraries=["llama"],
                   extra_link_args=[f"-Wl,-rpath,{lib_dir()}"])
    out_dir.mkdir(parents=True, exist_ok=True)
    ffi.compile(tmpdir=str(out_dir), verbose=False)


def load():
    """Returns (ffi, lib), compiling the module if it is missing or older than libllama."""
    out_dir = lib_dir() / "python"
    libllama = lib_dir() / "libllama.so"
    built = out_dir / (MODULE + importlib.machinery.EXTENSION_SUFFIXES[0])
    if not built.exists() or built.stat().st_mtime < libllama.stat().st_mtime:
        _build(out_dir)
    spec = importlib.util.spec_from_file_location(MODULE, built)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = mod
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib
