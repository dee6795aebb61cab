"""Fuzzing, bounded for CI (docs/ROBUSTNESS.md).

- libFuzzer (tests/fuzz/fuzz_gguf_mpq2.cpp, clang, ASan + UBSan): GGUF loading through ggml's
  gguf API and MPQ2 validate / dequantize / vec_dot, first over the committed corpus (seeds and
  every input that once crashed it), then MPQ2_FUZZ_SECONDS (default 60) of fuzzing from it.
- hypothesis, deterministic (derandomize, no example database): our GGUF reader
  (llama_mpq2.gguf_io) on mutated MPQ2 GGUF bytes, and the codec: pack/dequantize round trips,
  C vs numpy bit-exactness of quantize, dequantize and validate, the dot product.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llama_mpq2 import ggml, gguf_io
from mpq2 import codec
from mpq2.format import BLOCK_BYTES, QK, WORDS

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))
import build_fuzzer as fuzz_build  # noqa: E402
import gguf_damage as gd  # noqa: E402

FUZZ_SECONDS = int(os.environ.get("MPQ2_FUZZ_SECONDS", "60"))


EXAMPLES_SCALE = float(os.environ.get("MPQ2_FUZZ_EXAMPLES_SCALE", "1"))   # by hand: 10, 100, ...
RANDOM = os.environ.get("MPQ2_FUZZ_RANDOM") == "1"                         # by hand: new examples each run


def bounded(max_examples: int) -> settings:
    """Deterministic (same examples every run, no database) and bounded, unless asked otherwise."""
    return settings(max_examples=max(1, int(max_examples * EXAMPLES_SCALE)), derandomize=not RANDOM, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- libFuzzer

@pytest.fixture(scope="module")
def fuzzer():
    if fuzz_build.find_clang() is None:
        pytest.skip(f"clang not installed (apt-get install -y {fuzz_build.CLANG_PACKAGE}; .ci/run installs it)")
    try:
        return fuzz_build.build()
    except fuzz_build.BuildError as e:
        pytest.fail(str(e))


def _artifacts(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(("crash-", "leak-", "timeout-", "oom-", "slow-unit-")))


def _fail_with(proc, artifacts: list[Path], what: str):
    out = (proc.stdout + proc.stderr)[-6000:]
    pytest.fail(f"{what} (rc {proc.returncode}); inputs: {[str(a) for a in artifacts]}\n"
                f"Reproduce: {fuzz_build.ROOT / 'build/fuzz'}/fuzz_gguf_mpq2-* <input>; once fixed, add the input "
                f"to tests/fuzz/corpus/ as regress-<what-it-was>.\n{out}")


def test_fuzzer_passes_the_corpus(fuzzer, tmp_path):
    """Every seed and every regression input once; any sanitizer report or oracle failure aborts."""
    files = sorted(p for p in (FUZZ_DIR / "corpus").iterdir() if p.is_file())
    assert any(p.name.startswith("regress-") for p in files) and any(p.name.startswith("seed-gguf-") for p in files)
    proc = subprocess.run([str(fuzzer), f"-artifact_prefix={tmp_path}/", *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        _fail_with(proc, _artifacts(tmp_path), "the fuzz target failed on a corpus input")


# (probe, the assert() it must trip in ggml_ext/src/ggml-cpu-mpq2.c)
ASSERT_PROBES = [("generic_nrc", "nrc == 1"), ("vec_dot_nrc", "nrc == 1 || nrc == 2"), ("generic_n", "n % QK_MPQ2 == 0")]


@pytest.mark.parametrize("probe,expr", ASSERT_PROBES, ids=[p[0] for p in ASSERT_PROBES])
def test_fuzzer_asserts_fire(fuzzer, tmp_path, probe, expr):
    """The fuzz build keeps assert() on (it once ran with -DNDEBUG=0, which defines NDEBUG): a
    kernel called against its precondition aborts with the assert's message."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    proc = subprocess.run([str(fuzzer), str(empty)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MPQ2_FUZZ_ASSERT_PROBE": probe})
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert f"Assertion `{expr}' failed" in proc.stderr, proc.stderr[-2000:]


