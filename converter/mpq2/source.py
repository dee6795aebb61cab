"""The input model's weights, read lazily: one tensor (or a few rows of one) at a time, in its
stored dtype, under its Hugging Face name and in Hugging Face's row order.

- SafetensorsSource: a Hugging Face directory, memory-mapped shards (safetensors.safe_open);
  every shard's header is checked up front against its size and the index, so a missing or
  truncated shard stops the run before any work.
- GGUFSource: a GGUF file through gguf-py's memory map, one tensor dequantized at a time, Q/K
  rows un-permuted where llama.cpp permuted them.
- StateDictSource: tensors already in memory (tests: the streaming path against the in-memory one).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import ConvertError

READ_ROWS = 8192   # rows of a tall matrix read at a time by Source.get

_ST_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1}


class Source:
    """Lazy HF-named tensors: names(), shape(name), get(name, rows=None) -> float32 torch."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def _read(self, name: str, rows: slice | None) -> torch.Tensor:
        raise NotImplementedError

    def where(self, name: str) -> str:
        """The file a tensor comes from, for error messages."""
        raise NotImplementedError

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor (or rows of it) as float32, checked for NaN/Inf. A whole tall matrix (a
        128k-row embedding or output) is read READ_ROWS rows at a time into the float32 result:
        read whole, its stored copy, the float32 copy and the finiteness mask (4 + 2 + 4 + 1
        bytes per weight) were all alive at once, 2.6 GB over the result for an 8B model's output."""
        if name not in self.shape_map():
            raise ConvertError(f"{self.where(name)}: no tensor {name}")
        shape = self.shape(name)
        if rows is not None or len(shape) != 2 or shape[0] <= READ_ROWS:
            return self._checked(name, rows)
        out = torch.empty(shape, dtype=torch.float32)
        for lo in range(0, shape[0], READ_ROWS):
            hi = min(lo + READ_ROWS, shape[0])
            out[lo:hi] = self._checked(name, slice(lo, hi))
        return out

    def _checked(self, name: str, rows: slice | None) -> torch.Tensor:
        t = self._read(name, rows).to(torch.float32)
        if not torch.isfinite(t).all():
            raise ConvertError(f"tensor {name} of {self.where(name)} holds NaN or Inf values; the checkpoint is damaged")
        return t

    def shape_map(self) -> dict[str, tuple[int, ...]]:
        return {n: self.shape(n) for n in self.names()}

    def block(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor under `prefix` (e.g. 'model.layers.3.'), keyed by the rest of its name."""
        return {n[len(prefix):]: self.get(n) for n in self.names() if n.startswith(prefix)}


class StateDictSource(Source):
    def __init__(self, tensors: dict[str, torch.Tensor], label: str = "state dict"):
        self.tensors = tensors
        self.label = label

    def names(self):
        return list(self.tensors)

    def shape(self, name):
        return tuple(self.tensors[name].shape)

    def shape_map(self):
        return {n: tuple(t.shape) for n, t in self.tensors.items()}

    def _read(self, name, rows):
        t = self.tensors[name]
        return t if rows is None else t[rows]

    def where(self, name):
        return self.label


def _safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path}: truncated safetensors file ({size} bytes); download it again")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise ConvertError(f"{path}: truncated safetensors header; download the file again")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConvertError(f"{path}: damaged safetensors header ({e}); download the file again") from e
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        try:
            lo, hi = info["data_offsets"]
            want = int(np.prod(info["shape"], dtype=np.int64)) * _ST_DTYPES.get(info["dtype"], 1)
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{path}: damaged safetensors header at tensor {name}") from e
        if hi - lo != want:
            raise ConvertError(f"{path}: tensor {name} has {hi - lo} bytes for shape {info['shape']}; the file is damaged")
        end = max(end, hi)
    if 8 + n + end > size:
        raise ConvertError(f"{path} is truncated: {size} bytes, its header needs {8 + n + end}; download it again")
    return header


class SafetensorsSource(Source):
    """A Hugging Face directory: shards memory-mapped, tensors read on demand."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ConvertError(f"{index}: not a safetensors index ({e})") from e
            shards = sorted(set(weight_map.values()))
        else:
            shards = sorted(p.name for p in self.dir.glob("*.safetensors"))
            weight_map = None
        if not shards:
            raise ConvertError(f"{self.dir} has no *.safetensors weights (convert .bin checkpoints to safetensors first)")
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            path = self.dir / shard
            if not path.is_file():
                raise ConvertError(f"{path}: shard named in {index.name} is missing; download it")
            for name, info in _safetensors_header(path).items():
                self._where[name] = path
                self._shapes[name] = tuple(info["shape"])
        if weight_map is not None:
            for name, shard in weight_map.items():
                if self._where.get(name) != self.dir / shard:
                    raise ConvertError(f"{index}: tensor {name} is listed in {shard}, which does not hold it; "
                                       f"the download is incomplete or the index is wrong")

    def names(self):
        return list(self._shapes)

    def shape(self, name):
        return self._shapes[name]

    def shape_map(self):
        return dict(self._shapes)

    def where(self, name):
        return str(self._where.get(name, self.dir))

    def _read(self, name, rows):
        from safetensors import safe_open
        path = self._where[name]
        # opened per read, not kept: a mapping that stays open keeps every page it touched in
        # the process's resident memory, up to the whole shard (4-5 GB in an 8B checkpoint)
        try:
            with safe_open(str(path), framework="pt") as h:
                return h.get_tensor(name) if rows is None else h.get_slice(name)[rows]
        except Exception as e:  # noqa: BLE001 - safetensors raises its own kinds
            raise ConvertError(f"{path}: cannot read tensor {name}: {e}") from e


class GGUFSource(Source):
    """A GGUF file (F32/F16/BF16/Q8_0/Q4_x/...): tensors dequantized one at a time."""

    def __init__(self, path: Path, reader=None):
        import gguf

        from . import codec  # noqa: F401  registers MPQ2 with gguf.quants
        from .gguf_in import hf_name
        self.path = Path(path)
        try:
            self.reader = reader or gguf.GGUFReader(self.path)
        except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError, struct.error, ...
            raise ConvertError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        field = self.reader.fields["general.architecture"]
        self.arch = bytes(field.parts[field.data[0]]).decode()
        self._tensors = {}
        for t in self.reader.tensors:
            try:
                self._tensors[hf_name(t.name)] = t
            except KeyError:
                continue      # rope_freqs and other non-weights: layout.py copies them as they are
        self.n_head = self._uint(f"{self.arch}.attention.head_count")
        self.n_kv = self._uint(f"{self.arch}.attention.head_count_kv") or self.n_head

    def _uint(self, key: str) -> int | None:
        f = self.reader.fields.get(key)
        return None if f is None else int(f.parts[f.data[0]][0])

    def names(self):
        return list(self._tensors)

    def shape(self, name):
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def where(self, name):
        return str(self.path)

    def row_order(self, name: str) -> np.ndarray | None:
        """The permutation llama.cpp applied to this tensor's rows (GGUF row r = HF row order[r])."""
        from .layout import rope_permutation
        if self.arch != "llama":
            return None
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            return rope_permutation(self.shape(name)[0], self.n_head)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            return rope_permutation(self.shape(name)[0], self.n_kv)
        return None

    def _read(self, name, rows):
        import gguf
        t = self._tensors[name]
        shape = self.shape(name)
        order = self.row_order(name)
        data = t.data if rows is None or order is not None else t.data.reshape(shape[0], -1)[rows]
        w = gguf.quants.dequantize(data, t.tensor_type).reshape(-1, *shape[1:])
        if order is not None:
            w = w[np.argsort(order)]
            w = w if rows is None else w[rows]
        # F32 tensors come back as read-only views of the memory map: copied then, not otherwise
        return torch.from_numpy(np.require(w, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))


def open_source(path: Path) -> Source:
    if path.is_dir():
        return SafetensorsSource(path)
    return GGUFSource(path)
