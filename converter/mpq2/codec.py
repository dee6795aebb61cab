"""Numpy mirror of ggml_ext/src/ggml-mpq2.c: quantize, dequantize, pack.

Every float expression follows the C code operation by operation in float32 (sums run
sequentially over the 16 weights of a word, rounding is rint = ties to even, NaN-ignoring
fmin/fmax as C's fminf/fmaxf), so the bytes equal the C reference's; tests hold them equal.
Work is vectorised over all words of a chunk of rows; the only Python loops run over the 16
weights of a word, the fit steps and the 8 scale codes.
"""
from __future__ import annotations

import types

import numpy as np

from . import rotation
from .format import (BLOCK_BYTES, DEFAULT_SALIENT_FRACTION, GRID_STEP, GROUP, MAX_MULT, N_D_CODES,
                     QK, QTYPE, QTYPE_R, SCALE_MULT, WORDS, ZERO2, d_from_code, scale_shift, zero_shift)

F = np.float32
N_FIT_STEPS = 16
ROWS_PER_CHUNK = 64
ZERO_STEPS = (ZERO2.astype(F) / F(GRID_STEP)).astype(F)    # exact multiples of 1/16
D40 = (d_from_code(np.arange(N_D_CODES)) * F(MAX_MULT)).astype(F)   # increasing


def _code2(x: np.ndarray, s: np.ndarray, z) -> np.ndarray:
    t = x / s + z
    return np.rint(np.fmin(np.fmax(t, F(0.0)), F(3.0))).astype(np.int32)


def _code8(mean: np.ndarray, unit: np.ndarray) -> np.ndarray:
    return np.rint(np.fmin(np.fmax(mean / unit, F(-127.0)), F(127.0))).astype(np.int32)


