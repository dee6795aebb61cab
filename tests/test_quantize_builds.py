"""The reference quantizer gives the same bytes however it is built: baseline x86-64, AVX2 and
AVX-512 builds of its searches (the target_clones that ggml-base picks at load time), clang and
GCC, and aarch64 under qemu where the cross toolchain is installed. bench/bench_quantize_ref.c
hashes the bytes of random rows with a random imatrix (bench/quantize_speed.py times it)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", f"-DMPQ2_SRC=\"{ROOT / 'ggml_ext/src/ggml-mpq2.c'}\"",
         f"-I{ROOT / 'ggml_ext/include'}"]


def ggml_include() -> Path:
    from llama_mpq2._libs import src_dir
    return src_dir() / "ggml" / "include"


def hash_of(cc: str, extra: list[str], tmp: Path, runner: list[str] = ()) -> str:
    exe = tmp / f"bq{abs(hash((cc, *extra)))}"
    subprocess.run([cc, *FLAGS, f"-I{ggml_include()}", *extra, str(ROOT / "bench/bench_quantize_ref.c"), "-lm",
                    "-o", str(exe)], check=True)
    out = subprocess.run([*runner, str(exe), "24", "1024", "1"], check=True, capture_output=True, text=True).stdout
    return re.search(r"hash (\w+)", out).group(1)


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    return set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())


def test_every_x86_build_gives_the_same_bytes(tmp_path):
    if not re.match("x86_64", subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout):
        pytest.skip("an x86-64 machine builds the x86 variants")
    have = cpu_flags()
    builds = {"dispatched clones": [], "baseline, no clones": ["-DMPQ2_NO_TARGET_CLONES"]}
    if "avx2" in have:
        builds["-mavx2, no clones"] = ["-DMPQ2_NO_TARGET_CLONES", "-mavx2"]
    if "avx512f" in have:
        builds["-mavx512f, no clones"] = ["-DMPQ2_NO_TARGET_CLONES", "-mavx512f"]
    hashes = {name: hash_of("cc", extra, tmp_path) for name, extra in builds.items()}
    if shutil.which("clang"):
        hashes["clang, dispatched clones"] = hash_of("clang", [], tmp_path)
    assert len(set(hashes.values())) == 1, hashes
    assert len(hashes) >= 3, hashes


def test_aarch64_gives_the_bytes_of_x86(tmp_path):
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cross and qemu):
        pytest.skip("gcc-aarch64-linux-gnu and qemu-user are not installed")
    x86 = hash_of("cc", ["-DMPQ2_NO_TARGET_CLONES"], tmp_path)
    arm = hash_of(cross, ["-static"], tmp_path, [qemu, "-L", "/usr/aarch64-linux-gnu"])
    assert arm == x86
