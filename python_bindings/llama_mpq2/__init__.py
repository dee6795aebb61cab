"""cffi bindings to the patched llama.cpp (MPQ2): see docs/BINDINGS.md.

    from llama_mpq2 import Model, ggml, read_tensor
    with Model("model-mpq2.gguf", n_ctx=512) as m:
        for piece in m.generate("Once upon a time", max_tokens=32):
            print(piece, end="", flush=True)

Submodules load lazily: `import llama_mpq2` compiles nothing and opens no library until a name
from `model` (libllama, compiled on first use) or `ggml` (libggml, ABI mode) is used.
"""
from __future__ import annotations

import importlib

__all__ = ["Model", "LlamaError", "ModelLoadError", "ContextOverflowError", "set_verbose", "builtin_templates",
           "read_tensor", "read_tensor_bytes", "tensors", "mpq2_stats", "ggml"]

_LAZY = {
    "Model": "model", "LlamaError": "model", "ModelLoadError": "model", "ContextOverflowError": "model",
    "set_verbose": "model", "builtin_templates": "model",
    "read_tensor": "gguf_io", "read_tensor_bytes": "gguf_io", "tensors": "gguf_io", "mpq2_stats": "gguf_io",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("ggml", "model", "gguf_io"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
