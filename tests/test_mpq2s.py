"""MPQ2S, the 2.25-bit tier: the C reference (ggml_ext/src/ggml-mpq2s.c, built here against the
patched ggml-base for MPQ2R's rotation) gives the bytes and values of its numpy specification
(converter/mpq2/codec_s.py), on ordinary and hostile rows, built by gcc and clang; the layout
decodes as docs/FORMAT.md says; and its error sits where bench/tier_sim.py put it."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mpq2 import codec, codec_s
from mpq2.format import d_from_code

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ggml_ext" / "src" / "ggml-mpq2s.c"


def build(cc: str, out: Path) -> ctypes.CDLL:
    from llama_cpp_build import lib_dir, src_dir
    lib = lib_dir()
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-ffp-contract=off", f"-I{ROOT / 'ggml_ext/include'}",
                    f"-I{src_dir() / 'ggml/include'}", str(SRC), f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}",
                    "-lm", "-o", str(out)], check=True)
    so = ctypes.CDLL(str(out))
    so.quantize_mpq2s.restype = ctypes.c_size_t
    so.quantize_mpq2s.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.dequantize_row_mpq2s.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    so.quantize_row_mpq2s_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return so


@pytest.fixture(scope="module", params=["cc", "clang"])
def lib(request, tmp_path_factory):
    if request.param == "clang" and not shutil.which("clang"):
        pytest.skip("clang is not installed")
    return build(request.param, tmp_path_factory.mktemp("mpq2s") / f"libmpq2s_{request.param}.so")


def c_quantize(lib, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    rows, n = x.shape
    out = np.zeros(rows * n // codec_s.QK_S * codec_s.BLOCK_BYTES_S, np.uint8)
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    size = lib.quantize_mpq2s(x.ctypes.data, out.ctypes.data, rows, n, None if imat is None else imat.ctypes.data)
    assert size == out.size
    return out.reshape(rows, -1)


def c_dequantize(lib, data: np.ndarray, n: int) -> np.ndarray:
    data = np.ascontiguousarray(data)
    y = np.empty(data.size // codec_s.BLOCK_BYTES_S * codec_s.QK_S, np.float32)
    lib.dequantize_row_mpq2s(data.ctypes.data, y.ctypes.data, y.size)
    return y.reshape(-1, n)


def hostile_rows(rng) -> np.ndarray:
    x = rng.standard_normal((12, 512)).astype(np.float32)
    x[0] = 0.0                                    # all zero
    x[1, :128] = 0.0
    x[1, 130] = 1e30                              # one huge weight among ordinary ones
    x[2] *= 1e-38                                 # subnormal scale
    x[3, 7] = np.nan                              # NaN and infinities: the block keeps zero codes
    x[4, 200] = np.inf
    x[4, 300] = -np.inf
    x[5] = np.repeat(rng.standard_normal(128).astype(np.float32), 4)      # runs
    x[6, ::17] *= 50.0                            # outliers
    x[7] = np.float32(1e-3) * np.sign(x[7])       # two levels only
    x[8] *= 3e4
    return x


def test_c_reference_gives_the_bytes_of_the_numpy_specification(lib, rng):
    gauss = rng.standard_normal((16, 1024)).astype(np.float32)
    imat = rng.uniform(0.01, 4.0, 1024).astype(np.float32)
    for x, im in [(gauss, None), (gauss, imat), (hostile_rows(rng), None), (hostile_rows(rng), np.ones(512, np.float32) * 2)]:
        want = codec_s.quantize(x, im)
        got = c_quantize(lib, x, im)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(c_dequantize(lib, got, x.shape[1]), codec_s.dequantize(want))


def test_row_reference_is_the_quantizer_without_an_imatrix(lib, rng):
    x = rng.standard_normal(768).astype(np.float32)
    out = np.zeros(768 // 128 * 36, np.uint8)
    lib.quantize_row_mpq2s_ref(x.ctypes.data, out.ctypes.data, 768)
    np.testing.assert_array_equal(out, codec_s.quantize(x))


def test_tables_are_those_of_the_c_source():
    text = SRC.read_text()
    for name, table in (("mult", codec_s.GRID_MULT), ("zero", codec_s.GRID_ZERO)):
        body = re.search(rf"mpq2s_grid_{name}\[8\] = \{{([^}}]*)\}}", text).group(1)
        assert [int(v) for v in body.split(",")] == table.tolist()
    assert codec_s.TOP_LEVEL == 1024 and "MPQ2S_TOP_LEVEL 1024.0f" in text


def test_a_block_decodes_as_the_format_says():
    """Header: grid index of word w at bits 3w..3w+2, scale code at 24..31; word bits as MPQ2's."""
    grid = np.arange(8, dtype=np.int32)[None]                 # word w uses grid w
    codes = (np.arange(128, dtype=np.int32).reshape(1, 8, 16) * 7) % 4
    data = codec_s.pack(np.array([120], np.int32), grid, codes)
    assert data.size == 36
    hdr = int(data[:4].view("<u4")[0])
    assert hdr >> 24 == 120 and all((hdr >> (3 * w)) & 7 == w for w in range(8))
    word1 = int(data[8:12].view("<u4")[0])
    assert (word1 >> (8 * 1 + 2 * 2)) & 3 == codes[0, 1, 9]  # weight 9 of word 1: byte 1, bits 4-5
    turned = codec_s.decode_turned(data)[0].reshape(8, 16)
    dd = float(d_from_code(120))
    for w in range(8):
        m, z = int(codec_s.GRID_MULT[w]), int(codec_s.GRID_ZERO[w])
        np.testing.assert_array_equal(turned[w], (dd * (m * (16 * codes[0, w] - z))).astype(np.float32))


