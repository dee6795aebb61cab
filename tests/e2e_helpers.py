"""Helpers for end-to-end tests: run llama.cpp tools and read what they wrote."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from llama_mpq2._libs import bin_path, src_dir
from mpq2.gguf_in import dequantized_state_dict  # noqa: F401  (the tests call it as h.dequantized_state_dict)

REPO = Path(__file__).resolve().parents[1]


def llama_src() -> Path:
    return src_dir()


def run(cmd: list, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tool(name: str) -> Path:
    return bin_path(name)


def hf_to_gguf_f32(model_dir: Path, out: Path) -> Path:
    run([sys.executable, llama_src() / "convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out])
    return out


def perplexity(model: Path, text_file: Path, ctx: int, threads: int = 1) -> float:
    # llama.cpp logs from a worker thread and can lose its last lines at exit on a loaded
    # machine (common/log.cpp says so); the run is deterministic, so read it again then.
    for _ in range(3):
        proc = run([tool("llama-perplexity"), "-m", model, "-f", text_file, "-c", ctx, "-t", threads, "-b", ctx])
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
        if m:
            return float(m.group(1))
    raise AssertionError(proc.stdout[-2000:] + proc.stderr[-2000:])


def tensor_types(gguf_path: Path) -> dict[str, str]:
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(gguf_path).tensors}


CONVERT = REPO / "converter" / "convert_mpq.py"
FAST = ["--nsamples", "8", "--seqlen", "64", "--quiet"]     # a short calibration for the tiny models


def convert(*args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """convert_mpq.py in a child process, as a user runs it."""
    return run([sys.executable, CONVERT, *args], check=check, timeout=timeout)


def assert_clean_failure(proc, out: Path, *needles: str) -> None:
    """A clear error (exit 1, no traceback, each needle in it) and nothing left at or beside `out`."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.", ".mpq2-", out.name))]
