"""The converter's core on synthetic layers: salience, bitmap, compensation, packing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpq2 import codec
from mpq2.gptq import MPQ2GPTQ, QuantConfig, add_gram, gate_salient, salience_scores, select_bitmap


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


@pytest.mark.parametrize("cols,block", [(64, 64), (320, 128), (1000, 384), (384, 1024)])
def test_add_gram_is_the_symmetric_product(cols, block):
    """add_gram computes only the blocks on and above the diagonal: the result must still be
    x^T x (to float32 rounding) over the whole matrix, exactly symmetric, and add to what H held."""
    x = torch.randn(700, cols, generator=torch.Generator().manual_seed(cols))
    H = torch.eye(cols, dtype=torch.float64)
    add_gram(H, x, block)
    want = torch.eye(cols, dtype=torch.float64) + x.double().T @ x.double()
    assert torch.equal(H, H.T)
    np.testing.assert_allclose(H.numpy(), want.numpy(), rtol=1e-5, atol=1e-3)


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


# --- the torch encoder against the numpy mirror (codec.py), bit for bit on CPU ---------------

import math
from dataclasses import replace

from mpq2 import codec_torch as ct
from mpq2 import rotation
from mpq2.format import GRID_STEP, GROUP, QK, SCALE_MULT, WORDS, ZERO2, d_from_code
from mpq2.gptq import BlockParams

F = np.float32


def words(n=600, seed=0):
    """(n, 16) float32 words of many kinds: Gaussian, heavy tails, runs of 4, zeros, one huge
    word, and importances (n, 16) with zeros among them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, GROUP)).astype(F) * F(0.05)
    x[::5] = (rng.standard_t(2, (len(x[::5]), GROUP)) * 0.05).astype(F)
    x[1::7] = np.repeat(rng.standard_normal((len(x[1::7]), 4)), 4, axis=1).astype(F)
    x[2::11] = 0.0
    x[3, :] = F(3e4)
    x[4, 5] = F(1e-30)
    w = rng.uniform(0.0, 2.0, (n, GROUP)).astype(F)
    w[6::13] = 0.0
    return x, w


def test_torch_fits_equal_numpy_fits():
    x, w = words()
    x16, w16 = torch.from_numpy(x.T.copy()), torch.from_numpy(w.T.copy())
    with np.errstate(all="ignore"):
        u2, e2 = codec._fit2(x, w)
        u8, e8 = codec._fit8(x, w)
        m4 = codec._means4(x, w)
    tu2, te2 = ct.fit2_words(x16, w16)
    tu8, te8 = ct.fit8(x16, w16)
    for got, want in ((tu2, u2), (te2, e2), (tu8, u8), (te8, e8), (ct.means4(x16, w16).T, m4)):
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_torch_choose_scales_equals_numpy(fraction):
    x, w = words(64 * 8 * 4, seed=1)                 # 64 rows of 8 blocks
    x = x.reshape(64, 32, GROUP)
    w = w[:32].reshape(1, 32, GROUP)                  # one importance per column, as in GPTQ
    rng = np.random.default_rng(2)
    salient = rng.random((64, 32)) < fraction
    unit = (np.abs(x).max(-1) * F(0.675) / F(GRID_STEP)).astype(F)
    with np.errstate(all="ignore"):
        unit = np.where(salient, codec._fit8(x, np.broadcast_to(w, x.shape))[0], unit).astype(F)
        dcode, j, z, c8, _ = codec.choose_scales(x, w, salient, unit)
    tdcode, tj, tz, tc8 = ct.choose_scales(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(salient),
                                           torch.from_numpy(unit))
    np.testing.assert_array_equal(tdcode.numpy(), dcode)
    np.testing.assert_array_equal(tj.numpy(), j)
    np.testing.assert_array_equal(tz.numpy(), z)
    np.testing.assert_array_equal(tc8.numpy()[salient], c8[salient])   # the only c8 a byte reads


def test_torch_rotation_equals_numpy():
    x = np.random.default_rng(3).standard_normal((7, 3 * 64)).astype(F)
    np.testing.assert_array_equal(ct.rotate(torch.from_numpy(x)).numpy(), rotation.rotate(x))
    np.testing.assert_array_equal(ct.unrotate(torch.from_numpy(x)).numpy(), rotation.unrotate(x))
    X, W = layer(rows=4, cols=192)
    H = hessian(X, W).H
    out = torch.empty_like(H).mT                      # column-major, as MPQ2GPTQ keeps it
    assert torch.equal(ct.rotate_hessian_into(H, out), rotation.rotate_hessian(H))