def test_error_is_close_to_mpq2r_at_nine_tenths_of_the_bytes(rng):
    x = rng.standard_normal((64, 2048)).astype(np.float32)
    rel = lambda y: float(np.square(x - y).sum() / np.square(x).sum())
    s = rel(codec_s.dequantize(codec_s.quantize(x)))
    r = rel(codec.dequantize_r(codec.quantize_r(x)))
    assert s < 1.08 * r, (s, r)            # measured 0.0826 against 0.0797 (+3.6%)
    assert s < 0.0895                      # IQ2_XS (2.31 bpw) scores 0.0895 here (bench/tier_sim.py)


def test_more_scales_never_hurt(rng, monkeypatch):
    x = rng.standard_normal((32, 1024)).astype(np.float32)
    err = {}
    for n in (1, 3, 5):
        monkeypatch.setattr(codec_s, "N_SCALES", n)
        err[n] = float(np.square(x - codec_s.dequantize(codec_s.quantize(x))).sum())
    assert err[5] <= err[3] <= err[1] and err[5] < err[1]


def test_rows_must_be_a_multiple_of_128():
    with pytest.raises(ValueError, match="multiple of 128"):
        codec_s.quantize(np.zeros((2, 576), np.float32))


# ---- GPTQ on the MPQ2S grid (converter/mpq2/mpq2s_grid.py) ----

import torch  # noqa: E402

from mpq2 import codec_torch, mpq2s_grid  # noqa: E402
from mpq2.gptq import MPQ2GPTQ, QuantConfig  # noqa: E402

S_CFG = QuantConfig(grid="mpq2s", rotate=True)


def test_torch_choose_is_the_numpy_specification(rng):
    x = np.concatenate([rng.standard_normal((40, 128)), hostile_rows(rng).reshape(-1, 128)]).astype(np.float32)
    w = rng.uniform(0.0, 3.0, x.shape).astype(np.float32)
    w[:5] = 1.0
    want = codec_s.choose(x.reshape(-1, 8, 16), w.reshape(-1, 8, 16))
    got = mpq2s_grid.choose(torch.from_numpy(x).reshape(-1, 8, 16), torch.from_numpy(w).reshape(-1, 8, 16))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b)


def gptq_layer(rows=96, cols=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3000, cols, generator=g) @ (0.3 * torch.randn(cols, cols, generator=g) + torch.eye(cols))
    W = 0.05 * torch.randn(rows, cols, generator=g)
    W[::7, ::11] *= 6
    q = MPQ2GPTQ(W)
    q.add_batch(X)
    return X, W, q


