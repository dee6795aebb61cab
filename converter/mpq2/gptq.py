"""The method's core: Hessian salience, the bitmap, and GPTQ-compensated MPQ2 encoding.

Modelled on the GPTQ reference (one class: add_batch, fasterquant). MPQ2 differs from plain
GPTQ in two ways: the salient words (bitmap) hold int8 means of 4 weights, fixed when their
64-weight block's scales are chosen, and the 2-bit codes sit on a per-word affine grid (scale
and zero offset chosen at the block's start, from the weights as updated so far). Every
rounding error, salient or not, is pushed onto the not-yet-quantized columns through the
Cholesky factor of H^-1, as METHOD.md section 4.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from . import codec, rotation
from .format import GRID_STEP, GROUP, QK, SCALE_MULT, WORDS, ZERO2, d_from_code

F = np.float32


@dataclass
class QuantConfig:
    salient_fraction: float = 0.0625   # share of the 16-weight words of a tensor kept as int8 means
    salience: str = "hessian"          # hessian: sum w^2 / [H^-1]_jj^2 ; magnitude: sum w^2
    method: str = "gptq"               # gptq: compensate rounding errors ; rtn: round to nearest
    block_size: int = 128              # GPTQ lazy-batch block, a multiple of 64
    percdamp: float = 0.01             # lambda = percdamp * mean(diag(H))
    act_order: bool = False            # process columns by decreasing H_jj (same output format)
    gate: bool = True                  # a salient word keeps int8 means only where they fit better
    rotate: bool = False               # MPQ2R: encode R w per 64-block (rotation.py), GPTQ on R H R^T


@dataclass
class QuantResult:
    packed: np.ndarray        # (rows, cols/64*20) uint8, MPQ2 bytes
    weight: torch.Tensor      # (rows, cols) float32, exactly what the bytes decode to
    n_salient: int            # words stored as int8 means (the tensor's K)
    n_words: int
    rel_output_error: float   # ||(W - W')X|| / ||WX|| over the calibration data


def salience_scores(W: torch.Tensor, hinv_diag: torch.Tensor | None) -> torch.Tensor:
    """Per-word salience (rows, cols/16): sum over the word of w_j^2 / [H^-1]_jj^2, or of w_j^2
    without a Hessian (the paper's magnitude ablation)."""
    w2 = W.float() ** 2
    if hinv_diag is not None:
        w2 = w2 / hinv_diag.float()[None, :] ** 2
    return w2.reshape(W.shape[0], -1, GROUP).sum(-1)


def select_bitmap(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top `fraction` of all words of the tensor by score (ties: lower flat index)."""
    flat = scores.flatten().numpy().astype(np.float64)
    k = int(round(min(max(fraction, 0.0), 1.0) * flat.size))
    order = np.lexsort((np.arange(flat.size), -np.nan_to_num(flat, nan=-np.inf)))
    bitmap = np.zeros(flat.size, bool)
    bitmap[order[:k]] = True
    return torch.from_numpy(bitmap.reshape(scores.shape))


def gate_salient(W: np.ndarray, importance: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The candidate words whose H_jj-weighted error as int8 means is below their best 2-bit
    fit's: the paper's mean of 4 drops the variation inside each run of 4, which costs more than
    2-bit rounding on most words; only there does the int8 word pay. Only the candidates (the
    salient fraction's words) are fitted: the fit of every word was two thirds of a tensor's
    encoding time."""
    r, c = np.nonzero(candidates)
    x = W.reshape(W.shape[0], -1, GROUP)[r, c].astype(F)                   # (k, 16)
    w = importance.reshape(-1, GROUP)[c].astype(F)
    with np.errstate(over="ignore", invalid="ignore"):
        _, err2 = codec._fit2(x, w)
        _, err8 = codec._fit8(x, w)
    keep = np.zeros(candidates.shape, bool)
    keep[r, c] = err8 < err2
    return keep


class BlockParams:
    """Block scale, per-word scale and zero codes and fixed int8 means of one 64-column
    block, for all rows."""

    def __init__(self, x: np.ndarray, importance: np.ndarray, salient: np.ndarray):
        rows = x.shape[0]
        xw = x.reshape(rows, WORDS, GROUP).astype(F)
        w = np.broadcast_to(importance.reshape(1, WORDS, GROUP).astype(F), xw.shape)
        unit = self._units(xw, w, salient)
        self.dcode, self.scale_code, self.zero_code, self.c8, _ = codec.choose_scales(xw, w, salient, unit)
        self.salient = salient
        dd = d_from_code(self.dcode[:, 0])                                 # (rows,)
        self.mult = SCALE_MULT[self.scale_code].astype(np.int32)          # (rows, 4)
        self.dd = torch.from_numpy(dd)
        # decoded int8-mean values of salient words, (rows, 64); zeros elsewhere
        v8 = np.repeat(self.mult[..., None] * self.c8, 4, axis=-1).reshape(rows, QK)
        self.q8_values = torch.from_numpy((dd[:, None] * v8.astype(F)).astype(F))
        self.salient_cols = torch.from_numpy(np.repeat(salient, GROUP, axis=-1))   # (rows, 64)
        self.step = torch.from_numpy((dd[:, None] * (self.mult * GRID_STEP).astype(F)).astype(F))  # (rows, 4)
        self.zero_int = torch.from_numpy(ZERO2[self.zero_code].astype(np.int32))    # (rows, 4)
        self.zero_steps = torch.from_numpy(codec.ZERO_STEPS[self.zero_code])        # (rows, 4), exact
        self.mult_t = torch.from_numpy(self.mult)

    @staticmethod
    def _units(xw: np.ndarray, w: np.ndarray, salient: np.ndarray) -> np.ndarray:
        """Target unit of each word, only to place the block scale: GPTQ needs no bit-exact
        mirror of the C fit (the bytes are packed from the codes it chooses), so 2-bit words
        take the top of the fit's step range (0.675 of the word's largest magnitude) instead
        of the 64-candidate search; the (scale, zero) search per word that follows does the
        fitting. Three times faster on the converter's largest cost."""
        amax = np.abs(xw).max(axis=-1)
        with np.errstate(over="ignore", invalid="ignore"):
            u8, _ = codec._fit8(xw, w)
        return np.where(salient, u8, amax * F(0.675) / F(GRID_STEP)).astype(F)

    def quantize_column(self, col_in_block: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized values of one column and its 2-bit codes, the way the C code decodes them."""
        word = col_in_block // GROUP
        s = self.step[:, word]
        t = w / s + self.zero_steps[:, word]
        c2 = torch.nan_to_num(t, nan=0.0).clamp(0.0, 3.0).round().to(torch.int64)  # round: ties to even
        v2 = (GRID_STEP * c2.to(torch.int32) - self.zero_int[:, word]) * self.mult_t[:, word]
        q2 = self.dd * v2.to(torch.float32)
        sal = self.salient_cols[:, col_in_block]
        return torch.where(sal, self.q8_values[:, col_in_block], q2), c2


class MPQ2GPTQ:
    """Collects the Hessian of one linear layer's inputs and encodes its weight as MPQ2."""

    def __init__(self, weight: torch.Tensor):
        self.rows, self.cols = weight.shape
        if self.cols % QK:
            raise ValueError(f"input dimension {self.cols} is not a multiple of {QK}")
        self.H = torch.zeros(self.cols, self.cols, dtype=torch.float64)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.reshape(-1, self.cols).to(torch.float32)
        n = x.shape[0]
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = x * float(np.sqrt(2.0 / self.nsamples))
        self.H += (x.T @ x).to(torch.float64)   # float32 products, float64 running sum

    def fasterquant(self, weight: torch.Tensor, cfg: QuantConfig) -> QuantResult:
        if cfg.rotate:
            return self._fasterquant_rotated(weight, cfg)
        if cfg.block_size % QK:
            raise ValueError(f"--block-size must be a multiple of {QK}")
        W = weight.detach().to(torch.float32).clone()
        H0 = self.H.clone()
        H = H0.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        H += cfg.percdamp * torch.mean(torch.diag(H)) * torch.eye(self.cols, dtype=H.dtype)
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))

        scores = salience_scores(W, torch.diag(Hinv) if cfg.salience == "hessian" else None)
        bitmap = select_bitmap(scores, cfg.salient_fraction).numpy()              # (rows, words)
        importance = torch.diag(H).to(torch.float32).numpy()
        if cfg.gate:
            bitmap = gate_salient(W.numpy(), importance, bitmap)

        perm = torch.argsort(torch.diag(H), descending=True, stable=True) if cfg.act_order else torch.arange(self.cols)
        U = torch.linalg.cholesky(Hinv[perm][:, perm], upper=True).to(torch.float32)
        Wp = W[:, perm]

        nb = self.cols // QK
        params: list[BlockParams | None] = [None] * nb
        if cfg.act_order:  # static scales from the original weights: columns arrive out of order
            for b in range(nb):
                params[b] = self._block_params(W[:, b * QK:(b + 1) * QK], importance, bitmap, b)
        Q = torch.zeros_like(W)
        C2 = torch.zeros((self.rows, self.cols), dtype=torch.int64)

        for i1 in range(0, self.cols, cfg.block_size):
            i2 = min(i1 + cfg.block_size, self.cols)
            W1 = Wp[:, i1:i2].clone()
            Err1 = torch.zeros_like(W1)
            for i in range(i2 - i1):
                col = int(perm[i1 + i])
                b, cb = divmod(col, QK)
                if params[b] is None:   # natural order: block starts here, its columns are all in W1
                    params[b] = self._block_params(W1[:, i:i + QK], importance, bitmap, b)
                w = W1[:, i]
                q, c2 = params[b].quantize_column(cb, w)
                Q[:, col] = q
                C2[:, col] = c2
                if cfg.method == "gptq":
                    err = (w - q) / U[i1 + i, i1 + i]
                    W1[:, i:] -= err[:, None] * U[i1 + i, i1 + i:i2][None, :]
                    Err1[:, i] = err
            if cfg.method == "gptq":
                Wp[:, i2:] -= Err1 @ U[i1:i2, i2:]

        packed = self._pack(params, bitmap, C2)
        delta = (W - Q).to(torch.float64)
        num = torch.einsum("ij,jk,ik->", delta, H0, delta)
        den = torch.einsum("ij,jk,ik->", weight.to(torch.float64), H0, weight.to(torch.float64))
        rel = float(torch.sqrt(num / den)) if den > 0 else 0.0
        return QuantResult(packed, Q, int(bitmap.sum()), bitmap.size, rel)

    def _fasterquant_rotated(self, weight: torch.Tensor, cfg: QuantConfig) -> QuantResult:
        """MPQ2R: GPTQ of the rotated weights R w against the Hessian of the rotated inputs R x
        (the same problem, since w.x = Rw.Rx), so salience, bitmap and compensation all live in
        the rotated basis; the weight returned is what dequantize_row_mpq2r decodes."""
        H0 = self.H
        self.H = rotation.rotate_hessian(H0)
        try:
            wr = torch.from_numpy(rotation.rotate(weight.detach().to(torch.float32).numpy()))
            res = self.fasterquant(wr, replace(cfg, rotate=False))
        finally:
            self.H = H0
        res.weight = torch.from_numpy(rotation.unrotate(res.weight.numpy()))
        return res

    def _block_params(self, x: torch.Tensor, importance: np.ndarray, bitmap: np.ndarray, b: int) -> BlockParams:
        return BlockParams(x.numpy(), importance[b * QK:(b + 1) * QK], bitmap[:, b * WORDS:(b + 1) * WORDS])

    def _pack(self, params: list[BlockParams], bitmap: np.ndarray, C2: torch.Tensor) -> np.ndarray:
        rows = self.rows
        dcode = np.concatenate([p.dcode for p in params], axis=1)
        scale_code = np.concatenate([p.scale_code for p in params], axis=1)
        zero_code = np.concatenate([p.zero_code for p in params], axis=1)
        c8 = np.concatenate([p.c8 for p in params], axis=1)
        c2 = C2.numpy().reshape(rows, -1, GROUP)
        return codec.pack(dcode, scale_code, zero_code, bitmap, c8, c2)
