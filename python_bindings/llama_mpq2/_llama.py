"""The compiled cffi module over libllama (API mode), built on first use.

The C source is a one-line `#include "llama.h"` plus the declarations of `_llama_cdef.CDEF`; cffi
generates a small extension module from them and the C compiler lays out every struct the way
llama.h defines it. The module is cached in a directory named by a hash of everything it depends
on (the declarations, llama.h, the path and mtime of libllama, the Python ABI and the cffi version),
so a changed header or a rebuilt libllama gets a fresh module and nothing is ever stale. The cache
is $LLAMA_MPQ2_CACHE_DIR, else $XDG_CACHE_HOME/llama_mpq2, else ~/.cache/llama_mpq2; the build is
serialised with a file lock and the module moved into place atomically, so concurrent first uses
(two test processes) are safe. Nothing is written next to the libraries.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ._libs import lib_dir

MODULE = "_llama_mpq2_cffi"
_loaded = None


def _include_dirs() -> list[str]:
    env = os.environ.get("LLAMA_MPQ2_INCLUDE_DIR")
    if env:
        return env.split(os.pathsep)
    src = lib_dir().parent / "llama.cpp-src"
    return [str(src / "include"), str(src / "ggml" / "include")]


def cache_root() -> Path:
    env = os.environ.get("LLAMA_MPQ2_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llama_mpq2"


def _key() -> str:
    import cffi
    from ._llama_cdef import CDEF
    h = hashlib.sha256()
    h.update(CDEF.encode())
    libllama = (lib_dir() / "libllama.so").resolve()
    st = libllama.stat()
    h.update(f"{libllama}|{st.st_mtime_ns}|{st.st_size}|{sys.implementation.cache_tag}|"
             f"{importlib.machinery.EXTENSION_SUFFIXES[0]}|{cffi.__version__}".encode())
    for inc in _include_dirs():
        for header in ("llama.h", "ggml.h"):
            p = Path(inc) / header
            if p.exists():
                h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _build(out_file: Path) -> None:
    import fcntl

    from cffi import FFI

    from ._llama_cdef import CDEF
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out_file.exists():                      # another process built it while we waited
            return
        ffi = FFI()
        ffi.cdef(CDEF)
        ffi.set_source(MODULE, '#include "llama.h"', include_dirs=_include_dirs(),
                       library_dirs=[str(lib_dir())], libraries=["llama"],
                       extra_link_args=[f"-Wl,-rpath,{lib_dir()}"])
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=out_file.parent))
        try:
            built = ffi.compile(tmpdir=str(tmp), verbose=False)
            os.replace(built, out_file)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def module_path() -> Path:
    return cache_root() / _key() / (MODULE + importlib.machinery.EXTENSION_SUFFIXES[0])


def load():
    """Returns (ffi, lib), compiling the module on first use."""
    global _loaded
    if _loaded is not None:
        return _loaded
    built = module_path()
    if not built.exists():
        _build(built)
    spec = importlib.util.spec_from_file_location(MODULE, built)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = mod
    spec.loader.exec_module(mod)
    _loaded = (mod.ffi, mod.lib)
    return _loaded
