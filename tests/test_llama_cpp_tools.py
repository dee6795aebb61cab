"""llama.cpp's own tests and tools know MPQ2 in the patched build."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

import e2e_helpers as h


def test_quantize_help_lists_mpq2():
    proc = h.run([h.tool("llama-quantize"), "--help"], check=False)
    assert any("MPQ2" in line and "96" in line for line in (proc.stdout + proc.stderr).splitlines())


def cpu_flags() -> str:
    try:
        return open("/proc/cpuinfo").read()   # the build is native (GGML_NATIVE), as the host
    except OSError:
        return ""


def test_test_quantize_fns_passes_for_mpq2():
    proc = h.run([h.tool("test-quantize-fns"), "-v"])
    lines = [line for line in proc.stdout.splitlines() if line.split()[:1] == ["mpq2"]]   # not mpq2r
    assert all(" ok " in line for line in lines), proc.stdout
    # quantization error, reference error, dot product; and the 2x2 dot product (nrc=2) where
    # the build has a 2x2 kernel (GGML_MPQ2_VEC_DOT_NROWS 2: x86 with AVX2, AArch64)
    machine = platform.machine().lower()
    wants_2x2 = machine in ("aarch64", "arm64") or (machine in ("x86_64", "amd64") and " avx2" in cpu_flags())
    assert len(lines) == (4 if wants_2x2 else 3), proc.stdout
    assert any("nrc=2" in line for line in lines) == wants_2x2, proc.stdout


def test_backend_ops_pass_for_mpq2():
    # Only the CPU backend exists here, so each op runs on CPU twice and the two are compared:
    # this checks that every op llama.cpp tests with a quantized type supports MPQ2 and runs.
    proc = h.run([h.tool("test-backend-ops"), "-b", "CPU", "-p", "mpq2[^r]"], timeout=900)   # MPQ2R: test_mpq2r.py
    out = proc.stdout
    assert "FAIL" not in out
    ran = [line for line in out.splitlines() if "mpq2" in line and "OK" in line]
    for op in ("MUL_MAT(", "MUL_MAT_ID(", "GET_ROWS(", "SET_ROWS(", "CPY("):
        assert any(line.strip().startswith(op) for line in ran), f"no passing {op} test for mpq2"


def test_gguf_dump_names_the_type(tmp_path, rng):
    import gguf
    from llama_mpq2 import ggml

    w = rng.standard_normal((8, 128)).astype(np.float32)
    path = tmp_path / "one.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_up.weight", ggml.quantize(w), raw_dtype=gguf.GGMLQuantizationType.MPQ2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    import subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_dump", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "MPQ2" in proc.stdout
    t = gguf.GGUFReader(path).tensors[0]
    np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type), ggml.dequantize(ggml.quantize(w)))


def test_build_stops_when_the_patch_does_not_apply(tmp_path):
    import subprocess
    fake = tmp_path / "llama.cpp"
    (fake / "ggml" / "include").mkdir(parents=True)
    (fake / "ggml" / "include" / "ggml.h").write_text("/* some other llama.cpp */\n")
    proc = subprocess.run(["cmake", "-S", str(h.REPO), "-B", str(tmp_path / "build"),
                           f"-DMPQ2_LLAMA_CPP_DIR={fake}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "llama.cpp-mpq2.patch does not apply" in err and "llama-cpp-python==0.3.36" in err, err[-3000:]


# ---------------------------------------------------------------- Q8_0R as a tensor type

GGML_TYPE_F32, GGML_TYPE_Q8_0, GGML_TYPE_I32, GGML_TYPE_Q8_0R = 0, 8, 26, 98

Q8_0R_CDEF = """
    struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
    struct gguf_init_params { bool no_alloc; void ** ctx; };
    void * ggml_init(struct ggml_init_params params);
    void   ggml_free(void * ctx);
    void * ggml_new_tensor_1d(void * ctx, int type, int64_t ne0);
    void * ggml_new_tensor_2d(void * ctx, int type, int64_t ne0, int64_t ne1);
    void * ggml_set_name(void * tensor, const char * name);
    void * ggml_get_data(const void * tensor);
    size_t ggml_nbytes(const void * tensor);
    size_t ggml_row_size(int type, int64_t ne);
    bool   ggml_validate_row_data(int type, const void * data, size_t nbytes);
    size_t ggml_quantize_chunk(int type, const float * src, void * dst, int64_t start, int64_t nrows,
                               int64_t n_per_row, const float * imatrix);
    void * ggml_get_rows(void * ctx, void * a, void * b);
    void * ggml_mul_mat(void * ctx, void * a, void * b);
    void * ggml_cpy(void * ctx, void * a, void * b);
    void * ggml_new_graph(void * ctx);
    void   ggml_build_forward_expand(void * cgraph, void * tensor);
    void * gguf_init_empty(void);
    void * gguf_init_from_file(const char * fname, struct gguf_init_params params);
    void   gguf_free(void * ctx);
    void   gguf_add_tensor(void * ctx, const void * tensor);
    bool   gguf_write_to_file(const void * ctx, const char * fname, bool only_meta);
    int64_t gguf_get_n_tensors(const void * ctx);
    int    gguf_get_tensor_type(const void * ctx, int64_t tensor_id);
    void * ggml_get_tensor(void * ctx, const char * name);
    void   ggml_cpu_init(void);
    int    ggml_graph_compute_with_ctx(void * ctx, void * cgraph, int n_threads);
