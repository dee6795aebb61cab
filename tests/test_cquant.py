"""The converter's C row encoder (cquant.py, the built libggml-base through ctypes) writes the
bytes of the numpy mirror it replaces, on any number of threads, and falls back to it."""
from __future__ import annotations

import numpy as np
import pytest

from mpq2 import codec, cquant, gguf_out, rotation

pytestmark = pytest.mark.skipif(not cquant.available(), reason="needs the built libggml-base (bash setup.sh)")


def rows(n_rows=300, cols=576, seed=0, rotated=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, cols)).astype(np.float32) * 0.02
    x[::17, ::13] *= 40                       # outliers: salient words the gate keeps as int8
    x[5] = 0.0                                # an all-zero row
    x[7, :64] = 1e-30                         # a block of denormal-sized values
    # words of four runs of four equal values off any affine 2-bit grid: int8 means of 4 fit them
    # exactly, so the gate keeps them as int8 words
    # (MPQ2R encodes R x: there the pattern is put in the turned rows)
    x[10:30, :32] = np.repeat(np.array([0.9, -0.3, 0.05, 0.6], np.float32), 4).tolist() * 2
    if rotated:
        x[10:30, :64] = rotation.unrotate(x[10:30, :64])
    return x


@pytest.mark.parametrize("type_name,mirror", [("mpq2", codec.quantize), ("mpq2r", codec.quantize_r)])
@pytest.mark.parametrize("threads", [1, 3])
def test_c_rows_equal_the_numpy_mirror(type_name, mirror, threads):
    x = rows(rotated=type_name == "mpq2r")
    got = cquant.quantize(x, type_name, threads=threads)
    assert got.dtype == np.uint8 and got.shape == (300, 576 // 64 * 20)
    assert np.array_equal(got, mirror(x))
    assert codec.split_fields(got)["bitmap"].any()    # the int8 words were exercised


def test_encode_falls_back_to_numpy_without_the_library(monkeypatch):
    x = rows(40, 128, seed=1)
    with_c, _ = gguf_out.encode(x, "mpq2r")
    monkeypatch.setenv("MPQ2_NUMPY_QUANTIZE", "1")
    cquant._functions.cache_clear()
    try:
        assert cquant.quantize(x, "mpq2r") is None
        without, _ = gguf_out.encode(x, "mpq2r")
    finally:
        monkeypatch.delenv("MPQ2_NUMPY_QUANTIZE")
        cquant._functions.cache_clear()
    assert np.array_equal(with_c, without)


def test_rows_not_a_multiple_of_64_are_refused():
    with pytest.raises(ValueError, match="multiple of 64"):
        cquant.quantize(np.zeros((2, 96), np.float32), "mpq2")


@pytest.mark.parametrize("threads", [1, 3])
def test_c_rows_equal_the_numpy_specification_for_mpq2s(threads):
    from mpq2 import codec_s
    x = rows(cols=640, rotated=True)
    got = cquant.quantize(x, "mpq2s", threads=threads)
    assert got.shape == (300, 640 // 128 * 36)
    assert np.array_equal(got, codec_s.quantize(x))
    with pytest.raises(ValueError, match="MPQ2S needs rows that are a multiple of 128"):
        cquant.quantize(x[:, :576], "mpq2s")
