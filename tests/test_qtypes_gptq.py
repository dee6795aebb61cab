"""GPTQ on llama.cpp's legacy grids (qtypes.py): the bytes decode, through gguf-py's own
dequantizer, to exactly the values GPTQ continued with; round to nearest loses what gguf-py's
quantizer loses; GPTQ's compensation lowers the output error."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from mpq2 import gguf_out
from mpq2.gptq import MPQ2GPTQ, QuantConfig
from mpq2.qtypes import GRIDS


def _layer(seed=0, rows=96, cols=256):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    W[3, :32] = 0.0                                     # an all-zero group: d = 0
    W[5, 40] = 25.0                                     # an outlier
    X = torch.randn(2000, cols, generator=g) @ (0.3 * torch.randn(cols, cols, generator=g))
    enc = MPQ2GPTQ(W.shape)
    enc.add_batch(X)
    return W, X, enc


def _rel(W, D, X):
    return float(((D - W) @ X.T).norm() / (W @ X.T).norm())


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_gptq_bytes_decode_to_its_values_and_beat_round_to_nearest(grid):
    W, X, enc = _layer()
    qtype = gguf.GGMLQuantizationType[grid.upper()]
    ref = torch.from_numpy(gguf_out.decode(gguf_out.encode(W.numpy(), grid)[0], qtype, W.shape))
    errs = {}
    for method in ("rtn", "gptq"):
        res = enc.fasterquant(W, QuantConfig(grid=grid, method=method))
        assert res.packed.shape == (W.shape[0], W.shape[1] // 32 * gguf.GGML_QUANT_SIZES[qtype][1])
        decoded = gguf_out.decode(res.packed, qtype, W.shape)
        np.testing.assert_array_equal(decoded, res.weight.numpy())
        errs[method] = _rel(W, res.weight, X)
    assert errs["rtn"] == pytest.approx(_rel(W, ref, X), rel=0.02)      # gguf-py's own round to nearest
    assert errs["gptq"] < 0.85 * errs["rtn"], errs


def test_row_chunks_give_the_same_bytes():
    W, _, enc = _layer(1, rows=200)
    whole = enc.fasterquant(W, QuantConfig(grid="q4_0"))
    chunked = enc.fasterquant(W, QuantConfig(grid="q4_0"), row_chunk=64)
    np.testing.assert_array_equal(whole.packed, chunked.packed)
