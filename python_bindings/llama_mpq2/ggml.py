"""MPQ2, MPQ2R and MPQ2S on numpy arrays through the C code of the patched ggml (no Python loop
over blocks). Every function takes qtype="mpq2" (the default), "mpq2r" (MPQ2 blocks of weights
turned by MPQ2R's fixed 64-point rotation: the same bytes per block) or "mpq2s" (the 2.25-bit
tier: 36 bytes per 128 turned weights); see docs/FORMAT.md."""
from __future__ import annotations

import numpy as np
from cffi import FFI

from ._libs import dlopen

QK_MPQ2 = 64
MPQ2_BLOCK_BYTES = 20
GGML_TYPE_F32 = 0
GGML_TYPE_Q8_0 = 8
GGML_TYPE_MPQ2 = 96
GGML_TYPE_MPQ2R = 97
GGML_TYPE_MPQ2S = 99
QTYPES = {"mpq2": GGML_TYPE_MPQ2, "mpq2r": GGML_TYPE_MPQ2R, "mpq2s": GGML_TYPE_MPQ2S}

ffi = FFI()
ffi.cdef("""
    typedef void (*ggml_to_float_t)  (const void * x, float * y, int64_t k);
    typedef void (*ggml_from_float_t)(const float * x, void * y, int64_t k);
    typedef void (*ggml_vec_dot_t)   (int n, float * s, size_t bs, const void * x, size_t bx,
                                      const void * y, size_t by, int nrc);
    struct ggml_type_traits {
        const char * type_name; int64_t blck_size; int64_t blck_size_interleave;
        size_t type_size; bool is_quantized; ggml_to_float_t to_float; ggml_from_float_t from_float_ref;
    };
    struct ggml_type_traits_cpu {
        ggml_from_float_t from_float; ggml_vec_dot_t vec_dot; int vec_dot_type; int64_t nrows;
    };
    const struct ggml_type_traits * ggml_get_type_traits(int type);
    const struct ggml_type_traits_cpu * ggml_get_type_traits_cpu(int type);
    void ggml_cpu_init(void);
    size_t ggml_row_size(int type, int64_t ne);
    bool ggml_validate_row_data(int type, const void * data, size_t nbytes);

    size_t quantize_mpq2_ex(const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                            const float * imatrix, float salient_fraction);
    void dequantize_row_mpq2(const void * x, float * y, int64_t k);
    void quantize_row_mpq2_ref(const float * x, void * y, int64_t k);
    size_t quantize_mpq2r_ex(const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                             const float * imatrix, float salient_fraction);
    void dequantize_row_mpq2r(const void * x, float * y, int64_t k);
    void quantize_row_mpq2r_ref(const float * x, void * y, int64_t k);
    size_t quantize_mpq2s(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
    void dequantize_row_mpq2s(const void * x, float * y, int64_t k);
    void quantize_row_mpq2s_ref(const float * x, void * y, int64_t k);
    void mpq2r_rotate(const float * x, float * y, int64_t n);
    void mpq2r_unrotate(const float * y, float * x, int64_t n);
""")

_base = dlopen(ffi, "libggml-base.so")
_cpu = dlopen(ffi, "libggml-cpu.so")
_cpu.ggml_cpu_init()


def _ptr(a: np.ndarray, ctype: str):
    return ffi.cast(ctype, ffi.from_buffer(a))


