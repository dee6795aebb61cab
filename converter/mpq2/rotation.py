"""MPQ2R's fixed 64-point rotation: numpy mirror of mpq2r_rotate / mpq2r_unrotate
(ggml_ext/src/ggml-mpq2r.c), bit for bit, and the same rotation for torch tensors.

R = H64 D / 8: D negates the coordinates whose bit is set in SIGNS, H64 is the Sylvester
Walsh-Hadamard matrix (entries +-1). R is orthogonal, so w.x = (Rw).(Rx); MPQ2R stores the
MPQ2 encoding of Rw for every 64-weight block of a row (docs/FORMAT.md, "MPQ2R").
"""
from __future__ import annotations

import numpy as np

F = np.float32
QK = 64
SIGNS = 0x9E3779B97F4A7C15          # MPQ2R_SIGNS in ggml-mpq2r.h
NEGATE = np.array([(SIGNS >> i) & 1 for i in range(QK)], bool)


def _fwht(t: np.ndarray) -> np.ndarray:
    """The butterflies of mpq2r_fwht64 over the last axis (64), in the C code's order."""
    lead = t.shape[:-1]
    for h in (1, 2, 4, 8, 16, 32):
        s = t.reshape(*lead, QK // (2 * h), 2, h)
        a, b = s[..., 0, :], s[..., 1, :]
        t = np.stack([a + b, a - b], axis=-2).reshape(*lead, QK)
    return t


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F)
    if x.shape[-1] % QK:
        raise ValueError(f"MPQ2R needs rows that are a multiple of {QK} weights, got {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // QK, QK)


def rotate(x: np.ndarray) -> np.ndarray:
    """R x for every 64-block of the last axis, float32, as mpq2r_rotate."""
    b = _blocks(x)
    t = _fwht(np.where(NEGATE, -b, b).astype(F))
    return (t * F(0.125)).astype(F).reshape(np.shape(x))


def unrotate(y: np.ndarray) -> np.ndarray:
    """R^T y for every 64-block of the last axis, float32, as mpq2r_unrotate."""
    b = _blocks(y)
    t = (_fwht(b) * F(0.125)).astype(F)
    return np.where(NEGATE, -t, t).astype(F).reshape(np.shape(y))


def matrix() -> np.ndarray:
    """R as a 64 x 64 float64 matrix (R x = matrix() @ x), for Hessians."""
    return rotate(np.eye(QK, dtype=F)).astype(np.float64).T


def rotate_hessian(H):
    """R H R^T with R block-diagonal (one 64 x 64 block per 64 inputs), H a (n, n) torch tensor:
    the Hessian of the rotated inputs Rx."""
    import torch
    n = H.shape[0] // QK
    R = torch.from_numpy(matrix()).to(H.dtype)
    return torch.einsum("ai,minj,bj->manb", R, H.reshape(n, QK, n, QK), R).reshape(H.shape)
