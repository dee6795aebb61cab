"""MPQ2S, the 2.25-bit tier: numpy reference of its encoding and decoding (docs/FORMAT.md, "MPQ2S").

MPQ2S keeps MPQ2R's turned basis, its E6M2 block scale and its 2-bit words (16 weights in one
aligned 32-bit word, the same bit order), and spends the header's bits differently: one 32-bit
header per 128 weights, holding the block scale and, per word, 3 bits that pick one of 8
(multiplier, zero) pairs of GRIDS. No bitmap: the int8 words of MPQ2 were almost never picked.
That is 36 bytes per 128 weights, 2.25 bits per weight, every word still 4-byte aligned.

The table was chosen by bench/tier_sim.py (greedy selection over MPQ2's 32 pairs, then swaps,
on turned Gaussian and Student-t weights; the same table came out on a real model's tensors).

This module is the specification the C reference (ggml_ext/src/ggml-mpq2s.c) must reproduce
bit for bit: every operation is float32, in the order the C code does it.
"""
from __future__ import annotations

import numpy as np

from . import rotation
from .codec import _wsum, register_with_gguf
from .format import GRID_STEP, N_D_CODES, QTYPE_S, GGML_QUANT_SIZES, d_from_code

F = np.float32
QK_S, BLOCK_BYTES_S = GGML_QUANT_SIZES[QTYPE_S]   # 128 weights, 36 bytes: header + 8 words
WORDS_S = QK_S // 16                         # 2-bit words per block
BITS_PER_WEIGHT_S = BLOCK_BYTES_S * 8 / QK_S  # 2.25
GRID_BITS = 3
# (multiplier, zero) of each grid index: word value v = mult * (16 c - zero), weight dd * v
GRID_MULT = np.array([20, 25, 25, 25, 32, 32, 32, 40], np.int32)
GRID_ZERO = np.array([24, 16, 24, 32, 16, 24, 32, 24], np.int32)
TOP_LEVEL = int(np.max(GRID_MULT * np.maximum(GRID_ZERO, 3 * GRID_STEP - GRID_ZERO)))   # 1024: largest |v|
N_SCALES = 5                                 # block scale codes tried, from the one that reaches amax down
D_TOP = (d_from_code(np.arange(N_D_CODES)) * F(TOP_LEVEL)).astype(F)                 # increasing


def _codes(x: np.ndarray, step: np.ndarray, z: np.ndarray) -> np.ndarray:
    """2-bit codes: rint(clamp(x / step + z, 0, 3)), NaN to 0 (fmax/fmin as C's fmaxf/fminf)."""
    t = x / step + z
    return np.rint(np.fmin(np.fmax(t, F(0.0)), F(3.0))).astype(np.int32)


