"""MPQ2R (MPQ2 blocks of rotated weights): the rotation, the numpy mirror against the C
reference, the dot product through the CPU backend, GPTQ in the rotated basis, llama.cpp's
own tests. The kernels are MPQ2's (tests/test_simd_*.py); what is new is checked here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import e2e_helpers as h
from llama_mpq2 import ggml
from mpq2 import codec, rotation
from mpq2.format import BLOCK_BYTES
from mpq2.gptq import MPQ2GPTQ, QuantConfig


def test_rotation_is_the_signed_hadamard_matrix():
    R = rotation.matrix()
    np.testing.assert_allclose(R @ R.T, np.eye(64), atol=1e-12)            # orthogonal
    H = np.array([[(-1) ** bin(i & j).count("1") for j in range(64)] for i in range(64)], float)
    D = np.diag([-1.0 if (rotation.SIGNS >> i) & 1 else 1.0 for i in range(64)])
    np.testing.assert_array_equal(R, H @ D / 8)
    assert 20 < rotation.NEGATE.sum() < 44                                  # the signs are mixed


@pytest.mark.parametrize("n", [64, 576, 1536])
def test_rotation_matches_c_bit_for_bit(rng, n):
    x = (rng.standard_t(3, (5, n)) * rng.uniform(1e-3, 1e3, (5, 1))).astype(np.float32)
    np.testing.assert_array_equal(ggml.rotate(x), rotation.rotate(x))
    np.testing.assert_array_equal(ggml.unrotate(x), rotation.unrotate(x))
    np.testing.assert_allclose(rotation.unrotate(rotation.rotate(x)), x, rtol=1e-5, atol=1e-6 * np.abs(x).max())


def test_rotation_rejects_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 64"):
        rotation.rotate(np.zeros((2, 96), np.float32))


def assert_same_bytes(x, imatrix=None, fraction=0.125):
    c = ggml.quantize(x, imatrix, fraction, qtype="mpq2r")
    py = codec.quantize_r(x, imatrix, fraction)
    bad = np.flatnonzero((c != py).reshape(-1, BLOCK_BYTES).any(axis=1))
    assert bad.size == 0, f"{bad.size} blocks differ, first at block {bad[0]}"
    return c


@pytest.mark.parametrize("n", [64, 576, 896])
@pytest.mark.parametrize("fraction", [0.0, 0.125, 1.0])
def test_quantize_matches_c(rng, n, fraction):
    x = rng.standard_normal((6, n)).astype(np.float32) * rng.uniform(0.01, 3, (6, 1)).astype(np.float32)
    assert_same_bytes(x, None, fraction)


def test_quantize_with_imatrix_matches_c(rng):
    x = rng.standard_t(3, (9, 576)).astype(np.float32)
    imatrix = rng.exponential(1.0, 576).astype(np.float32)
    imatrix[::7] = 0.0
    assert_same_bytes(x, imatrix, 0.25)


@pytest.mark.parametrize("name", ["zeros", "huge_outliers", "one_spike", "beyond_fp16", "denormals"])
def test_adversarial_rows_match_c(rng, name):
    from test_codec_bitexact import ADVERSARIAL
    q = assert_same_bytes(ADVERSARIAL[name](rng))
    assert ggml.validate(q, qtype="mpq2r")
    assert np.isfinite(ggml.dequantize(q, qtype="mpq2r")).all()


def test_dequantize_matches_c_on_random_bytes(rng):
    q = rng.integers(0, 256, (20, 9 * BLOCK_BYTES), dtype=np.uint8)
    np.testing.assert_array_equal(ggml.dequantize(q, qtype="mpq2r"), codec.dequantize_r(q))
    # the same bytes as MPQ2, turned back
    np.testing.assert_array_equal(codec.dequantize_r(q), rotation.unrotate(ggml.dequantize(q)))


def test_reference_row_function_and_gguf_registration(rng):
    import gguf
    x = rng.standard_normal((4, 128)).astype(np.float32)
    np.testing.assert_array_equal(ggml.quantize_ref(x[0], qtype="mpq2r"), ggml.quantize(x[:1], qtype="mpq2r")[0])
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.MPQ2R)
    np.testing.assert_array_equal(q, ggml.quantize(x, qtype="mpq2r"))
    np.testing.assert_array_equal(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.MPQ2R), ggml.dequantize(q, qtype="mpq2r"))


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_rotation_lowers_the_error_on_heavy_tailed_rows(rng):
    # outliers inside a 16-weight word stretch its 2-bit grid; turned, the block is Gaussian-like
    x = rng.standard_t(2.5, (64, 576)).astype(np.float32)
    e_plain = rel_err(ggml.dequantize(ggml.quantize(x)), x)
    e_rot = rel_err(ggml.dequantize(ggml.quantize(x, qtype="mpq2r"), qtype="mpq2r"), x)
    assert e_rot < 0.9 * e_plain, (e_rot, e_plain)


def test_dot_product_through_the_cpu_backend(rng):
    w = rng.standard_normal((32, 576)).astype(np.float32)
    a = rng.standard_normal(576).astype(np.float32)
    q = ggml.quantize(w, qtype="mpq2r")
    got = ggml.dot(q, a, qtype="mpq2r")
    want = ggml.dequantize(q, qtype="mpq2r") @ a
    # activations are turned and rounded to int8 (Q8_0R): about 0.5% of the product's scale
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max(), np.abs(got - want).max()
    # the activations really are turned: without the rotation the same bytes give other numbers
    unturned = ggml.dot(q, a, qtype="mpq2")
    assert np.abs(unturned - want).max() > 0.2 * np.abs(want).max()


def test_q8_0r_activations_are_q8_0_of_the_rotated_vector(rng):
    a = rng.standard_normal((3, 640)).astype(np.float32)
    np.testing.assert_array_equal(ggml.quantize_q8_0(a, qtype="mpq2r"), ggml.quantize_q8_0(rotation.rotate(a)))


def layer(rows=64, cols=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, cols, generator=g) @ (0.2 * torch.randn(cols, cols, generator=g) + torch.eye(cols))
    W = 0.05 * torch.distributions.StudentT(3.0).sample((rows, cols))
    q = MPQ2GPTQ(W)
    q.add_batch(X)
    return X, W, q


@pytest.mark.parametrize("cfg", [QuantConfig(rotate=True), QuantConfig(rotate=True, method="rtn"),
                                 QuantConfig(rotate=True, act_order=True)])
def test_gptq_rotated_packs_what_the_c_decoder_returns(cfg):
    X, W, q = layer()
    res = q.fasterquant(W, cfg)
    np.testing.assert_array_equal(ggml.dequantize(res.packed, qtype="mpq2r"), res.weight.numpy())
    out_err = float(torch.linalg.norm((W - res.weight) @ X.T) / torch.linalg.norm(W @ X.T))
    assert res.rel_output_error == pytest.approx(out_err, rel=0.02)


def test_gptq_rotated_beats_plain_on_heavy_tails():
    X, W, q = layer(rows=128, cols=256, seed=3)
    H0 = q.H.clone()
    plain = q.fasterquant(W, QuantConfig())
    rot = q.fasterquant(W, QuantConfig(rotate=True))
    assert rot.rel_output_error < 0.95 * plain.rel_output_error, (rot.rel_output_error, plain.rel_output_error)
    assert torch.equal(q.H, H0)            # the layer's Hessian is left as it was


def test_llama_quantize_help_lists_mpq2r():
    proc = h.run([h.tool("llama-quantize"), "--help"], check=False)
    assert any("MPQ2R" in line and "97" in line for line in (proc.stdout + proc.stderr).splitlines())


def test_test_quantize_fns_passes_for_mpq2r():
    proc = h.run([h.tool("test-quantize-fns"), "-v"])
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith(("mpq2r", "q8_0r"))]
    assert lines and all(" ok " in line for line in lines), proc.stdout
    assert sum(line.strip().startswith("mpq2r") for line in lines) >= 3, proc.stdout


def test_backend_ops_pass_for_mpq2r():
    proc = h.run([h.tool("test-backend-ops"), "-b", "CPU", "-p", "mpq2r"], timeout=900)
    assert "FAIL" not in proc.stdout
    ran = [line for line in proc.stdout.splitlines() if "mpq2r" in line and "OK" in line]
    for op in ("MUL_MAT(", "GET_ROWS(", "SET_ROWS(", "CPY("):
        assert any(line.strip().startswith(op) for line in ran), f"no passing {op} test for mpq2r"
