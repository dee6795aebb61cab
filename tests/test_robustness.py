"""Bad inputs, one test per row of docs/ROBUSTNESS.md: damaged GGUF files (truncated, offsets and
shapes past the end, invalid MPQ2 blocks and headers, rows that are not whole blocks, unknown
types, the shape the fuzzer found) and the converter's output on a full disk.

Every damaged file is refused with a Python exception by llama_mpq2.Model (in a child
interpreter, so that a crash would show as one instead of killing the test run) and with an
error exit, not a signal, by llama.cpp's llama-completion. The files are made from a one-layer
Llama with random MPQ2 weights written here (tests/fuzz/gguf_damage.py): no training, ~30 KB.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import e2e_helpers as h

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import gguf_damage as gd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UP = "blk.0.ffn_up.weight"          # the MPQ2 tensor the tests damage
BAD_BLOCK = 5


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("robust")
    path = gd.tiny_llama_gguf(root / "good.gguf")
    data = path.read_bytes()
    return {"root": root, "path": path, "data": data, "layout": gd.layout(data)}


def write_bad(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(data)
    return p


_LOAD = """
import json, sys
from llama_mpq2.model import Model
try:
    with Model(sys.argv[1], n_ctx=64, n_threads=1, check_tensors=sys.argv[2] == "1") as m:
        print(json.dumps({"loaded": True, "n_vocab": m.n_vocab}))
except Exception as e:
    print(json.dumps({"loaded": False, "type": type(e).__name__, "message": str(e)}))
