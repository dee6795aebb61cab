"""Tiny GGUF files with MPQ2 tensors, and ways to damage them, for the fuzzers' seed corpus
(tests/fuzz/make_corpus.py) and tests/test_robustness.py.

`layout()` is a small GGUF parser of its own (not gguf-py's), returning where every part of a
file lies, so a test can cut or patch the exact field it means.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MPQ2 = 96
MPQ2R = 97     # the same blocks in a rotated basis
Q8_0R = 98     # MPQ2R's activations: two Q8_0 blocks per 64 weights
MPQ2S = 99     # the 2.25-bit tier: 36 bytes per 128 weights
BLOCK = 20
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # gguf_type -> bytes
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    start: int               # where the tensor's entry in the table starts
    ne_offsets: list[int]    # file offset of each dimension (uint64)
    ne: list[int]
    type_offset: int         # int32 ggml type
    type: int
    offset_offset: int       # uint64 offset of the data within the data section
    data_offset: int         # absolute file offset of the data
    nbytes: int


@dataclass
class Layout:
    size: int
    header_end: int                      # after magic, version, n_tensors, n_kv
    kv_spans: list[tuple[str, int, int]] = field(default_factory=list)   # (key, start, end)
    tensor_table: tuple[int, int] = (0, 0)
    data_start: int = 0
    alignment: int = 32
    tensors: list[TensorInfo] = field(default_factory=list)

    def tensor(self, name: str) -> TensorInfo:
        return next(t for t in self.tensors if t.name == name)


def _type_size(ggml_type: int) -> tuple[int, int]:
    """(block size, type size) of the ggml types these files use."""
    return {0: (1, 4), 1: (1, 2), 8: (32, 34), MPQ2: (64, BLOCK), MPQ2R: (64, BLOCK), Q8_0R: (64, 68),
            MPQ2S: (128, 36)}[ggml_type]


def layout(data: bytes) -> Layout:
    """Offsets of every part of a well-formed GGUF (v2/v3, little endian)."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string() -> str:
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def skip_value(t: int) -> int | None:
        nonlocal pos
        if t == _STRING:
            string()
        elif t == _ARRAY:
            at, n = take("I"), take("Q")
            for _ in range(n):
                skip_value(at)
        else:
            value = data[pos:pos + _SCALAR[t]]
            pos += _SCALAR[t]
            return int.from_bytes(value, "little")
        return None

    assert data[:4] == b"GGUF", "not a GGUF"
    pos = 4
    _version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    lay = Layout(size=len(data), header_end=pos)
    for _ in range(n_kv):
        start = pos
        key = string()
        t = take("I")
        value = skip_value(t)
        if key == "general.alignment":
            lay.alignment = int(value)
        lay.kv_spans.append((key, start, pos))
    table_start = pos
    infos = []
    for _ in range(n_tensors):
        start = pos
        name = string()
        n_dims = take("I")
        ne_offsets, ne = [], []
        for _ in range(n_dims):
            ne_offsets.append(pos)
            ne.append(take("Q"))
        type_offset = pos
        ggml_type = take("I")
        offset_offset = pos
        rel = take("Q")
        infos.append((name, start, ne_offsets, ne, type_offset, ggml_type, offset_offset, rel))
    lay.tensor_table = (table_start, pos)
    a = lay.alignment
    lay.data_start = (pos + a - 1) // a * a
    for name, start, ne_offsets, ne, type_offset, ggml_type, offset_offset, rel in infos:
        blck, tsize = _type_size(ggml_type)
        nbytes = int(np.prod(ne, dtype=np.int64)) // blck * tsize
        lay.tensors.append(TensorInfo(name, start, ne_offsets, ne, type_offset, ggml_type, offset_offset,
                                      lay.data_start + rel, nbytes))
    return lay


# ---------------------------------------------------------------- damage

