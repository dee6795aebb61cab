"""Where each input tensor goes in the output GGUF, and the GGUF's metadata, without writing any
full-size intermediate file.

For a Hugging Face directory this is llama.cpp's own convert_hf_to_gguf.py of the pinned source,
imported rather than run: its model class gives the metadata and the tokenizer (the same calls
as its --vocab-only export), the GGUF name of every tensor and what it does to the values
(llama's Q/K row permutation for rope, ...), and extra tensors such as Llama 3's rope_freqs.
The weights never go through it: a linear weight's row order is found by passing an index
column through its modify_tensors. For a GGUF input, the input's own metadata and names.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import ConvertError

_BLOCK = re.compile(r"model\.layers\.(\d+)\.")


def rope_permutation(rows: int, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation for rope (LlamaModel.permute) as an index array: GGUF row
    r holds HF row order[r]."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


class Layout:
    arch: str                                  # llama.cpp's architecture name

    def add_metadata(self, writer, n_params: int) -> None:
        """Adds the key/value metadata (all but architecture, file type, quantization version);
        `n_params`, the weights in the output, gives the size label where the input has none."""
        raise NotImplementedError

    def place(self, hf_name: str, rows: int) -> tuple[str, np.ndarray | None]:
        """The GGUF name of a weight and its row order (None: rows as they are)."""
        raise NotImplementedError

    def values(self, hf_name: str, tensor: torch.Tensor) -> tuple[str, np.ndarray]:
        """A small tensor (norm gain, bias) as the GGUF holds it: name, float32 values."""
        raise NotImplementedError

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors that are not in the source's weights (rope_freqs), float32."""
        return []


def _import_llama_cpp_converter():
    from llama_cpp_build import src_dir
    src = src_dir()
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import convert_hf_to_gguf  # noqa: F401  (llama.cpp's script: registers its model classes)
    return convert_hf_to_gguf


class HFLayout(Layout):
    def __init__(self, model_dir: Path, arch_name: str):
        import gguf
        import logging
        logging.getLogger("hf-to-gguf").setLevel(logging.ERROR)   # its info lines are for its own CLI
        conv = _import_llama_cpp_converter()
        try:
            cls = conv.get_model_class(arch_name)
        except NotImplementedError as e:
            raise ConvertError(f"{model_dir}: llama.cpp's converter does not know {arch_name}") from e
        # lazy: it only indexes the safetensors headers; fname_out is never written
        self.model = cls(Path(model_dir), gguf.LlamaFileType.MOSTLY_F16, Path(model_dir) / "unused.gguf", eager=False)
        self.arch = gguf.MODEL_ARCH_NAMES[self.model.model_arch]
        # hparams, metadata, tokenizer: now, so that a tokenizer llama.cpp cannot export stops the
        # run before any work (a --bpw sensitivity pass can take as long as the conversion)
        try:
            with torch.inference_mode():
                self.model.prepare_metadata(vocab_only=True)
        except Exception as e:  # noqa: BLE001 - its checks are asserts, KeyErrors, NotImplementedErrors...
            raise ConvertError(f"{model_dir}: llama.cpp's convert_hf_to_gguf.py cannot export this model's metadata "
                               f"and tokenizer ({type(e).__name__}: {e or 'a failed check'}); check that the "
                               f"tokenizer files belong to this model (their tokens must fit config.json's vocab_size)") from e

    def add_metadata(self, writer, n_params: int) -> None:
        import gguf
        skip = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION)
        for key, v in self.model.gguf_writer.kv_data[0].items():
            if key not in skip:
                writer.add_key_value(key, v.value, v.type, sub_type=v.sub_type)
        if gguf.Keys.General.SIZE_LABEL not in self.model.gguf_writer.kv_data[0]:
            # what its full export derives from the tensors it adds
            writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))

    def _mapped(self, hf_name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        m = _BLOCK.match(hf_name)
        out = list(self.model.modify_tensors(tensor, hf_name, int(m.group(1)) if m else None))
        if len(out) != 1:
            raise ConvertError(f"tensor {hf_name}: llama.cpp's converter maps it to {len(out)} tensors; not supported")
        return out[0]

    def place(self, hf_name, rows):
        index = torch.arange(rows, dtype=torch.float64)[:, None]
        name, mapped = self._mapped(hf_name, index)
        order = mapped.reshape(-1).to(torch.int64).numpy()
        if mapped.shape != index.shape or not np.array_equal(np.sort(order), np.arange(rows)):
            raise ConvertError(f"tensor {hf_name}: llama.cpp's converter does more than reorder its rows; not supported")
        return name, (None if np.array_equal(order, np.arange(rows)) else order)

    def values(self, hf_name, tensor):
        name, mapped = self._mapped(hf_name, tensor.detach().cpu().float())
        return name, np.ascontiguousarray(mapped.numpy(), dtype=np.float32)

    def extra_tensors(self):
        with torch.inference_mode():
            return [(name, np.ascontiguousarray(t.float().numpy(), dtype=np.float32))
                    for name, t in self.model.generate_extra_tensors()]


class GGUFLayout(Layout):
    """A GGUF input: its metadata, its names and its row order, copied."""

    def __init__(self, source):
        from .gguf_in import hf_name
        self.source = source
        self.reader = source.reader
        self.arch = source.arch
        self._names = {}
        self._extra = []
        for t in self.reader.tensors:
            try:
                self._names[hf_name(t.name)] = t.name
            except KeyError:
                self._extra.append(t)

    def add_metadata(self, writer, n_params: int) -> None:
        import gguf
        skip = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION,
                gguf.Keys.General.ALIGNMENT)    # our writer aligns to its default
        for field in self.reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in skip:
                continue
            val_type = field.types[0]
            sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)

    def place(self, hf_name, rows):
        return self._names[hf_name], self.source.row_order(hf_name)

    def values(self, hf_name, tensor):
        order = self.source.row_order(hf_name)
        v = tensor.detach().cpu().float().numpy()
        return self._names[hf_name], np.ascontiguousarray(v if order is None else v[order], dtype=np.float32)

    def extra_tensors(self):
        import gguf
        return [(t.name, np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
                for t in self._extra]