"""


def bindings_load(path: Path, check_tensors: bool = False) -> dict:
    """llama_mpq2.Model on `path` in a child interpreter: its outcome, and that it survived."""
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(path), "1" if check_tensors else "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the interpreter died (rc {proc.returncode}) loading {path}:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


def llama_completion(path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [h.tool("llama-completion"), "-m", path, "-n", "1", "-p", "hi", "--no-warmup", "-t", "1", "-c", "64",
           "-no-cnv", *extra]
    # a model of random weights prints any bytes: not necessarily UTF-8
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", timeout=120)


def assert_tool_refuses(proc: subprocess.CompletedProcess):
    """An error exit: not 0, not a signal (negative, or 128+N from a shell), no sanitizer report.
    (llama.cpp's own error lines can be lost at exit, its log thread is not flushed: not checked.)"""
    out = proc.stdout + proc.stderr
    assert 0 < proc.returncode < 128, f"rc {proc.returncode}:\n{out[-3000:]}"
    for crash in ("AddressSanitizer", "Segmentation fault", "GGML_ASSERT", "Aborted"):
        assert crash not in out, out[-3000:]


def assert_refused(path: Path, *needles: str, check_tensors: bool = False) -> dict:
    r = bindings_load(path, check_tensors)
    assert not r["loaded"] and r["type"] == "ModelLoadError", r
    for needle in needles:
        assert needle in r["message"], r
    assert_tool_refuses(llama_completion(path, *(["--check-tensors"] if check_tensors else [])))
    return r


def assert_reader_refuses(path: Path, *needles: str):
    """gguf_io (gguf-py underneath) refuses it with a ValueError as well."""
    from llama_mpq2 import gguf_io
    with pytest.raises(ValueError) as e:
        for t in gguf_io.tensors(path):
            gguf_io.read_tensor(path, t.name)
    for needle in needles:
        assert needle in str(e.value)


# ---------------------------------------------------------------- the control

def test_intact_model_loads_and_runs(good):
    r = bindings_load(good["path"], check_tensors=True)
    assert r["loaded"] and r["n_vocab"] == 264, r
    proc = llama_completion(good["path"], "--check-tensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from llama_mpq2 import gguf_io
    assert np.isfinite(gguf_io.read_tensor(good["path"], UP)).all()


# ---------------------------------------------------------------- truncated files

TRUNCATED = {   # part cut -> what llama.cpp says (via Model's exception)
    "empty": "failed to read magic",
    "header": "failed to read header",
    "metadata": "failed to read key-value pairs",
    "tensor_table": "failed to read tensor info",
    "tensor_data": "data is not within the file bounds",
    "last_byte": "data is not within the file bounds",
}


@pytest.mark.parametrize("part", sorted(TRUNCATED))
def test_truncated_gguf(good, tmp_path, part):
    path = write_bad(tmp_path, f"cut-{part}", gd.truncations(good["data"])[part])
    assert_refused(path, TRUNCATED[part])
    assert_reader_refuses(path)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("this is not a model\n" * 10)
    assert_refused(path, "invalid magic")
    assert_reader_refuses(path, "not a readable GGUF")


# ---------------------------------------------------------------- table entries pointing past the end

def test_tensor_offset_past_end_of_file(good, tmp_path):
    last = good["layout"].tensors[-1]
    path = write_bad(tmp_path, "offset", gd.set_u64(good["data"], last.offset_offset, 1 << 40))
    assert_refused(path, f"tensor '{last.name}' has offset 1099511627776")


def test_tensor_shape_reaching_past_end_of_file(good, tmp_path):
    last = good["layout"].tensors[-1]
    path = write_bad(tmp_path, "rows", gd.set_u64(good["data"], last.ne_offsets[1], last.ne[1] * 4))
    assert_refused(path, f"tensor '{last.name}' data is not within the file bounds")
    assert_reader_refuses(path)


# ---------------------------------------------------------------- invalid MPQ2 blocks

@pytest.mark.parametrize("word,byte", [(0, 0), (2, 1), (3, 3)])
def test_int8_code_minus_128(good, tmp_path, word, byte):
    """The one invalid MPQ2 block content: -128 in a word the bitmap marks int8 (the encoder
    writes -127..127)."""
    path = write_bad(tmp_path, f"m128-{word}-{byte}", gd.with_int8_code(good["data"], UP, BAD_BLOCK, word, byte, -128))
    # our reader names the tensor and the block
    from llama_mpq2 import gguf_io
    with pytest.raises(ValueError, match=rf"tensor '{re.escape(UP)}' is damaged: int8 code -128 .*at block {BAD_BLOCK} "):
        gguf_io.read_tensor(path, UP)
    # llama.cpp's check (Model(check_tensors=True), --check-tensors) refuses it, naming the
    # tensor (in the exception) and the block (on stderr, from mpq2_validate_row_data)
    expected = rf"mpq2_validate_row_data: found int8 code -128 in salient word {word} at block {BAD_BLOCK}\n"
    r = assert_refused(path, f"tensor '{UP}' has invalid data", check_tensors=True)
    assert re.search(expected, r["stderr"]), r["stderr"]
    proc = llama_completion(path, "--check-tensors")
    assert re.search(expected, proc.stderr), proc.stderr[-3000:]
    # without the check llama.cpp does not look at the data (upstream design): it loads
    assert bindings_load(path, check_tensors=False)["loaded"]


def test_no_header_can_hold_a_nan_inf_or_negative_scale():
    """Every 32-bit header is valid: 4 bitmap bits (one per word of the block; a row is whole
    blocks, so no bit can mark a word past the row), 4 x 3-bit scale codes (all 8 defined),
    4 x 2-bit zero codes (all 4 defined) and an E6M2 block scale whose 256 codes are all finite
    and positive (FORMAT.md). All 65536 meta values, with every zero and d byte among them:
    valid, finite, decoded alike by C and numpy, int8 words where the bitmap says so."""
    from llama_mpq2 import ggml
    from mpq2 import codec
    from mpq2.format import d_from_code
    d = d_from_code(np.arange(256))
    assert np.isfinite(d).all() and (d > 0).all() and (np.diff(d) > 0).all()
    n = 1 << 16
    q = np.zeros((n, gd.BLOCK), np.uint8)
    meta = np.arange(n, dtype=np.uint32)
    q[:, 0:2] = meta.astype("<u2").view(np.uint8).reshape(-1, 2)
    q[:, 2] = meta & 0xFF                                   # every zero byte
    q[:, 3] = meta >> 8                                     # every scale code
    q[:, 4:] = np.arange(16, dtype=np.uint8) * 16 + 7      # no 0x80 byte
    assert ggml.validate(q.reshape(1, -1))
    w = ggml.dequantize(q)
    assert np.isfinite(w).all()
    np.testing.assert_array_equal(w, codec.dequantize(q))
    # an int8 word repeats each of its 4 bytes 4 times; these 2-bit words never do
    runs = (w.reshape(n, 4, 4, 4) == w.reshape(n, 4, 4, 4)[..., :1]).all(axis=(-1, -2))
    salient = ((meta[:, None] >> np.arange(4)) & 1).astype(bool)
    assert runs[salient].all() and not runs[~salient].any()


def test_extreme_headers_load_under_check_tensors(good, tmp_path):
    """The smallest and the largest block scale, every word int8 or every word 2-bit: accepted
    by --check-tensors; llama.cpp loads and runs the model."""
    data = good["data"]
    data = gd.with_header(data, UP, 0, meta=0xFFFF, zero=0xFF, d=0xFF)
    data = gd.with_header(data, UP, 1, meta=0x0000, zero=0x00, d=0x00)
    data = gd.with_header(data, UP, 2, meta=0xFFF0, zero=0xFF, d=0xFF)
    path = write_bad(tmp_path, "extreme", data)
    assert bindings_load(path, check_tensors=True)["loaded"]
    proc = llama_completion(path, "--check-tensors")
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------- rows that are not whole blocks

def test_mpq2_row_not_a_multiple_of_64_in_a_file(good, tmp_path):
    t = good["layout"].tensor(UP)
    path = write_bad(tmp_path, "row96", gd.set_u64(good["data"], t.ne_offsets[0], 96))
    assert_refused(path, f"tensor '{UP}' of type 96 (mpq2) has 96 elements per row, not a multiple of block size (64)")


def test_writers_refuse_rows_not_a_multiple_of_64():
    from llama_mpq2 import ggml
    from mpq2 import codec, gguf_out
    x = np.ones((2, 96), np.float32)
    for quantize in (codec.quantize, ggml.quantize, lambda v: gguf_out.encode(v, "mpq2")):
        with pytest.raises(ValueError, match="multiple of 64"):
            quantize(x)
    assert not gguf_out.fits("mpq2", 96) and gguf_out.fits("q8_0", 96)
    with pytest.raises(ValueError):          # nor can gguf-py be handed bytes that are not whole blocks
        import gguf
        gguf.GGUFWriter(os.devnull, "llama").add_tensor("x", np.zeros((2, 30), np.uint8),
                                                        raw_dtype=gguf.GGMLQuantizationType.MPQ2)


def test_llama_quantize_falls_back_on_rows_not_a_multiple_of_64(tmp_path):
    src = gd.tiny_llama_gguf(tmp_path / "f32-ff96.gguf", weight_type=0, n_ff=96)
    out = tmp_path / "mpq2.gguf"
    proc = h.run([h.tool("llama-quantize"), "--pure", src, out, "MPQ2", "1"], timeout=300)
    assert "blk.0.ffn_down.weight" in proc.stdout + proc.stderr and "falling back" in proc.stdout + proc.stderr
    types = h.tensor_types(out)
    assert types["blk.0.ffn_down.weight"] != "MPQ2" and types["blk.0.ffn_up.weight"] == "MPQ2", types
    assert llama_completion(out, "--check-tensors").returncode == 0


# ---------------------------------------------------------------- other table damage

@pytest.mark.parametrize("type_id,needle", [(95, "not a multiple of block size (0)"), (100, "invalid ggml type 100")])
def test_unknown_tensor_type(good, tmp_path, type_id, needle):
    t = good["layout"].tensor(UP)
    path = write_bad(tmp_path, f"type{type_id}", gd.set_u32(good["data"], t.type_offset, type_id))
    assert_refused(path, needle)


@pytest.fixture(scope="module")
def shape_abort(good) -> Path:
    """The model with one more tensor of shape (64, 0, 2^32, 2^32): accepted by gguf.cpp, fatal
    to ggml_new_tensor (found by the fuzzer, tests/fuzz/corpus/regress-gguf-shape-ggml-new-tensor-abort)."""
    path = gd.tiny_llama_gguf(good["root"] / "shape4d.gguf", extra=[("zz.weight", np.zeros((1, 1, 1, 64), np.float32), None)])
    data = path.read_bytes()
    t = gd.layout(data).tensor("zz.weight")
    for i, v in ((1, 0), (2, 1 << 32), (3, 1 << 32)):
        data = gd.set_u64(data, t.ne_offsets[i], v)
    path.write_bytes(data)
    return path


def test_shape_that_aborts_ggml_is_refused_by_the_bindings(shape_abort):
    r = bindings_load(shape_abort)
    assert not r["loaded"] and r["type"] == "ModelLoadError" and "zz.weight" in r["message"], r


@pytest.mark.xfail(strict=True, reason="upstream limit (docs/ROBUSTNESS.md): gguf.cpp accepts the shape and "
                                       "ggml_new_tensor_impl GGML_ASSERTs, llama.cpp tools abort")
def test_shape_that_aborts_ggml_llama_tool(shape_abort):
    assert_tool_refuses(llama_completion(shape_abort))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "tests/fuzz/corpus").glob("regress-*")))