def numpy_block_params(x: np.ndarray, importance: np.ndarray, salient: np.ndarray):
    """The encoder's block parameters computed by codec.py (the reference), and the values each
    2-bit code (0..3) and int8 mean decodes to per column."""
    rows = x.shape[0]
    xw = x.reshape(rows, WORDS, GROUP).astype(F)
    w = np.broadcast_to(importance.reshape(1, WORDS, GROUP).astype(F), xw.shape)
    with np.errstate(all="ignore"):
        unit = np.where(salient, codec._fit8(xw, w)[0], np.abs(xw).max(-1) * F(0.675) / F(GRID_STEP)).astype(F)
    dcode, j, z, c8, _ = codec.choose_scales(xw, w, salient, unit)
    return dcode, j, z, c8


def test_block_params_equal_numpy_reference():
    x, _ = words(96 * 4, seed=4)
    x = x.reshape(96, QK)
    importance = np.random.default_rng(5).uniform(0.1, 3.0, QK).astype(F)
    salient = np.random.default_rng(6).random((96, WORDS)) < 0.25
    dcode, j, z, c8 = numpy_block_params(x, importance, salient)
    p = BlockParams(torch.from_numpy(x), torch.from_numpy(importance), torch.from_numpy(salient))
    np.testing.assert_array_equal(p.dcode.numpy(), dcode)
    np.testing.assert_array_equal(p.scale_code.numpy(), j)
    np.testing.assert_array_equal(p.zero_code.numpy(), z)
    # every column decodes as codec.decoded_values would decode its codes
    wt = torch.from_numpy(x.T.copy())
    q, c = p.quantize_block(wt)
    c2 = c.T.numpy().astype(np.int32).reshape(96, WORDS, GROUP)
    want = codec.decoded_values(dcode, j, z, salient, p.c8.numpy().astype(np.int32), c2).reshape(96, QK)
    np.testing.assert_array_equal(q.T.numpy(), want)
    for col in (0, 17, 63):
        qc, cc = p.quantize_column(col, wt[col].clone())
        assert torch.equal(qc, q[col]) and torch.equal(cc, c[col])


