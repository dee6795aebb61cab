"""The output GGUF written as the conversion goes: every tensor's type and shape are fixed
before quantizing starts, so the header (metadata and all tensor infos) is written first and
each tensor's bytes are appended in the declared order as soon as they are final. Nothing
full-size is held back until the end, and a stopped run can truncate the file to its last
finished tensor and go on (resume.py)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]                 # numpy order: (rows, cols) of the values
    qtype: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return rows * (self.shape[-1] // block) * type_size

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The shape gguf-py's writer expects for the stored bytes (uint8 for quantized types)."""
        if self.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            return self.shape
        return (*self.shape[:-1], self.nbytes // max(1, int(np.prod(self.shape[:-1], dtype=np.int64))))


class WriteError(RuntimeError):
    """The output could not be written (a full disk, a quota, a file size limit)."""


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class GGUFStream:
    """Appends tensors, in the order of `specs`, to a GGUF whose header is already written."""

    def __init__(self, path: Path, specs: list[TensorSpec], data_start: int, next_index: int = 0):
        self.path = Path(path)
        self.specs = specs
        self.data_start = data_start
        self.next = next_index
        self.offsets = []
        off = data_start
        for s in specs:
            self.offsets.append(off)
            off += _pad(s.nbytes)
        self.end = off
        self._f = open(self.path, "r+b")
        self._f.truncate(self.position)        # a resumed run drops what came after its checkpoint
        self._f.seek(self.position)
        self._written = 0                      # bytes of the current tensor written so far

    @classmethod
    def create(cls, path: Path, arch: str, add_metadata, specs: list[TensorSpec], ftype: int) -> "GGUFStream":
        """Writes the header: metadata (`add_metadata(writer)`), file type and every tensor info."""
        with _writing(path):
            return cls._create(path, arch, add_metadata, specs, ftype)

    @classmethod
    def _create(cls, path, arch, add_metadata, specs, ftype) -> "GGUFStream":
        w = gguf.GGUFWriter(path, arch)
        add_metadata(w)
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for s in specs:
            dtype = np.float32 if s.qtype == gguf.GGMLQuantizationType.F32 else \
                np.float16 if s.qtype == gguf.GGMLQuantizationType.F16 else np.uint8
            w.add_tensor_info(s.name, s.byte_shape, np.dtype(dtype), s.nbytes, s.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        size = Path(path).stat().st_size
        with open(path, "ab") as f:
            f.write(b"\0" * (_pad(size) - size))
        return cls(path, specs, _pad(size))

    @property
    def position(self) -> int:
        """Where the next tensor starts: the end of the last finished one."""
        return self.offsets[self.next] if self.next < len(self.specs) else self.end

    @property
    def expected(self) -> TensorSpec | None:
        return self.specs[self.next] if self.next < len(self.specs) else None

    def write(self, name: str, data: np.ndarray, last_part: bool = True) -> None:
        """Appends tensor `name` (or, with last_part=False, its next rows: a large tensor can be
        written in row chunks)."""
        spec = self.expected
        if spec is None or spec.name != name:
            raise RuntimeError(f"GGUF stream: expected {spec.name if spec else 'no more tensors'}, got {name}")
        raw = np.ascontiguousarray(data)
        with _writing(self.path):
            self._f.write(raw.tobytes())
        self._written += raw.nbytes
        if not last_part:
            return
        if self._written != spec.nbytes:
            raise RuntimeError(f"GGUF stream: {name} has {self._written} bytes, its info says {spec.nbytes}")
        with _writing(self.path):
            self._f.write(b"\0" * (_pad(spec.nbytes) - spec.nbytes))
        self._written = 0
        self.next += 1

    def sync(self) -> None:
        with _writing(self.path):
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:
                pass            # already reported by the write that failed

    def finished(self) -> bool:
        return self.next == len(self.specs)


@contextmanager
def _writing(path: Path):
    try:
        yield
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e} (disk full or a file size limit?)") from e
