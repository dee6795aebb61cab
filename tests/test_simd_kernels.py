"""The CPU backend's MPQ2 x Q8_0 vec_dot (the SIMD kernel of this build) against an exact float64
dot of the decoded weights with the decoded Q8_0 activations.

The integer parts of the kernel are exact and every decoded weight and activation is exact in
float32, so the only error left is float accumulation order: it must stay within ~1e-5 of the sum
of |w_i a_i| (the scale of the rounding), on every bitmap pattern, at the ends of the value
ranges and for every row length in use (multiples of 64, not of 256).
"""
from __future__ import annotations

import platform

import numpy as np
import pytest
from cffi import FFI

from llama_mpq2 import ggml
from llama_mpq2._libs import dlopen

LENGTHS = [64, 128, 192, 576, 896, 4864]
REL_TOL = 1e-5
D_ONE = 160   # the block scale code of 1.0 (E6M2: 2^(160//4 - 40))

_ffi = FFI()
_ffi.cdef("""
    const char * ggml_vec_dot_mpq2_q8_0_impl(void);
    void ggml_vec_dot_mpq2_q8_0_generic(int n, float * s, size_t bs, const void * x, size_t bx,
                                        const void * y, size_t by, int nrc);
""")
_cpu = dlopen(_ffi, "libggml-cpu.so")


def kernel_name() -> str:
    return _ffi.string(_cpu.ggml_vec_dot_mpq2_q8_0_impl()).decode()


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    """Q8_0 bytes (k*34) to float64: fp16 scale times 32 int8."""
    blocks = np.ascontiguousarray(b, np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float64)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(-1)


def generic_dot(q_row: np.ndarray, a8: np.ndarray, n: int) -> float:
    out = np.zeros(1, np.float32)
    _cpu.ggml_vec_dot_mpq2_q8_0_generic(n, _ffi.cast("float *", _ffi.from_buffer(out)), 0,
                                        _ffi.from_buffer(q_row), 0, _ffi.from_buffer(a8), 0, 1)
    return float(out[0])


def check_rows(q: np.ndarray, a: np.ndarray) -> None:
    """vec_dot of every MPQ2 row of q with activations a against the exact float64 dot."""
    q = np.atleast_2d(q)
    n = q.shape[-1] // ggml.MPQ2_BLOCK_BYTES * ggml.QK_MPQ2
    a8 = ggml.quantize_q8_0(a.astype(np.float32))
    av = dequantize_q8_0(a8)
    w = ggml.dequantize(q).astype(np.float64)  # exact: fp16 d times an integer below 2^13
    exact = w @ av
    scale = np.abs(w) @ np.abs(av)
    got = ggml.dot(q, a).astype(np.float64)
    err = np.abs(got - exact)
    bad = np.flatnonzero(~(err <= REL_TOL * scale + 1e-30))
    assert bad.size == 0, (
        f"{kernel_name()} n={n}: rows {bad[:8].tolist()} off by {(err[bad] / scale[bad])[:8].tolist()} "
        f"of sum|w a| (tolerance {REL_TOL}); got {got[bad][:4].tolist()}, exact {exact[bad][:4].tolist()}")
    # the scalar reference meets the same bound (it checks the reference, not the kernel)
    for r in range(min(q.shape[0], 4)):
        assert abs(generic_dot(np.ascontiguousarray(q[r]), a8, n) - exact[r]) <= REL_TOL * scale[r] + 1e-30


def make_blocks(rng, rows: int, n: int, bitmap, *, words=None, d=None) -> np.ndarray:
    """Synthetic MPQ2 rows: bitmap = int (every block) or None (random per block); random words,
    scale and zero codes and block scale codes (2^-13 .. 2^2.8) unless given (d: a code)."""
    nb = n // 64
    blk = np.zeros((rows, nb), dtype=[("meta", "<u2"), ("zero", "u1"), ("d", "u1"), ("qs", "<u4", 4)])
    if d is None:
        d = rng.integers(108, 172, (rows, nb))
    blk["d"] = np.broadcast_to(np.asarray(d, np.uint8), (rows, nb))
    blk["zero"] = rng.integers(0, 256, (rows, nb), dtype=np.uint8)
    codes = rng.integers(0, 1 << 12, (rows, nb), dtype=np.uint32) << 4
    bits = rng.integers(0, 16, (rows, nb), dtype=np.uint32) if bitmap is None else np.full((rows, nb), bitmap, np.uint32)
    blk["meta"] = (codes | bits).astype(np.uint16)
    blk["qs"] = rng.integers(0, 1 << 32, (rows, nb, 4), dtype=np.uint64).astype(np.uint32) if words is None else words
    return blk.view(np.uint8).reshape(rows, nb * 20)