def _rows(x: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    qk = _sizes(qtype)[0]
    if x.ndim == 0 or x.shape[-1] % qk:
        raise ValueError(f"{qtype.upper()} rows must be a multiple of {qk} long, got shape {x.shape}")
    return x


def hessian_diag(activations: np.ndarray) -> np.ndarray:
    """Diagonal of the layer Hessian proxy X^T X / N from calibration activations (N, n) that
    feed the layer: the per-column importance to pass as imatrix (what llama-imatrix collects)."""
    a = np.asarray(activations, dtype=np.float64).reshape(-1, np.shape(activations)[-1])
    return (np.einsum("ij,ij->j", a, a) / max(1, a.shape[0])).astype(np.float32)


def _qtype(qtype: str) -> int:
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    return QTYPES[qtype]


def _sizes(qtype: str) -> tuple[int, int]:
    """(weights, bytes) of one block, from ggml's type traits."""
    traits = _base.ggml_get_type_traits(_qtype(qtype))
    return int(traits.blck_size), int(traits.type_size)


# The C reference per type: (quantize with an importance and a salient fraction, dequantize_row_*,
# quantize_row_*_ref). MPQ2S has no int8 words, so no fraction.
_REF = {"mpq2": (_base.quantize_mpq2_ex, _base.dequantize_row_mpq2, _base.quantize_row_mpq2_ref),
        "mpq2r": (_base.quantize_mpq2r_ex, _base.dequantize_row_mpq2r, _base.quantize_row_mpq2r_ref),
        "mpq2s": (lambda src, dst, nrows, n, imat, fraction: _base.quantize_mpq2s(src, dst, nrows, n, imat),
                  _base.dequantize_row_mpq2s, _base.quantize_row_mpq2s_ref)}


def quantize(x: np.ndarray, imatrix: np.ndarray | None = None, salient_fraction: float = 0.125,
             *, hessian_diag: np.ndarray | None = None, qtype: str = "mpq2") -> np.ndarray:
    """Rows of x (..., n) to MPQ2/MPQ2R bytes (..., n/64*20) or MPQ2S bytes (..., n/128*36).
    imatrix: per-column importance (llama.cpp's imatrix, or the Hessian diagonal, also accepted
    as hessian_diag=), length n. salient_fraction: MPQ2/MPQ2R's int8 words (MPQ2S has none)."""
    _qtype(qtype)
    if hessian_diag is not None:
        if imatrix is not None:
            raise ValueError("pass imatrix or hessian_diag, not both")
        imatrix = hessian_diag
    x = _rows(x, qtype)
    n = x.shape[-1]
    nrows = x.size // n
    qk, size = _sizes(qtype)
    out = np.empty(x.shape[:-1] + (n // qk * size,), np.uint8)
    imat = ffi.NULL
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n,):
            raise ValueError(f"imatrix must have shape ({n},), got {imatrix.shape}")
        imat = _ptr(imatrix, "float *")
    _REF[qtype][0](_ptr(x, "float *"), _ptr(out, "void *"), nrows, n, imat, float(salient_fraction))
    return out


def quantize_ref(x: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    """quantize_row_<qtype>_ref over all of x as one row (ggml's from_float_ref)."""
    x = _rows(x, qtype)
    qk, size = _sizes(qtype)
    out = np.empty(x.size // qk * size, np.uint8)
    _REF[qtype][2](_ptr(x, "float *"), _ptr(out, "void *"), x.size)
    return out


def rotate(x: np.ndarray) -> np.ndarray:
    """MPQ2R's rotation R x of every 64-block of the rows of x (mpq2r_rotate)."""
    x = _rows(x)
    out = np.empty_like(x)
    _base.mpq2r_rotate(_ptr(x, "float *"), _ptr(out, "float *"), x.size)
    return out


def unrotate(y: np.ndarray) -> np.ndarray:
    """The inverse, R^T y per 64-block (mpq2r_unrotate)."""
    y = _rows(y)
    out = np.empty_like(y)
    _base.mpq2r_unrotate(_ptr(y, "float *"), _ptr(out, "float *"), y.size)
    return out


def _blocks(q: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    q = np.ascontiguousarray(q).view(np.uint8)
    size = _sizes(qtype)[1]
    if q.shape[-1] % size:
        raise ValueError(f"{qtype.upper()} rows must be a multiple of {size} bytes, got {q.shape[-1]}")
    return q


def dequantize(q: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    """MPQ2/MPQ2R bytes (..., k*20) to float32 (..., k*64); MPQ2S (..., k*36) to (..., k*128)."""
    q = _blocks(q, qtype)
    qk, size = _sizes(qtype)
    out = np.empty(q.shape[:-1] + (q.shape[-1] // size * qk,), np.float32)
    _REF[qtype][1](_ptr(q, "void *"), _ptr(out, "float *"), out.size)
    return out


def validate(q: np.ndarray, qtype: str = "mpq2") -> bool:
    """ggml_validate_row_data for the type's bytes (prints the first bad block to stderr)."""
    q = _blocks(q, qtype)
    return bool(_base.ggml_validate_row_data(_qtype(qtype), _ptr(q, "void *"), q.size))


def quantize_q8_0(a: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    """Activations to the type's vec_dot_type with the CPU backend's quantizer (what mul_mat
    does to src1): Q8_0 for MPQ2, Q8_0R (Q8_0 of the rotated activations) for MPQ2R and MPQ2S."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty(a.shape[:-1] + (a.shape[-1] // 32 * 34,), np.uint8)
    from_float = _cpu.ggml_get_type_traits_cpu(_cpu.ggml_get_type_traits_cpu(_qtype(qtype)).vec_dot_type).from_float
    for r, row in enumerate(a.reshape(-1, a.shape[-1])):
        dst = out.reshape(-1, out.shape[-1])[r]
        from_float(_ptr(row, "float *"), _ptr(dst, "void *"), row.size)
    return out


def dot(q: np.ndarray, a: np.ndarray, qtype: str = "mpq2") -> np.ndarray:
    """Row-wise dot products of rows q of the type (r, bytes) with float activations a (n,), the
    way ggml's row-wise mul_mat computes them: a quantized to Q8_0 (Q8_0R), then the CPU vec_dot
    kernel (not the repacked 16-row kernels: llama_mpq2.Model runs those)."""
    q = np.atleast_2d(_blocks(q, qtype))
    qk, size = _sizes(qtype)
    n = q.shape[-1] // size * qk
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(n)
    a8 = quantize_q8_0(a, qtype)
    traits = _cpu.ggml_get_type_traits_cpu(_qtype(qtype))
    out = np.empty(q.shape[0], np.float32)
    for r in range(q.shape[0]):
        traits.vec_dot(n, ffi.cast("float *", ffi.from_buffer(out[r:r + 1])), 0,
                       _ptr(q[r], "void *"), 0, _ptr(a8, "void *"), 0, 1)
    return out
