"""MPQ2S as a grid GPTQ can encode on (gptq.py, QuantConfig(grid="mpq2s", rotate=True)).

choose() is codec_s.choose in torch, bit for bit on CPU (tests/test_mpq2s.py), on the layer's
device. BlockParams128 places one 128-column block's grids (scale code, a grid per word) from
the weights as updated so far when the block starts, as gptq.BlockParams does for MPQ2, and then
quantizes one column at a time on those fixed grids. GPTQ's loop walks 64-column blocks: halves()
gives the two 64-column views of one 128-column block.
"""
from __future__ import annotations

import numpy as np
import torch

from . import codec_s
from .format import GRID_STEP, N_D_CODES, d_from_code

F = torch.float32


def _wsum(terms) -> torch.Tensor:
    """Sequential float32 sum from 0, as codec._wsum and C's `acc += term`."""
    acc = None
    for t in terms:
        acc = t + 0.0 if acc is None else acc + t
    return acc


def choose(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codec_s.choose for blocks x (blocks, 8, 16) float32 with importance w (same shape):
    scale codes (blocks,), grids (blocks, 8), codes (blocks, 8, 16), all int64."""
    dev, nb = x.device, x.shape[0]
    amax = torch.nan_to_num(x.abs(), nan=0.0).reshape(nb, -1).amax(-1)          # fmax.reduce drops NaN
    d_top = torch.from_numpy(codec_s.D_TOP).to(dev)
    top = torch.searchsorted(d_top, amax.contiguous()).clamp_(max=N_D_CODES - 1)
    d_all = torch.from_numpy(d_from_code(np.arange(N_D_CODES))).to(dev)
    best_total = torch.full((nb,), float("inf"), dtype=F, device=dev)
    best_code = torch.zeros(nb, dtype=torch.int64, device=dev)
    best_grid = torch.zeros(x.shape[:2], dtype=torch.int64, device=dev)
    best_codes = torch.zeros(x.shape, dtype=torch.int64, device=dev)
    for k in range(codec_s.N_SCALES):
        code = (top - k).clamp_(min=0)
        dd = d_all[code][:, None, None]
        werr = torch.full(x.shape[:2], float("inf"), dtype=F, device=dev)
        grid = torch.zeros(x.shape[:2], dtype=torch.int64, device=dev)
        codes = torch.zeros(x.shape, dtype=torch.int64, device=dev)
        for g in range(len(codec_s.GRID_MULT)):
            m, z = int(codec_s.GRID_MULT[g]), int(codec_s.GRID_ZERO[g])
            step = dd * float(m * GRID_STEP)
            c = (x / step + float(np.float32(z) / np.float32(GRID_STEP))).nan_to_num_(0.0).clamp_(0.0, 3.0).round_()
            q = dd * (m * (GRID_STEP * c - z))            # small integers, exact in float32
            diff = x - q
            err = _wsum(w[..., i] * diff[..., i] * diff[..., i] for i in range(16))
            better = err < werr
            werr = torch.where(better, err, werr)
            grid = torch.where(better, g, grid)
            codes = torch.where(better[..., None], c.long(), codes)
        total = _wsum(werr[:, j] for j in range(codec_s.WORDS_S))
        win = total < best_total
        best_total = torch.where(win, total, best_total)
        best_code = torch.where(win, code, best_code)
        best_grid = torch.where(win[:, None], grid, best_grid)
        best_codes = torch.where(win[:, None, None], codes, best_codes)
    return best_code, best_grid, best_codes


class BlockParams128:
    """Scale code and per-word grids of one 128-column block, for all rows of a chunk, chosen
    from x (rows, 128) with importance (128,); per-word step S, zero Z (in steps) and the
    decode's c * A + B kept transposed ((words, rows)) so each column reads contiguous rows."""

    def __init__(self, x: torch.Tensor, importance: torch.Tensor):
        rows = x.shape[0]
        xw = x.reshape(rows, codec_s.WORDS_S, 16).to(F)
        w = importance.to(F).reshape(1, codec_s.WORDS_S, 16).expand_as(xw)
        self.dcode, self.grid, _ = choose(xw, w)
        dev = x.device
        dd = torch.from_numpy(d_from_code(np.arange(N_D_CODES))).to(dev)[self.dcode][:, None]   # (rows, 1)
        mult = torch.from_numpy(codec_s.GRID_MULT.astype(np.float32)).to(dev)[self.grid]       # (rows, 8)
        zero = torch.from_numpy(codec_s.GRID_ZERO.astype(np.float32)).to(dev)[self.grid]
        self.S = (dd * (mult * float(GRID_STEP))).T.contiguous()
        self.Z = (zero / float(GRID_STEP)).T.contiguous()
        self.B = (dd * -(zero * mult)).T.contiguous()        # c * S + B = dd * (m * (16 c - z)), exact
        self.rows = None
        self.released = 0

    def quantize_column(self, col: int, w: torch.Tensor, out: torch.Tensor | None = None):
        """Quantized values of column `col` (0..127) (into `out` if given) and its codes (float)."""
        if self.rows is None:
            self.rows = [list(t.unbind(0)) for t in (self.S, self.Z, self.B)]
        S, Z, B = (r[col // 16] for r in self.rows)
        c = torch.div(w, S).add_(Z)
        c.nan_to_num_(0.0).clamp_(0.0, 3.0).round_()
        q = torch.mul(c, S, out=out)
        return q.add_(B), c

    def quantize_block(self, wt: torch.Tensor, first: int = 0):
        """quantize_column for columns first .. first + len(wt) - 1 at once, wt (columns, rows)."""
        words = slice(first // 16, (first + wt.shape[0]) // 16)
        rep = lambda t: t[words].repeat_interleave(16, 0)
        c = (wt / rep(self.S) + rep(self.Z)).nan_to_num_(0.0).clamp_(0.0, 3.0).round_()
        return c * rep(self.S) + rep(self.B), c

    def halves(self) -> list["Half"]:
        return [Half(self, 0), Half(self, 64)]

    def release(self) -> None:
        self.released += 1
        if self.released == 2:                               # both halves are encoded
            self.S = self.Z = self.B = self.rows = None


class Half:
    """One 64-column half of a BlockParams128, with gptq.BlockParams' interface."""

    def __init__(self, params: BlockParams128, offset: int):
        self.params, self.offset = params, offset

    def quantize_column(self, col_in_block: int, w: torch.Tensor, out: torch.Tensor | None = None):
        return self.params.quantize_column(self.offset + col_in_block, w, out)

    def quantize_block(self, wt: torch.Tensor):
        return self.params.quantize_block(wt, self.offset)

    def release(self) -> None:
        self.params.release()


def pack(params: list[Half], CT: torch.Tensor) -> np.ndarray:
    """MPQ2S bytes of all rows (rows, cols / 128 * 36): `params` per 64 columns (two halves of
    each block), `CT` (cols, rows) the 2-bit codes."""
    blocks = [h.params for h in params[::2]]
    rows = CT.shape[1]
    dcode = torch.stack([p.dcode for p in blocks], 1).reshape(-1).cpu().numpy()
    grid = torch.stack([p.grid for p in blocks], 1).reshape(-1, codec_s.WORDS_S).cpu().numpy()
    codes = CT.T.reshape(rows, -1, codec_s.WORDS_S, 16).reshape(-1, codec_s.WORDS_S, 16).to(torch.int32).cpu().numpy()
    return codec_s.pack(dcode, grid, codes).reshape(rows, -1)
