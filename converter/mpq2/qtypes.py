"""llama.cpp's legacy block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) as grids GPTQ can encode on:
per 32-weight group one fp16 scale d (and for the _1 types an fp16 minimum m), each weight
d * c + m with an integer code c. Layouts as ggml-common.h's block_q4_0 ... block_q8_0; the
bytes decode (gguf-py, llama.cpp) to exactly the values GroupParams gives GPTQ.

GroupParams has BlockParams' interface (gptq.py): one 64-column block of a chunk of rows, its
two groups' grids placed from the weights as updated so far when the block starts, then one
column at a time."""
from __future__ import annotations

import numpy as np
import torch

GROUP32 = 32

# name -> (smallest code, largest code, asymmetric: a minimum per group)
GRIDS = {
    "q4_0": (-8, 7, False),
    "q4_1": (0, 15, True),
    "q5_0": (-16, 15, False),
    "q5_1": (0, 31, True),
    "q8_0": (-127, 127, False),
}


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


class GroupParams:
    """Scales (and minimums) of the two 32-groups of one 64-column block, for all rows."""

    def __init__(self, x: torch.Tensor, grid: str):
        self.cmin, self.cmax, asym = GRIDS[grid]
        g = x.reshape(x.shape[0], -1, GROUP32).to(torch.float32)             # (rows, 2, 32)
        if asym:
            lo, hi = g.amin(-1), g.amax(-1)
            d, m = (hi - lo) / self.cmax, lo
        elif self.cmax == 127:                                               # q8_0: amax / 127
            d, m = g.abs().amax(-1) / 127, torch.zeros_like(g[..., 0])
        else:                                                                # the signed extreme -> cmin
            big = torch.gather(g, -1, g.abs().argmax(-1, keepdim=True))[..., 0]
            d, m = big / self.cmin, torch.zeros_like(big)
        self.d, self.m = _fp16(d), _fp16(m)                                  # (rows, 2), as stored
        inv = torch.where(self.d == 0, torch.zeros_like(self.d), 1.0 / self.d)
        self.D, self.M, self.I = (t.T.contiguous() for t in (self.d, self.m, inv))   # (2, rows)

    def quantize_column(self, col_in_block: int, w: torch.Tensor, out: torch.Tensor | None = None):
        """Quantized values of one column (into `out` if given) and its codes less cmin (float)."""
        k = col_in_block // GROUP32
        c = torch.sub(w, self.M[k]).mul_(self.I[k])
        c.nan_to_num_(0.0).round_().clamp_(self.cmin, self.cmax)
        q = torch.mul(c, self.D[k], out=out).add_(self.M[k])
        return q, c.sub_(self.cmin)

    def quantize_block(self, wt: torch.Tensor):
        """quantize_column for the 64 columns at once, wt (64, rows): round to nearest."""
        rep = lambda t: t.repeat_interleave(GROUP32, 0)
        c = ((wt - rep(self.M)) * rep(self.I)).nan_to_num_(0.0).round_().clamp_(self.cmin, self.cmax)
        return c * rep(self.D) + rep(self.M), c - self.cmin

    def release(self) -> None:
        self.D = self.M = self.I = None


def pack(params: list[GroupParams], CT: torch.Tensor, grid: str) -> np.ndarray:
    """The llama.cpp blocks of all rows: `CT` (cols, rows) the codes less cmin."""
    cmin, _, asym = GRIDS[grid]
    d = torch.cat([p.d for p in params], dim=1).cpu().numpy().astype(np.float16)     # (rows, groups)
    m = torch.cat([p.m for p in params], dim=1).cpu().numpy().astype(np.float16)
    u = CT.T.cpu().numpy().astype(np.uint8)
    rows, groups = d.shape
    u = u.reshape(rows, groups, GROUP32)
    parts = [d[..., None].view(np.uint8)]
    if asym:
        parts.append(m[..., None].view(np.uint8))
    if grid == "q8_0":
        parts.append((u.astype(np.int16) + cmin).astype(np.int8).view(np.uint8))
    else:
        if grid in ("q5_0", "q5_1"):
            parts.append(np.packbits(u >> 4, axis=-1, bitorder="little"))          # qh: bit j = code j's 5th bit
        parts.append((u[..., :16] & 0x0F) | ((u[..., 16:] & 0x0F) << 4))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)
