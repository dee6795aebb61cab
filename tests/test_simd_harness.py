"""Builds the standalone kernel check (tests/simd/mpq2_kernel_check.c) for every SIMD path we
ship and runs it: x86 AVX-512 and AVX2 natively, AArch64 NEON (with and without dotprod) under
qemu-user. Each run compares ggml_vec_dot_mpq2_q8_0 and the repacked 16-row kernel
ggml_mpq2x16_mul (the SIMD kernels for that target) with the scalar references and an exact
float64 sum.

Needs the patched llama.cpp headers (LLAMA_MPQ2_SRC_DIR, else llama.cpp-src next to
LLAMA_MPQ2_LIB_DIR, else build/llama.cpp-src) and, for AArch64, the Debian packages
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user: a missing tool fails the test, it is never
skipped silently.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from llama_mpq2._libs import src_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests/simd/mpq2_kernel_check.c", ROOT / "ggml_ext/src/ggml-cpu-mpq2.c",
           ROOT / "ggml_ext/src/ggml-mpq2.c", ROOT / "ggml_ext/src/ggml-cpu-mpq2-repack.c"]
CROSS_PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def llama_src() -> Path:
    try:
        return src_dir()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def build(cc: str, flags: list[str], out: Path) -> Path:
    ggml = llama_src() / "ggml"
    # -ffp-contract=off as the CMake build sets for our sources (ggml_ext/cmake/ggml-mpq2.cmake):
    # GCC fuses a*b+c by default wherever the target has FMA (AArch64 always), which would make the
    # scalar references round differently from the numpy mirror and from one target to the next
    cmd = [cc, "-O2", "-std=gnu11", "-Wall", "-Wno-unused-function", "-ffp-contract=off", *flags,
           f"-I{ggml}/include", f"-I{ggml}/src", f"-I{ggml}/src/ggml-cpu", f"-I{ROOT}/ggml_ext/include", f"-I{ROOT}/ggml_ext/src",
           *map(str, SOURCES), "-lm", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compile failed: {' '.join(cmd)}\n{r.stderr[-4000:]}"
    return out


def run(cmd: list[str], expect_kernel: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    assert f"kernel={expect_kernel}\n" in r.stdout, f"expected kernel {expect_kernel}:\n{out}"
    assert "OK:" in r.stdout
    return out


# (name, compiler flags, vec_dot kernel it must select, repacked 16-row kernel it must select,
# CPU flags the host needs to run it); None: whatever the native build picks
X86_TARGETS = [
    ("native", ["-march=native"], None, None, []),
    ("avx512-vbmi-vnni", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vbmi", "-mavx512vnni", "-mfma", "-mf16c"],
     "avx512_vnni", "avx512_vnni", ["avx512bw", "avx512vl", "avx512_vbmi", "avx512_vnni"]),
    ("avx512-vnni-gfni", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mgfni", "-mfma", "-mf16c"],
     "avx512_vnni", "avx512_vnni_gfni", ["avx512bw", "avx512vl", "avx512_vnni", "gfni"]),
    ("avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c"], "avx512", "avx512", ["avx512bw", "avx512vl"]),
    ("avx2", ["-mavx2", "-mfma", "-mf16c"], "avx2", "avx2", ["avx2", "fma", "f16c"]),
    ("avx2-gfni", ["-mavx2", "-mfma", "-mf16c", "-mgfni"], "avx2", "avx2_gfni", ["avx2", "fma", "f16c", "gfni"]),
    ("avx2-avxvnni-gfni", ["-mavx2", "-mfma", "-mf16c", "-mavxvnni", "-mgfni"], "avx2_vnni", "avx2_vnni_gfni",
     ["avx2", "fma", "f16c", "avx_vnni", "gfni"]),
    ("avx2-nof16c-nofma", ["-mavx2"], "avx2", "avx2", ["avx2"]),
    ("generic", ["-mno-avx2"], "generic", "generic", []),
    # our C code (reference quantizer, dequantizer, generic and SIMD dot) under AddressSanitizer
    # and UndefinedBehaviorSanitizer: any report aborts the run and fails the test
    ("native-asan-ubsan", ["-march=native", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                           "-fno-omit-frame-pointer"], None, None, []),
    ("generic-asan-ubsan", ["-mno-avx2", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
     "generic", "generic", []),
]


@pytest.mark.skipif(not IS_X86, reason="x86 kernels run on x86 hosts (the AArch64 test covers ARM)")
@pytest.mark.parametrize("name,flags,kernel,x16_kernel,needs", X86_TARGETS, ids=[t[0] for t in X86_TARGETS])
def test_x86_kernels(tmp_path, name, flags, kernel, x16_kernel, needs):
    host = cpu_flags()
    missing = [f for f in needs if f" {f}" not in host]
    exe = build(shutil.which("cc") or "gcc", flags, tmp_path / f"check-{name}")
    if missing:
        # compiled (so the code is checked to build for that target) but the host cannot run it
        pytest.skip(f"host CPU lacks {missing}; built only")
    if kernel is None:
        r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
        kernel = r.stdout.split("\n", 1)[0].removeprefix("kernel=")
        x16_kernel = r.stdout.split("\n", 2)[1].removeprefix("x16_kernel=")
        if " avx2" in host:
            assert kernel != "generic", "native build of an AVX2 host fell back to the scalar kernel"
            assert x16_kernel != "generic", "native build of an AVX2 host has no repacked kernel"
    out = run([str(exe)], kernel)
    assert f"x16_kernel={x16_kernel}\n" in out, out[:500]
    print(out)


# (-march, the qemu CPU to run it on, vec_dot kernel, repacked 16-row kernel): the build without
# dotprod runs on a Cortex-A53 (ARMv8.0), where any sdot would be an illegal instruction
AARCH64_TARGETS = [
    ("armv8.2-a+dotprod", "max", "neon_dotprod", "neon_dotprod"),
    ("armv8-a", "cortex-a53", "neon", "neon"),
]


@pytest.mark.parametrize("march,qemu_cpu,kernel,x16_kernel", AARCH64_TARGETS, ids=[t[0] for t in AARCH64_TARGETS])
def test_aarch64_neon_under_qemu(tmp_path, march, qemu_cpu, kernel, x16_kernel):
    cc = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64")
    sysroot = Path("/usr/aarch64-linux-gnu")
    if not cc or not qemu or not (sysroot / "lib").exists():
        pytest.fail(f"AArch64 cross toolchain or qemu missing (aarch64-linux-gnu-gcc: {cc}, qemu-aarch64: {qemu}): "
                    f"apt-get install -y {CROSS_PACKAGES}")
    exe = build(cc, [f"-march={march}"], tmp_path / f"check-{march}")
    out = run([qemu, "-cpu", qemu_cpu, "-L", str(sysroot), str(exe)], kernel)
    assert f"x16_kernel={x16_kernel}\n" in out, out[:500]
    print(out)
