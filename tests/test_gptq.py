"""The converter's core on synthetic layers: salience, bitmap, compensation, packing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpq2 import codec
from mpq2.gptq import MPQ2GPTQ, QuantConfig, gate_salient, salience_scores, select_bitmap


def layer(rows=128, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, cols, generator=g) @ (0.2 * torch.randn(cols, cols, generator=g) + torch.eye(cols))
    W = 0.05 * torch.randn(rows, cols, generator=g)
    return X, W


def hessian(X, W):
    q = MPQ2GPTQ(W)
    q.add_batch(X[:1000])
    q.add_batch(X[1000:])
    return q


def output_error(W, Wq, X):
    return float(torch.linalg.norm((W - Wq) @ X.T) / torch.linalg.norm(W @ X.T))


def test_hessian_matches_definition():
    X, W = layer(cols=64)
    q = hessian(X, W)
    np.testing.assert_allclose(q.H.numpy(), (2 * X.double().T @ X.double() / X.shape[0]).numpy(), rtol=1e-4, atol=1e-4)


def test_compensation_lowers_layer_output_error():
    X, W = layer()
    q = hessian(X, W)
    rtn = q.fasterquant(W, QuantConfig(method="rtn", salient_fraction=0.0))
    gptq = q.fasterquant(W, QuantConfig(method="gptq", salient_fraction=0.0))
    assert output_error(W, gptq.weight, X) < 0.8 * output_error(W, rtn.weight, X)
    # the reported error is the same quantity, computed from H
    assert gptq.rel_output_error == pytest.approx(output_error(W, gptq.weight, X), rel=0.02)


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(act_order=True), QuantConfig(method="rtn"),
                                 QuantConfig(gate=False, salient_fraction=0.25), QuantConfig(block_size=64)])
def test_packed_bytes_decode_to_the_intended_weights(cfg):
    X, W = layer(rows=64, cols=192)
    W[3, 16:32] = torch.repeat_interleave(torch.tensor([0.9, -0.7, 0.8, -0.6]), 4)  # a word int8 means fit exactly
    res = hessian(X, W).fasterquant(W, cfg)
    assert res.packed.shape == (64, 192 // 64 * 20)
    np.testing.assert_array_equal(codec.dequantize(res.packed), res.weight.numpy())


def test_salience_ranks_planted_outlier_groups_first():
    X, W = layer(rows=64, cols=256, seed=1)
    planted = [(5, 3), (17, 10), (40, 0), (63, 15)]          # (row, word)
    for r, k in planted:
        W[r, 16 * k:16 * k + 16] *= 30.0
    q = hessian(X, W)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(q.H + 0.01 * torch.diag(q.H).mean() * torch.eye(256, dtype=q.H.dtype)))
    scores = salience_scores(W, torch.diag(Hinv))
    top = torch.topk(scores.flatten(), len(planted)).indices
    assert {(int(i) // 16, int(i) % 16) for i in top} == set(planted)
    bitmap = select_bitmap(scores, len(planted) / scores.numel())
    assert {tuple(map(int, rc)) for rc in bitmap.nonzero()} == set(planted)


def test_hessian_salience_sees_input_scale():
    # equal weights, but column block 0 receives inputs 10x larger: Hessian salience ranks it
    # first, magnitude salience cannot tell the words apart
    g = torch.Generator().manual_seed(2)
    X = torch.randn(4096, 64, generator=g)
    X[:, :16] *= 10
    W = torch.ones(4, 64)
    q = hessian(X, W)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(q.H))
    s = salience_scores(W, torch.diag(Hinv))
    assert (s[:, 0] > 10 * s[:, 1:].max()).all()
    m = salience_scores(W, None)
    assert torch.allclose(m, m[0, 0].expand_as(m))


def test_gate_keeps_int8_words_only_where_they_help():
    X, W = layer(rows=32, cols=128, seed=3)
    W[7, 32:48] = torch.repeat_interleave(torch.tensor([1.0, -1.0, 0.5, 2.0]), 4)
    q = hessian(X, W)
    gated = q.fasterquant(W, QuantConfig(salient_fraction=0.5))
    fields = codec.split_fields(gated.packed)
    bitmap = fields["bitmap"].reshape(32, -1)
    assert bitmap[7, 2] and bitmap.sum() >= 1
    ungated = q.fasterquant(W, QuantConfig(salient_fraction=0.5, gate=False))
    assert ungated.n_salient == 32 * 8 // 2
    assert gated.rel_output_error < ungated.rel_output_error


def test_gate_decides_each_candidate_as_it_would_among_all_words():
    # the gate fits only the candidates (for speed): each candidate's verdict must be the one it
    # gets when every word is fitted, and no word outside the candidates may pass
    _, W = layer(rows=64, cols=128, seed=5)
    runs = torch.repeat_interleave(torch.randn(64, 32), 4, dim=1)        # words of 4 constant runs
    pick = torch.rand(64, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    W = torch.where(torch.repeat_interleave(pick, 16, dim=1), runs, W).numpy()
    importance = np.linspace(0.5, 2.0, 128, dtype=np.float32)
    every = gate_salient(W, importance, np.ones((64, 8), bool))
    cand = np.random.default_rng(2).random((64, 8)) < 0.5
    got = gate_salient(W, importance, cand)
    assert every.sum() >= pick.sum() // 2 and (got & cand).sum() > 0
    np.testing.assert_array_equal(got, every & cand)
    assert not gate_salient(W, importance, np.zeros((64, 8), bool)).any()


def test_rejects_rows_that_are_not_a_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        MPQ2GPTQ(torch.zeros(4, 100))
