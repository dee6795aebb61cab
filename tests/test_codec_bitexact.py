"""The numpy mirror (mpq2.codec) and the C reference (ggml-mpq2.c) give the same bytes."""
from __future__ import annotations

import numpy as np
import pytest

from llama_mpq2 import ggml
from mpq2 import codec
from mpq2.format import BLOCK_BYTES, QK, WORDS


def assert_same_bytes(x, imatrix=None, fraction=0.125):
    c = ggml.quantize(x, imatrix, fraction)
    py = codec.quantize(x, imatrix, fraction)
    assert c.shape == py.shape
    bad = np.flatnonzero((c != py).reshape(-1, BLOCK_BYTES).any(axis=1))
    assert bad.size == 0, f"{bad.size} blocks differ, first at block {bad[0]}: C {c.reshape(-1, BLOCK_BYTES)[bad[0]]} numpy {py.reshape(-1, BLOCK_BYTES)[bad[0]]}"
    return c


@pytest.mark.parametrize("n", [64, 576, 896, 1536])
@pytest.mark.parametrize("fraction", [0.0, 0.125, 0.5, 1.0])
def test_random_rows(rng, n, fraction):
    x = rng.standard_normal((7, n)).astype(np.float32) * rng.uniform(0.01, 3, (7, 1)).astype(np.float32)
    assert_same_bytes(x, None, fraction)


@pytest.mark.parametrize("n", [64, 576])
def test_random_rows_with_imatrix(rng, n):
    x = rng.standard_t(3, (9, n)).astype(np.float32)
    imatrix = rng.exponential(1.0, n).astype(np.float32)
    imatrix[::7] = 0.0  # dead columns happen in real imatrices
    assert_same_bytes(x, imatrix, 0.25)


ADVERSARIAL = {
    "zeros": lambda r: np.zeros((2, 128), np.float32),
    "constant": lambda r: np.full((2, 128), 0.37, np.float32),
    "negative_constant": lambda r: np.full((2, 128), -5.0, np.float32),
    "huge_outliers": lambda r: np.where(r.random((3, 256)) < 0.02, 1e4, 1.0).astype(np.float32) * r.standard_normal((3, 256)).astype(np.float32),
    "beyond_fp16": lambda r: (r.standard_normal((2, 128)) * 1e9).astype(np.float32),
    "denormals": lambda r: (r.standard_normal((2, 128)) * 1e-39).astype(np.float32),
    "tiny": lambda r: (r.standard_normal((2, 128)) * 1e-7).astype(np.float32),
    "one_spike": lambda r: np.eye(1, 192, 77, dtype=np.float32) * 3.0,
    "ties": lambda r: np.tile(np.array([1.0, -1.0, 0.5, -0.5], np.float32), (2, 32)),
    "mixed_sign_runs": lambda r: np.repeat(r.standard_normal((2, 32)).astype(np.float32), 4, axis=1),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("fraction", [0.125, 1.0])
def test_adversarial_rows(rng, name, fraction):
    assert_same_bytes(ADVERSARIAL[name](rng), None, fraction)


def word_pattern_rows(rng, n_blocks=16):
    """Block b's words follow bitmap b: pattern words are runs of 4 equal values (exact as
    means, so they become salient), the others random."""
    runs = np.repeat(rng.standard_normal((n_blocks, WORDS, 4)), 4, axis=-1)
    noise = rng.standard_normal((n_blocks, WORDS, 16))
    pattern = (np.arange(n_blocks)[:, None] >> np.arange(WORDS)) & 1
    x = np.where(pattern[..., None] == 1, runs, noise).astype(np.float32)
    return x.reshape(1, n_blocks * QK), pattern.astype(bool)


def test_every_bitmap_pattern(rng):
    x, pattern = word_pattern_rows(rng)
    q = assert_same_bytes(x, None, 1.0)
    assert (codec.split_fields(q)["bitmap"] == pattern).all()


def test_dequantize_matches_c_on_random_bytes(rng):
    # every header is a valid scale; int8 code -128 decodes too (only validation rejects it)
    q = rng.integers(0, 256, (50, 9 * BLOCK_BYTES), dtype=np.uint8)
    np.testing.assert_array_equal(ggml.dequantize(q), codec.dequantize(q))


def test_reference_row_function_matches_full_quantizer(rng):
    x = rng.standard_normal(640).astype(np.float32)
    np.testing.assert_array_equal(ggml.quantize_ref(x), ggml.quantize(x[None])[0])


def test_gguf_quants_registration(rng):
    import gguf
    x = rng.standard_normal((4, 128)).astype(np.float32)
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.MPQ2)
    np.testing.assert_array_equal(q, ggml.quantize(x))
    np.testing.assert_array_equal(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.MPQ2), ggml.dequantize(q))
