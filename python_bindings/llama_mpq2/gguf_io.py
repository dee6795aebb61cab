"""Tensors of a GGUF file as numpy arrays (gguf-py's GGUFReader; MPQ2 decoded by the C code).

Shapes are numpy order: a ggml tensor with ne = (n_in, n_out) comes back as (n_out, n_in), rows
being ggml rows (MPQ2 blocks run along the last axis).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

MPQ2_TYPE_ID = 96
MPQ2_TYPE_IDS = {96: "mpq2", 97: "mpq2r"}   # MPQ2 and MPQ2R: the same blocks (docs/FORMAT.md)
MPQ2S_TYPE_ID = 99                          # the 2.25-bit tier (docs/FORMAT.md "MPQ2S")


def _reader(path: str | os.PathLike):
    import gguf
    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise
    except Exception as e:          # gguf-py raises ValueError/KeyError/... on malformed files
        raise ValueError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e


@dataclass
class TensorInfo:
    name: str
    type_name: str          # GGMLQuantizationType name: F32, Q4_K, MPQ2, ...
    type_id: int
    shape: tuple            # numpy order (rows ..., row length)
    n_elements: int
    n_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else 0.0


def _info(t) -> TensorInfo:
    return TensorInfo(t.name, t.tensor_type.name, int(t.tensor_type), tuple(int(d) for d in reversed(t.shape)),
                      int(t.n_elements), int(t.n_bytes))


def tensors(path: str | os.PathLike) -> list[TensorInfo]:
    """Name, type, shape, size of every tensor, in file order."""
    return [_info(t) for t in _reader(path).tensors]


def _find(reader, path, name):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise KeyError(f"no tensor {name!r} in {path}")


def read_tensor_bytes(path: str | os.PathLike, name: str) -> tuple[np.ndarray, TensorInfo]:
    """The raw bytes of a tensor as uint8 (rows, row_bytes) for quantized types (for MPQ2:
    rows of 20-byte blocks), with its TensorInfo. The array is a copy, not a view of the file."""
    reader = _reader(path)
    t = _find(reader, path, name)
    info = _info(t)
    raw = np.array(t.data, copy=True).view(np.uint8)
    rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
    return raw.reshape(rows, -1), info


def read_tensor(path: str | os.PathLike, name: str) -> np.ndarray:
    """A tensor dequantized to float32 in numpy order. MPQ2, MPQ2R and MPQ2S go through the patched
    ggml's dequantize_row_mpq2 / _mpq2r / _mpq2s; other types through gguf.quants."""
    raw, info = read_tensor_bytes(path, name)
    if info.type_id in MPQ2_TYPE_IDS:
        from mpq2.codec import find_invalid_block

        from . import ggml
        bad = find_invalid_block(raw)
        if bad is not None:
            raise ValueError(f"{path}: tensor {name!r} is damaged: {bad[1]} at block {bad[0]} "
                             f"(byte offset {bad[0] * 20} in the tensor's data)")
        return ggml.dequantize(raw, qtype=MPQ2_TYPE_IDS[info.type_id]).reshape(info.shape)
    if info.type_id == MPQ2S_TYPE_ID:        # every bit pattern is a valid MPQ2S block
        from . import ggml
        return ggml.dequantize(raw, qtype="mpq2s").reshape(info.shape)
    import gguf
    try:
        import mpq2.codec  # noqa: F401  (registers MPQ2 with gguf.quants, for completeness)
    except ImportError:
        pass
    qtype = gguf.GGMLQuantizationType(info.type_id)
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(info.shape)


def mpq2_stats(raw: np.ndarray) -> dict:
    """Bitmap statistics of MPQ2 bytes: salient (int8-word) fraction, blocks, words, scale codes."""
    from mpq2.codec import split_fields
    f = split_fields(raw)
    bitmap = f["bitmap"]
    return {
        "blocks": int(bitmap.shape[0]),
        "words": int(bitmap.size),
        "salient_fraction": float(bitmap.mean()) if bitmap.size else 0.0,
        "scale_code_hist": np.bincount(f["scale_code"].ravel(), minlength=8).tolist(),
    }
