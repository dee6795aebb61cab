"""MPQ2/MPQ2R/MPQ2S round to nearest through the patched ggml's own C quantizer, when it is built.

codec.quantize / quantize_r / codec_s.quantize (numpy) are the bit-exact mirrors of
quantize_mpq2_ex / quantize_mpq2r_ex / quantize_mpq2s, and the tests hold them equal byte for byte; numpy encodes about 1.3 M
weights a second, so an untied 128256 x 4096 embedding (Llama 3 8B) took 399 s of a conversion.
The C reference, on every core, does the same rows in seconds. This module loads
libggml-base from the build (llama_cpp_build.lib_dir(), the one place that knows where it is:
not the bindings) with ctypes, and returns None where it is not there, so the caller falls back
to numpy and writes the same bytes either way.
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from .format import DEFAULT_SALIENT_FRACTION, GGML_QUANT_SIZES, QTYPE, QTYPE_R, QTYPE_S

ROWS_PER_TASK = 256        # rows per C call: the threads take turns on these
# name -> (C function, ggml type, takes a salient fraction: MPQ2S has no int8 words)
_C_NAMES = {"mpq2": ("quantize_mpq2_ex", QTYPE, True), "mpq2r": ("quantize_mpq2r_ex", QTYPE_R, True),
            "mpq2s": ("quantize_mpq2s", QTYPE_S, False)}


@lru_cache(maxsize=1)
def _functions() -> dict | None:
    """{"mpq2": quantize_mpq2_ex, ...} (_C_NAMES) of the built libggml-base, or None."""
    if os.environ.get("MPQ2_NUMPY_QUANTIZE"):          # force the numpy mirror (tests compare the two)
        return None
    try:
        from llama_cpp_build import lib_dir
        lib = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
        fns = {name: getattr(lib, c_name) for name, (c_name, _, _) in _C_NAMES.items()}
    except (ImportError, OSError, AttributeError):
        return None
    for name, fn in fns.items():
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p] + \
            ([ctypes.c_float] if _C_NAMES[name][2] else [])
    return fns


def available() -> bool:
    return _functions() is not None


def quantize(x: np.ndarray, type_name: str, salient_fraction: float = DEFAULT_SALIENT_FRACTION,
             threads: int | None = None) -> np.ndarray | None:
    """Rows of x (..., n) to MPQ2, MPQ2R or MPQ2S bytes with the C reference quantizer (no
    importance), ROWS_PER_TASK rows per call on `threads` threads (default: all cores; ctypes
    lets go of the GIL during each call); None if the library is not built."""
    fns = _functions()
    if fns is None:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    _, qtype, takes_fraction = _C_NAMES[type_name]
    qk, block_bytes = GGML_QUANT_SIZES[qtype]
    if n % qk:
        raise ValueError(f"{type_name.upper()} needs rows that are a multiple of {qk} weights, got {n}")
    rows = x.reshape(-1, n)
    out = np.empty((rows.shape[0], n // qk * block_bytes), np.uint8)
    fn = fns[type_name]
    extra = (float(salient_fraction),) if takes_fraction else ()

    def task(r0: int) -> None:
        r1 = min(r0 + ROWS_PER_TASK, rows.shape[0])
        fn(rows[r0:r1].ctypes.data, out[r0:r1].ctypes.data, r1 - r0, n, None, *extra)

    starts = range(0, rows.shape[0], ROWS_PER_TASK)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        list(pool.map(task, starts))
    return out.reshape(*x.shape[:-1], -1)
