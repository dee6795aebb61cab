"""GGUF side of the converter: llama.cpp's own export as the template (metadata, tokenizer,
norms), our bytes for the weights we re-encode, and an atomic write."""
from __future__ import annotations

import os
import signal
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from . import codec, codec_s, cquant
from .format import QTYPE, QTYPE_R, QTYPE_S

# Our types: name -> (ggml type, numpy quantizer mirroring the C reference).
OUR_TYPES = {"mpq2": (QTYPE, codec.quantize), "mpq2r": (QTYPE_R, codec.quantize_r),
             "mpq2s": (QTYPE_S, codec_s.quantize)}
# Types the converter can write besides ours (all have numpy quantizers in gguf-py).
OTHER_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q5_1": gguf.GGMLQuantizationType.Q5_1,
    "q5_0": gguf.GGMLQuantizationType.Q5_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
TYPE_NAMES = [*OUR_TYPES, *OTHER_TYPES]


def encode(values: np.ndarray, type_name: str, threads: int | None = None) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Encodes a float tensor (numpy layout, rows last) in one of TYPE_NAMES. Our types go
    through the built C quantizer where there is one (cquant.py: the same bytes, on `threads`
    threads), else through its numpy mirror."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if type_name in OUR_TYPES:
        qtype, quantize = OUR_TYPES[type_name]
        data = cquant.quantize(values, type_name, threads=threads)
        return (quantize(values) if data is None else data), qtype
    qtype = OTHER_TYPES[type_name]
    return gguf.quants.quantize(values, qtype), qtype


def decode(data: np.ndarray, qtype: gguf.GGMLQuantizationType, shape) -> np.ndarray:
    """What llama.cpp will compute with: encoded data back to float32 of the given shape."""
    return np.ascontiguousarray(gguf.quants.dequantize(data, qtype), dtype=np.float32).reshape(shape)


def fits(type_name: str, cols: int) -> bool:
    qtype = OUR_TYPES[type_name][0] if type_name in OUR_TYPES else OTHER_TYPES[type_name]
    return cols % gguf.GGML_QUANT_SIZES[qtype][0] == 0


@dataclass
class Replacement:
    data: np.ndarray                      # as gguf-py holds it: float32/float16 values or uint8 bytes
    qtype: gguf.GGMLQuantizationType


def tensor_values(t) -> np.ndarray:
    """A template tensor as float32 in numpy order (rows, cols)."""
    shape = [int(d) for d in reversed(t.shape)]
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)


def arch_of(reader: gguf.GGUFReader) -> str:
    field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    return bytes(field.parts[field.data[0]]).decode()


def copy_fields(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, keep) -> None:
    """Copies the key/value fields whose name `keep(name)` accepts, with their value types."""
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or not keep(field.name):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, ftype: int) -> None:
    rewritten = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION)
    copy_fields(reader, writer, lambda name: name not in rewritten)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


class Interrupted(KeyboardInterrupt):
    pass


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM behaves like Ctrl-C, so the temporary output is removed either way."""
    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_output_path(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out} is a directory")
    if not out.parent.exists():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")


def write_atomic(out: Path, reader: gguf.GGUFReader, replacements: dict[str, Replacement], ftype: int,
                 force: bool, extra: dict[str, Replacement] | None = None) -> None:
    """Writes the template with replacements (and `extra` tensors after its own) to a temporary
    file next to `out`, then renames it: a reader never sees a half-written GGUF, and an
    interrupted run leaves no output."""
    extra = extra or {}
    check_output_path(out, force)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as e:
        raise RuntimeError(f"cannot create a file in {out.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch_of(reader))
        _copy_metadata(reader, writer, ftype)
        for t in reader.tensors:
            if t.name in replacements:
                r = replacements[t.name]
                writer.add_tensor_info(t.name, r.data.shape, r.data.dtype, r.data.nbytes, r.qtype)
            else:
                writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        for name, r in extra.items():
            writer.add_tensor_info(name, r.data.shape, r.data.dtype, r.data.nbytes, r.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            data = replacements[t.name].data if t.name in replacements else t.data
            writer.write_tensor_data(np.ascontiguousarray(data))
        for r in extra.values():
            writer.write_tensor_data(np.ascontiguousarray(r.data))
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, output_mode(out))     # mkstemp made it 0600
        os.replace(tmp, out)
    except OSError as e:                     # a full disk, a quota, RLIMIT_FSIZE, ...
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not write {out}: {e.strerror or e} (disk full or a file size limit?); "
                           f"nothing was written") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_mode(out: Path) -> int:
    """The replaced file's permissions (--force), else the usual 0666 less the umask."""
    try:
        return stat.S_IMODE(out.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
