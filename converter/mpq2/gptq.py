"""The method's core: Hessian salience, the bitmap, and GPTQ-compensated MPQ2 encoding.

Modelled on the GPTQ reference (one class: add_batch, fasterquant). MPQ2 differs from plain
GPTQ in two ways: the salient words (bitmap) hold int8 means of 4 weights, fixed when their
64-weight block's scales are chosen, and the 2-bit codes sit on a per-word affine grid (scale
and zero offset chosen at the block's start, from the weights as updated so far). Every
rounding error, salient or not, is pushed onto the not-yet-quantized columns through the
Cholesky factor of H^-1, as METHOD.md section 4.

Everything runs in torch on the layer's device (codec_torch.py: the fit, bit-exact with
codec.py's numpy mirror on CPU); only the final packing goes through numpy.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, replace

import numpy as np
import torch

import gguf

from . import codec, codec_s, codec_torch as ct, mpq2s_grid, qtypes
from .format import GRID_STEP, GROUP, QK, SCALE_MULT, WORDS, ZERO2

F = np.float32
ERROR_ROWS = 8192      # rows per product of the output error, so its temporaries stay small
ERROR_MAX_ROWS = 4096  # the reported output error of a taller matrix is measured on every k-th row
ERROR_WIDTH = 4096     # ... and of a wider one on fewer rows, down to
ERROR_MIN_ROWS = 256
GRAM_BLOCK = 256       # columns per block of add_gram's products (bench/gptq_speed.py --gram)
INVERT_CHUNK = 1024    # rows (columns) per triangular solve of _invert_lower_


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
    grid: str = "mpq2"                 # mpq2; mpq2s (2.25 bpw, rotate only); or a llama.cpp type of qtypes.GRIDS (no bitmap, no rotation)


def config_for(cfg: QuantConfig, type_name: str) -> QuantConfig:
    """`cfg` for a weight of `type_name`: MPQ2 plain or turned (MPQ2R), MPQ2S (turned, its grids),
    or a llama.cpp type of qtypes.GRIDS."""
    if type_name in ("mpq2", "mpq2r"):
        return replace(cfg, rotate=type_name == "mpq2r", grid="mpq2")
    if type_name == "mpq2s":   # GPTQ's blocks hold whole 128-blocks: --block-size 64 becomes 128 here
        return replace(cfg, rotate=True, grid="mpq2s", block_size=-(-cfg.block_size // codec_s.QK_S) * codec_s.QK_S)
    return replace(cfg, rotate=False, grid=type_name)


@dataclass
class QuantResult:
    packed: np.ndarray        # (rows, bytes per row) uint8: MPQ2 bytes, or the llama.cpp type's (cfg.grid)
    weight: torch.Tensor      # (rows, cols) float32 on the MPQ2GPTQ's device, exactly what the bytes decode to
    n_salient: int            # words stored as int8 means (the tensor's K)
    n_words: int
    rel_output_error: float   # ||(W - W')X|| / ||WX|| over the calibration data (sampled rows past 4096: error_stride)


def salience_scores(W: torch.Tensor, hinv_diag: torch.Tensor | None) -> torch.Tensor:
    """Per-word salience (rows, cols/16): sum over the word of w_j^2 / [H^-1]_jj^2, or of w_j^2
    without a Hessian (the paper's magnitude ablation)."""
    w2 = W.float() ** 2
    if hinv_diag is not None:
        w2 = w2 / hinv_diag.float()[None, :] ** 2
    return w2.reshape(W.shape[0], -1, GROUP).sum(-1)


def select_bitmap(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top `fraction` of all words of the tensor by score (ties: lower flat index; NaN last)."""
    flat = scores.flatten()
    k = int(round(min(max(fraction, 0.0), 1.0) * flat.numel()))
    key = torch.where(torch.isnan(flat), -torch.inf, flat)
    bitmap = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    bitmap[torch.sort(key, descending=True, stable=True).indices[:k]] = True
    return bitmap.reshape(scores.shape)


def gate_salient(W, importance, candidates):
    """The candidate words whose H_jj-weighted error as int8 means is below their best 2-bit
    fit's: the paper's mean of 4 drops the variation inside each run of 4, which costs more than
    2-bit rounding on most words; only there does the int8 word pay. Only the candidates (the
    salient fraction's words) are fitted: the fit of every word was two thirds of a tensor's
    encoding time. Torch tensors in, a bool tensor out; numpy arrays in, a numpy array out."""
    if isinstance(W, np.ndarray):
        return gate_salient(torch.from_numpy(W), torch.from_numpy(np.asarray(importance)),
                            torch.from_numpy(candidates)).numpy()
    r, c = candidates.nonzero(as_tuple=True)
    x16 = W.reshape(W.shape[0], -1, GROUP)[r, c].to(torch.float32).T     # (16, k)
    w16 = importance.reshape(-1, GROUP)[c].to(torch.float32).T
    _, err8 = ct.fit8(x16, w16)
    keep = torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    keep[r, c] = ct.beats_fit2(x16, w16, err8)           # err8 < the best 2-bit fit's error
    return keep


class BlockParams:
    """Block scale, per-word scale and zero codes and fixed int8 means of one 64-column
    block, for all rows of a chunk; the per-word grids are kept transposed ((words, rows)) so
    that each column's step reads contiguous rows."""

    def __init__(self, x: torch.Tensor, importance: torch.Tensor, salient: torch.Tensor):
        rows = x.shape[0]
        xw = x.reshape(rows, WORDS, GROUP)
        w = importance.reshape(1, WORDS, GROUP)
        unit = self._units(xw, w, salient)
        self.dcode, self.scale_code, self.zero_code, self.c8 = ct.choose_scales(xw, w, salient, unit)
        dev = x.device
        dd = ct.d_from_code(self.dcode[:, 0])[:, None]                           # (rows, 1)
        mult = torch.from_numpy(SCALE_MULT.astype(F)).to(dev)[self.scale_code]   # (rows, 4)
        zint = torch.from_numpy(ZERO2.astype(F)).to(dev)[self.zero_code]
        step = dd * (mult * float(GRID_STEP))
        # a column decodes to c * A + B (c the 2-bit code), exactly dd * (m * (16 c - zint)):
        # every product and the sum are small integers times dd, exact in float32. Salient
        # words: A = 0 and B their int8 means, dd * (m * c8), one per run of 4.
        q8 = dd[..., None] * (mult[..., None] * self.c8)                         # (rows, 4, 4)
        b2 = (dd * -(zint * mult))[..., None].expand(-1, -1, 4)
        self.S = step.T.contiguous()
        self.Z = torch.from_numpy(codec.ZERO_STEPS).to(dev)[self.zero_code].T.contiguous()
        self.A = torch.where(salient, 0.0, step).T.contiguous()
        self.B = torch.where(salient[..., None], q8, b2).reshape(rows, 16).T.contiguous()   # (16 runs, rows)
        self.rows_S = None

    @staticmethod
    def _units(xw: torch.Tensor, w: torch.Tensor, salient: torch.Tensor) -> torch.Tensor:
        """Target unit of each word, only to place the block scale: GPTQ needs no bit-exact
        mirror of the C fit (the bytes are packed from the codes it chooses), so 2-bit words
        take the top of the fit's step range (0.675 of the word's largest magnitude) instead
        of the 64-candidate search; the (scale, zero) search per word that follows does the
        fitting. Three times faster on the converter's largest cost."""
        unit = xw.abs().amax(-1) * float(F(0.675)) / float(GRID_STEP)
        r, c = salient.nonzero(as_tuple=True)
        if r.numel():   # the int8 fit, needed by the salient words only
            unit[r, c] = ct.fit8(xw[r, c].T, w[0, c].T)[0]
        return unit

    def quantize_column(self, col_in_block: int, w: torch.Tensor, out: torch.Tensor | None = None):
        """Quantized values of one column (into `out` if given) and its 2-bit codes (float), the
        way the C code decodes them."""
        if self.rows_S is None:   # per-word rows as a list: no tensor indexing per column
            self.rows_S, self.rows_Z, self.rows_A, self.rows_B = (list(t.unbind(0)) for t in (self.S, self.Z, self.A, self.B))
        word = col_in_block // GROUP
        c = torch.div(w, self.rows_S[word]).add_(self.rows_Z[word])
        c.nan_to_num_(0.0).clamp_(0.0, 3.0).round_()     # round: ties to even; NaN -> 0
        q = torch.mul(c, self.rows_A[word], out=out)
        return q.add_(self.rows_B[col_in_block // 4]), c

    def release(self) -> None:
        """Drops the per-column grids once the block is encoded (packing needs the codes only)."""
        self.S = self.Z = self.A = self.B = self.rows_S = self.rows_Z = self.rows_A = self.rows_B = None

    def quantize_block(self, wt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """quantize_column for all 64 columns at once, wt (64, rows): round to nearest."""
        t = wt / self.S.repeat_interleave(GROUP, 0) + self.Z.repeat_interleave(GROUP, 0)
        c = t.nan_to_num_(0.0).clamp_(0.0, 3.0).round_()
        return c * self.A.repeat_interleave(GROUP, 0) + self.B.repeat_interleave(4, 0), c


class MPQ2GPTQ:
    """Collects the Hessian of one linear layer's inputs and encodes its weight as MPQ2.

    `weight_or_shape`: the layer's weight (or its (rows, cols) shape); `device`: where the
    Hessian and all of the encoding live (default: the weight's device, else the CPU)."""

    def __init__(self, weight_or_shape, device=None):
        shape = weight_or_shape.shape if isinstance(weight_or_shape, torch.Tensor) else weight_or_shape
        self.rows, self.cols = (int(v) for v in shape)
        if self.cols % QK:
            raise ValueError(f"input dimension {self.cols} is not a multiple of {QK}")
        if device is None and isinstance(weight_or_shape, torch.Tensor) and weight_or_shape.device.type != "meta":
            device = weight_or_shape.device
        self.device = torch.device(device or "cpu")
        self.H = torch.zeros(self.cols, self.cols, dtype=torch.float64, device=self.device)
        self.nsamples = 0

    @property
    def H(self) -> torch.Tensor:
        return self._H

    @H.setter
    def H(self, value: torch.Tensor) -> None:
        # the factorization of H per (rotate, percdamp, act_order, rtn), shared with the encoders made
        # by sharing(): q/k/v, gate/up, and every candidate type of one weight (the sensitivity
        # pass) factorize H once instead of once each; a new H (or add_batch) starts it afresh
        self._H = value
        self._factors: dict = {}

    def sharing(self, weight_or_shape) -> "MPQ2GPTQ":
        """An encoder for another layer with the same input (q/k/v, gate/up): it reads this one's
        Hessian, not a copy, so it must be made after the last add_batch."""
        other = copy.copy(self)
        other.rows, cols = (int(v) for v in (weight_or_shape.shape if isinstance(weight_or_shape, torch.Tensor)
                                             else weight_or_shape))
        if cols != self.cols:
            raise ValueError(f"a layer of {cols} inputs cannot share a Hessian of {self.cols}")
        return other

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.reshape(-1, self.cols).to(self.device, torch.float32)
        n = x.shape[0]
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = x * float(np.sqrt(2.0 / self.nsamples))
        add_gram(self.H, x)
        self._factors.clear()

    def fasterquant(self, weight: torch.Tensor, cfg: QuantConfig, row_chunk: int | None = None,
                    error: bool = True) -> QuantResult:
        """Encodes `weight` (rows, cols). With `cfg.rotate` (MPQ2R) GPTQ works on the turned weights
        R w against R H R^T (w.x = Rw.Rx), so salience, bitmap and compensation all live in the
        turned basis; the weight returned is what dequantize_row_mpq2r decodes.

        `row_chunk`: GPTQ on that many rows at a time (rounded up to a multiple of 64; rows are
        independent given H), after the bitmap is chosen over the whole tensor: the same bytes,
        with working memory that grows with the chunk instead of the rows. `error=False` skips
        the reported output error (NaN then), which costs about as much as GPTQ's updates."""
        if cfg.block_size % QK:
            raise ValueError(f"--block-size must be a multiple of {QK}")
        if cfg.grid == "mpq2s" and (not cfg.rotate or self.cols % codec_s.QK_S or cfg.block_size % codec_s.QK_S):
            raise ValueError(f"MPQ2S is encoded turned (rotate=True), on inputs and GPTQ blocks that are multiples of "
                             f"{codec_s.QK_S} (got {self.cols} inputs, block size {cfg.block_size})")
        key = (cfg.rotate, cfg.percdamp, cfg.act_order, cfg.method == "rtn")
        if key not in self._factors:
            self._factors[key] = self._factor(cfg)
        U, hinv_diag, importance, perm, dead = self._factors[key]
        weight = weight.detach()
        spans = _row_spans(self.rows, row_chunk)
        kept = {spans[0]: self._prepare(weight[:spans[0][1]], cfg, dead)}   # one chunk: prepared once
        prepared = lambda a, b: kept.pop((a, b)) if (a, b) in kept else self._prepare(weight[a:b], cfg, dead)
        hd = hinv_diag if cfg.salience == "hessian" else None
        if cfg.grid == "mpq2":
            scores = torch.cat([salience_scores(kept[span] if span in kept else prepared(*span), hd) for span in spans])
            bitmap = select_bitmap(scores, cfg.salient_fraction)                     # (rows, words)
            del scores
        else:                                                                        # no salient words
            bitmap = torch.zeros((self.rows, self.cols // GROUP), dtype=torch.bool, device=self.device)
        packed = np.empty((self.rows, _row_bytes(self.cols, cfg)), np.uint8)
        Q = torch.empty((self.rows, self.cols), dtype=torch.float32, device=self.device)
        num = den = 0.0
        stride = error_stride(self.rows, self.cols)
        for a, b in spans:
            W = prepared(a, b)
            if cfg.gate and cfg.grid == "mpq2":
                bitmap[a:b] = gate_salient(W, importance, bitmap[a:b])
            q, packed[a:b] = self._quantize_rows(W, bitmap[a:b], importance, U, perm, cfg)
            del W
            Q[a:b] = ct.unrotate(q) if cfg.rotate else q
            if error:
                sample = slice(-a % stride, b - a, stride)   # rows r with r % stride == 0, whatever the spans
                w = weight[a:b][sample].to(self.device, torch.float32)
                num += _quadratic(w - Q[a:b][sample], self.H)
                den += _quadratic(w, self.H)
        rel = (float(np.sqrt(num / den)) if den > 0 else 0.0) if error else float("nan")
        return QuantResult(packed, Q, int(bitmap.sum()), bitmap.numel(), rel)

    def _factor(self, cfg: QuantConfig):
        """U = chol(H^-1) upper of the damped (and turned) Hessian, in one n x n float64 buffer
        besides self.H (column-major, as LAPACK works), by inverse_cholesky_upper_: one Cholesky
        and one triangular inverse, 2/3 n^3, where chol -> cholesky_inverse -> chol is 4/3 n^3
        (an 8B ffn_down's 14336 inputs: 59 -> 27 s on 2 cores)."""
        n = self.cols
        H = torch.empty((n, n), dtype=torch.float64, device=self.device).mT
        if cfg.rotate:
            ct.rotate_hessian_into(self.H, H)
        else:
            H.copy_(self.H)
        diag = H.diagonal()                     # a view: the steps below change H
        dead = torch.diag(H) == 0
        diag[dead] = 1.0
        diag += cfg.percdamp * torch.mean(torch.diag(H))   # the mean of a contiguous copy, as before: same bits
        importance = torch.diag(H).to(torch.float32)
        perm = torch.argsort(torch.diag(H), descending=True, stable=True) if cfg.act_order else None
        if perm is not None:                    # GPTQ's columns in this order: U of P H^-1 P^T
            H = H[perm][:, perm]
        U = inverse_cholesky_upper_(H)
        hinv_diag = column_sq_sums(U)           # diag(H^-1) = diag(U^T U)
        if perm is not None:
            hinv_diag = torch.empty_like(hinv_diag).index_copy_(0, perm, hinv_diag)
        if cfg.method == "rtn":                 # no compensation: U is not needed, only diag(H^-1)
            return None, hinv_diag, importance, perm, dead
        U = U.to(torch.float32, memory_format=torch.contiguous_format)
        return U, hinv_diag, importance, perm, dead

    def _prepare(self, w: torch.Tensor, cfg: QuantConfig, dead: torch.Tensor) -> torch.Tensor:
        """The rows GPTQ encodes: float32 on the device, turned for MPQ2R, dead inputs zeroed."""
        w = ct.rotate(w.to(self.device)) if cfg.rotate else w.to(self.device, torch.float32, copy=True)
        if bool(dead.any()):
            w[:, dead] = 0.0
        return w

    def _quantize_rows(self, W, bitmap, importance, U, perm, cfg):
        """GPTQ of the rows W (rows, cols) with their bitmap: (the values they decode to, MPQ2 bytes).
        Columns are kept transposed (cols, rows) so each column step reads contiguous memory."""
        rows, nb = W.shape[0], self.cols // QK
        params: list[BlockParams | None] = [None] * nb

        def block_params(b, x):
            """The grids of the 64-column blocks from b on (one, or MPQ2S's two), x: their columns or more."""
            if cfg.grid == "mpq2s":
                return mpq2s_grid.BlockParams128(x[:, :codec_s.QK_S], importance[b * QK:b * QK + codec_s.QK_S]).halves()
            if cfg.grid != "mpq2":
                return [qtypes.GroupParams(x[:, :QK], cfg.grid)]
            return [BlockParams(x[:, :QK], importance[b * QK:(b + 1) * QK], bitmap[:, b * WORDS:(b + 1) * WORDS])]

        QT = torch.empty((self.cols, rows), dtype=torch.float32, device=W.device)
        CT = torch.empty((self.cols, rows), dtype=torch.uint8, device=W.device)
        if cfg.method == "rtn":   # no compensation: the columns of a block are independent
            for b in range(nb):
                if params[b] is None:
                    new = block_params(b, W[:, b * QK:])
                    params[b:b + len(new)] = new
                QT[b * QK:(b + 1) * QK], CT[b * QK:(b + 1) * QK] = params[b].quantize_block(W[:, b * QK:(b + 1) * QK].T)
                params[b].release()
        else:
            if perm is not None:   # static scales from the original weights: columns arrive out of order
                for b in range(nb):
                    if params[b] is None:
                        new = block_params(b, W[:, b * QK:])
                        params[b:b + len(new)] = new
                W = W[:, perm]
            self._gptq(W, U, perm, params, block_params, QT, CT, cfg.block_size)
        if cfg.grid == "mpq2":
            packed = self._pack(params, bitmap, CT)
        elif cfg.grid == "mpq2s":
            packed = mpq2s_grid.pack(params, CT)
        else:
            packed = qtypes.pack(params, CT, cfg.grid)
        return QT.T.contiguous(), packed

    @staticmethod
    def _gptq(Wp, U, perm, params, block_params, QT, CT, block_size):
        """GPTQ's lazy-batch loop over the (permuted) columns of Wp, updated in place."""
        cols = Wp.shape[1]
        order = perm.tolist() if perm is not None else range(cols)
        Ud = U.diagonal()
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = Wp[:, i1:i2].T.contiguous()                  # (columns, rows)
            Q1, C1, Err1 = torch.empty_like(W1), torch.empty_like(W1), torch.empty_like(W1)
            Urows = U[i1:i2, i1:i2, None].unbind(0)           # row i: (columns, 1)
            for i in range(i2 - i1):
                col = order[i1 + i]
                b, cb = divmod(col, QK)
                if params[b] is None:   # natural order: block starts here, its columns are all in W1
                    new = block_params(b, W1[i:].T)
                    params[b:b + len(new)] = new
                w = W1[i]
                q, C1[i] = params[b].quantize_column(cb, w, out=Q1[i])
                err = Err1[i:i + 1]
                torch.sub(w, q, out=err[0]).div_(Ud[i1 + i])
                W1[i + 1:] -= Urows[i][i + 1:] * err
            cols_here = torch.tensor(order[i1:i2], device=Wp.device) if perm is not None else slice(i1, i2)
            QT[cols_here], CT[cols_here] = Q1, C1.to(torch.uint8)
            if perm is None:
                for b in range(i1 // QK, i2 // QK):
                    params[b].release()
            # GPTQ's lazy update, in place (no rows x remaining-columns temporary): the product has
            # the shapes and layout of the reference's, and the same bits (bench/gptq_speed.py checks)
            Wp[:, i2:].addmm_(Err1.T.contiguous(), U[i1:i2, i2:], alpha=-1.0)

    @staticmethod
    def _pack(params: list[BlockParams], bitmap: torch.Tensor, CT: torch.Tensor) -> np.ndarray:
        cpu = lambda ts: torch.cat(ts, dim=1).to(torch.int32).cpu().numpy()
        c8 = cpu([p.c8 for p in params])
        c2 = CT.T.cpu().numpy().reshape(bitmap.shape[0], -1, GROUP)
        return codec.pack(cpu([p.dcode for p in params]), cpu([p.scale_code for p in params]),
                          cpu([p.zero_code for p in params]), bitmap.cpu().numpy(), c8, c2)


def add_gram(H: torch.Tensor, x: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """H += x^T x, by symmetry: the products of the column blocks on and above the diagonal
    (float32, added to the float64 H), then the part below the diagonal copied from above, so H
    stays exactly symmetric. In `block`-column blocks that is (k + 1) / 2k of the full product's
    work for k blocks: x^T x was the larger part of a block's Hessians (ffn_down's input)."""
    n = x.shape[1]
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        H[:j1, j0:j1] += x[:, :j1].T @ x[:, j0:j1]    # this block column is now final above the diagonal
        H[j0:j1, :j0] = H[:j0, j0:j1].T
        d = H[j0:j1, j0:j1]
        d.copy_(d.triu() + d.triu(1).T)


def error_stride(rows: int, cols: int = 0) -> int:
    """Every how many rows the reported output error is measured: each row costs cols^2, as
    much as GPTQ's own work on it, so a matrix of more than ERROR_MAX_ROWS rows (a 14336-row FFN,
    a 128k-row output) is measured on evenly spaced rows, at most that many; wider than
    ERROR_WIDTH inputs, on fewer rows still (at least ERROR_MIN_ROWS), so that a 14336-wide
    ffn_down costs what a 4096-wide layer does (8.3 of its 80 s before)."""
    most = ERROR_MAX_ROWS
    if cols > ERROR_WIDTH:
        most = max(ERROR_MIN_ROWS, ERROR_MAX_ROWS * ERROR_WIDTH ** 2 // cols ** 2)
    return -(-rows // most)


def inverse_cholesky_upper_(H: torch.Tensor, base: int = 256) -> torch.Tensor:
    """The upper U with U^T U = H^-1, in H's buffer (H symmetric positive definite, overwritten).
    With J the order reversal, chol(J H J) = L gives H = (J L J)(J L J)^T, so H^-1 = U^T U with
    U = J L^-1 J: a Cholesky and a triangular inverse, in torch on H's device. `base`: the size
    below which the inverse is one triangular solve against the identity."""
    _reverse_(H)
    torch.linalg.cholesky(H, out=H)
    _invert_lower_(H, base)
    _reverse_(H)
    return H


def column_sq_sums(U: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """sum_i U_ij^2 per column j, a row chunk at a time (no n x n temporary)."""
    out = torch.zeros(U.shape[1], dtype=U.dtype, device=U.device)
    for a in range(0, U.shape[0], chunk):
        out += U[a:a + chunk].square().sum(0)
    return out


def _reverse_(A: torch.Tensor, chunk: int = 512) -> None:
    """A <- J A J (rows and columns in reverse order), in place, `chunk` rows at a time."""
    M = A if A.is_contiguous() else A.mT      # the same operation on either layout
    n = M.shape[0]
    for a in range(0, n // 2, chunk):
        b = min(a + chunk, n // 2)
        top = M[a:b].flip(0, 1)
        M[a:b] = M[n - b:n - a].flip(0, 1)
        M[n - b:n - a] = top
    if n % 2:
        M[n // 2] = M[n // 2].flip(0)


def _invert_lower_(L: torch.Tensor, base: int) -> None:
    """L <- L^-1 for a lower-triangular L, in place, by halves: [[A, 0], [B, C]]^-1 is
    [[A^-1, 0], [-C^-1 B A^-1, C^-1]]. Two triangular solves per level: n^3/3 in all, as fast as
    LAPACK's trtri here (14336: 13.9 s against 15.9), on any torch device."""
    n = L.shape[0]
    if n <= base:
        L.copy_(torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False))
        return
    h = -(-(n // 2) // 64) * 64          # a multiple of 64 keeps the solves on aligned blocks
    if h >= n:
        h = n // 2
    A, B, C = L[:h, :h], L[h:, :h], L[h:, h:]
    for r in range(0, B.shape[0], INVERT_CHUNK):      # B A^-1, rows apart: temporaries of a chunk,
        rows = B[r:r + INVERT_CHUNK]                  # not of B (ffn_down's B is 411 MB in float64)
        rows.copy_(torch.linalg.solve_triangular(A, rows, upper=False, left=False))
    for c in range(0, B.shape[1], INVERT_CHUNK):      # -C^-1 (B A^-1), columns apart
        cols = B[:, c:c + INVERT_CHUNK]
        cols.copy_(torch.linalg.solve_triangular(C, cols, upper=False).neg_())
    _invert_lower_(A, base)
    _invert_lower_(C, base)
    L[:h, h:].zero_()


def _row_bytes(cols: int, cfg: QuantConfig) -> int:
    if cfg.grid == "mpq2":
        return cols // QK * 20
    if cfg.grid == "mpq2s":
        return cols // codec_s.QK_S * codec_s.BLOCK_BYTES_S
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cfg.grid.upper()]]
    return cols // block * size


def _row_spans(rows: int, chunk: int | None) -> list[tuple[int, int]]:
    """Row ranges of at least 64 rows (a multiple of 64 but the last): the block update's matrix
    product then gives each row the bits it gets in one product over all rows (MKL's sgemm
    differs below 12 rows, measured)."""
    if not chunk or chunk >= rows:
        return [(0, rows)]
    step = -(-chunk // QK) * QK
    spans = [(a, min(a + step, rows)) for a in range(0, rows, step)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < QK:
        spans[-2:] = [(spans[-2][0], rows)]
    return spans


def _quadratic(X: torch.Tensor, H: torch.Tensor) -> float:
    """sum_r x_r H x_r^T over the rows of X, from the blocks on and above H's diagonal (H is
    symmetric: half the products): float32 products of slices (no n x n copy of H), float64 sums."""
    total, n, bs = 0.0, H.shape[1], 1024
    for c0 in range(0, n, bs):
        c1 = min(c0 + bs, n)
        Hc = H[:c1, c0:c1].to(torch.float32)
        for r0 in range(0, X.shape[0], ERROR_ROWS):
            x = X[r0:r0 + ERROR_ROWS]
            xc = x[:, c0:c1]
            total += 2.0 * float((x[:, :c0] @ Hc[:c0]).mul_(xc).sum(dtype=torch.float64))
            total += float((xc @ Hc[c0:]).mul_(xc).sum(dtype=torch.float64))
    return total
