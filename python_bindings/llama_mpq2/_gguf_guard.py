"""A look at a GGUF's tensor table before libllama opens it, for the one malformed shape that
aborts the whole process instead of failing the load (docs/ROBUSTNESS.md, found by the fuzzer).

gguf.cpp checks that a tensor's element count fits in int64 by multiplying all four dimensions,
zeros and ones included; ggml_new_tensor_impl, which llama.cpp's loader calls right after,
multiplies only the dimensions > 1 and GGML_ASSERTs. A shape such as (64, 0, 2^32, 2^32) passes
the first and aborts in the second: without this check, Model(path) would kill the interpreter.

Everything else malformed is left to llama.cpp, which reports it cleanly: this walker gives up
(returns None) on anything it does not understand.
"""
from __future__ import annotations

import mmap
import os
import struct

INT64_MAX = (1 << 63) - 1
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4


class _Stop(Exception):
    pass


def _gguf_accepts(ne: list[int]) -> bool:
    """gguf.cpp's own overflow check (gguf_init_from_reader)."""
    n = ne[0]
    for d in ne[1:]:
        if d > 1 and INT64_MAX // d < n:
            return False
        n *= d
    return True


def _ggml_accepts(ne: list[int]) -> bool:
    """ggml_new_tensor_impl's GGML_ASSERT."""
    n = ne[0]
    for d in ne[1:]:
        if d > 1:
            if not INT64_MAX // d > n:
                return False
            n *= d
    return True


def shape_that_aborts(path: str | os.PathLike) -> str | None:
    """A message naming the first tensor whose shape gguf.cpp accepts and ggml aborts on, else None."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return _walk(m, size)
    except (OSError, ValueError, _Stop, struct.error):
        return None


def _walk(m, size: int) -> str | None:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise _Stop
        v = struct.unpack_from(fmt, m, pos)[0]
        pos += n
        return v

    def skip_string() -> bytes:
        nonlocal pos
        n = take("<Q")
        if n > size - pos:
            raise _Stop
        s = m[pos:pos + n]
        pos += n
        return s

    if m[:4] != b"GGUF":
        return None
    pos = 4
    version = take("<I")
    if version < 2 or version > 3:
        return None
    n_tensors, n_kv = take("<q"), take("<q")
    if n_tensors < 0 or n_kv < 0:
        return None
    for _ in range(n_kv):
        skip_string()
        t = take("<I")
        if t == _ARRAY:
            at, n = take("<I"), take("<Q")
            if at == _STRING:
                for _ in range(n):
                    skip_string()
            elif at in _SCALAR_SIZE:
                if n > (size - pos) // _SCALAR_SIZE[at]:
                    return None
                pos += n * _SCALAR_SIZE[at]
            else:
                return None
        elif t == _STRING:
            skip_string()
        elif t in _SCALAR_SIZE:
            pos += _SCALAR_SIZE[t]
        else:
            return None
    for _ in range(n_tensors):
        name = skip_string()
        n_dims = take("<I")
        if n_dims > MAX_DIMS:
            return None
        ne = [take("<q") for _ in range(n_dims)] + [1] * (MAX_DIMS - n_dims)
        if any(d < 0 for d in ne):
            return None
        take("<i")      # type
        take("<Q")      # offset
        if _gguf_accepts(ne) and not _ggml_accepts(ne):
            shown = name.decode("utf-8", "replace")
            return (f"tensor '{shown}' has shape {tuple(ne)}, whose element count overflows int64 "
                    f"(llama.cpp would abort the process on it)")
    return None
