"""Bindings without a trained model: numpy-level MPQ2 (quantize with an importance matrix or
Hessian diagonal, dequantize, dot), reading tensors out of GGUF files written here with gguf-py,
`info`, and llama.cpp refusing malformed files with Python exceptions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llama_mpq2 import ggml

REPO = Path(__file__).resolve().parents[1]


def _salient_words(raw: np.ndarray) -> tuple[int, int]:
    """Counts int8 words straight from the bytes (meta = bytes 0..1 of each 20-byte block, bits
    0..3 = bitmap), independently of mpq2.codec."""
    blocks = raw.reshape(-1, 20)
    meta = blocks[:, 0].astype(np.int64) | (blocks[:, 1].astype(np.int64) << 8)
    return int(sum(((meta >> w) & 1).sum() for w in range(4))), blocks.shape[0] * 4


def _outlier_rows(rng, rows=8, n=256):
    """Gaussian rows where some 16-weight words are piecewise constant over runs of 4 and large:
    int8 means represent those exactly, so the quantizer picks them."""
    x = rng.normal(size=(rows, n)).astype(np.float32)
    for r in range(rows):
        for w in rng.choice(n // 16, size=2, replace=False):
            x[r, 16 * w:16 * w + 16] = np.repeat(rng.normal(scale=6.0, size=4), 4)
    return x


def test_hessian_diag_is_mean_square_of_activations(rng):
    a = rng.normal(size=(50, 128)).astype(np.float32) * np.linspace(0.1, 3, 128, dtype=np.float32)
    np.testing.assert_allclose(ggml.hessian_diag(a), (a.astype(np.float64) ** 2).mean(0), rtol=1e-6)


def test_quantize_with_hessian_diag_same_as_imatrix_and_helps(rng):
    w = rng.normal(size=(32, 256)).astype(np.float32)
    scale = np.ones(256, np.float32)
    scale[rng.choice(256, 24, replace=False)] = 12.0            # a few loud input channels
    acts = rng.normal(size=(400, 256)).astype(np.float32) * scale
    h = ggml.hessian_diag(acts)
    q_h = ggml.quantize(w, hessian_diag=h)
    np.testing.assert_array_equal(q_h, ggml.quantize(w, h))
    q_plain = ggml.quantize(w)
    assert not np.array_equal(q_h, q_plain)
    y = w @ acts.T
    err_h = np.linalg.norm(ggml.dequantize(q_h) @ acts.T - y)
    err_plain = np.linalg.norm(ggml.dequantize(q_plain) @ acts.T - y)
    assert err_h < 0.95 * err_plain, (err_h, err_plain)
    with pytest.raises(ValueError):
        ggml.quantize(w, h, hessian_diag=h)
    with pytest.raises(ValueError):
        ggml.quantize(w, imatrix=h[:100])


def test_quantize_dequantize_dot_shapes_and_accuracy(rng):
    x = rng.normal(size=(3, 5, 128)).astype(np.float32)
    q = ggml.quantize(x)
    assert q.shape == (3, 5, 128 // 64 * 20) and q.dtype == np.uint8
    d = ggml.dequantize(q)
    assert d.shape == x.shape
    rel = np.linalg.norm(d - x) / np.linalg.norm(x)
    assert 0.0 < rel < 0.6, rel
    a = rng.normal(size=128).astype(np.float32)
    qq = q.reshape(15, -1)
    got = ggml.dot(qq, a)
    want = d.reshape(15, 128) @ a
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * np.abs(want).max())
    with pytest.raises(ValueError):
        ggml.quantize(np.zeros((2, 100), np.float32))


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    """A GGUF written with gguf-py: an MPQ2 tensor with int8 words, an F32 and a Q8_0 tensor."""
    import gguf
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    x = _outlier_rows(rng)
    q = ggml.quantize(x)
    f = rng.normal(size=(4, 64)).astype(np.float32)
    q8_src = rng.normal(size=(2, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(q8_src, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("mpq2.weight", q, raw_dtype=gguf.GGMLQuantizationType.MPQ2)
    w.add_tensor("f32.weight", f)
    w.add_tensor("q8.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"path": path, "x": x, "q": q, "f": f, "q8_src": q8_src}


def test_read_tensor_mpq2_f32_q8(small_gguf):
    from llama_mpq2 import read_tensor, read_tensor_bytes, tensors
    p = small_gguf["path"]
    infos = {t.name: t for t in tensors(p)}
    assert infos["mpq2.weight"].type_name == "MPQ2" and infos["mpq2.weight"].shape == (8, 256)
    assert infos["mpq2.weight"].bits_per_weight == pytest.approx(2.5)
    assert infos["f32.weight"].type_name == "F32" and infos["f32.weight"].shape == (4, 64)
    raw, info = read_tensor_bytes(p, "mpq2.weight")
    assert raw.dtype == np.uint8 and raw.shape == (8, 80)
    np.testing.assert_array_equal(raw, small_gguf["q"])
    w = read_tensor(p, "mpq2.weight")
    assert w.dtype == np.float32 and w.shape == (8, 256)
    np.testing.assert_array_equal(w, ggml.dequantize(small_gguf["q"]))
    from mpq2 import codec                     # the numpy mirror, independent of the C path
    np.testing.assert_array_equal(w, codec.dequantize(raw))
    np.testing.assert_array_equal(read_tensor(p, "f32.weight"), small_gguf["f"])
    q8 = read_tensor(p, "q8.weight")
    np.testing.assert_allclose(q8, small_gguf["q8_src"], atol=0.05)
    with pytest.raises(KeyError):
        read_tensor(p, "nope")


def test_mpq2_stats_salient_fraction(small_gguf):
    from llama_mpq2 import mpq2_stats, read_tensor_bytes
    raw, _ = read_tensor_bytes(small_gguf["path"], "mpq2.weight")
    n8, nw = _salient_words(raw)
    assert n8 > 0                              # the piecewise-constant words became int8 words
    s = mpq2_stats(raw)
    assert s["words"] == nw and s["salient_fraction"] == pytest.approx(n8 / nw)


def _cli(*args, input=None, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "converter"), str(REPO / "python_bindings"),
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "llama_mpq2", *map(str, args)], capture_output=True,
                          text=True, input=input, timeout=timeout, env=env)


def test_cli_info_json_and_table(small_gguf):
    raw = small_gguf["q"]
    n8, nw = _salient_words(raw)
    proc = _cli("info", small_gguf["path"], "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["tensors"]}
    assert rows["mpq2.weight"]["type"] == "MPQ2" and rows["mpq2.weight"]["shape"] == [8, 256]
    assert rows["mpq2.weight"]["bpw"] == pytest.approx(2.5)
    assert rows["mpq2.weight"]["salient_fraction"] == pytest.approx(n8 / nw, abs=1e-6)
    assert rows["f32.weight"]["bpw"] == pytest.approx(32.0) and "salient_fraction" not in rows["f32.weight"]
    assert rows["q8.weight"]["bpw"] == pytest.approx(8.5)
    table = _cli("info", small_gguf["path"])
    assert table.returncode == 0
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("mpq2.weight"))
    assert "MPQ2" in line and "8x256" in line and f"{n8 / nw:.4f}" in line


def test_pyproject_declares_console_script():
    import tomllib
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llama-mpq2"] == "llama_mpq2.__main__:main"
    from llama_mpq2.__main__ import main
    assert callable(main)


# ---- malformed files: exceptions with llama.cpp's reason, never a crash

def _patch_tensor_type(src: Path, dst: Path, name: str, type_id: int) -> None:
    """Copies a GGUF, rewriting the ggml type id in the tensor info of `name`."""
    import gguf
    reader = gguf.GGUFReader(src)
    t = next(t for t in reader.tensors if t.name == name)
    # tensor info: name (u64 length + bytes), n_dims (u32), dims (u64 each), type (u32), offset (u64)
    pos = t.field.offset + 8 + len(name.encode()) + 4 + 8 * len(t.shape)
    data = bytearray(src.read_bytes())
    assert int.from_bytes(data[pos:pos + 4], "little") == int(t.tensor_type)
    data[pos:pos + 4] = type_id.to_bytes(4, "little")
    dst.write_bytes(bytes(data))


def test_model_errors_without_a_model(tmp_path, small_gguf):
    from llama_mpq2 import LlamaError, Model, ModelLoadError
    with pytest.raises(FileNotFoundError, match="no such model file"):
        Model(tmp_path / "missing.gguf")
    rnd = tmp_path / "random.gguf"
    rnd.write_bytes(np.random.default_rng(3).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match="magic"):
        Model(rnd)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(LlamaError):
        Model(empty)
    with pytest.raises(ModelLoadError):
        Model(tmp_path)                       # a directory
    bad = tmp_path / "t77.gguf"
    _patch_tensor_type(small_gguf["path"], bad, "f32.weight", 77)
    with pytest.raises(ModelLoadError, match="type 77"):
        Model(bad)
    with pytest.raises(ValueError):           # gguf-py does not know type 77 either
        from llama_mpq2 import read_tensor
        read_tensor(bad, "f32.weight")