def test_kernel_is_simd_where_available():
    name = kernel_name()
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64") and " avx2" in flags:
        assert name.startswith(("avx2", "avx512")), name
    elif machine in ("aarch64", "arm64"):
        assert name.startswith("neon"), name
    print(f"vec_dot kernel: {name}")


@pytest.mark.parametrize("n", LENGTHS)
def test_random_quantized_rows(rng, n):
    for salient in (0.0, 0.125, 0.5, 1.0):
        x = rng.standard_normal((6, n)).astype(np.float32)
        x[:, ::37] *= 30  # outliers, so int8 words appear
        check_rows(ggml.quantize(x, salient_fraction=salient), rng.standard_normal(n))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("bitmap", [0x0, 0xF, 0x5, 0xA, 0x1, 0x8, None],
                         ids=["all-2bit", "all-int8", "alt-0101", "alt-1010", "first-int8", "last-int8", "random"])
def test_bitmap_patterns(rng, n, bitmap):
    q = make_blocks(rng, 8, n, bitmap)
    q_int8 = q.reshape(8, -1, 20)
    # int8 words hold -127..127 (the encoder never writes -128; validation rejects it)
    words = q_int8[:, :, 4:].copy().view(np.int8)
    words[words == -128] = -127
    q_int8[:, :, 4:] = words.view(np.uint8)
    check_rows(q, rng.standard_normal(n) * np.exp(rng.uniform(-3, 3)))


@pytest.mark.parametrize("n", LENGTHS)
def test_extreme_values(rng, n):
    nb = n // 64
    for int8_byte, two_bit in ((0x7F, 0xFF), (0x81, 0x00), (0x7F, 0x00), (0x81, 0xFF), (0x80, 0x33)):
        for bitmap in (0x0, 0xF, 0x5):
            word_int8 = np.uint32(int8_byte * 0x01010101)
            word_2bit = np.uint32(two_bit * 0x01010101)
            bits = np.array([bitmap >> w & 1 for w in range(4)], bool)
            words = np.where(bits, word_int8, word_2bit).astype(np.uint32)
            q = make_blocks(rng, 2, n, bitmap, words=np.broadcast_to(words, (2, nb, 4)),
                            d=255 if int8_byte == 0x7F else D_ONE)      # 1.75 * 2^23 or 1
            meta = q.reshape(2, nb, 20)[:, :, 0:2].copy().view("<u2")
            meta |= 0xFFF0  # every word at the largest multiplier, 40
            q.reshape(2, nb, 20)[:, :, 0:2] = meta.view(np.uint8)
            # zero codes 2 (z = 32: code 0 -> -32) or 3 (z = 8: code 3 -> +40): the grid's ends
            q.reshape(2, nb, 20)[:, :, 2] = 0xAA if two_bit == 0x00 else 0xFF
            for a in (np.full(n, 1.0), np.full(n, -3.0), np.tile([1.0, -1.0], n // 2)):
                check_rows(q, a)  # activations quantize to +-127 exactly


def test_unit_scales_are_exact(rng):
    # d = 1 and activations +-127/128 (Q8_0 scale exactly 1/128, values -127, 0, 127): every
    # partial sum is an integer times 2^-7 below 2^24, so any summation order gives the same bits
    n = 4864
    q = make_blocks(rng, 4, n, None, d=D_ONE)
    a = rng.integers(-1, 2, n).astype(np.float32) * np.float32(127 / 128)
    a[::32] = np.float32(127 / 128)
    a8 = ggml.quantize_q8_0(a)
    exact = ggml.dequantize(q).astype(np.float64) @ dequantize_q8_0(a8)
    got = ggml.dot(q, a)
    gen = np.array([generic_dot(np.ascontiguousarray(r), a8, n) for r in q])
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    np.testing.assert_array_equal(got, gen)  # the same float ops on exact integers
