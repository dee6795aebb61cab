"""Torch twin of codec.py's fit (and of rotation.py), for the GPTQ encoder on any device.

codec.py stays the bit-exact reference: on CPU every function here returns the same codes
and float32 values as its numpy namesake (tests/test_gptq.py holds them equal). To get
there each float expression keeps codec.py's order operation by operation: products left to
right, sums sequential over the 16 weights of a word, rint = torch.round (ties to even),
NaN-ignoring fmin/fmax; no fused multiply-add (addcmul, addmm) anywhere.

What differs is the layout: the 16 weights of a word sit on the leading axis (x16: (16, n)
for n words), so the sequential sums add contiguous slices, and the candidates of a search
(8 x 4 scale and zero codes, 4 x 16 fit steps) are one more axis, evaluated at once instead
of one Python iteration each.
"""
from __future__ import annotations

import numpy as np
import torch

from . import rotation
from .codec import D40, N_FIT_STEPS, ZERO_STEPS
from .format import GRID_STEP, GROUP, N_D_CODES, QK, SCALE_MULT, WORDS, ZERO2

F = np.float32
WORDS_PER_CHUNK = 512   # words per candidate search: (16, 32, 512) float32 = 1 MiB, the L2


def _t(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.device)


def d_from_code(code: torch.Tensor) -> torch.Tensor:
    """Block scale of an 8-bit code, as format.d_from_code: float32 bits (code << 21) + (87 << 23)."""
    return ((code.to(torch.int32) << 21) + (87 << 23)).view(torch.float32)


def _nan0(t: torch.Tensor) -> torch.Tensor:
    """NaN -> 0 in place before a clamp: fmax(t, lo) and fmin(t, hi) read NaN as missing
    (infinities become the largest floats, which the clamp takes to its bounds as it would them)."""
    return t.nan_to_num_(0.0)


def _fmax0(a: torch.Tensor, dim: int) -> torch.Tensor:
    """np.fmax.reduce(a, axis=dim, initial=0): NaN ignored, never below 0."""
    return torch.where(torch.isnan(a), 0.0, a).amax(dim).clamp_(min=0.0)


def _code2_(t: torch.Tensor) -> torch.Tensor:
    """rint(fmin(fmax(t, 0), 3)) in place (t = x / s + z, as codec._code2)."""
    return _nan0(t).clamp_(0.0, 3.0).round_()