def test_fuzz_build_cannot_define_ndebug(tmp_path):
    """With NDEBUG defined, the fuzz target and every file given the forced header stop at #error."""
    tools = fuzz_build.find_clang()
    if tools is None:
        pytest.skip(f"clang not installed (apt-get install -y {fuzz_build.CLANG_PACKAGE})")
    cc, cxx = tools
    ggml = fuzz_build.llama_src() / "ggml"
    inc = [f"-I{ggml}/include", f"-I{ggml}/src", f"-I{ggml}/src/ggml-cpu", f"-I{fuzz_build.ROOT}/ggml_ext/include",
           f"-I{fuzz_build.ROOT}/ggml_ext/src"]
    for flag in ("-UNDEBUG", "-DNDEBUG", "-DNDEBUG=0"):
        on = flag == "-UNDEBUG"       # the control: the same commands pass with assert() on
        r = subprocess.run([cc, flag, "-include", str(fuzz_build.ASSERTS_ON), "-fsyntax-only", "-x", "c", "/dev/null"],
                           capture_output=True, text=True)
        assert (r.returncode == 0) == on and on != ("must keep assert() on" in r.stderr), (flag, r.stderr)
        # the target itself, even without the forced header
        r = subprocess.run([cxx, "-std=c++17", flag, *inc, "-E", "-o", os.devnull, str(fuzz_build.HARNESS)],
                           capture_output=True, text=True)
        assert (r.returncode == 0) == on and on != ("must be built with assert() on" in r.stderr), (flag, r.stderr[-2000:])
    assert "-UNDEBUG" in fuzz_build.COMMON and not any(f.startswith("-DNDEBUG") for f in fuzz_build.COMMON)
    assert "-ffp-contract=off" in fuzz_build.COMMON


@pytest.mark.slow
def test_fuzzer_bounded_run(fuzzer, tmp_path):
    work = tmp_path / "corpus"           # new inputs go here; the committed corpus is only read
    work.mkdir()
    cmd = [str(fuzzer), str(work), str(FUZZ_DIR / "corpus"), f"-max_total_time={FUZZ_SECONDS}", "-seed=20261123",
           "-max_len=8192", "-timeout=20", "-rss_limit_mb=2048", "-close_fd_mask=2", "-print_final_stats=1",
           f"-artifact_prefix={tmp_path}/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FUZZ_SECONDS + 300)
    artifacts = _artifacts(tmp_path)
    if proc.returncode != 0 or artifacts:
        _fail_with(proc, artifacts, "libFuzzer found a crash")
    runs = [line for line in proc.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 1000, proc.stderr[-2000:]
    print(runs[0], f"in {FUZZ_SECONDS} s")


# ---------------------------------------------------------------- hypothesis: the reader

@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory) -> bytes:
    return gd.small_mpq2_gguf(tmp_path_factory.mktemp("fuzzseed") / "base.gguf").read_bytes()


INTERESTING_U64 = [0, 1, 2, 20, 63, 64, 96, 128, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """Half of the files: only bytes of MPQ2 tensor data changed (the file still opens). The
    others also get a few of: a 64-bit count/dimension/offset set to an edge value, a type id
    changed, bytes changed anywhere after the header, a cut."""
    lay = gd.layout(base)
    data = bytearray(base)
    mpq2 = [t for t in lay.tensors if t.type == gd.MPQ2]
    for _ in range(draw(st.integers(1, 8))):
        t = draw(st.sampled_from(mpq2))
        data[t.data_offset + draw(st.integers(0, t.nbytes - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        return bytes(data)
    fields = [o for t in lay.tensors for o in (*t.ne_offsets, t.offset_offset)] + [8, 16]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        off = draw(st.sampled_from(fields))
        data[off:off + 8] = struct.pack("<Q", draw(st.sampled_from(INTERESTING_U64)))
    if draw(st.integers(0, 3)) == 0:
        t = draw(st.sampled_from(lay.tensors))
        data[t.type_offset:t.type_offset + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 8, 42, 43, 95, 96, 97, 1 << 31])))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(24, len(data) - 1))] = draw(st.integers(0, 255))     # past magic, version, counts
    if draw(st.integers(0, 3)) == 0:
        del data[draw(st.integers(1, len(data))):]
    return bytes(data)


@bounded(1000)
@given(data=st.data())
def test_reader_on_mutated_gguf(base_gguf, data):
    """tensors/read_tensor either work (validated MPQ2 decodes to finite values of the declared
    shape) or raise ValueError/KeyError with a message (NotImplementedError for a type gguf-py
    cannot decode, e.g. Q2_0); the numpy and C validators agree."""
    blob = data.draw(mutated(base_gguf))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        path.write_bytes(blob)
        try:
            infos = gguf_io.tensors(path)
        except ValueError as e:
            assert str(e)
            event("file refused")
            return
        for info in infos:
            try:
                raw, _ = gguf_io.read_tensor_bytes(path, info.name)
                w = gguf_io.read_tensor(path, info.name)
            except (ValueError, KeyError, NotImplementedError) as e:
                assert str(e)
                event(f"tensor refused: {str(e).split(':')[-1][:40] if 'damaged' in str(e) else type(e).__name__}")
                continue
            event("tensor read")
            assert w.dtype == np.float32 and w.shape == info.shape
            if info.type_id == gd.MPQ2:
                assert np.isfinite(w).all()
                assert ggml.validate(raw) and codec.find_invalid_block(raw) is None
                np.testing.assert_array_equal(w.reshape(raw.shape[0], -1), codec.dequantize(raw))


# ---------------------------------------------------------------- hypothesis: the codec