def test_round_to_nearest_on_the_grid_is_the_numpy_encoder_with_the_hessian_diagonal():
    _, W, q = gptq_layer()
    res = q.fasterquant(W, QuantConfig(grid="mpq2s", rotate=True, method="rtn"))
    turned = codec_torch.rotate(W).numpy().reshape(-1, 8, 16)
    _, _, importance, _, _ = q._factors[(True, 0.01, False, True)]
    imp = np.broadcast_to(importance.numpy().reshape(1, -1, 8, 16), (W.shape[0], 3, 8, 16)).reshape(turned.shape)
    want = codec_s.pack(*codec_s.choose(turned, imp)).reshape(W.shape[0], -1)
    np.testing.assert_array_equal(res.packed, want)
    assert res.packed.shape == (96, 384 // 128 * 36)


@pytest.mark.parametrize("cfg", [S_CFG, QuantConfig(grid="mpq2s", rotate=True, act_order=True),
                                 QuantConfig(grid="mpq2s", rotate=True, block_size=256)], ids=["gptq", "act_order", "block256"])
def test_gptq_bytes_decode_to_its_weights_and_beat_round_to_nearest(cfg):
    X, W, q = gptq_layer()
    res = q.fasterquant(W, cfg)
    decoded = torch.from_numpy(codec_s.dequantize(res.packed))
    torch.testing.assert_close(decoded, res.weight, rtol=0, atol=1e-6 * float(W.abs().max()))
    rtn = q.fasterquant(W, QuantConfig(grid="mpq2s", rotate=True, method="rtn"))
    err = lambda Wq: float(torch.linalg.norm((W - Wq) @ X.T) / torch.linalg.norm(W @ X.T))
    assert err(res.weight) < 0.9 * err(rtn.weight), (err(res.weight), err(rtn.weight))
    assert res.n_salient == 0


def test_gptq_error_is_near_mpq2r_at_nine_tenths_of_the_bytes():
    X, W, q = gptq_layer(seed=1)
    s = q.fasterquant(W, S_CFG).rel_output_error
    r = q.fasterquant(W, QuantConfig(rotate=True)).rel_output_error
    assert s < 1.15 * r, (s, r)


def test_row_chunks_give_the_same_bytes():
    _, W, q = gptq_layer(rows=200)
    whole = q.fasterquant(W, S_CFG)
    np.testing.assert_array_equal(q.fasterquant(W, S_CFG, row_chunk=64).packed, whole.packed)


@pytest.mark.parametrize("cfg,cols", [(QuantConfig(grid="mpq2s"), 384), (S_CFG, 320),
                                      (QuantConfig(grid="mpq2s", rotate=True, block_size=64), 384)],
                         ids=["unturned", "320 inputs", "block 64"])
def test_gptq_refuses_what_mpq2s_cannot_hold(cfg, cols):
    W = torch.randn(64, cols)
    q = MPQ2GPTQ(W)
    q.add_batch(torch.randn(500, cols))
    with pytest.raises(ValueError, match="MPQ2S"):
        q.fasterquant(W, cfg)


# ---- the CPU kernels (ggml_ext/src/ggml-cpu-mpq2s.c), standalone ----

KERNEL_SOURCES = [ROOT / "tests/simd/mpq2s_kernel_check.c", ROOT / "ggml_ext/src/ggml-cpu-mpq2s.c",
                  ROOT / "ggml_ext/src/ggml-cpu-mpq2-repack.c", SRC]


def x86_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


# build -> (flags, the 16-row kernel it must pick, the row-wise kernel it must pick)
KERNEL_BUILDS = {
    "native": (["-march=native"], None, None),
    "avx512 without vnni or gfni": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c"], "avx512", "avx2"),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], "avx2", "avx2"),
    "avx2 + avx-vnni + gfni": (["-mavx2", "-mfma", "-mf16c", "-mavxvnni", "-mgfni"], "avx2", "avx2"),
    "sse4.2 (scalar)": (["-msse4.2"], "generic", "generic"),
    "native, asan + ubsan": (["-march=native", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"], None, None),
}


@pytest.mark.parametrize("name", list(KERNEL_BUILDS))
def test_kernels_match_the_exact_sum(name, tmp_path):
    """The row dot (scalar) and the 16-row kernel, 1..11 columns, random / unit-scale / extreme /
    spread-scale blocks, against an exact float64 sum; the scalar x16 and the row-wise SIMD dot
    equal the scalar row dot bit for bit."""
    from llama_cpp_build import lib_dir, src_dir
    flags, impl, row_impl = KERNEL_BUILDS[name]
    if "avx512" in " ".join(flags) and "avx512bw" not in x86_flags():
        pytest.skip("this CPU has no AVX-512")
    if "-mavxvnni" in flags and "avx_vnni" not in x86_flags():
        pytest.skip("this CPU has no AVX-VNNI")
    ggml, lib, exe = src_dir() / "ggml", lib_dir(), tmp_path / "check"
    cmd = ["cc", "-O2", "-std=gnu11", "-Wall", "-Wno-unused-function", "-ffp-contract=off", *flags,
           f"-I{ggml}/include", f"-I{ggml}/src", f"-I{ggml}/src/ggml-cpu", f"-I{ROOT}/ggml_ext/include",
           f"-I{ROOT}/ggml_ext/src", *map(str, KERNEL_SOURCES), f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}",
           "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    if impl:
        assert f"kernel {impl}, row-wise {row_impl}:" in out.stdout, out.stdout
    assert " 42240 cases" in out.stdout, out.stdout


@pytest.mark.parametrize("arch,impl", [("armv8.2-a+dotprod", "neon_dotprod"), ("armv8-a", "neon")])
def test_neon_kernels_match_the_exact_sum_under_qemu(arch, impl, tmp_path):
    """The same check for AArch64, cross-built and run under qemu-user (the Debian packages
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user, which CI installs: a missing tool fails)."""
    from llama_cpp_build import src_dir
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    assert cross and qemu, "install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
    ggml, exe = src_dir() / "ggml", tmp_path / "check"
    # no aarch64 libggml-base to link: the encoder's functions (and their call of MPQ2R's
    # rotation) are dropped by --gc-sections, the kernels need only the grid tables
    sources = [ROOT / "tests/simd/mpq2s_kernel_check.c", ROOT / "ggml_ext/src/ggml-cpu-mpq2s.c",
               ROOT / "ggml_ext/src/ggml-cpu-mpq2-repack.c", ROOT / "ggml_ext/src/ggml-mpq2.c", SRC]
    cmd = [cross, "-O2", "-std=gnu11", "-Wall", "-Wno-unused-function", "-ffp-contract=off", f"-march={arch}",
           "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", f"-I{ggml}/include", f"-I{ggml}/src",
           f"-I{ggml}/src/ggml-cpu", f"-I{ROOT}/ggml_ext/include", f"-I{ROOT}/ggml_ext/src", *map(str, sources),
           "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", str(exe)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"kernel {impl}, row-wise {impl}:" in out.stdout and " 42240 cases" in out.stdout, out.stdout


# ---------------------------------------------------------------- registered with ggml (type 99)

def test_registered_type_is_the_specification_in_ggml_and_gguf(rng):
    """GGML_TYPE_MPQ2S in the patched build: ggml's quantize_chunk path, its type traits, the
    validator and gguf-py (constants, sizes, the numpy class) all agree with codec_s."""
    import gguf
    from llama_mpq2 import ggml
    x = rng.standard_normal((6, 384)).astype(np.float32)
    q = ggml.quantize(x, qtype="mpq2s")
    np.testing.assert_array_equal(q, codec_s.quantize(x))
    np.testing.assert_array_equal(ggml.quantize_ref(x[0], qtype="mpq2s"), q[0])
    np.testing.assert_array_equal(ggml.dequantize(q, qtype="mpq2s"), codec_s.dequantize(q))
    assert ggml.validate(q, qtype="mpq2s")
    part = np.ascontiguousarray(q[0, :35])                     # not a whole block: refused, not read past
    assert not ggml._base.ggml_validate_row_data(ggml.GGML_TYPE_MPQ2S, ggml._ptr(part, "void *"), part.size)
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.MPQ2S] == (128, 36) == ggml._sizes("mpq2s")
    assert int(gguf.GGMLQuantizationType.MPQ2S) == ggml.GGML_TYPE_MPQ2S == 99
    np.testing.assert_array_equal(gguf.quants.quantize(x, gguf.GGMLQuantizationType.MPQ2S), q)
    np.testing.assert_array_equal(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.MPQ2S), codec_s.dequantize(q))
    with pytest.raises(ValueError, match="multiple of 128"):
        ggml.quantize(x[:, :320], qtype="mpq2s")


def test_row_wise_dot_product_through_the_cpu_backend(rng):
    from llama_mpq2 import ggml
    w = rng.standard_normal((16, 512)).astype(np.float32)
    a = rng.standard_normal(512).astype(np.float32)
    q = ggml.quantize(w, qtype="mpq2s")
    got = ggml.dot(q, a, qtype="mpq2s")
    want = ggml.dequantize(q, qtype="mpq2s") @ a
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max(), np.abs(got - want).max()
    # its activations are MPQ2R's: Q8_0 of the turned vector (Q8_0R)
    a8 = ggml.quantize_q8_0(a, qtype="mpq2s")
    np.testing.assert_array_equal(a8, ggml.quantize_q8_0(a, qtype="mpq2r"))


def test_llama_quantize_and_the_converter_fall_back_to_mpq2r(tmp_path):
    """llama-quantize lists MPQ2S and writes it where rows are a multiple of 128; rows of 64k
    (here 192 inputs: the attention and ffn_gate/up) get MPQ2R, not upstream's 4-bit fallback;
    convert_mpq.py --type mpq2s does the same."""
    import e2e_helpers as h
    import tiny_llama
    proc = h.run([h.tool("llama-quantize"), "--help"], check=False)
    assert any("MPQ2S" in line and "99" in line for line in (proc.stdout + proc.stderr).splitlines())
    hf = tiny_llama.build(tmp_path / "hf", hidden=192, intermediate=384, steps=5)
    f32 = h.hf_to_gguf_f32(hf, tmp_path / "f32.gguf")
    out = tmp_path / "s.gguf"
    h.run([h.tool("llama-quantize"), "--pure", f32, out, "MPQ2S", "2"])
    types = {n: t for n, t in h.tensor_types(out).items() if not n.endswith("norm.weight")}
    assert types["blk.0.ffn_down.weight"] == "MPQ2S", types           # 384 inputs
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == "MPQ2R", types   # 192 inputs
    text = tmp_path / "t.txt"
    text.write_text(tiny_llama.corpus(100, seed=3))
    assert np.isfinite(h.perplexity(out, text, 64))
    # the converter's rule is the same, and it says so even with --quiet
    conv = tmp_path / "c.gguf"
    proc = h.convert(hf, "-o", conv, "--type", "mpq2s", *h.FAST)
    assert "blk.0.attn_q.weight: rows of 192 are not a multiple of the mpq2s block; using mpq2r" in proc.stderr, proc.stderr
    types = h.tensor_types(conv)
    assert types["blk.0.ffn_down.weight"] == "MPQ2S" and types["blk.0.ffn_up.weight"] == "MPQ2R", types
    assert np.isfinite(h.perplexity(conv, text, 64))


def test_test_quantize_fns_passes_for_mpq2s():
    import e2e_helpers as h
    proc = h.run([h.tool("test-quantize-fns"), "-v"])
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("mpq2s")]
    assert len(lines) >= 3 and all(" ok " in line for line in lines), proc.stdout


def test_backend_ops_pass_for_mpq2s():
    """llama.cpp's op tests with MPQ2S (each op twice on the CPU backend, compared; none aborts)."""
    import e2e_helpers as h
    proc = h.run([h.tool("test-backend-ops"), "-b", "CPU", "-p", "mpq2s"], timeout=900)
    assert "FAIL" not in proc.stdout
    ran = [line for line in proc.stdout.splitlines() if "mpq2s" in line and "OK" in line]
    for op in ("MUL_MAT(", "GET_ROWS(", "SET_ROWS(", "CPY("):
        assert any(line.strip().startswith(op) for line in ran), f"no passing {op} test for mpq2s:\n{proc.stdout[-3000:]}"


def test_bindings_read_an_mpq2s_tensor_through_the_c_decoder(tmp_path, rng):
    """llama_mpq2.read_tensor decodes MPQ2S with ggml's C code (no converter needed), as llama.cpp will."""
    import gguf
    from llama_mpq2 import read_tensor, read_tensor_bytes
    w = rng.standard_normal((5, 256)).astype(np.float32)
    q = codec_s.quantize(w)
    path = tmp_path / "s.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=gguf.GGMLQuantizationType.MPQ2S)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raw, info = read_tensor_bytes(path, "blk.0.ffn_up.weight")
    assert info.type_name == "MPQ2S" and info.shape == (5, 256) and info.bits_per_weight == 2.25
    np.testing.assert_array_equal(raw, q)
    np.testing.assert_array_equal(read_tensor(path, "blk.0.ffn_up.weight"), codec_s.dequantize(q))