def numpy_reference(q: MPQ2GPTQ, weight: torch.Tensor, cfg: QuantConfig):
    """The encoder as it was before it moved to torch (numpy block parameters and gate from
    codec.py, torch only for the linear algebra): the bytes the torch encoder must reproduce."""
    if cfg.rotate:
        g = MPQ2GPTQ(weight)
        g.H = rotation.rotate_hessian(q.H)
        wr = torch.from_numpy(rotation.rotate(weight.numpy()))
        packed, Q, n_sal = numpy_reference(g, wr, replace(cfg, rotate=False))
        return packed, torch.from_numpy(rotation.unrotate(Q.numpy())), n_sal
    rows, cols = weight.shape
    W = weight.clone()
    H = q.H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += cfg.percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    scores = salience_scores(W, torch.diag(Hinv) if cfg.salience == "hessian" else None).numpy().astype(np.float64)
    k = int(round(min(max(cfg.salient_fraction, 0.0), 1.0) * scores.size))
    order = np.lexsort((np.arange(scores.size), -np.nan_to_num(scores.ravel(), nan=-np.inf)))
    bitmap = np.zeros(scores.size, bool)
    bitmap[order[:k]] = True
    bitmap = bitmap.reshape(scores.shape)
    importance = torch.diag(H).to(torch.float32).numpy()
    if cfg.gate:
        r, c = np.nonzero(bitmap)
        x = W.numpy().reshape(rows, -1, GROUP)[r, c]
        w = importance.reshape(-1, GROUP)[c]
        with np.errstate(all="ignore"):
            keep = codec._fit8(x, w)[1] < codec._fit2(x, w)[1]
        bitmap = np.zeros_like(bitmap)
        bitmap[r, c] = keep
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if cfg.act_order else torch.arange(cols)
    U = torch.linalg.cholesky(Hinv[perm][:, perm], upper=True).to(torch.float32)
    Wp = W[:, perm]
    nb = cols // QK
    params = [None] * nb

    def block(b, x):
        s = bitmap[:, b * WORDS:(b + 1) * WORDS]
        dcode, j, z, c8 = numpy_block_params(x.numpy(), importance[b * QK:(b + 1) * QK], s)
        dd = d_from_code(dcode[:, 0])[:, None, None]
        v8 = (dd * np.repeat(SCALE_MULT[j][..., None] * c8, 4, axis=-1).astype(F)).reshape(-1, QK)
        step = (dd[..., 0] * (SCALE_MULT[j] * GRID_STEP).astype(F)).astype(F)
        return dict(fields=(dcode, j, z, c8), s=s, step=torch.from_numpy(step), v8=torch.from_numpy(v8.astype(F)),
                    zs=torch.from_numpy(codec.ZERO_STEPS[z]), zi=torch.from_numpy(ZERO2[z]),
                    m=torch.from_numpy(SCALE_MULT[j]), dd=torch.from_numpy(dd[:, 0, 0]))

    if cfg.act_order:
        for b in range(nb):
            params[b] = block(b, W[:, b * QK:(b + 1) * QK])
    Q = torch.zeros_like(W)
    C2 = torch.zeros((rows, cols), dtype=torch.int64)
    for i1 in range(0, cols, cfg.block_size):
        i2 = min(i1 + cfg.block_size, cols)
        W1 = Wp[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            b, cb = divmod(col, QK)
            if params[b] is None:
                params[b] = block(b, W1[:, i:i + QK])
            p, wd = params[b], cb // GROUP
            w = W1[:, i]
            t = w / p["step"][:, wd] + p["zs"][:, wd]
            c2 = torch.nan_to_num(t, nan=0.0).clamp(0.0, 3.0).round().to(torch.int64)
            q2 = p["dd"] * ((GRID_STEP * c2.to(torch.int32) - p["zi"][:, wd]) * p["m"][:, wd]).to(torch.float32)
            qv = torch.where(torch.from_numpy(p["s"][:, wd]), p["v8"][:, cb], q2)
            Q[:, col], C2[:, col] = qv, c2
            if cfg.method == "gptq":
                err = (w - qv) / U[i1 + i, i1 + i]
                W1[:, i:] -= err[:, None] * U[i1 + i, i1 + i:i2][None, :]
                Err1[:, i] = err
        if cfg.method == "gptq":
            Wp[:, i2:] -= Err1 @ U[i1:i2, i2:]
    fields = [np.concatenate([p["fields"][k] for p in params], axis=1) for k in range(4)]
    packed = codec.pack(fields[0], fields[1], fields[2], bitmap, fields[3], C2.numpy().reshape(rows, -1, GROUP))
    return packed, Q, int(bitmap.sum())


CONFIGS = [QuantConfig(), QuantConfig(rotate=True), QuantConfig(act_order=True), QuantConfig(method="rtn"),
           QuantConfig(rotate=True, act_order=True), QuantConfig(salient_fraction=0.0),
           QuantConfig(salient_fraction=1.0), QuantConfig(salient_fraction=1.0, gate=False),
           QuantConfig(salient_fraction=0.3, gate=False, rotate=True), QuantConfig(block_size=64),
           QuantConfig(salience="magnitude", rotate=True), QuantConfig(method="rtn", rotate=True, salient_fraction=0.25)]


@pytest.fixture(scope="module", params=[(64, 192, 0), (130, 128, 1), (96, 320, 2)], ids=lambda s: f"{s[0]}x{s[1]}")
def planted_layer(request):
    rows, cols, seed = request.param
    X, W = layer(rows, cols, seed)
    W[::9, ::7] *= 12                                                   # outliers
    runs = torch.repeat_interleave(torch.randn(rows, cols // 4, generator=torch.Generator().manual_seed(seed)), 4, dim=1)
    W[::5, 16:48] = 0.3 * runs[::5, 16:48]                              # words that int8 means fit
    X[:, 7] = 0.0                                                       # a dead input
    return W, hessian(X, W)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in vars(c).items() if v != getattr(QuantConfig(), k)) or "default")
def test_torch_encoder_equals_numpy_reference(planted_layer, cfg):
    W, q = planted_layer
    packed, Q, n_sal = numpy_reference(q, W, cfg)
    res = q.fasterquant(W, cfg)
    np.testing.assert_array_equal(res.packed, packed)
    assert torch.equal(res.weight, Q) and res.n_salient == n_sal
    if cfg.salient_fraction > 0 and not cfg.gate:
        assert n_sal > 0


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(rotate=True), QuantConfig(act_order=True),
                                 QuantConfig(method="rtn", salient_fraction=0.5, gate=False)])