def test_fuzzer_regression_inputs_refused_by_the_bindings(name):
    r = bindings_load(REPO / "tests/fuzz/corpus" / name)
    assert not r["loaded"] and r["type"] == "ModelLoadError", r


# ---------------------------------------------------------------- the converter's output

CONVERT = [sys.executable, str(REPO / "converter" / "convert_mpq.py")]
FAST = ["--nsamples", "2", "--seqlen", "16", "--quiet"]


@pytest.fixture(scope="module")
def f32_model(good) -> Path:
    return gd.tiny_llama_gguf(good["root"] / "f32.gguf", weight_type=0)


def _file_size_limit(nbytes: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))    # Python ignores SIGXFSZ: writes fail
    return set_limit


def _leftovers(d: Path, out: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith((f".{out.name}.", ".mpq2-"))]


@pytest.mark.slow
def test_converter_full_disk(f32_model, tmp_path):
    out = tmp_path / "out.gguf"
    proc = subprocess.run([*CONVERT, f32_model, "-o", out, *FAST], capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(16 * 1024))          # the output is ~31 KB
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "convert_mpq: error: could not write" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists() and not _leftovers(tmp_path, out)


@pytest.mark.slow
def test_converter_full_disk_keeps_the_existing_file(f32_model, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the user's file")
    out.chmod(0o640)
    proc = subprocess.run([*CONVERT, f32_model, "-o", out, "--force", *FAST], capture_output=True, text=True,
                          timeout=600, preexec_fn=_file_size_limit(16 * 1024))
    assert proc.returncode == 1 and "could not write" in proc.stderr, proc.stderr[-3000:]
    assert out.read_bytes() == b"the user's file" and not _leftovers(tmp_path, out)
    proc = subprocess.run([*CONVERT, f32_model, "-o", out, "--force", *FAST], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes()[:4] == b"GGUF" and (out.stat().st_mode & 0o777) == 0o640    # --force keeps the mode


def test_atomic_writer_output_mode_follows_umask(good, tmp_path):
    """mkstemp creates 0600 files; the renamed output gets 0666 less the umask like any file."""
    import gguf
    from mpq2 import gguf_out
    reader = gguf.GGUFReader(good["path"])
    old = os.umask(0o022)
    try:
        gguf_out.write_atomic(tmp_path / "o.gguf", reader, {}, 96, force=False)
    finally:
        os.umask(old)
    assert ((tmp_path / "o.gguf").stat().st_mode & 0o777) == 0o644
    copy = gguf.GGUFReader(tmp_path / "o.gguf")
    assert [(t.name, bytes(t.data)) for t in copy.tensors] == [(t.name, bytes(t.data)) for t in reader.tensors]


# ---------------------------------------------------------------- the table itself

def test_every_test_named_in_robustness_md_exists():
    doc = (REPO / "docs/ROBUSTNESS.md").read_text()
    refs = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc))
    assert len(refs) >= 15, refs
    for path, name in refs:
        src = (REPO / path).read_text()
        assert re.search(rf"^def {name}\(", src, re.M), f"docs/ROBUSTNESS.md names {path}::{name}, which does not exist"