def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def set_u64(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<Q", value))


def set_u32(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<I", value))


def mpq2_block_offset(data: bytes, tensor: str, block: int) -> int:
    t = layout(data).tensor(tensor)
    assert t.type == MPQ2 and 0 <= block < t.nbytes // BLOCK
    return t.data_offset + block * BLOCK


def with_header(data: bytes, tensor: str, block: int, meta: int | None = None, zero: int | None = None,
                d: int | None = None) -> bytes:
    """One MPQ2 block's header fields replaced: meta (u16: bitmap, scale codes), zero codes (u8),
    block scale code d (u8, E6M2)."""
    off = mpq2_block_offset(data, tensor, block)
    if meta is not None:
        data = patch(data, off, struct.pack("<H", meta))
    if zero is not None:
        data = patch(data, off + 2, bytes([zero]))
    if d is not None:
        data = patch(data, off + 3, bytes([d]))
    return data


def with_int8_code(data: bytes, tensor: str, block: int, word: int, byte: int, code: int) -> bytes:
    """Word `word` of a block marked int8 in the bitmap, byte `byte` of it set to `code`."""
    off = mpq2_block_offset(data, tensor, block)
    meta = struct.unpack_from("<H", data, off)[0] | (1 << word)
    data = patch(data, off, struct.pack("<H", meta))
    return patch(data, off + 4 + 4 * word + byte, bytes([code & 0xFF]))


def truncations(data: bytes) -> dict[str, bytes]:
    """The file cut inside each of its parts."""
    lay = layout(data)
    kv_mid = lay.kv_spans[len(lay.kv_spans) // 2]
    table = lay.tensor_table
    last = lay.tensors[-1]
    return {
        "header": data[:lay.header_end - 5],
        "metadata": data[:(kv_mid[1] + kv_mid[2]) // 2],
        "tensor_table": data[:(table[0] + table[1]) // 2],
        "tensor_data": data[:last.data_offset + last.nbytes // 2],
        "last_byte": data[:-1],
        "empty": b"",
    }


# ---------------------------------------------------------------- writing

def mpq2_bytes(rows: int, cols: int, seed: int, salient_fraction: float = 0.25) -> np.ndarray:
    """(rows, cols/64*20) MPQ2 bytes of random weights with a few outliers (so int8 words occur)."""
    from mpq2 import codec
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[:, rng.integers(0, cols, max(1, cols // 32))] *= 12.0
    return codec.quantize(w, salient_fraction=salient_fraction)


def write(path: Path, tensors: list[tuple[str, np.ndarray, int | None]],
          kv: dict | None = None, arch: str = "mpq2test", alignment: int | None = None) -> Path:
    """A GGUF with the given tensors: (name, array, ggml type of its uint8 bytes, or None for a
    float array written as is)."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    if alignment:
        w.add_custom_alignment(alignment)
    for key, value in (kv or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, list) and value and isinstance(value[0], str):
            w.add_array(key, value)
        else:
            w.add_array(key, list(value))
    return _finish(w, path, tensors)


def _finish(w, path: Path, tensors) -> Path:
    import gguf
    for name, arr, raw_type in tensors:
        if raw_type is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=gguf.GGMLQuantizationType(raw_type))   # bytes: shape from them
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def small_mpq2_gguf(path: Path, seed: int = 0, alignment: int | None = None) -> Path:
    """A few-KB GGUF: two MPQ2 tensors (2-D and 3-D), an F32 and a Q8_0 one, assorted metadata."""
    import gguf
    rng = np.random.default_rng(seed)
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    tensors = [
        ("blk.0.ffn_up.weight", mpq2_bytes(3, 128, seed), MPQ2),
        ("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32), None),
        ("blk.0.ffn_down.weight", mpq2_bytes(4, 64, seed + 1, 1.0).reshape(2, 2, BLOCK), MPQ2),
        ("token_embd.weight", q8, int(gguf.GGMLQuantizationType.Q8_0)),
    ]
    kv = {"general.name": "mpq2 fuzz seed", "mpq2test.block_count": 1, "mpq2test.rms_eps": 1e-5,
          "mpq2test.flag": True, "tokenizer.ggml.tokens": ["<unk>", "a", "b"], "mpq2test.ids": [1, 2, 3]}
    return write(path, tensors, kv, alignment=alignment)


def tiny_llama_gguf(path: Path, *, n_embd: int = 64, n_ff: int = 128, weight_type: int = MPQ2, seed: int = 0,
                    extra: tuple = ()) -> Path:
    """A loadable one-layer Llama with random weights and a byte-level SentencePiece-style vocabulary
    (llama.cpp runs it; what it says is noise). weight_type MPQ2 or 0 (F32) for the matrices;
    `extra` tensors, as for write(), are appended to the table."""
    import gguf
    rng = np.random.default_rng(seed)
    pieces = ["\u2581hi", "\u2581the", "\u2581a", "hi", "the"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    n_vocab = len(tokens)

    def matrix(name: str, rows: int, cols: int):
        if weight_type == MPQ2 and cols % 64 == 0:
            return (name, mpq2_bytes(rows, cols, seed + len(name)), MPQ2)
        return (name, (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32), None)

    tensors = [
        matrix("token_embd.weight", n_vocab, n_embd),
        ("output_norm.weight", np.ones(n_embd, np.float32), None),
        matrix("output.weight", n_vocab, n_embd),
        ("blk.0.attn_norm.weight", np.ones(n_embd, np.float32), None),
        matrix("blk.0.attn_q.weight", n_embd, n_embd),
        matrix("blk.0.attn_k.weight", n_embd, n_embd),
        matrix("blk.0.attn_v.weight", n_embd, n_embd),
        matrix("blk.0.attn_output.weight", n_embd, n_embd),
        ("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32), None),
        matrix("blk.0.ffn_gate.weight", n_ff, n_embd),
        matrix("blk.0.ffn_up.weight", n_ff, n_embd),
        matrix("blk.0.ffn_down.weight", n_embd, n_ff),
        *extra,
    ]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("mpq2 robustness test model")
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // 2)
    w.add_vocab_size(n_vocab)
    w.add_file_type(MPQ2 if weight_type == MPQ2 else 0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-1.0] * len(pieces))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return _finish(w, path, tensors)