@pytest.mark.parametrize("chunk", [1, 64, 100, 200])
def test_row_chunks_give_the_same_bytes(cfg, chunk):
    X, W = layer(rows=300, cols=128, seed=7)
    W[::13, ::3] *= 10
    q = hessian(X, W)
    whole = q.fasterquant(W, cfg)
    part = q.fasterquant(W, cfg, row_chunk=chunk)
    np.testing.assert_array_equal(part.packed, whole.packed)
    assert torch.equal(part.weight, whole.weight) and part.n_salient == whole.n_salient
    assert part.rel_output_error == pytest.approx(whole.rel_output_error, rel=1e-9)


def test_fasterquant_leaves_the_hessian_and_weight_alone():
    X, W = layer(rows=64, cols=128)
    q = hessian(X, W)
    H0, W0 = q.H.clone(), W.clone()
    for cfg in (QuantConfig(), QuantConfig(rotate=True), QuantConfig(act_order=True)):
        q.fasterquant(W, cfg)
    assert torch.equal(q.H, H0) and torch.equal(W, W0)


def test_device_and_shape_arguments():
    X, W = layer(rows=64, cols=128)
    q = MPQ2GPTQ((64, 128), device="cpu")
    assert q.device == torch.device("cpu") and q.H.device == q.device
    q.add_batch(X[:1000])
    q.add_batch(X[1000:])
    ref = hessian(X, W)
    assert torch.equal(q.H, ref.H)
    assert MPQ2GPTQ(torch.empty(4, 64, device="meta")).device == torch.device("cpu")
    res = q.fasterquant(W, QuantConfig())
    assert res.weight.dtype == torch.float32 and res.weight.device == q.device
    assert res.packed.dtype == np.uint8 and isinstance(res.packed, np.ndarray)


def test_select_bitmap_ties_go_to_the_lower_index_and_nan_last():
    scores = torch.tensor([[1.0, 2.0, 2.0, float("nan")], [2.0, 0.0, 0.0, 0.0]])
    assert select_bitmap(scores, 3 / 8).flatten().tolist() == [False, True, True, False, True, False, False, False]
    assert select_bitmap(scores, 6 / 8).flatten().tolist() == [True, True, True, False, True, True, True, False]
    assert select_bitmap(scores, 1.0).all() and not select_bitmap(scores, 0.0).any()
    big = torch.rand(50, 8, generator=torch.Generator().manual_seed(0)).round(decimals=1)   # many ties
    flat = big.flatten().numpy().astype(np.float64)
    order = np.lexsort((np.arange(flat.size), -flat))[:int(round(0.3 * flat.size))]
    want = np.zeros(flat.size, bool)
    want[order] = True
    np.testing.assert_array_equal(select_bitmap(big, 0.3).flatten().numpy(), want)


def test_beats_fit2_is_the_comparison_with_the_whole_fit():
    x, w = words(900, seed=8)
    x16, w16 = torch.from_numpy(x.T.copy()), torch.from_numpy(w.T.copy())
    _, err2 = ct.fit2_words(x16, w16)
    _, err8 = ct.fit8(x16, w16)
    for e in (err8, err2, err2 * 1.0000001, err2 * 0.9999999, torch.full_like(err2, float("nan"))):
        np.testing.assert_array_equal(ct.beats_fit2(x16, w16, e).numpy(), (e < err2).numpy())


