"""Builds the libFuzzer target tests/fuzz/fuzz_gguf_mpq2.cpp with clang under ASan + UBSan.

    python3 tests/fuzz/build_fuzzer.py            # prints the path of the binary (cached under build/fuzz/)

Sources: from the patched llama.cpp tree (build/llama.cpp-src, or LLAMA_MPQ2_SRC_DIR) the few
ggml-base files the GGUF reader and the MPQ2 code need (gguf.cpp, ggml.c, ggml-quants.c,
ggml-threading.cpp; tests/fuzz/ggml_backend_stubs.c stands in for the four ggml-backend
functions they reference on paths the target never takes), and ours (ggml_ext/src/ggml-mpq2*.c, ggml-cpu-mpq2*.c with this machine's
SIMD kernel, -march=native). One compiler job at a time, -O1. The binary is cached under a key
of every input's content and the flags, so a second run costs nothing.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from llama_mpq2._libs import src_dir

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fuzz_gguf_mpq2.cpp"
CLANG_PACKAGE = "clang"          # Debian bookworm: clang 14, libFuzzer included

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
# -UNDEBUG: assert() stays on in every file (this list once said -DNDEBUG=0, which *defines* NDEBUG
# and compiled every assert out; the target now refuses to build that way). -ffp-contract=off: no
# fused multiply-adds, as the project's CMake sets for our sources (bit-exactness with numpy).
COMMON = ["-O1", "-g", "-march=native", "-UNDEBUG", "-ffp-contract=off", "-D_GNU_SOURCE", "-DGGML_SCHED_MAX_COPIES=4",
          "-Wno-unused-command-line-argument", "-w", *SANITIZE]


# Upstream limits the fuzzer found, avoided here and listed in docs/ROBUSTNESS.md: gguf.cpp reads
# a file's int32 type ids straight into enum ggml_type / gguf_type and range-checks the enum
# afterwards, which UBSan's -fsanitize=enum reports (harmless without -fstrict-enums).
PER_FILE = {"gguf.cpp": ["-fno-sanitize=enum"]}

# forced into every file: a build with NDEBUG defined stops at #error, whatever the flags say
ASSERTS_ON = HERE / "fuzz_asserts_on.h"


class BuildError(RuntimeError):
    pass


def find_clang() -> tuple[str, str] | None:
    for suffix in ("", "-19", "-18", "-17", "-16", "-15", "-14"):
        cc, cxx = shutil.which(f"clang{suffix}"), shutil.which(f"clang++{suffix}")
        if cc and cxx:
            return cc, cxx
    return None


def llama_src() -> Path:
    try:
        return src_dir()
    except FileNotFoundError as e:
        raise BuildError(str(e)) from None


def sources(src: Path) -> list[Path]:
    g = src / "ggml/src"
    return [g / "gguf.cpp", g / "ggml.c", g / "ggml-quants.c", g / "ggml-threading.cpp",
            ROOT / "ggml_ext/src/ggml-mpq2.c", ROOT / "ggml_ext/src/ggml-mpq2r.c", ROOT / "ggml_ext/src/ggml-cpu-mpq2.c",
            ROOT / "ggml_ext/src/ggml-cpu-mpq2-repack.c", ROOT / "ggml_ext/src/ggml-mpq2s.c",
            ROOT / "ggml_ext/src/ggml-cpu-mpq2s.c",
            HERE / "ggml_backend_stubs.c",
            HARNESS]


def _key(files: list[Path], flags: list[str], cc: str) -> str:
    h = hashlib.sha256()
    h.update(" ".join([cc, *flags]).encode())
    inputs = list(files) + [ASSERTS_ON] + sorted((ROOT / "ggml_ext").rglob("*.[ch]")) + sorted((ROOT / "ggml_ext").rglob("*.patch"))
    for f in inputs:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(out_dir: Path | None = None, verbose: bool = False) -> Path:
    """The fuzzer binary (built unless cached). Raises BuildError with the compiler's message."""
    tools = find_clang()
    if tools is None:
        raise BuildError(f"clang not found: apt-get install -y {CLANG_PACKAGE}")
    cc, cxx = tools
    src = llama_src()
    files = sources(src)
    out_dir = Path(out_dir or ROOT / "build/fuzz")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _key(files, [*COMMON, repr(PER_FILE)], cc)
    exe = out_dir / f"fuzz_gguf_mpq2-{key}"
    if exe.exists():
        return exe
    work = out_dir / f"obj-{key}"
    work.mkdir(exist_ok=True)
    (work / "ggml-version.h").write_text('#pragma once\n#define GGML_VERSION "fuzz"\n#define GGML_COMMIT "fuzz"\n')
    ggml = src / "ggml"
    includes = [f"-I{work}", f"-I{ggml}/include", f"-I{ggml}/src", f"-I{ggml}/src/ggml-cpu",
                f"-I{ROOT}/ggml_ext/include", f"-I{ROOT}/ggml_ext/src"]
    objects = []
    for f in files:
        obj = work / (f.name + ".o")
        is_cxx = f.suffix == ".cpp"
        cmd = [cxx if is_cxx else cc, "-std=c++17" if is_cxx else "-std=gnu11", "-fsanitize=fuzzer-no-link",
               *COMMON, *PER_FILE.get(f.name, []), "-include", str(ASSERTS_ON), *includes, "-c", str(f), "-o", str(obj)]
        if not obj.exists():
            if verbose:
                print(" ".join(cmd), file=sys.stderr)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"compile failed: {' '.join(cmd)}\n{r.stderr[-4000:]}")
        objects.append(str(obj))
    tmp = exe.with_suffix(".tmp")
    cmd = [cxx, "-fsanitize=fuzzer", *SANITIZE, *objects, "-lm", "-lpthread", "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"link failed: {' '.join(cmd)}\n{r.stderr[-4000:]}")
    os.replace(tmp, exe)
    shutil.rmtree(work, ignore_errors=True)
    for old in out_dir.glob("fuzz_gguf_mpq2-*"):      # binaries of older sources
        if old != exe:
            old.unlink(missing_ok=True)
    for old in out_dir.glob("obj-*"):                 # objects of builds that failed
        shutil.rmtree(old, ignore_errors=True)
    return exe


if __name__ == "__main__":
    try:
        print(build(verbose=True))
    except BuildError as e:
        sys.exit(f"build_fuzzer.py: {e}")