@st.composite
def block_fields(draw):
    """MPQ2 fields for 1 row of 1..6 blocks: (d code, scale codes, zero codes, bitmap, int8
    means -127..127, 2-bit codes). Any such fields make valid blocks."""
    nb = draw(st.integers(1, 6))
    nw = nb * WORDS
    dcode = draw(hnp.arrays(np.uint8, (1, nb)))
    scale = draw(hnp.arrays(np.int64, (1, nw), elements=st.integers(0, 7)))
    zero = draw(hnp.arrays(np.int64, (1, nw), elements=st.integers(0, 3)))
    salient = draw(hnp.arrays(np.bool_, (1, nw)))
    c8 = draw(hnp.arrays(np.int64, (1, nw, 4), elements=st.integers(-127, 127)))
    c2 = draw(hnp.arrays(np.int64, (1, nw, 16), elements=st.integers(0, 3)))
    return dcode, scale, zero, salient, c8, c2


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return a.shape == b.shape and bool(((a.view(np.uint32) == b.view(np.uint32)) | both_nan).all())


@bounded(1000)
@given(block_fields())
def test_pack_round_trip(fields):
    dcode, scale, zero, salient, c8, c2 = fields
    q = codec.pack(*fields)
    assert q.shape == (1, dcode.shape[1] * BLOCK_BYTES)
    f = codec.split_fields(q)
    assert (f["d_code"] == dcode.ravel()).all() and (f["bitmap"].ravel() == salient.ravel()).all()
    assert (f["scale_code"].ravel() == scale.ravel()).all() and (f["zero_code"].ravel() == zero.ravel()).all()
    want = codec.decoded_values(*fields).reshape(1, -1)
    assert same_bits(codec.dequantize(q), want) and same_bits(ggml.dequantize(q), want)
    assert np.isfinite(want).all()
    assert ggml.validate(q) and codec.find_invalid_block(q) is None


@bounded(2000)
@given(st.binary(min_size=BLOCK_BYTES, max_size=8 * BLOCK_BYTES).map(lambda b: b[:len(b) // BLOCK_BYTES * BLOCK_BYTES]))
def test_any_bytes_c_and_numpy_agree(blob):
    """Any bit pattern: the same floats, all finite (every header holds a finite positive
    scale), and the same verdict, in C and numpy."""
    q = np.frombuffer(blob, np.uint8)[None].copy()
    w = ggml.dequantize(q)
    assert same_bits(w, codec.dequantize(q)) and np.isfinite(w).all()
    assert ggml.validate(q) == (codec.find_invalid_block(q) is None)


@st.composite
def weight_rows(draw, nonfinite: bool):
    rows, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-40, 1e-30, 1e-7, 1e-3, 1.0, 1e3, 1e9, 1e30, 3e38]))
    unit = st.floats(-1, 1, width=32) | st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5])
    x = (draw(hnp.arrays(np.float32, (rows, QK * k), elements=unit)) * np.float32(scale)).astype(np.float32)
    if nonfinite:
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


@bounded(400)
@given(weight_rows(False), st.sampled_from([0.0, 0.125, 0.5, 1.0]), st.booleans(), st.data())
def test_quantize_c_and_numpy_same_bytes(x, fraction, with_imatrix, data):
    imatrix = None
    if with_imatrix:
        imatrix = data.draw(hnp.arrays(np.float32, (x.shape[1],), elements=st.floats(0, 1e6, width=32)))
    c = ggml.quantize(x, imatrix, fraction)
    assert (c == codec.quantize(x, imatrix, fraction)).all()
    assert ggml.validate(c)
    assert np.isfinite(ggml.dequantize(c)).all()


@bounded(150)
@given(weight_rows(True), st.sampled_from([0.0, 0.125, 1.0]))
def test_quantize_nonfinite_inputs_still_valid_and_identical(x, fraction):
    """NaN/Inf weights (the converter refuses them; llama-quantize does not look): C and numpy
    still write the same bytes, and the blocks still pass validation."""
    c = ggml.quantize(x, None, fraction)
    assert (c == codec.quantize(x, None, fraction)).all()
    assert ggml.validate(c)


@bounded(500)
@given(block_fields(), st.data())
def test_dot_matches_float64_sum(fields, data):
    q = codec.pack(*fields)
    n = q.shape[1] // BLOCK_BYTES * QK
    a = data.draw(hnp.arrays(np.float32, (n,), elements=st.floats(-100, 100, width=32)))
    import gguf
    a8 = gguf.quants.dequantize(ggml.quantize_q8_0(a), gguf.GGMLQuantizationType.Q8_0).astype(np.float64)
    terms = ggml.dequantize(q)[0].astype(np.float64) * a8
    got = ggml.dot(q, a)[0]
    assert abs(got - terms.sum()) <= 1e-4 * np.abs(terms).sum() + 1e-30, (got, terms.sum())
