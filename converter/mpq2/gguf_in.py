"""A GGUF read back as a Hugging Face state dict: what llama.cpp computes with, under the names
transformers loads (the tests' logits checks and bench/tune_output_norm.py use it)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import codec  # noqa: F401  registers MPQ2/MPQ2R with gguf.quants


# GGUF name -> HF name for the Llama family (llama.cpp permutes Q and K rows for rope).
_GGUF_TO_HF = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{0}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{0}.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.bias", "model.layers.{0}.self_attn.q_proj.bias"),
    (r"blk\.(\d+)\.attn_k\.bias", "model.layers.{0}.self_attn.k_proj.bias"),
    (r"blk\.(\d+)\.attn_v\.bias", "model.layers.{0}.self_attn.v_proj.bias"),
    (r"blk\.(\d+)\.attn_q_norm\.weight", "model.layers.{0}.self_attn.q_norm.weight"),
    (r"blk\.(\d+)\.attn_k_norm\.weight", "model.layers.{0}.self_attn.k_norm.weight"),
    (r"blk\.(\d+)\.attn_q\.weight", "model.layers.{0}.self_attn.q_proj.weight"),
    (r"blk\.(\d+)\.attn_k\.weight", "model.layers.{0}.self_attn.k_proj.weight"),
    (r"blk\.(\d+)\.attn_v\.weight", "model.layers.{0}.self_attn.v_proj.weight"),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{0}.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{0}.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{0}.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{0}.mlp.down_proj.weight"),
]


def hf_name(gguf_name: str) -> str:
    for pattern, target in _GGUF_TO_HF:
        m = re.fullmatch(pattern, gguf_name)
        if m:
            return target.format(*m.groups())
    raise KeyError(gguf_name)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute for a Q or K weight."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized_state_dict(gguf_path: Path, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF as float32 numpy under its HF name, Q/K un-permuted."""
    import gguf
    reader = gguf.GGUFReader(gguf_path)
    field = reader.fields["general.architecture"]
    permuted = bytes(field.parts[field.data[0]]).decode() == "llama"   # llama.cpp permutes Q/K for llama only
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        name = hf_name(t.name)
        if permuted and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute(w, n_head)
        elif permuted and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute(w, n_head_kv)
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out