def code8(mean: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """As codec._code8, float32 codes: rint(fmin(fmax(mean / unit, -127), 127))."""
    return _nan0(mean / unit).clamp_(-127.0, 127.0).round_().add_(0.0)   # + 0: no -0 (codec's are ints)


def wsum(terms: torch.Tensor) -> torch.Tensor:
    """codec._wsum over the leading axis: 0 + t[0] + t[1] + ... in that order."""
    acc = terms[0] + 0.0
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def means4(x16: torch.Tensor, w16: torch.Tensor) -> torch.Tensor:
    """x16, w16: (16, ...) -> (4, ...) weighted means of each run of 4, as codec._means4."""
    sw = [w16[4 * r] + 0.0 for r in range(4)]
    swx = [w16[4 * r] * x16[4 * r] + 0.0 for r in range(4)]
    for t in range(1, 4):
        for r in range(4):
            sw[r] += w16[4 * r + t]
            swx[r] += w16[4 * r + t] * x16[4 * r + t]
    out = []
    for r in range(4):
        xs = x16[4 * r:4 * r + 4]
        plain = (((xs[0] + xs[1]) + xs[2]) + xs[3]) * 0.25
        out.append(torch.where(sw[r] > 0.0, swx[r] / sw[r], plain))
    return torch.stack(out)


def fit8(x16: torch.Tensor, w16: torch.Tensor, means: torch.Tensor | None = None):
    """Unscaled int8-means fit per word, as codec._fit8: (unit, error), each (...)."""
    mean = means4(x16, w16) if means is None else means
    diff = x16 - mean.repeat_interleave(4, dim=0)
    err = wsum((w16 * diff) * diff)
    return _fmax0(mean.abs(), 0) / 127.0, err


def _fit2_candidates(x16: torch.Tensor, w16: torch.Tensor, amax: torch.Tensor, steps: np.ndarray):
    """Error and step of each word (n) at each (zero, fit step) candidate (4 * len(steps), n),
    as one iteration of codec._fit2's loop; inf where the candidate does not count there."""
    ts = np.array([F(0.3) + F(0.025) * F(t) for t in steps], F)
    z = _t(np.repeat(ZERO_STEPS, len(ts)), x16)[:, None]                      # (k, 1)
    s = amax[None, :] * _t(np.tile(ts, len(ZERO_STEPS)), x16)[:, None]         # (k, n)
    x = x16[:, None, :]
    w = w16[:, None, :]
    l = _code2_(x / s + z).sub_(z)
    sxl = wsum((w * x) * l)
    sll = wsum((w * l) * l)
    ok = (amax > 0.0) & (sll > 0.0) & (sxl > 0.0)
    s2 = sxl / sll
    l2 = _code2_(x / s2 + z).sub_(z)
    diff = x - s2 * l2
    err = wsum((w * diff) * diff)
    return torch.where(ok & ~torch.isnan(err), err, torch.inf), s2


def fit2(x16: torch.Tensor, w16: torch.Tensor):
    """Best unscaled 2-bit fit per word over every zero offset and fit step, as codec._fit2:
    (unit, error), each (n,). x16, w16: (16, n). The 4 x 16 (zero, step) candidates in
    codec's loop order; the first strictly smallest error wins, as there."""
    amax = _fmax0(x16.abs(), 0)
    err, s2 = _fit2_candidates(x16, w16, amax, np.arange(N_FIT_STEPS))
    best = err.argmin(0, keepdim=True)                                      # first minimum
    best_err = err.gather(0, best)[0]
    best_s = s2.gather(0, best)[0]
    none = best_err == torch.inf
    best_s = torch.where(none, amax * 0.5, best_s)
    best_err = torch.where(none, wsum((w16 * x16) * x16), best_err)
    return best_s / float(GRID_STEP), best_err


def beats_fit2(x16: torch.Tensor, w16: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """err < fit2(x16, w16)[1], word by word, with less work: a word that one of 16 of the 64
    candidates fits at least as well is decided (its best fit can only be better still); only
    the others take the whole search."""
    out = torch.zeros(err.shape, dtype=torch.bool, device=err.device)
    for a in range(0, x16.shape[1], WORDS_PER_CHUNK):
        x, w, e = x16[:, a:a + WORDS_PER_CHUNK], w16[:, a:a + WORDS_PER_CHUNK], err[a:a + WORDS_PER_CHUNK]
        quick, _ = _fit2_candidates(x, w, _fmax0(x.abs(), 0), np.arange(0, N_FIT_STEPS, 5))
        open_ = (~(quick <= e[None, :]).any(0)).nonzero()[:, 0]
        if open_.numel():
            out[a + open_] = e[open_] < fit2(x[:, open_], w[:, open_])[1]
    return out


def fit2_words(x16: torch.Tensor, w16: torch.Tensor):
    """fit2 in chunks of words (its candidates need 64 x 16 floats per word)."""
    us, es = [x16.new_empty(0)], [x16.new_empty(0)]
    for a in range(0, x16.shape[1], WORDS_PER_CHUNK):
        u, e = fit2(x16[:, a:a + WORDS_PER_CHUNK], w16[:, a:a + WORDS_PER_CHUNK])
        us.append(u)
        es.append(e)
    return torch.cat(us), torch.cat(es)


def d_codes(umax: torch.Tensor) -> torch.Tensor:
    """Smallest block scale code whose largest multiplier reaches umax, as codec.d_codes."""
    return torch.searchsorted(_t(D40, umax), umax.contiguous(), side="left").clamp_(max=N_D_CODES - 1)


def _candidates(like: torch.Tensor):
    """Scale multipliers (8, 1, 1), zero steps and zero integers (4, 1) of the 8 x 4 (j, z)
    pairs, float32 (all exact); flattened j-major they are codec's loop order."""
    m = _t(SCALE_MULT.astype(F), like)[:, None, None]
    return m, _t(ZERO_STEPS, like)[:, None], _t(ZERO2.astype(F), like)[:, None]


def _errors2(x16, w16, dd, m, zs, zi):
    """Weighted error of every word (n) at every (j, z) candidate (32, n) as 2-bit codes, as
    codec._encode_words: diff = x - dd * float(m * (16 c - zint)). x / step is the same for
    the 4 zero codes of a scale code: one division per scale code."""
    step = dd * (m[:, 0] * float(GRID_STEP))                                   # (8, n)
    t = (x16[:, None, :] / step)[:, :, None, :] + zs                           # (16, 8, 4, n)
    v = _code2_(t).mul_(float(GRID_STEP)).sub_(zi).mul_(m)                  # exact integers
    diff = v.mul_(dd).neg_().add_(x16[:, None, None, :])                       # x + (-q) == x - q
    return wsum((w16[:, None, None, :] * diff).mul_(diff)).reshape(len(SCALE_MULT) * len(ZERO2), -1)


def _errors8(x16, w16, dd, means, mult):
    """Weighted error of words (n) as int8 means at every scale code (8, n)."""
    unit = dd[None, :] * mult                                                 # (8, n)
    v = code8(means[:, None, :], unit).mul_(mult)                             # (4, 8, n)
    diff = x16[:, None, :] - dd * v.repeat_interleave(4, dim=0)
    return wsum((w16[:, None, :] * diff).mul_(diff))


def choose_scales(x: torch.Tensor, w: torch.Tensor, salient: torch.Tensor, unit: torch.Tensor):
    """Block scale codes and per-word scale and zero codes, as codec.choose_scales.

    x: (rows, words, 16) float32, w broadcastable to x, salient/unit: (rows, words). Returns
    dcode (rows, blocks), scale codes j and zero codes z (rows, words), int64, and the int8
    means c8 (rows, words, 4) float32 of the salient words (zeros elsewhere, which no byte
    reads). codec also returns the 2-bit codes; GPTQ rounds its own."""
    rows, nw = salient.shape
    nb = nw // WORDS
    umax = _fmax0(unit.reshape(rows, nb, WORDS), -1)
    dcode = d_codes(umax)
    dd = d_from_code(dcode).repeat_interleave(WORDS, dim=1).reshape(-1)      # (rows * words,)
    x16 = x.reshape(-1, GROUP).T.contiguous()
    w16 = w.expand(x.shape).reshape(-1, GROUP).T.contiguous()
    sal = salient.reshape(-1)
    m, zs, zi = _candidates(x)
    err = torch.cat([_errors2(x16[:, a:a + WORDS_PER_CHUNK], w16[:, a:a + WORDS_PER_CHUNK],
                              dd[a:a + WORDS_PER_CHUNK], m, zs, zi)
                     for a in range(0, x16.shape[1], WORDS_PER_CHUNK)], dim=1)
    c8 = torch.zeros((4, sal.numel()), dtype=torch.float32, device=x.device)
    idx = sal.nonzero()[:, 0]
    if idx.numel():   # int8 words try zero code 0 only, with their int8 error
        xs, ws, ds = x16[:, idx], w16[:, idx], dd[idx]
        means = means4(xs, ws)
        err8 = _errors8(xs, ws, ds, means, m[:, 0])
        err[:, idx] = torch.inf
        err[::len(ZERO2), idx] = err8
    err = torch.where(torch.isnan(err), torch.inf, err)
    best = err.argmin(0)                                       # first minimum: codec's strict <
    best_j, best_z = best // len(ZERO2), best % len(ZERO2)
    if idx.numel():
        c8[:, idx] = code8(means, ds * _t(SCALE_MULT.astype(F), x)[best_j[idx]])
    return (dcode, best_j.reshape(rows, nw), best_z.reshape(rows, nw),
            c8.T.reshape(rows, nw, 4))


def rotate(x: torch.Tensor) -> torch.Tensor:
    """R x per 64-block of the last axis, float32, as rotation.rotate (mpq2r_rotate)."""
    t = _blocks_first(x)
    t = torch.where(_t(rotation.NEGATE, t)[:, None], -t, t)
    return _blocks_back(_fwht(t).mul_(0.125), x.shape)


def unrotate(y: torch.Tensor) -> torch.Tensor:
    """R^T y per 64-block of the last axis, float32, as rotation.unrotate."""
    t = _fwht(_blocks_first(y)).mul_(0.125)
    return _blocks_back(torch.where(_t(rotation.NEGATE, t)[:, None], -t, t), y.shape)


def _blocks_first(x: torch.Tensor) -> torch.Tensor:
    """(..., k*64) -> (64, ...*k): the butterflies then add whole contiguous rows."""
    return x.to(torch.float32).reshape(-1, QK).T.contiguous()


def _blocks_back(t: torch.Tensor, shape) -> torch.Tensor:
    return t.T.reshape(shape).contiguous()


def _fwht(t: torch.Tensor) -> torch.Tensor:
    """The butterflies of rotation._fwht, in its order (the same sums a + b, a - b), t: (64, n)."""
    for h in (1, 2, 4, 8, 16, 32):
        s = t.reshape(QK // (2 * h), 2, h, -1)
        a, b = s[:, 0], s[:, 1]
        t = torch.stack([a + b, a - b], dim=1).reshape(QK, -1)
    return t


def rotate_hessian_into(H: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[:] = R H R^T (rotation.rotate_hessian, the same einsum and bits), one 64-row block at
    a time: no n x n temporaries besides out, which may have any strides."""
    n = H.shape[0] // QK
    R = torch.from_numpy(rotation.matrix()).to(H.device, H.dtype)
    H4 = H.reshape(n, QK, n, QK)
    for m in range(n):
        out[m * QK:(m + 1) * QK] = torch.einsum("ai,minj,bj->manb", R, H4[m:m + 1], R).reshape(QK, -1)
    return out