"""


def _q8_0r_ops_child(path: str) -> None:
    """In a child interpreter (an abort must fail the test, not kill pytest): a Q8_0R tensor
    quantized by ggml_quantize_chunk, written to a GGUF by gguf.cpp, loaded back, then through the
    CPU backend's GET_ROWS, MUL_MAT and CPY, each against numpy."""
    import gguf
    from cffi import FFI
    from llama_mpq2._libs import lib_dir
    from mpq2 import rotation

    ffi = FFI()
    ffi.cdef(Q8_0R_CDEF)
    base = ffi.dlopen(str(lib_dir() / "libggml-base.so"))
    cpu = ffi.dlopen(str(lib_dir() / "libggml-cpu.so"))
    cpu.ggml_cpu_init()

    def as_array(t, dtype, shape):
        return np.frombuffer(ffi.buffer(base.ggml_get_data(t), base.ggml_nbytes(t)), dtype).reshape(shape).copy()

    def put(t, a):
        ffi.memmove(base.ggml_get_data(t), np.ascontiguousarray(a).tobytes(), base.ggml_nbytes(t))

    rows, k = 8, 256
    rng = np.random.default_rng(98)
    w = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)
    # Q8_0R: Q8_0 blocks of each 64-block turned by MPQ2R's rotation (numpy mirrors both)
    want_bytes = gguf.quants.quantize(rotation.rotate(w), gguf.GGMLQuantizationType.Q8_0)
    assert base.ggml_row_size(GGML_TYPE_Q8_0R, k) == want_bytes.shape[1] == k // 32 * 34

    ctx = base.ggml_init({"mem_size": 1 << 22, "mem_buffer": ffi.NULL, "no_alloc": False})
    t = base.ggml_new_tensor_2d(ctx, GGML_TYPE_Q8_0R, k, rows)
    base.ggml_set_name(t, b"blk.0.q8_0r.weight")
    src = np.ascontiguousarray(w)
    imatrix = np.ascontiguousarray(rng.uniform(0, 1, k).astype(np.float32))
    for im in (ffi.NULL, ffi.cast("float *", ffi.from_buffer(imatrix))):     # the imatrix is ignored
        n = base.ggml_quantize_chunk(GGML_TYPE_Q8_0R, ffi.cast("float *", ffi.from_buffer(src)), base.ggml_get_data(t),
                                     0, rows, k, im)
        assert n == want_bytes.size
        np.testing.assert_array_equal(as_array(t, np.uint8, want_bytes.shape), want_bytes)
    assert base.ggml_validate_row_data(GGML_TYPE_Q8_0R, base.ggml_get_data(t), want_bytes.size)

    g = base.gguf_init_empty()
    base.gguf_add_tensor(g, t)
    assert base.gguf_write_to_file(g, path.encode(), False)
    base.gguf_free(g)
    base.ggml_free(ctx)

    loaded = ffi.new("void **")
    g = base.gguf_init_from_file(path.encode(), {"no_alloc": False, "ctx": loaded})
    assert g != ffi.NULL and base.gguf_get_n_tensors(g) == 1 and base.gguf_get_tensor_type(g, 0) == GGML_TYPE_Q8_0R
    wt = base.ggml_get_tensor(loaded[0], b"blk.0.q8_0r.weight")
    assert wt != ffi.NULL
    np.testing.assert_array_equal(as_array(wt, np.uint8, want_bytes.shape), want_bytes)

    ctx = base.ggml_init({"mem_size": 1 << 24, "mem_buffer": ffi.NULL, "no_alloc": False})
    idx = np.array([5, 0, 7, 5], np.int32)
    it = base.ggml_new_tensor_1d(ctx, GGML_TYPE_I32, len(idx))
    put(it, idx)
    x = rng.standard_normal((3, k)).astype(np.float32)
    xt = base.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 3)
    put(xt, x)
    wf = base.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, rows)
    put(wf, w)
    rows_t = base.ggml_get_rows(ctx, wt, it)
    mm_t = base.ggml_mul_mat(ctx, wt, xt)
    cpy_t = base.ggml_cpy(ctx, wf, base.ggml_new_tensor_2d(ctx, GGML_TYPE_Q8_0R, k, rows))
    gr = base.ggml_new_graph(ctx)
    for out in (rows_t, mm_t, cpy_t):
        base.ggml_build_forward_expand(gr, out)
    assert cpu.ggml_graph_compute_with_ctx(ctx, gr, 2) == 0

    # GET_ROWS: the rows decoded, turned back: exactly numpy's Q8_0 decode and inverse rotation
    wq = rotation.unrotate(gguf.quants.dequantize(want_bytes, gguf.GGMLQuantizationType.Q8_0).reshape(rows, k))
    got_rows = as_array(rows_t, np.float32, (len(idx), k))
    np.testing.assert_array_equal(got_rows, wq[idx])
    assert np.abs(got_rows - w[idx]).max() < 0.02 * np.abs(w[idx]).max()      # and close to the floats
    # MUL_MAT: activations turned and rounded to Q8_0 (Q8_0R), the int8 dot product: R w . R x = w . x
    got = as_array(mm_t, np.float32, (3, rows))
    xq = gguf.quants.dequantize(gguf.quants.quantize(rotation.rotate(x), gguf.GGMLQuantizationType.Q8_0),
                                gguf.GGMLQuantizationType.Q8_0).reshape(3, k).astype(np.float64)
    wrot = gguf.quants.dequantize(want_bytes, gguf.GGMLQuantizationType.Q8_0).reshape(rows, k).astype(np.float64)
    terms = np.abs(xq)[:, None, :] * np.abs(wrot)[None, :, :]
    assert (np.abs(got - xq @ wrot.T) <= 1e-3 * terms.sum(-1) + 1e-6).all(), np.abs(got - xq @ wrot.T).max()
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max(), np.abs(got - exact).max()
    # CPY F32 -> Q8_0R (the CPU backend's quantizer): decodes back close to the floats
    cq = as_array(cpy_t, np.uint8, want_bytes.shape)
    assert base.ggml_validate_row_data(GGML_TYPE_Q8_0R, ffi.from_buffer(cq), cq.size)
    back = rotation.unrotate(gguf.quants.dequantize(cq, gguf.GGMLQuantizationType.Q8_0).reshape(rows, k))
    assert np.abs(back - w).max() < 0.02 * np.abs(w).max()
    base.ggml_free(ctx)
    base.ggml_free(loaded[0])
    base.gguf_free(g)
    print("q8_0r ops ok")