def test_output_error_of_a_tall_matrix_is_measured_on_spaced_rows(monkeypatch):
    """Past ERROR_MAX_ROWS rows the reported error is measured on every k-th row: close to the
    whole matrix's, the same whatever the row chunks, and the bytes untouched."""
    from mpq2 import gptq
    X, W = layer(rows=1100, cols=128, seed=3)
    W[::7] *= 3.0                                    # rows that differ, so a biased sample would show
    q = hessian(X, W)
    whole = q.fasterquant(W, QuantConfig())
    monkeypatch.setattr(gptq, "ERROR_MAX_ROWS", 256)
    assert gptq.error_stride(1100) == 5
    sampled = q.fasterquant(W, QuantConfig())
    chunked = q.fasterquant(W, QuantConfig(), row_chunk=300)
    assert np.array_equal(sampled.packed, whole.packed)
    assert sampled.rel_output_error != whole.rel_output_error
    assert sampled.rel_output_error == pytest.approx(whole.rel_output_error, rel=0.05)
    assert chunked.rel_output_error == pytest.approx(sampled.rel_output_error, rel=1e-9)
    assert whole.rel_output_error == pytest.approx(output_error(W, whole.weight, X), rel=0.02)


def test_the_hessian_is_factorized_once_per_configuration(monkeypatch):
    """sharing() encoders and repeated encodes reuse one factorization; a changed H does not."""
    X, W = layer(rows=64, cols=128, seed=5)
    q = hessian(X, W)
    calls = []
    real = MPQ2GPTQ._factor
    monkeypatch.setattr(MPQ2GPTQ, "_factor", lambda self, cfg: calls.append(cfg) or real(self, cfg))
    first = q.fasterquant(W, QuantConfig())
    again = q.sharing(W.shape).fasterquant(W, QuantConfig())
    assert len(calls) == 1 and np.array_equal(first.packed, again.packed)
    q.fasterquant(W, QuantConfig(rotate=True))
    q.fasterquant(W, QuantConfig(method="rtn"))
    assert len(calls) == 3
    q.add_batch(X[:100])                      # a new Hessian: factorized again
    q.fasterquant(W, QuantConfig())
    q.H = q.H.clone()
    q.fasterquant(W, QuantConfig())
    assert len(calls) == 5
    fresh = hessian(X, W)
    fresh.add_batch(X[:100])
    assert np.array_equal(q.fasterquant(W, QuantConfig()).packed, fresh.fasterquant(W, QuantConfig()).packed)


@pytest.mark.parametrize("n,base,chunk", [(1, 64, 1024), (7, 64, 1024), (64, 64, 1024), (300, 64, 1024), (777, 64, 1024),
                                          (777, 64, 50), (100, 16, 7), (64, 8, 1024)])
@pytest.mark.parametrize("column_major", [False, True])
def test_inverse_cholesky_is_the_cholesky_factor_of_the_inverse(n, base, chunk, column_major, monkeypatch):
    """GPTQ's U (upper, U^T U = H^-1) by one Cholesky of the reversed H and a triangular inverse
    (by halves down to `base` columns) equals the textbook chol(cholesky_inverse(chol(H)))."""
    from mpq2 import gptq
    monkeypatch.setattr(gptq, "INVERT_CHUNK", chunk)      # solves in row and column chunks of this size
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n + 3, n, generator=g, dtype=torch.float64) * torch.rand(n, generator=g, dtype=torch.float64) * 3
    H = x.T @ x + 0.01 * torch.eye(n, dtype=torch.float64)
    want = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    buf = torch.empty_like(H).mT if column_major else torch.empty_like(H)
    buf.copy_(H)
    U = gptq.inverse_cholesky_upper_(buf, base=base)
    assert U.data_ptr() == buf.data_ptr()
    assert torch.equal(U, U.triu())
    torch.testing.assert_close(U, want, rtol=0, atol=1e-10 * float(want.abs().max()))
    torch.testing.assert_close(gptq.column_sq_sums(U, chunk=5), torch.diag(torch.cholesky_inverse(torch.linalg.cholesky(H))),
                               rtol=1e-10, atol=0)


def test_wide_matrices_measure_the_output_error_on_fewer_rows():
    from mpq2 import gptq
    assert gptq.error_stride(4096, 4096) == 1 and gptq.error_stride(14336, 4096) == 4
    assert gptq.error_stride(4096, 14336) == 13            # at most 4096 * (4096 / 14336)^2 = 334 rows
    assert gptq.error_stride(300, 65536) == 2               # never fewer than 256 rows, where there are more
