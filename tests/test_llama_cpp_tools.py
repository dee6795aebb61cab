"""llama.cpp's own tests and tools know MPQ2 in the patched build."""
from __future__ import annotations

import platform

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
