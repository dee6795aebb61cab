"""Writes the seed corpus of the libFuzzer target into tests/fuzz/corpus/ (deterministic).

    python3 tests/fuzz/make_corpus.py

seed-gguf-*: small valid GGUFs with MPQ2 tensors, then truncated and corrupted variants of them;
seed-raw-*: raw MPQ2 bytes (any input not starting with "GGUF"). Files named regress-* are inputs
that once crashed the target (docs/ROBUSTNESS.md); this script leaves them alone.
"""
from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gguf_damage as gd  # noqa: E402

CORPUS = HERE / "corpus"


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = gd.small_mpq2_gguf(Path(tmp) / "a.gguf").read_bytes()
        aligned = gd.small_mpq2_gguf(Path(tmp) / "b.gguf", seed=1, alignment=64).read_bytes()
    out["seed-gguf-valid"] = base
    out["seed-gguf-valid-align64"] = aligned
    for part, data in gd.truncations(base).items():
        if data:
            out[f"seed-gguf-truncated-{part}"] = data
    up, down = "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"
    out["seed-gguf-int8-code-128"] = gd.with_int8_code(base, up, 2, 3, 1, -128)
    out["seed-gguf-int8-code-127"] = gd.with_int8_code(base, up, 2, 3, 1, -127)      # valid
    out["seed-gguf-largest-scale"] = gd.with_header(base, down, 3, meta=0xFFFF, zero=0xFF, d=0xFF)   # valid
    out["seed-gguf-smallest-scale"] = gd.with_header(base, up, 0, meta=0x0000, zero=0x00, d=0x00)    # valid
    lay = gd.layout(base)
    t = lay.tensor(up)
    out["seed-gguf-row-96"] = gd.set_u64(base, t.ne_offsets[0], 96)                  # not a multiple of 64
    out["seed-gguf-type-gap-95"] = gd.set_u32(base, t.type_offset, 95)
    out["seed-gguf-mpq2r"] = gd.set_u32(base, t.type_offset, gd.MPQ2R)              # the same blocks, rotated
    # Q8_0R: token_embd's Q8_0 bytes, (2, 64), are one Q8_0R block per row
    out["seed-gguf-q8_0r"] = gd.set_u32(base, lay.tensor("token_embd.weight").type_offset, gd.Q8_0R)
    # MPQ2S: a 2-D and a 3-D tensor of encoded rows, and the largest header (every bit set)
    with tempfile.TemporaryDirectory() as tmp:
        out["seed-gguf-mpq2s"] = _mpq2s_gguf(Path(tmp) / "s.gguf")
    s_lay = gd.layout(out["seed-gguf-mpq2s"])
    s_up = s_lay.tensor("blk.0.ffn_up.weight")
    out["seed-gguf-mpq2s-largest-header"] = gd.patch(out["seed-gguf-mpq2s"], s_up.data_offset, b"\xff\xff\xff\xff")
    out["seed-gguf-mpq2s-row-192"] = gd.set_u64(out["seed-gguf-mpq2s"], s_up.ne_offsets[0], 192)   # not a multiple of 128
    out["seed-gguf-offset-past-end"] = gd.set_u64(base, lay.tensors[-1].offset_offset, 1 << 40)
    out["seed-gguf-rows-past-end"] = gd.set_u64(base, t.ne_offsets[1], 1 << 20)
    # raw MPQ2 blocks
    raw = bytes(gd.mpq2_bytes(2, 128, 7, 0.5).ravel())
    out["seed-raw-valid-4-blocks"] = raw
    out["seed-raw-19-bytes"] = raw[:19]
    out["seed-raw-21-bytes"] = raw[:21]
    big = bytearray(raw[:40])
    big[0:4] = bytes([0xFF, 0xFF, 0xFF, 0xFF])     # every word int8, scale code 7, zero code 3, d = 255
    out["seed-raw-largest-header"] = bytes(big)
    int8_all = bytearray(raw[:20])
    int8_all[0:2] = struct.pack("<H", 0x000F)       # every word int8, scale code 0
    out["seed-raw-all-int8"] = bytes(int8_all)
    int8_all[7] = 0x80
    out["seed-raw-int8-code-128"] = bytes(int8_all)
    # 64 and 128 floats (whole blocks of 256 bytes): the target also quantizes them
    import numpy as np
    rng = np.random.default_rng(11)
    floats = (rng.standard_normal(128) * 0.05).astype(np.float32)
    floats[[3, 77]] *= 40.0
    out["seed-raw-floats-128"] = floats.tobytes()
    odd = floats[:64].copy()
    odd[[1, 9, 30]] = [np.nan, np.inf, -np.inf]
    odd[40] = np.float32(1e-42)                     # subnormal
    out["seed-raw-floats-64-nonfinite"] = odd.tobytes()
    return out


def _mpq2s_gguf(path: Path) -> bytes:
    import numpy as np
    sys.path.insert(0, str(HERE.parents[1] / "converter"))
    from mpq2 import codec_s
    rng = np.random.default_rng(5)
    up = codec_s.quantize(rng.standard_normal((3, 256)).astype(np.float32))
    down = codec_s.quantize(rng.standard_normal((4, 128)).astype(np.float32)).reshape(2, 2, 36)
    return gd.write(path, [("blk.0.ffn_up.weight", up, gd.MPQ2S), ("blk.0.ffn_down.weight", down, gd.MPQ2S)],
                    {"general.name": "mpq2s fuzz seed"}).read_bytes()


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.glob("seed-*"):
        old.unlink()
    for name, data in seeds().items():
        (CORPUS / name).write_bytes(data)
    print(f"{len(list(CORPUS.glob('seed-*')))} seeds, {len(list(CORPUS.glob('regress-*')))} regression inputs in {CORPUS}")


if __name__ == "__main__":
    main()