def _word_errors(x: np.ndarray, w: np.ndarray, dd: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes (blocks, words, 16) and weighted squared error (blocks, words) of every word at
    block scale dd (blocks,) with grid g."""
    step = (dd * F(GRID_MULT[g] * GRID_STEP)).astype(F)[:, None, None]
    c = _codes(x, step, F(GRID_ZERO[g]) / F(GRID_STEP))
    q = dd[:, None, None] * (GRID_MULT[g] * (GRID_STEP * c - GRID_ZERO[g])).astype(F)
    diff = (x - q).astype(F)
    return c, _wsum(w[..., i] * diff[..., i] * diff[..., i] for i in range(16))


def choose(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block scale codes (blocks,), grid indices (blocks, words) and codes (blocks, words, 16)
    of blocks x (blocks, words, 16) with importance w (same shape): per block, the N_SCALES
    scale codes from the smallest whose largest level reaches the block's largest |x| down,
    and per word the grid of least error; the scale of least total error wins (ties: the
    larger scale; a word's ties: the lower grid index)."""
    nb = x.shape[0]
    amax = np.fmax.reduce(np.abs(x).reshape(nb, -1), axis=-1, initial=F(0.0)).astype(F)
    top = np.minimum(np.searchsorted(D_TOP, amax, side="left"), N_D_CODES - 1).astype(np.int32)
    best = (np.full(nb, np.inf, F), np.zeros(nb, np.int32), np.zeros((nb, WORDS_S), np.int32),
            np.zeros(x.shape, np.int32))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(N_SCALES):
            code = np.maximum(top - k, 0).astype(np.int32)
            dd = d_from_code(code)
            werr = np.full((nb, WORDS_S), np.inf, F)
            grid = np.zeros((nb, WORDS_S), np.int32)
            codes = np.zeros(x.shape, np.int32)
            for g in range(len(GRID_MULT)):
                c, err = _word_errors(x, w, dd, g)
                better = err < werr
                werr = np.where(better, err, werr)
                grid = np.where(better, g, grid)
                codes = np.where(better[..., None], c, codes)
            total = _wsum(werr[:, j] for j in range(WORDS_S))
            win = total < best[0]
            best = (np.where(win, total, best[0]), np.where(win, code, best[1]),
                    np.where(win[:, None], grid, best[2]), np.where(win[:, None, None], codes, best[3]))
    return best[1], best[2], best[3]


def pack(dcode: np.ndarray, grid: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """MPQ2S bytes (blocks * 36,) from block scale codes, grid indices and 2-bit codes; a word's
    bits as MPQ2's 2-bit words: weight i at bits 8 (i % 4) + 2 (i / 4)."""
    nb = dcode.shape[0]
    hdr = np.bitwise_or.reduce(grid.astype(np.uint32) << (GRID_BITS * np.arange(WORDS_S, dtype=np.uint32)), axis=-1)
    hdr = hdr | (dcode.astype(np.uint32) << np.uint32(24))
    i = np.arange(16, dtype=np.uint32)
    words = np.bitwise_or.reduce(codes.astype(np.uint32) << (8 * (i & 3) + 2 * (i >> 2)), axis=-1)
    out = np.empty((nb, 1 + WORDS_S), "<u4")
    out[:, 0] = hdr
    out[:, 1:] = words
    return out.view(np.uint8).reshape(-1)


def fields(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(block scale codes, grid indices, 2-bit codes) of MPQ2S bytes."""
    blocks = np.ascontiguousarray(data).view(np.uint8).reshape(-1, BLOCK_BYTES_S).copy().view("<u4")
    hdr = blocks[:, 0].astype(np.uint32)
    grid = ((hdr[:, None] >> (GRID_BITS * np.arange(WORDS_S, dtype=np.uint32))) & np.uint32(7)).astype(np.int32)
    i = np.arange(16, dtype=np.uint32)
    codes = ((blocks[:, 1:, None].astype(np.uint32) >> (8 * (i & 3) + 2 * (i >> 2))) & np.uint32(3)).astype(np.int32)
    return (hdr >> np.uint32(24)).astype(np.int32), grid, codes


def decode_turned(data: np.ndarray) -> np.ndarray:
    """The turned weights MPQ2S bytes hold, (blocks, 128) float32: dd * (float)(mult * (16 c - zero))."""
    dcode, grid, codes = fields(data)
    v = GRID_MULT[grid][..., None] * (GRID_STEP * codes - GRID_ZERO[grid][..., None])
    return (d_from_code(dcode)[:, None, None] * v.astype(F)).astype(F).reshape(-1, QK_S)


def quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Rows of x (..., n), n a multiple of 128, to MPQ2S bytes (..., n / 128 * 36): the rows turned
    by MPQ2R's rotation, the importance of each weight its 64-block's mean of imatrix (as MPQ2R)."""
    x = np.ascontiguousarray(x, dtype=F)
    n = x.shape[-1]
    if n % QK_S:
        raise ValueError(f"MPQ2S needs rows that are a multiple of {QK_S} weights, got {n}")
    w = np.ones(n, F) if imatrix is None else np.asarray(imatrix, F).reshape(n)
    blocks = w.reshape(-1, 64)
    w = np.repeat((_wsum(blocks[:, i] for i in range(64)) / F(64)).astype(F), 64)
    xt = rotation.rotate(x).reshape(-1, WORDS_S, 16)
    wt = np.broadcast_to(w.reshape(-1, WORDS_S, 16), (x.size // n, n // QK_S, WORDS_S, 16)).reshape(xt.shape)
    return pack(*choose(xt, wt)).reshape(*x.shape[:-1], -1)


def dequantize(data: np.ndarray) -> np.ndarray:
    """MPQ2S bytes (..., k * 36) to float32 weights (..., k * 128): decoded, then turned back."""
    data = np.ascontiguousarray(data).view(np.uint8)
    y = decode_turned(data.reshape(-1))
    return rotation.unrotate(y.reshape(*data.shape[:-1], -1))


register_with_gguf("MPQ2S", QTYPE_S, quantize, dequantize)