def _means4(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x, w: (..., 16) -> (..., 4) weighted means of each run of 4, as mpq2_means4."""
    xs = x.reshape(*x.shape[:-1], 4, 4)
    ws = np.broadcast_to(w, x.shape).reshape(xs.shape)
    sw = np.zeros(xs.shape[:-1], F)
    swx = np.zeros(xs.shape[:-1], F)
    for t in range(4):
        sw = sw + ws[..., t]
        swx = swx + ws[..., t] * xs[..., t]
    plain = (((xs[..., 0] + xs[..., 1]) + xs[..., 2]) + xs[..., 3]) * F(0.25)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sw > F(0.0), swx / sw, plain).astype(F)


def _wsum(terms) -> np.ndarray:
    """Sequential float32 sum of an iterable of arrays (C's `acc += term` loop from 0)."""
    acc = None
    for term in terms:
        acc = (F(0.0) + term) if acc is None else acc + term
    return acc


def _fit2(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best unscaled 2-bit fit per word over every zero offset, as mpq2_fit2: (unit, error)."""
    amax = np.fmax.reduce(np.abs(x), axis=-1, initial=F(0.0)).astype(F)
    best_s = (amax * F(0.5)).astype(F)
    best_err = np.full(amax.shape, np.inf, F)
    live = amax > F(0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for z in ZERO_STEPS:
            for t in range(N_FIT_STEPS):
                s = amax * (F(0.3) + F(0.025) * F(t))
                l = (_code2(x, s[..., None], z).astype(F) - z).astype(F)
                sxl = _wsum(w[..., i] * x[..., i] * l[..., i] for i in range(GROUP))
                sll = _wsum(w[..., i] * l[..., i] * l[..., i] for i in range(GROUP))
                ok = live & (sll > F(0.0)) & (sxl > F(0.0))
                s2 = sxl / sll
                l2 = (_code2(x, s2[..., None], z).astype(F) - z).astype(F)
                diff = x - s2[..., None] * l2
                err = _wsum(w[..., i] * diff[..., i] * diff[..., i] for i in range(GROUP))
                better = ok & (err < best_err)
                best_err = np.where(better, err, best_err)
                best_s = np.where(better, s2, best_s)
    none = best_err == np.inf
    plain_err = _wsum(w[..., i] * x[..., i] * x[..., i] for i in range(GROUP))
    best_err = np.where(none, plain_err, best_err)
    return (best_s / F(GRID_STEP)).astype(F), best_err.astype(F)


def _fit8(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled int8-means fit per word, as mpq2_fit8: (unit, error)."""
    mean = _means4(x, w)
    diff = x - np.repeat(mean, 4, axis=-1)
    err = _wsum(w[..., i] * diff[..., i] * diff[..., i] for i in range(GROUP))
    amax = np.fmax.reduce(np.abs(mean), axis=-1, initial=F(0.0)).astype(F)
    return (amax / F(127.0)).astype(F), err


def _encode_words(x, w, salient, dd, j, zc, means=None, int8=True):
    """Codes and weighted error of each word at block scale dd, scale codes j and zero codes
    zc, as mpq2_encode_word. dd, j, zc, salient: (rows, words). `means`: _means4(x, w) if the
    caller has it; int8=False encodes every word as 2-bit (c8 None), for a caller that ignores
    the salient words' result: the 2-bit words' codes and errors are the same either way."""
    m = SCALE_MULT[j]
    zint = ZERO2[zc]
    c2 = _code2(x, (dd * (m * GRID_STEP).astype(F))[..., None], ZERO_STEPS[zc][..., None])
    v = m[..., None] * (GRID_STEP * c2 - zint[..., None])
    c8 = None
    if int8:
        c8 = _code8(_means4(x, w) if means is None else means, (dd * m.astype(F))[..., None])
        v = np.where(salient[..., None], np.repeat(m[..., None] * c8, 4, axis=-1), v)
    diff = x - dd[..., None] * v.astype(F)
    err = _wsum(w[..., i] * diff[..., i] * diff[..., i] for i in range(GROUP))
    return c8, c2, err


def _pack_words(c8: np.ndarray, c2: np.ndarray, salient: np.ndarray) -> np.ndarray:
    shifts8 = np.arange(4, dtype=np.uint32) * 8
    q8 = np.bitwise_or.reduce((c8.astype(np.int8).view(np.uint8).astype(np.uint32)) << shifts8, axis=-1)
    i = np.arange(GROUP)
    shifts2 = (8 * (i & 3) + 2 * (i >> 2)).astype(np.uint32)
    q2 = np.bitwise_or.reduce(c2.astype(np.uint32) << shifts2, axis=-1)
    return np.where(salient, q8, q2).astype(np.uint32)


def salience(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum over each word of (w_i x_i)^2; NaN ranks last. x: (rows, words, 16)."""
    s = _wsum((w[..., i] * x[..., i]) * (w[..., i] * x[..., i]) for i in range(GROUP))
    return np.where(np.isnan(s), F(-np.inf), s).astype(F)


def select_candidates(sal: np.ndarray, fraction: float) -> np.ndarray:
    """Top `fraction` of the words of each row by salience (ties: lower index first)."""
    rows, nw = sal.shape
    f = np.fmin(np.fmax(F(fraction), F(0.0)), F(1.0))
    n_sal = int(f * F(nw) + F(0.5))
    idx = np.broadcast_to(np.arange(nw), sal.shape)
    order = np.lexsort((idx, -sal), axis=-1)
    cand = np.zeros(sal.shape, bool)
    np.put_along_axis(cand, order[:, :n_sal], True, axis=-1)
    return cand


def d_codes(umax: np.ndarray) -> np.ndarray:
    """Smallest block scale code whose largest multiplier reaches umax, as mpq2_d_code."""
    code = np.searchsorted(D40, umax, side="left")
    return np.minimum(code, N_D_CODES - 1).astype(np.int32)


def choose_scales(x: np.ndarray, w: np.ndarray, salient: np.ndarray, unit: np.ndarray):
    """Block scale codes and per-word scale and zero codes, as mpq2_quantize_block.

    x: (rows, words, 16) float32, w broadcastable to x, salient/unit: (rows, words).
    Returns dcode (rows, blocks) int32, scale codes j and zero codes z (rows, words), and the
    codes at those scales: int8 means c8 (rows, words, 4) and 2-bit codes c2 (rows, words, 16).
    """
    rows, nw = salient.shape
    nb = nw // WORDS
    w = np.broadcast_to(w, x.shape)
    umax = np.fmax.reduce(unit.reshape(rows, nb, WORDS), axis=-1, initial=F(0.0)).astype(F)
    dcode = d_codes(umax)
    dd = np.repeat(d_from_code(dcode), WORDS, axis=-1)          # (rows, words)
    best_err = np.full(salient.shape, np.inf, F)
    best_j = np.zeros(salient.shape, np.int32)
    best_z = np.zeros(salient.shape, np.int32)
    any_salient = bool(salient.any())
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        means = _means4(x, w) if any_salient else None
        for j in range(len(SCALE_MULT)):
            for z in range(len(ZERO2)):
                # int8 words only try zero code 0: at the others only the 2-bit words count
                _, _, err = _encode_words(x, w, salient, dd, np.full(salient.shape, j), np.full(salient.shape, z),
                                          means, int8=any_salient and z == 0)
                better = (err < best_err) & (~salient | (z == 0))   # int8 words try zero code 0 only
                best_err = np.where(better, err, best_err)
                best_j = np.where(better, j, best_j)
                best_z = np.where(better, z, best_z)
        c8, c2, _ = _encode_words(x, w, salient, dd, best_j, best_z, means)
    return dcode, best_j, best_z, c8, c2


def pack(dcode: np.ndarray, scale_code: np.ndarray, zero_code: np.ndarray, salient: np.ndarray,
         c8: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """MPQ2 bytes (rows, blocks*20) from fields: dcode (rows, blocks), scale_code, zero_code and
    salient (rows, words), c8 (rows, words, 4) int8 means, c2 (rows, words, 16) 2-bit codes."""
    rows, nw = salient.shape
    nb = nw // WORDS
    words = _pack_words(c8, c2, salient)
    wpos = np.arange(WORDS, dtype=np.uint32)
    shifts = np.array([scale_shift(k) for k in range(WORDS)], np.uint32)
    zshifts = np.array([zero_shift(k) for k in range(WORDS)], np.uint32)
    meta = ((salient.reshape(rows, nb, WORDS).astype(np.uint32) << wpos)
            | (scale_code.reshape(rows, nb, WORDS).astype(np.uint32) << shifts))
    meta = np.bitwise_or.reduce(meta, axis=-1)
    zero = np.bitwise_or.reduce(zero_code.reshape(rows, nb, WORDS).astype(np.uint32) << zshifts, axis=-1)
    out = np.empty((rows, nb, BLOCK_BYTES), np.uint8)
    out[..., 0:2] = meta.astype("<u2")[..., None].view(np.uint8).reshape(rows, nb, 2)
    out[..., 2] = zero.astype(np.uint8)
    out[..., 3] = dcode.astype(np.uint8)
    out[..., 4:] = words.reshape(rows, nb, WORDS).astype("<u4").view(np.uint8).reshape(rows, nb, 4 * WORDS)
    return out.reshape(rows, nb * BLOCK_BYTES)


def decoded_values(dcode: np.ndarray, scale_code: np.ndarray, zero_code: np.ndarray, salient: np.ndarray,
                   c8: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """The float32 weights (rows, words, 16) that pack(...) decodes to, computed as the C
    dequantizer does: dd * (float)(m * v)."""
    dd = np.repeat(d_from_code(dcode), WORDS, axis=-1)[..., None]
    m = SCALE_MULT[scale_code][..., None]
    v = np.where(salient[..., None], np.repeat(c8, 4, axis=-1), GRID_STEP * c2 - ZERO2[zero_code][..., None])
    return (dd * (m * v).astype(F)).astype(F)


def encode_blocks(x: np.ndarray, w: np.ndarray, salient: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Packs words with a given bitmap and per-word target units, as mpq2_quantize_block."""
    dcode, scale_code, zero_code, c8, c2 = choose_scales(x, w, salient, unit)
    return pack(dcode, scale_code, zero_code, salient, c8, c2)


def word_units(x: np.ndarray, w: np.ndarray, salient: np.ndarray) -> np.ndarray:
    """Target unit of each word for its encoding (the unscaled best fit), (rows, words)."""
    with np.errstate(over="ignore", invalid="ignore"):
        u2, _ = _fit2(x, w)
        u8, _ = _fit8(x, w)
    return np.where(salient, u8, u2).astype(F)


def quantize(x: np.ndarray, imatrix: np.ndarray | None = None,
             salient_fraction: float = DEFAULT_SALIENT_FRACTION) -> np.ndarray:
    """Bit-exact mirror of quantize_mpq2_ex: rows of x (..., n) -> uint8 (..., n/64*20)."""
    x = np.ascontiguousarray(x, dtype=F)
    n = x.shape[-1]
    if n % QK:
        raise ValueError(f"MPQ2 needs rows that are a multiple of {QK} weights, got {n}")
    rows = x.reshape(-1, n)
    w = np.ones(n, F) if imatrix is None else np.asarray(imatrix, F).reshape(n)
    w = w.reshape(n // GROUP, GROUP)
    out = np.empty((rows.shape[0], n // QK * BLOCK_BYTES), np.uint8)
    for r0 in range(0, rows.shape[0], ROWS_PER_CHUNK):
        xc = rows[r0:r0 + ROWS_PER_CHUNK].reshape(-1, n // GROUP, GROUP)
        wc = np.broadcast_to(w, xc.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            cand = select_candidates(salience(xc, wc), salient_fraction)
            u2, err2 = _fit2(xc, wc)
            u8, err8 = _fit8(xc, wc)
        salient = cand & (err8 < err2)
        unit = np.where(salient, u8, u2).astype(F)
        out[r0:r0 + ROWS_PER_CHUNK] = encode_blocks(xc, wc, salient, unit)
    return out.reshape(*x.shape[:-1], -1)


def dequantize(data: np.ndarray) -> np.ndarray:
    """MPQ2 bytes (..., k*20) -> float32 (..., k*64), as dequantize_row_mpq2."""
    data = np.ascontiguousarray(data).view(np.uint8)
    lead = data.shape[:-1]
    f = split_fields(data)
    dd = d_from_code(f["d_code"])[:, None, None]                      # (nb, 1, 1)
    mult = SCALE_MULT[f["scale_code"]]                                  # (nb, 4)
    zero = ZERO2[f["zero_code"]]
    words = f["words"].astype(np.uint32)
    i = np.arange(GROUP)
    c2 = ((words[..., None] >> (8 * (i & 3) + 2 * (i >> 2)).astype(np.uint32)) & np.uint32(3)).astype(np.int32)
    v2 = GRID_STEP * c2 - zero[..., None]
    c8 = ((words[..., None] >> (8 * (i >> 2)).astype(np.uint32)) & np.uint32(0xFF)).astype(np.uint8).view(np.int8)
    v = np.where(f["bitmap"][..., None], c8.astype(np.int32), v2) * mult[..., None]
    y = dd * v.astype(F)
    return y.reshape(*lead, -1).astype(F)


def quantize_r(x: np.ndarray, imatrix: np.ndarray | None = None,
               salient_fraction: float = DEFAULT_SALIENT_FRACTION) -> np.ndarray:
    """Bit-exact mirror of quantize_mpq2r_ex: MPQ2 of the rotated rows, the importance of each
    weight replaced by its 64-block's mean (the diagonal of R diag(imatrix) R^T)."""
    imat = None
    if imatrix is not None:
        blocks = np.asarray(imatrix, F).reshape(-1, QK)
        mean = (_wsum(blocks[:, i] for i in range(QK)) / F(QK)).astype(F)
        imat = np.repeat(mean, QK)
    return quantize(rotation.rotate(x), imat, salient_fraction)


def dequantize_r(data: np.ndarray) -> np.ndarray:
    """MPQ2R bytes -> float32, as dequantize_row_mpq2r: MPQ2's decoding, then R^T."""
    return rotation.unrotate(dequantize(data))


def find_invalid_block(data: np.ndarray) -> tuple[int, str] | None:
    """The first block that mpq2_validate_row_data rejects, with the reason, or None.
    Mirrors the C check: an int8 code -128 in a salient word (every header is valid)."""
    blocks = np.ascontiguousarray(data).view(np.uint8).reshape(-1, BLOCK_BYTES)
    meta = blocks[:, 0:2].copy().view("<u2")[:, 0].astype(np.uint32)
    salient_bytes = np.repeat((meta[:, None] >> np.arange(WORDS, dtype=np.uint32)) & 1, 4, axis=1).astype(bool)
    bad = np.flatnonzero(((blocks[:, 4:] == 0x80) & salient_bytes).any(axis=1))
    if bad.size == 0:
        return None
    return int(bad[0]), "int8 code -128 in a salient word"


def split_fields(data: np.ndarray) -> dict[str, np.ndarray]:
    """The fields of MPQ2 blocks (..., k*20): block scale code and value, bitmap (bool per
    word), scale codes, zero codes, words."""
    blocks = np.ascontiguousarray(data).view(np.uint8).reshape(-1, BLOCK_BYTES)
    meta = blocks[:, 0:2].copy().view("<u2").astype(np.int32)[:, 0]
    zero = blocks[:, 2].astype(np.int32)
    wpos = np.arange(WORDS)
    return {
        "d_code": blocks[:, 3].astype(np.int32),
        "d": d_from_code(blocks[:, 3]),
        "bitmap": ((meta[:, None] >> wpos) & 1).astype(bool),
        "scale_code": (meta[:, None] >> np.array([scale_shift(k) for k in wpos])) & 7,
        "zero_code": (zero[:, None] >> np.array([zero_shift(k) for k in wpos])) & 3,
        "words": blocks[:, 4:].copy().view("<u4"),
    }


def register_with_gguf(name: str, qtype, quant, dequant) -> None:
    """Registers a numpy quantizer with gguf.quants, so gguf.quants.quantize/dequantize handle qtype."""
    from gguf import quants as gq   # may still be initialising when it imports us
    if qtype in gq._type_traits:
        return
    body = {"quantize_blocks": classmethod(lambda cls, blocks, q=quant: q(blocks)),
            "quantize_rows": classmethod(lambda cls, rows, q=quant: q(rows)),
            "dequantize_blocks": classmethod(lambda cls, blocks, d=dequant: d(blocks))}
    types.new_class(name, (gq.__dict__["__Quant"],), {"qtype": qtype}, lambda ns, b=body: ns.update(b))


register_with_gguf("MPQ2", QTYPE, quantize, dequantize)
register_with_gguf("MPQ2R", QTYPE_R, quantize_r, dequantize_r)

# MPQ2S's module registers it the same way; imported here so that gguf-py's one import of this
# module (its patched quants.py) knows all our types, whichever of the two is imported first.
from . import codec_s  # noqa: E402,F401