def test_q8_0r_tensor_quantize_load_get_rows_mul_mat(tmp_path):
    """Q8_0R (type 98, MPQ2R's activations) is a type a file can hold: ggml_quantize_chunk writes
    it, gguf.cpp reads it back and the CPU backend's GET_ROWS, MUL_MAT and CPY run on it and give
    numpy's numbers (each of the first two once aborted: no case for the type)."""
    import subprocess, sys
    code = f"import test_llama_cpp_tools as t; t._q8_0r_ops_child({str(tmp_path / 'q8_0r.gguf')!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(h.REPO / "tests"))
    assert proc.returncode == 0 and "q8_0r ops ok" in proc.stdout, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"


def test_backend_ops_pass_for_q8_0r():
    """llama.cpp's op tests with Q8_0R as the quantized type (registered in test-backend-ops'
    all_types): each op runs on the CPU and agrees with a second CPU run, none aborts."""
    proc = h.run([h.tool("test-backend-ops"), "-b", "CPU", "-p", "q8_0r"],
                 timeout=600)
    assert "FAIL" not in proc.stdout
    ran = [line for line in proc.stdout.splitlines() if "q8_0r" in line and "OK" in line]
    for op in ("MUL_MAT(", "GET_ROWS(", "SET_ROWS(", "CPY("):
        assert any(line.strip().startswith(op) for line in ran), f"no passing {op} test for q8_0r:\n{proc.stdout[-3000:]}"


OUR_SOURCES = ["ggml-mpq2.c", "ggml-mpq2r.c", "ggml-mpq2s.c", "ggml-cpu-mpq2.c", "ggml-cpu-mpq2r.c", "ggml-cpu-mpq2-repack.c",
               "ggml-cpu-mpq2s.c"]


def test_our_sources_compile_without_fp_contraction():
    """ggml_ext/cmake/ggml-mpq2.cmake gives every source of ours -ffp-contract=off (bit-exactness
    with the numpy mirror must not hang on `#pragma GCC optimize`, which clang ignores), and no
    other source of llama.cpp gets it. Read from the build's compile_commands.json."""
    import json
    from llama_mpq2._libs import lib_dir
    db = lib_dir().parent / "compile_commands.json"
    assert db.exists(), f"{db} missing (llama.cpp's CMake exports it with the Makefile and Ninja generators)"
    entries = json.loads(db.read_text())
    ours = {}
    for e in entries:
        name = Path(e["file"]).name
        cmd = e.get("command") or " ".join(e.get("arguments", []))
        if "ggml_ext/src/" in e["file"]:
            ours.setdefault(name, []).append(cmd)
        else:
            assert "-ffp-contract=off" not in cmd, e["file"]
    assert sorted(ours) == sorted(OUR_SOURCES), sorted(ours)
    for name, cmds in ours.items():
        for cmd in cmds:       # one per ggml-cpu variant where there are several
            assert "-ffp-contract=off" in cmd.split(), (name, cmd)
            assert "-fno-trapping-math" in cmd.split(), (name, cmd)     # the quantizer's vectorized searches
            flags = cmd.split()
            assert not any(f.startswith("-ffp-contract=") and f != "-ffp-contract=off"
                           for f in flags[flags.index("-ffp-contract=off"):]), (name, cmd)
