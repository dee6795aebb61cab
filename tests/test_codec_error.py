"""Error bounds of dequantize(quantize(x)) and the dot product against float math."""
from __future__ import annotations

import numpy as np
import pytest

from llama_mpq2 import ggml
from mpq2 import codec


def rel_mse(x, y):
    return float(np.sum((x - y) ** 2) / np.sum(x ** 2))


def test_gaussian_rows_error_bound(rng):
    # A uniform 4-level quantizer with one ideal scale per 16 Gaussian weights reaches a
    # relative MSE near 0.09 (the zero offsets gain a little); 0.11 leaves room for the
    # 8-bit block scale and the 8-step multipliers.
    x = rng.standard_normal((64, 1536)).astype(np.float32)
    assert rel_mse(x, ggml.dequantize(ggml.quantize(x))) < 0.11


def test_error_is_scale_invariant(rng):
    x = rng.standard_normal((16, 576)).astype(np.float32)
    base = rel_mse(x, ggml.dequantize(ggml.quantize(x)))
    for scale in (1e-4, 1e3):
        xs = x * np.float32(scale)
        assert rel_mse(xs, ggml.dequantize(ggml.quantize(xs))) == pytest.approx(base, rel=0.05)


def test_zero_and_constant_rows():
    assert not ggml.dequantize(ggml.quantize(np.zeros((1, 64), np.float32))).any()
    c = np.full((1, 64), 0.37, np.float32)
    # a constant word is exact in int8 means: error only from the block scale and int8 rounding
    np.testing.assert_allclose(ggml.dequantize(ggml.quantize(c, salient_fraction=1.0)), c, rtol=1 / 127)
    # at 2 bits the nearest grid level is within half a step of the 4-level grid
    assert np.abs(ggml.dequantize(ggml.quantize(c, salient_fraction=0.0)) - c).max() < 0.37 * 0.1


def test_runs_of_four_are_nearly_exact_as_salient_words(rng):
    x = np.repeat(rng.standard_normal((4, 32)), 4, axis=1).astype(np.float32)
    y = ggml.dequantize(ggml.quantize(x, salient_fraction=1.0))
    amax = np.abs(x).reshape(4, -1, 64).max(axis=-1, keepdims=True)
    # int8 step of the block is at most amax/127 times the largest multiplier ratio (40/8)
    assert (np.abs(x - y).reshape(4, -1, 64) <= amax * 5 / 127).all()


def test_salient_fraction_zero_uses_no_int8_words(rng):
    x = np.repeat(rng.standard_normal((2, 32)), 4, axis=1).astype(np.float32)
    assert not codec.split_fields(ggml.quantize(x, salient_fraction=0.0))["bitmap"].any()


def test_imatrix_protects_important_columns(rng):
    x = rng.standard_normal((32, 576)).astype(np.float32)
    imatrix = np.ones(576, np.float32)
    imatrix[:64] = 100.0
    plain = ggml.dequantize(ggml.quantize(x))
    weighted = ggml.dequantize(ggml.quantize(x, imatrix))
    assert rel_mse(x[:, :64], weighted[:, :64]) <= rel_mse(x[:, :64], plain[:, :64])


@pytest.mark.parametrize("n", [64, 576, 1536])
def test_vec_dot_matches_float_dot_of_dequantized(rng, n):
    w = rng.standard_normal((8, n)).astype(np.float32)
    a = rng.standard_normal(n).astype(np.float32)
    q = ggml.quantize(w, salient_fraction=0.5)
    exact = ggml.dequantize(q).astype(np.float64) @ a.astype(np.float64)
    got = ggml.dot(q, a)
    # Q8_0 activations carry ~0.4% rms rounding; the sum over n averages it down
    scale = np.linalg.norm(ggml.dequantize(q), axis=1) * np.linalg.norm(a)
    assert (np.abs(got - exact) <= 0.01 * scale).all()


def test_validate_rejects_malformed_blocks(rng):
    q = ggml.quantize(rng.standard_normal((1, 128)).astype(np.float32), salient_fraction=1.0)[0]
    assert ggml.validate(q)
    for header in (0x00000000, 0xFFFFFFF0, 0x7E00FC00):  # every scale, zero and d code is valid
        ok = q.copy()
        ok[20:24] = np.array([header], "<u4").view(np.uint8)
        assert ggml.validate(ok)
    bad = q.copy()
    bad[0:2] = np.array([0x000F], "<u2").view(np.uint8)  # all four words int8
    bad[4] = 0x80
    assert not ggml.validate(bad)
    bad[0:2] = np.array([0x0000], "<u2").view(np.uint8)  # the same byte as 2-bit codes is fine
    assert ggml.validate(bad)


def test_numpy_validation_agrees_with_c_on_random_blocks(rng):
    q = rng.integers(0, 256, (4000, 20), dtype=np.uint8)
    q[:, 4:] = np.where(rng.random((4000, 16)) < 0.03, 0x80, q[:, 4:])   # many -128 bytes, in int8 words or not
    for row in q:
        assert (codec.find_invalid_block(row) is None) == ggml.validate(row)


def test_reader_names_tensor_and_block_of_a_damaged_file(tmp_path, rng):
    import gguf
    from llama_mpq2 import gguf_io
    path = tmp_path / "bad.gguf"
    q = ggml.quantize(rng.standard_normal((4, 128)).astype(np.float32))
    q[2, 20] |= 0x4                                                  # row 2, block 1: word 2 int8 ...
    q[2, 24 + 4 * 2 + 1] = 0x80                                      # ... with code -128
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=gguf.GGMLQuantizationType.MPQ2)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight.*int8 code -128 in a salient word at block 5"):
        gguf_io.read_tensor(path, "blk.0.ffn_up.weight")
